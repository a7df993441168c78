//! Decoder-only language models: configuration settled at load time
//! ([`config`]), the tensors each architecture needs ([`weights`]), and the
//! forward pass over them.
//!
//! Architecture quirks (rope base per layer, q/k norm, post-norms, embedding
//! scale, activation, softcaps, sliding windows) are data in [`ModelConfig`];
//! the forward code never asks which model it is running. Each family is one
//! declarative spec in [`arch`].

pub mod arch;
pub mod cache;
pub mod config;
pub mod fault;
pub mod fuzzing;
pub mod generate;
pub mod given;
pub mod hybrid;
pub mod memory;
pub mod model;
pub mod plant;
pub mod sample;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use config::{Activation, Arch, KvType, KvTypes, ModelConfig, RunSettings};
pub use model::{KvCache, Model};
pub use plumb_kernels as kernels;
pub use plumb_kernels::flash::F16Math;
pub use plumb_kernels::{Kernels, Precision};
pub use plumb_trace::stage::{self, NoTrace, Observer, Stage};
pub use source::ModelSource;

/// Errors from loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] plumb_formats::FormatError),
    #[error("{path}: {what}")]
    Invalid { path: String, what: String },
}

impl ModelError {
    pub fn invalid(path: &std::path::Path, what: impl Into<String>) -> Self {
        ModelError::Invalid { path: path.display().to_string(), what: what.into() }
    }
}
