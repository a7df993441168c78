//! The forward pass's numbers on the kernel path this CPU selects (see
//! digest/mod.rs).

mod digest;

// Ignored where nothing is pinned for the path this CPU selects. The build
// script cannot read digest::PINNED, so the condition restates it in the
// cfgs of crates/build_probe.rs: "scalar" (no AVX2 path) and
// "avx2+fma+f16c+avx512vnni" are pinned; "avx2+fma+f16c" (no VNNI) is not.
// Pinning a path means updating this line too; the test fails, rather than
// passing, if it runs on a path with no pin.
#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
#[cfg_attr(
    all(has_real_model, has_avx2, not(has_avx512vnni)),
    ignore = "no digests pinned for the avx2+fma+f16c path (pin them with PLUMB_DIGEST_PRINT=1)"
)]
fn the_real_model_traces_the_pinned_numbers_on_the_detected_path() {
    let name = plumb_model::kernels::active_path().name();
    let want = digest::pinned(name).unwrap_or_else(|| {
        panic!("no digests pinned for the {name} path: pin them, or ignore the path in the cfg_attr above")
    });
    digest::check(name, want);
}
