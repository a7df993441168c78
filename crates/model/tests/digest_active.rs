//! The forward pass's numbers on the kernel path this CPU selects (see
//! digest/mod.rs).

mod digest;

// Every path is pinned (digest/mod.rs); the test fails, rather than
// passing, on a path with no pin.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_traces_the_pinned_numbers_on_the_detected_path() {
    let name = plumb_model::kernels::active_path().name();
    let want = digest::pinned(name)
        .unwrap_or_else(|| panic!("no digests pinned for the {name} path: pin them (PLUMB_DIGEST_PRINT=1)"));
    digest::check(name, want);
}
