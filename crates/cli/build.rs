//! Probes what the end-to-end tests need (crates/build_probe.rs and below):
//! cfgs `has_real_model`, `has_chromium` (the HTML report's rendering test)
//! and `has_python` (numpy + safetensors reading a trace file). The `plumb`
//! binary does not read them.

include!("../build_probe.rs");

/// The Python the trace test runs: $PLUMB_PYTHON, or .venv-test/ made by
/// `.ci/run`.
fn probe_python() {
    println!("cargo::rerun-if-env-changed=PLUMB_PYTHON");
    let venv = workspace_root().join(".venv-test/bin/python");
    watch(&venv);
    set_cfg("has_python", std::env::var_os("PLUMB_PYTHON").is_some() || venv.is_file());
}

/// Debian's `chromium` (or Ubuntu's `chromium-browser`), as `.ci/run`
/// installs it.
fn probe_chromium() {
    let paths = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(std::path::Path::new);
    paths.iter().for_each(|p| watch(p));
    let found = paths.iter().any(|p| p.exists());
    set_cfg("has_chromium", found);
}

fn main() {
    println!("cargo::rerun-if-changed=../build_probe.rs");
    probe_real_model();
    probe_python();
    probe_chromium();
}
