//! The audio front end end to end: decoding every supported format to the same 16 kHz mono
//! samples, resampling, streaming, bad input, and log-mel parity with openai-whisper
//! (reference values in `tests/fixtures/`, the JFK clip and filter banks fetched by
//! `scripts/fetch-models`).

mod bad_input;
mod common;
mod formats;
mod mel_parity;
mod resampling;
mod streaming;
