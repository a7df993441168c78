//! The forward pass's numbers on the scalar references (see digest/mod.rs);
//! a separate test binary, since the kernel path is chosen once per process.

mod digest;

#[test]
#[cfg_attr(not(has_real_model), ignore = "needs models/gemma-3-270m-q4_k_m.gguf: run scripts/fetch-model.sh")]
fn the_real_model_traces_the_pinned_numbers_on_the_scalar_path() {
    plumb_model::kernels::set_path(plumb_model::kernels::KernelPath::Scalar);
    assert_eq!(plumb_model::kernels::active_path(), plumb_model::kernels::KernelPath::Scalar);
    digest::check("scalar", digest::pinned("scalar").unwrap());
}
