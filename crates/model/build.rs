//! Probes what the tests need (crates/build_probe.rs): the real model and
//! the CPU's kernel paths, as cfgs `has_real_model`, `has_avx2`,
//! `has_avx512`, `has_avx512vnni`. The library does not read them.

include!("../build_probe.rs");

fn main() {
    println!("cargo::rerun-if-changed=../build_probe.rs");
    probe_real_model();
    probe_cpu();
}
