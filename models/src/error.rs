//! The models crate's one error type. Every message names the input it is about (a file,
//! a tensor, a model id) and the problem, lowercase and without a trailing period.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    /// The message already holds the cause: no `source`, so `{:#}` does not repeat it.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    /// A model, tokenizer or config file is malformed, truncated or inconsistent.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// The file is well formed but uses something Tessera does not implement.
    #[error("{what}: {msg}")]
    Unsupported { what: String, msg: String },
    /// A model name, path or hub id that resolves to nothing usable.
    #[error("{0}")]
    ModelNotFound(String),
    /// Bad arguments from the caller (empty prompt, prompt longer than the context, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// Tokenizer construction, encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A custom kernel refused its inputs.
    #[error("kernel: {0}")]
    Kernel(#[from] tessera_kernels::Error),
    /// A tensor operation failed; these are bugs or device problems, not bad input.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

impl Error {
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    pub fn unsupported(what: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Unsupported {
            what: what.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
