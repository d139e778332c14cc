//! Tessera's audio front end for Whisper: any audio file to 16 kHz mono samples, and those
//! samples to the log-mel spectrogram Whisper's encoder reads, equal to openai-whisper's
//! within 1e-4.
//!
//! - [`decode`]: symphonia decoding (WAV, FLAC, MP3, Ogg Vorbis, AAC/ALAC in MP4/M4A, MKV,
//!   CAF, AIFF), downmix and resampling, streamed packet by packet ([`AudioStream`],
//!   [`load_audio`]).
//! - `resample` (private): the band-limited FFT resampler to 16 kHz; `mp4` (private): MP4
//!   edit lists (encoder delay), which symphonia does not apply.
//! - [`mel`]: the STFT and log-mel spectrogram ([`MelSpectrogram`], [`Mel`]), 30 s windows
//!   and padding as Whisper pads.
//! - [`filters`]: the mel filter banks (librosa's Slaney banks, computed).
//! - [`spectrogram`]: a file's spectrogram read window by window ([`MelSource`]), whole
//!   in memory for short files, streamed in two passes for long ones ([`MelStream`]).
//! - [`transcribe`]: Whisper transcription on the shared engine (window decoding with
//!   the reference's logit filters, beam search and temperature fallback, long-form seeking,
//!   word timestamps, output formats).
//! - [`vad`]: Silero voice activity detection before transcription, as faster-whisper's
//!   `vad_filter` (speech chunks, only they transcribed, times mapped back).
//! - [`error`]: the crate's [`Error`].
//!
//! ```no_run
//! use tessera_audio::{MelSpectrogram, N_FRAMES, load_audio};
//!
//! let samples = load_audio("speech.mp3")?;
//! let mel = MelSpectrogram::new(80)?.compute_padded(&samples);
//! let first_window = mel.segment(0, N_FRAMES.min(mel.content_frames), N_FRAMES); // [80][3000]
//! # Ok::<(), tessera_audio::Error>(())
//! ```

pub mod decode;
pub mod error;
pub mod filters;
pub mod mel;
mod mp4;
mod resample;
pub mod spectrogram;
pub mod transcribe;
pub mod vad;

pub use decode::{AudioStream, Progress, STREAM_CHUNK, SampleReader, SourceInfo, load_audio, load_audio_with_progress};
pub use error::{Error, Result};
pub use mel::{Mel, MelSpectrogram, pad_or_trim};
pub use spectrogram::{IN_MEMORY_SAMPLES, MelSource, MelStream, Spectrogram};

/// Whisper's sample rate: everything is resampled to 16 kHz.
pub const SAMPLE_RATE: u32 = 16_000;
/// FFT size (25 ms).
pub const N_FFT: usize = 400;
/// Hop between frames (10 ms).
pub const HOP_LENGTH: usize = 160;
/// Seconds in one encoder window.
pub const CHUNK_LENGTH: usize = 30;
/// Samples in one encoder window (480,000).
pub const N_SAMPLES: usize = CHUNK_LENGTH * SAMPLE_RATE as usize;
/// Frames in one encoder window (3,000).
pub const N_FRAMES: usize = N_SAMPLES / HOP_LENGTH;
/// Spectrogram frames per second (100).
pub const FRAMES_PER_SECOND: usize = SAMPLE_RATE as usize / HOP_LENGTH;
