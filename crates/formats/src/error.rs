//! Errors from reading and writing model files. Each names the file, and
//! where it applies the field and the byte offset at fault.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A structural problem at a known place in the file.
    #[error("{}: {field} at byte offset {offset}: {what}", path.display())]
    At { path: PathBuf, field: String, offset: u64, what: String },
    /// A problem with the file as a whole (missing tensor, bad shape, …).
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

impl FormatError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        FormatError::Io { path: path.to_path_buf(), source }
    }

    pub fn invalid(path: &Path, what: impl Into<String>) -> Self {
        FormatError::Invalid { path: path.to_path_buf(), what: what.into() }
    }
}
