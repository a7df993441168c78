//! Model files in, checked tensors out.
//!
//! Two on-disk sources feed plumb: GGUF files ([`gguf`]) and HuggingFace
//! safetensors folders ([`hf`]). Both are treated as hostile — every count,
//! length and offset is checked against the file size before anything is
//! allocated or sliced — and both end up as [`TensorView`]s: a name, a
//! row-major shape, a ggml type and the raw bytes of a memory-mapped file.
//!
//! This crate knows nothing about architectures; the model crate decides
//! which tensors it needs.

pub mod apr;
pub mod atomic;
pub mod error;
pub mod gguf;
pub mod hf;
pub mod writer;

pub use error::FormatError;
pub use plumb_quant::GgmlType;

/// Maps a model file read-only, refusing what is not a regular file.
pub(crate) fn map_file(path: &std::path::Path) -> Result<memmap2::Mmap, FormatError> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let meta = file.metadata().map_err(|e| FormatError::io(path, e))?;
    if !meta.is_file() {
        return Err(FormatError::invalid(path, "not a regular file"));
    }
    // SAFETY: the map is read-only; plumb never writes to model files, and
    // a file truncated underneath us by another process is outside what
    // any mmap-based reader can defend against.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))
}

/// Bytes of a tensor in a shared memory map, or owned when plumb had to
/// rearrange them (e.g. un-permuting rows). Cheap to clone.
#[derive(Clone)]
pub enum Bytes {
    Mapped { map: std::sync::Arc<memmap2::Mmap>, start: usize, len: usize },
    Owned(std::sync::Arc<Vec<u8>>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped { map, start, len } => &map[*start..*start + *len],
            Bytes::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({})", self.len())
    }
}

/// A tensor that owns (a share of) its bytes, independent of the file object.
#[derive(Debug, Clone)]
pub struct OwnedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    pub bytes: Bytes,
}

/// A tensor inside a memory-mapped model file.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    /// Row-major shape: the last dimension is contiguous (the HuggingFace /
    /// numpy convention; GGUF's `ne` order is reversed at load).
    pub shape: &'a [usize],
    pub ty: GgmlType,
    pub data: &'a [u8],
}

impl TensorView<'_> {
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Dequantizes the whole tensor to f32.
    pub fn to_f32(&self) -> Result<Vec<f32>, plumb_quant::QuantError> {
        let mut out = vec![0.0; self.n_elements()];
        plumb_quant::dequantize(self.ty, self.data, &mut out)?;
        Ok(out)
    }
}
