//! The audio front end end to end: decoding every supported format to the same 16 kHz mono
//! samples, resampling, streaming, bad input, log-mel parity with openai-whisper, and
//! the Whisper decoding pieces tied to real vocabularies and weights (reference values in
//! `tests/fixtures/`; the JFK clip, filter banks and models fetched by
//! `scripts/fetch-models`).

mod bad_input;
mod common;
mod corruption;
mod formats;
mod mel_parity;
mod resampling;
mod streaming;
mod vad;
mod whisper;
