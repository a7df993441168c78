//! The forward pass's numbers on the AVX-512 path forced without VNNI
//! (AVX2, FMA, F16C and AVX512F; see digest/mod.rs): what a CPU with
//! AVX512F but no AVX512VNNI computes, checked on any machine that has
//! AVX512F. A separate test binary, since the kernel path is chosen once
//! per process.

mod digest;

use plumb_model::kernels::{active_path, set_path, KernelPath};

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
#[cfg_attr(not(has_avx512), ignore = "this CPU lacks AVX512F")]
fn the_real_model_traces_the_pinned_numbers_on_the_avx512_path() {
    let path = KernelPath::Avx512;
    assert!(path.supported(), "the build script saw the {} path", path.name());
    set_path(path);
    assert_eq!(active_path(), path);
    digest::check(path.name(), digest::pinned(path.name()).unwrap());
}
