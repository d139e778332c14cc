//! Corrupted audio files never panic: deterministic damage (see the shared mutator) to a
//! file of every container and codec the decoder reads, aimed mostly at headers and
//! frame boundaries, gives either samples or an error naming the file, and a hostile WAV
//! header (any rate, channel count or bit depth) is refused or decoded within bounds.

use std::ops::Range;

use tessera_audio::load_audio;

use crate::common::fixture;

#[path = "../../../models/tests/support/mutate.rs"]
mod mutate;
use mutate::{Outcomes, Rng, mutate};

/// Decodes `path`; a result longer than the damaged file could hold is a failure too.
fn decode(path: &std::path::Path, limit: usize) -> Result<(), String> {
    let samples = load_audio(path).map_err(|e| e.to_string())?;
    if samples.len() > limit {
        panic!("{} samples from a file that holds at most {limit}", samples.len());
    }
    if let Some(bad) = samples.iter().find(|s| !s.is_finite()) {
        panic!("a non-finite sample ({bad})");
    }
    Ok(())
}

/// The start of every frame or page a format marks with a sync pattern, so damage lands on
/// the structure the demuxers and codecs parse.
fn sync_points(bytes: &[u8], name: &str) -> Vec<Range<usize>> {
    let mut hot: Vec<Range<usize>> = Vec::new();
    hot.push(0..bytes.len().min(512));
    let marks: &[&[u8]] = match name.rsplit('.').next().unwrap() {
        "ogg" => &[b"OggS"],
        "m4a" => &[b"moov", b"trak", b"stsd", b"stsz", b"stco", b"mdat", b"esds"],
        "flac" => &[b"\xff\xf8", b"\xff\xf9"],
        "mp3" => &[b"\xff\xfb", b"\xff\xf3", b"Xing", b"Info"],
        _ => &[b"fmt ", b"data", b"LIST"],
    };
    for mark in marks {
        for (at, _) in bytes.windows(mark.len()).enumerate().filter(|(_, w)| w == mark) {
            hot.push(at..(at + 64).min(bytes.len()));
        }
    }
    hot
}

#[test]
fn corrupted_audio_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(0xa0d10);
    for name in [
        "speech_16k.wav",
        "speech_8k.wav",
        "speech.flac",
        "speech_44k_stereo.flac",
        "speech.mp3",
        "speech.ogg",
        "speech.m4a",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let whole = load_audio(fixture(name)).unwrap().len();
        let hot = sync_points(&bytes, name);
        let damaged = format!("damaged-{name}");
        let path = dir.path().join(&damaged);
        let mut outcomes = Outcomes::default();
        for _ in 0..600 {
            let (what, v) = mutate(&mut rng, &bytes, &hot);
            std::fs::write(&path, &v).unwrap();
            // Damage can add a frame's worth of samples (a flipped length field), never
            // more than the file's bytes could encode at 8 bits a sample at 8 kHz.
            let limit = whole.max(v.len() * 16_000 / 8_000) + 48_000;
            outcomes.run(&what, &damaged, || decode(&path, limit));
        }
        outcomes.assert_clean(name, 1, 10);
    }
}

#[test]
fn hostile_wav_headers_are_refused_or_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.wav");
    let mut outcomes = Outcomes::default();
    let data = vec![0x11u8; 4096];
    for format_tag in [1u16, 3, 0xFFFE, 0x55, 0] {
        for channels in [0u16, 1, 2, 7, 255, u16::MAX] {
            for rate in [0u32, 1, 7, 8_000, 16_000, 384_000, 10_000_000, u32::MAX] {
                for bits in [0u16, 1, 8, 12, 16, 24, 32, 64, 255] {
                    let block_align = channels.wrapping_mul(bits) / 8;
                    let mut h = Vec::new();
                    h.extend_from_slice(b"RIFF");
                    h.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
                    h.extend_from_slice(b"WAVEfmt ");
                    h.extend_from_slice(&16u32.to_le_bytes());
                    h.extend_from_slice(&format_tag.to_le_bytes());
                    h.extend_from_slice(&channels.to_le_bytes());
                    h.extend_from_slice(&rate.to_le_bytes());
                    h.extend_from_slice(&rate.wrapping_mul(u32::from(block_align)).to_le_bytes());
                    h.extend_from_slice(&block_align.to_le_bytes());
                    h.extend_from_slice(&bits.to_le_bytes());
                    h.extend_from_slice(b"data");
                    h.extend_from_slice(&(data.len() as u32).to_le_bytes());
                    h.extend_from_slice(&data);
                    std::fs::write(&path, &h).unwrap();
                    let what = format!("format {format_tag:#x}, {channels} channels, {rate} Hz, {bits} bits");
                    // 4 KiB of data holds at most 4096 one-byte frames, which at the lowest
                    // rate the resampler accepts stretch to a bounded length.
                    outcomes.run(&what, "hostile.wav", || decode(&path, 16_000 * 4096));
                }
            }
        }
    }
    outcomes.assert_clean("hostile WAV headers", 100, 10);
}
