//! ggml block formats: the storage types of GGUF tensors.
//!
//! This crate knows how many bytes each ggml type takes for how many elements
//! ([`GgmlType`]), the `#[repr(C)]` layout of every block ([`blocks`]), plain
//! scalar dequantizers written like ggml's reference code ([`dequant`]) and
//! quantizers for the formats plumb writes itself ([`quantize`]).
//!
//! It does not read files (that is `plumb-formats`) and has no SIMD kernels:
//! everything here is the reference that faster kernels are tested against.

pub mod blocks;
pub mod dequant;
pub mod quantize;
mod types;

pub use dequant::dequantize;
pub use quantize::quantize;
pub use types::GgmlType;

/// Errors from converting between bytes and values.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("{ty} has no dequantizer in plumb yet")]
    Unsupported { ty: GgmlType },
    #[error("{ty} cannot be quantized by plumb (supported: {supported})")]
    NoQuantizer { ty: GgmlType, supported: &'static str },
    #[error("{ty}: {n} elements is not a multiple of the block size {block}")]
    NotBlockMultiple { ty: GgmlType, n: usize, block: usize },
    #[error("{ty}: {n} elements need {expected} bytes, got {actual}")]
    ByteLength { ty: GgmlType, n: usize, expected: usize, actual: usize },
}
