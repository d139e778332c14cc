//! Integration tests of the models crate: parity with the reference implementation on
//! committed tiny checkpoints, engine behaviour (KV cache, batching, prefix reuse,
//! decoding), bad input, and real weights fetched by `scripts/fetch-models`.

mod clip;
mod common;
mod corruption;
mod engine;
mod gguf;
mod parity;
mod real_weights;
mod reference_ops;
mod tokenizer;
mod whisper;
