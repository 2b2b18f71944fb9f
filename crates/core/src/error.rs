//! The one error type of the shared library. Every variant renders as one line that names the
//! file (or the input) and what is wrong with it.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable image: {reason}")]
    Image { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{0}")]
    Input(String),
}

impl EdgeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        EdgeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn invalid(path: &Path, reason: impl Into<String>) -> Self {
        EdgeError::Invalid {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
    pub fn input(reason: impl Into<String>) -> Self {
        EdgeError::Input(reason.into())
    }
}

pub type Result<T, E = EdgeError> = std::result::Result<T, E>;
