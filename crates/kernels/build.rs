//! Probes the CPU's kernel paths for the tests (crates/build_probe.rs):
//! cfgs `has_avx2`, `has_avx512`, `has_avx512vnni`. The library does not
//! read them: it detects its path at run time.

include!("../build_probe.rs");

fn main() {
    println!("cargo::rerun-if-changed=../build_probe.rs");
    probe_cpu();
}
