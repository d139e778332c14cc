//! Tessera's model engine: loads real checkpoints (GGUF, safetensors + config.json,
//! tokenizers), runs transformer architectures on candle, and owns everything that is
//! state rather than weights: the KV cache, prefix reuse, decoding and cancellation.
//!
//! The crate knows nothing of LSP, HTTP or command lines; callers hand it token ids or
//! text and get back tokens, text and scores.

pub mod allocator;
pub mod backend;
pub mod clip;
pub mod clip_tokenizer;
pub mod ct2;
pub mod decoder;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod layers;
pub mod llama;
pub mod loader;
pub mod model;
pub mod onnx;
pub mod panics;
pub mod sampling;
pub mod silero_vad;
pub mod starcoder2;
#[cfg(test)]
mod testing;
pub mod tokenizer;
pub mod weights;
pub mod whisper;

pub use error::{Error, Result};
