//! The audio crate's one error type. Every message names the input (a file path, or the
//! argument that was wrong) and the problem, lowercase and without a trailing period.

use std::path::{Path, PathBuf};

/// Everything that can go wrong while decoding audio or computing a spectrogram.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    /// The message already holds the cause: no `source`, so `{:#}` does not repeat it.
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    /// The file has no bytes at all.
    #[error("{}: the file is empty", path.display())]
    Empty { path: PathBuf },
    /// No container format recognises the file: it is not audio, or not a kind we read.
    #[error(
        "{}: not a recognised audio file (tried WAV, FLAC, MP3, Ogg, MP4/M4A, AAC, MKV/WebM, \
         CAF, AIFF): {msg}",
        path.display()
    )]
    UnknownFormat { path: PathBuf, msg: String },
    /// The file is recognised but holds something we cannot decode: no audio track, a codec
    /// or sample format the decoders do not implement, an impossible sample rate.
    #[error("{}: unsupported audio: {msg}", path.display())]
    Unsupported { path: PathBuf, msg: String },
    /// The container or the coded audio is malformed beyond what decoding can skip.
    #[error("{}: corrupt audio: {msg}", path.display())]
    Corrupt { path: PathBuf, msg: String },
    /// The speech model failed (loading, a forward pass, the tokenizer).
    #[error(transparent)]
    Model(#[from] tessera_models::Error),
    /// A bad argument from the caller (a filter bank with no bins, ...).
    #[error("{0}")]
    InvalidInput(String),
}

impl Error {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    pub(crate) fn unsupported(path: &Path, msg: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }

    pub(crate) fn corrupt(path: &Path, msg: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.to_path_buf(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
