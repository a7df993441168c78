//! The forward pass's numbers on the AVX2 path forced (AVX2, FMA and F16C,
//! never an AVX-512 instruction; see digest/mod.rs): what an AVX2-only
//! machine computes, checked on any machine that has AVX2. A separate test
//! binary, since the kernel path is chosen once per process.

mod digest;

use plumb_model::kernels::{active_path, set_path, KernelPath};

#[test]
fn the_real_model_traces_the_pinned_numbers_on_the_avx2_path() {
    let path = KernelPath::Avx2;
    if !path.supported() {
        eprintln!("not run: this CPU lacks the {} path", path.name());
        return;
    }
    set_path(path);
    assert_eq!(active_path(), path);
    digest::check(path.name(), digest::pinned(path.name()).unwrap());
}
