//! The vision crate's one error type. Every message names the input it is about (an image
//! file, an index file, a query) and the problem, lowercase and without a trailing period.

use std::path::PathBuf;

/// Everything that can go wrong while reading images, preprocessing them, running CLIP on
/// them or keeping an image index.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened, read or written.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    /// The bytes are not a decodable image (corrupt, truncated, zero-sized).
    #[error("{}: {msg}", path.display())]
    Decode { path: PathBuf, msg: String },
    /// The image declares more pixels than allowed; refused before decoding anything.
    #[error(
        "{}: {width}x{height} pixels is more than the limit of {limit} (a decompression bomb or a huge scan); refused before decoding",
        path.display()
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u64,
    },
    /// A file whose format is not one of the supported image formats.
    #[error("{}: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },
    /// A malformed `preprocessor_config.json`, index file or other file we read.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// Bad arguments from the caller (empty text, no images, bad query).
    #[error("{0}")]
    InvalidInput(String),
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] tessera_models::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error,
        }
    }

    pub fn decode(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Decode {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Model(tessera_models::Error::Tensor(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
