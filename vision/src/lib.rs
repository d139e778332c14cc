//! Tessera's image side: decoding image files the way Pillow does ([`decode`]), CLIP's
//! preprocessing bit for bit ([`resample`], [`preprocess`]), image-text matching with a CLIP
//! model from `tessera-models` ([`pipeline`]), and an incremental, atomically written
//! image index with rclip-style query arithmetic ([`index`], [`search`]).
//!
//! The crate knows nothing of command lines: the binary's `match`, `index` and `search`
//! subcommands are thin layers over these modules.

pub mod decode;
pub mod error;
pub mod index;
mod jpeg;
pub mod pipeline;
pub mod preprocess;
pub mod resample;
pub mod search;

pub use error::{Error, Result};
