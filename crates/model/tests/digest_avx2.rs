//! The forward pass's numbers on the AVX2 path forced (AVX2, FMA and F16C,
//! never an AVX-512 instruction; see digest/mod.rs): what an AVX2-only
//! machine computes, checked on any machine that has AVX2. A separate test
//! binary, since the kernel path is chosen once per process.

mod digest;

use plumb_model::kernels::{active_path, set_path, KernelPath};

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
#[cfg_attr(not(has_avx2), ignore = "this CPU lacks AVX2, FMA and F16C")]
fn the_real_model_traces_the_pinned_numbers_on_the_avx2_path() {
    let path = KernelPath::Avx2;
    assert!(path.supported(), "the build script saw the {} path", path.name());
    set_path(path);
    assert_eq!(active_path(), path);
    digest::check(path.name(), digest::pinned(path.name()).unwrap());
}
