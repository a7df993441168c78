// Build-time probes shared by the build scripts of the crates whose tests
// need something that may be absent (included with `include!`, so it has no
// `//!` header of its own): the real model file, CPU features, tools.
//
// Rust's test harness has no run-time skip, so a test that cannot run here
// is compiled `#[ignore = "why"]` through a cfg set from these probes, and
// `cargo test` reports it as ignored rather than passed. The probes look at
// the machine that builds, which is the machine that runs the tests: tests
// of a cross build are not run on the host. Not a feature switch for the
// library code: only tests read these cfgs.

/// The workspace root, from the crate's manifest directory (crates/NAME).
#[allow(dead_code)]
fn workspace_root() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    dir.join("../..")
}

/// Re-probes when `path` appears, changes or goes: watches the path, or
/// else its nearest existing folder below the workspace root. A missing
/// path itself is not watched: cargo would count it as changed on every
/// build and recompile the crate each time; nor is the root, which cargo
/// would scan with target/. With no such folder the probe runs again only
/// when this file or the build script changes (`touch crates/build_probe.rs`).
#[allow(dead_code)]
fn watch(path: &std::path::Path) {
    let root = workspace_root().canonicalize().ok();
    let mut p = Some(path);
    while let Some(q) = p {
        if q.exists() {
            if q.canonicalize().ok() != root {
                println!("cargo::rerun-if-changed={}", q.display());
            }
            return;
        }
        p = q.parent();
    }
}

/// Sets `cfg` when `on`, after declaring it (check-cfg) so that a cfg name
/// misspelt in a test is a warning.
fn set_cfg(cfg: &str, on: bool) {
    println!("cargo::rustc-check-cfg=cfg({cfg})");
    if on {
        println!("cargo::rustc-cfg={cfg}");
    }
}

/// `has_real_model`: models/gemma-3-270m-q4_k_m.gguf (scripts/fetch-model.sh)
/// is present. Re-probed when the file or its folder changes (see [`watch`]).
#[allow(dead_code)]
fn probe_real_model() {
    let models = workspace_root().join("models");
    let file = models.join("gemma-3-270m-q4_k_m.gguf");
    watch(&models);
    watch(&file);
    set_cfg("has_real_model", file.is_file());
}

/// CPU features of the kernel paths (plumb_kernels::KernelPath::detect and
/// has_vnni decide with the same tests at run time):
/// `has_avx2` — the Avx2 path (AVX2, FMA and F16C); `has_avx512` — AVX-512F;
/// `has_avx512vnni` — AVX-512 VNNI with AVX512VL (vpdpbusd on 256 bits).
#[allow(dead_code)]
fn probe_cpu() {
    let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
    #[cfg(target_arch = "x86_64")]
    let (avx2, avx512, vnni) = (
        native
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c"),
        native && std::is_x86_feature_detected!("avx512f"),
        native && std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512vl"),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (avx2, avx512, vnni) = {
        let _ = native;
        (false, false, false)
    };
    set_cfg("has_avx2", avx2);
    set_cfg("has_avx512", avx512);
    set_cfg("has_avx512vnni", vnni);
}
