//! The language server's error type: every failure names its input and the problem.

/// Errors of the language server and its completion pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The message already holds the cause: no `#[source]`, so `{:#}` does not repeat it.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{0}")]
    InvalidInput(String),
    #[error("position {line}:{character} is outside the document {uri} ({lines} lines)")]
    PositionOutOfRange {
        uri: String,
        line: u32,
        character: u32,
        lines: usize,
    },
    #[error("the document {0} is not open")]
    DocumentNotOpen(String),
    #[error("{0}: not valid UTF-8 text")]
    NotUtf8(String),
    #[error("the completion was cancelled")]
    Cancelled,
    #[error("backend {endpoint}: {message}")]
    Backend { endpoint: String, message: String },
    #[error(transparent)]
    Model(#[from] tessera_models::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            error: source,
        }
    }
}
