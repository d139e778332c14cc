//! Bad and unusual input: every case is a clear error naming the file, or a correct
//! (possibly empty) result; never a panic, and memory stays bounded for huge files.

use std::io::Write;
use std::path::{Path, PathBuf};

use tessera_audio::{AudioStream, Error, MelSpectrogram, STREAM_CHUNK, load_audio};

use crate::common::{fixture, mono, speech, write_wav};

/// Deterministic noise bytes (a 64-bit LCG), so failures reproduce.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The error's message names the file.
fn assert_names(e: &Error, path: &Path) {
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(
        msg.starts_with(&path.display().to_string()),
        "message does not name {}: {msg}",
        path.display()
    );
}

/// A 44-byte canonical PCM WAV header.
fn wav_header(format_tag: u16, channels: u16, rate: u32, bits: u16, data_len: u32) -> Vec<u8> {
    let block_align = channels * bits / 8;
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&format_tag.to_le_bytes());
    h.extend_from_slice(&channels.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * block_align as u32).to_le_bytes());
    h.extend_from_slice(&block_align.to_le_bytes());
    h.extend_from_slice(&bits.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

#[test]
fn empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "empty.wav", b"");
    let e = load_audio(&path).unwrap_err();
    assert!(matches!(e, Error::Empty { .. }), "{e}");
    assert_names(&e, &path);
    assert!(e.to_string().ends_with("the file is empty"), "{e}");
}

#[test]
fn missing_file_and_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.wav");
    let e = load_audio(&path).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_names(&e, &path);
    let e = load_audio(dir.path()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_names(&e, dir.path());
}

#[test]
fn text_file_is_not_audio() {
    let dir = tempfile::tempdir().unwrap();
    let text = "This is a transcript, not a recording.\n".repeat(50);
    for name in ["notes.txt", "notes.wav", "notes.mp3"] {
        let path = write(dir.path(), name, text.as_bytes());
        let e = load_audio(&path).unwrap_err();
        assert!(matches!(e, Error::UnknownFormat { .. }), "{name}: {e}");
        assert_names(&e, &path);
        assert!(e.to_string().contains("not a recognised audio file"), "{e}");
    }
}

#[test]
fn random_bytes_are_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (i, ext) in ["wav", "mp3", "flac", "ogg", "m4a", "bin"].iter().enumerate() {
        let path = write(dir.path(), &format!("noise.{ext}"), &noise(20_000, i as u64));
        match load_audio(&path) {
            Err(e) => assert_names(&e, &path),
            // MP3 sync words are 11 bits: noise can hold a few "frames" of noise.
            Ok(samples) => assert!(samples.len() < 16_000, "{ext}: {} samples from noise", samples.len()),
        }
    }
}

#[test]
fn truncated_wav_gives_the_audio_before_the_cut() {
    let reference = speech();
    let bytes = std::fs::read(fixture("speech_16k.wav")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data_start = bytes.windows(4).position(|w| w == b"data").unwrap() + 8;
    for cut in [data_start + 20_000, data_start + 20_001, bytes.len() / 2] {
        let path = write(dir.path(), "cut.wav", &bytes[..cut]);
        let samples = load_audio(&path).unwrap();
        let whole = (cut - data_start) / 2;
        assert_eq!(samples, reference[..whole], "cut at byte {cut}");
    }
    // Cut inside the header: an error naming the file.
    for cut in [4, 12, 30, data_start - 2] {
        let path = write(dir.path(), "header.wav", &bytes[..cut]);
        let e = load_audio(&path).unwrap_err();
        assert_names(&e, &path);
    }
}

#[test]
fn truncated_compressed_files_give_a_prefix_or_a_clear_error() {
    let reference = speech();
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "speech.mp3",
        "speech.flac",
        "speech.ogg",
        "speech.m4a",
        "speech_44k_stereo.flac",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        for tenth in 1..10 {
            let cut = bytes.len() * tenth / 10;
            let path = write(dir.path(), name, &bytes[..cut]);
            match load_audio(&path) {
                Ok(samples) => {
                    // Never more than the whole, never garbage: what is there is the speech.
                    assert!(samples.len() <= reference.len() + 2048, "{name} cut at {tenth}/10");
                    if samples.len() > 4000 {
                        let n = samples.len().min(reference.len()) - 1000;
                        let corr = crate::common::correlation_at(&reference[..n], &samples[..n], 0);
                        assert!(corr > 0.9, "{name} cut at {tenth}/10: correlation {corr}");
                    }
                }
                Err(e) => assert_names(&e, &path),
            }
        }
    }
    // An Ogg file cut inside its last page keeps the pages before it.
    let bytes = std::fs::read(fixture("speech.ogg")).unwrap();
    let last_page = bytes.windows(4).rposition(|w| w == b"OggS").unwrap();
    assert!(
        last_page > bytes.len() / 2,
        "the fixture's last page starts at {last_page}"
    );
    let path = write(dir.path(), "cut.ogg", &bytes[..last_page + 100]);
    let samples = load_audio(&path).unwrap();
    assert!(samples.len() > 8000, "{} samples", samples.len());
    let corr = crate::common::correlation_at(&reference[..samples.len() - 1000], &samples[..samples.len() - 1000], 0);
    assert!(corr > 0.98, "cut ogg: correlation {corr}");
    // The MP3 and FLAC cut in the middle keep about half the speech.
    for name in ["speech.mp3", "speech.flac"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let path = write(dir.path(), name, &bytes[..bytes.len() / 2]);
        let n = load_audio(&path).unwrap().len();
        assert!(
            n > reference.len() / 4 && n < reference.len() * 3 / 4,
            "{name}: {n} samples from half the file"
        );
    }
}

#[test]
fn garbage_after_a_valid_header() {
    let dir = tempfile::tempdir().unwrap();
    // PCM has no structure: noise after a WAV header decodes as noise, sample for sample.
    let mut bytes = wav_header(1, 1, 16_000, 16, 20_000);
    bytes.extend(noise(20_000, 7));
    let path = write(dir.path(), "noise.wav", &bytes);
    assert_eq!(load_audio(&path).unwrap().len(), 10_000);
    // Compressed formats: the header's first frames, then noise that does not decode.
    for name in ["speech.mp3", "speech.flac", "speech.ogg", "speech.m4a"] {
        let mut bytes = std::fs::read(fixture(name)).unwrap();
        bytes.truncate(bytes.len() / 8);
        bytes.extend(noise(20_000, 11));
        let path = write(dir.path(), name, &bytes);
        match load_audio(&path) {
            Ok(samples) => assert!(samples.len() < speech().len(), "{name}: {} samples", samples.len()),
            Err(e) => assert_names(&e, &path),
        }
    }
}

/// The fixture `name` with 40 bytes flipped at `at` (a fraction of its length).
fn damaged(dir: &Path, name: &str, at: f64) -> PathBuf {
    let mut bytes = std::fs::read(fixture(name)).unwrap();
    let start = (bytes.len() as f64 * at) as usize;
    for b in &mut bytes[start..start + 40] {
        *b ^= 0x5a;
    }
    write(dir, name, &bytes)
}

#[test]
fn damaged_frames_are_skipped_and_their_time_kept() {
    let reference = speech();
    let n = reference.len();
    let dir = tempfile::tempdir().unwrap();
    // FLAC: the damaged frame becomes silence; every frame after it decodes exactly, at
    // its own time.
    let samples = load_audio(damaged(dir.path(), "speech.flac", 0.5)).unwrap();
    assert_eq!(samples.len(), n);
    assert_eq!(samples[3 * n / 4..], reference[3 * n / 4..]);
    assert_ne!(samples[..3 * n / 4], reference[..3 * n / 4]);
    let samples = load_audio(damaged(dir.path(), "speech_44k_stereo.flac", 0.5)).unwrap();
    assert_eq!(samples.len(), n);
    // MP3 and Ogg: the damage is skipped, the rest decodes.
    for (name, at) in [("speech.mp3", 0.5), ("speech.ogg", 0.8)] {
        let samples = load_audio(damaged(dir.path(), name, at)).unwrap();
        assert!(
            samples.len() > n / 2 && samples.len() <= n + 32,
            "{name}: {} samples",
            samples.len()
        );
        let corr = crate::common::correlation_at(&reference[..n / 3], &samples[..n / 3], 0);
        assert!(corr > 0.98, "{name}: correlation {corr}");
    }
}

#[test]
fn zero_length_audio_is_an_empty_result() {
    let dir = tempfile::tempdir().unwrap();
    for rate in [16_000, 44_100] {
        let path = dir.path().join(format!("empty_{rate}.wav"));
        write_wav(&path, rate, 16, false, &[]);
        assert!(load_audio(&path).unwrap().is_empty(), "{rate}");
        let mut s = AudioStream::open(&path).unwrap();
        assert_eq!(s.duration_hint(), Some(0.0));
        assert!(s.next().is_none());
    }
    // Empty audio still has a padded spectrogram: 30 s of silence.
    let mel = MelSpectrogram::new(80).unwrap().compute_padded(&[]);
    assert_eq!((mel.n_frames, mel.content_frames), (3000, 0));
}

#[test]
fn silence_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silence.wav");
    write_wav(&path, 44_100, 16, false, &mono(&vec![0.0; 88_200]));
    let samples = load_audio(&path).unwrap();
    assert_eq!(samples.len(), 32_000);
    assert!(samples.iter().all(|&x| x == 0.0));
    let mel = MelSpectrogram::new(80).unwrap().compute_padded(&samples);
    assert!(mel.data.iter().all(|&x| x == -1.5), "log10(1e-10) normalised is -1.5");
}

#[test]
fn sample_formats_the_decoders_lack() {
    let dir = tempfile::tempdir().unwrap();
    // Format tag 0x0031 (GSM 6.10 in WAV): no decoder.
    let mut bytes = wav_header(0x0031, 1, 8_000, 16, 1000);
    bytes.extend(vec![0u8; 1000]);
    let path = write(dir.path(), "gsm.wav", &bytes);
    let e = load_audio(&path).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert_names(&e, &path);
    // 12-bit PCM: not a whole number of bytes per sample.
    let mut bytes = wav_header(1, 1, 16_000, 12, 1000);
    bytes.extend(vec![0u8; 1000]);
    let path = write(dir.path(), "pcm12.wav", &bytes);
    let e = load_audio(&path).unwrap_err();
    assert_names(&e, &path);
    // A sample rate of zero.
    let mut bytes = wav_header(1, 1, 0, 16, 1000);
    bytes.extend(vec![0u8; 1000]);
    let path = write(dir.path(), "rate0.wav", &bytes);
    let e = load_audio(&path).unwrap_err();
    assert_names(&e, &path);
}

#[test]
fn float_wav_with_nan_and_infinity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.wav");
    write_wav(&path, 16_000, 32, true, &mono(&[0.5, f32::NAN, f32::INFINITY, -0.5]));
    assert_eq!(load_audio(&path).unwrap(), vec![0.5, 0.0, 0.0, -0.5]);
}

/// Peak resident memory of this process so far, in bytes (Linux).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn a_three_hour_wav_streams_in_bounded_memory() {
    // 3 h of 16 kHz mono s16 is 345.6 MB on disk and 691 MB as f32: written as a sparse file
    // (silence), so it costs no disk and little time, and decoded chunk by chunk.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("three_hours.wav");
    let samples: u64 = 3 * 3600 * 16_000;
    let data_len = (samples * 2) as u32;
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&wav_header(1, 1, 16_000, 16, data_len)).unwrap();
    file.set_len(44 + data_len as u64).unwrap();
    drop(file);

    let before = peak_rss();
    let mut s = AudioStream::open(&path).unwrap();
    assert_eq!(s.duration_hint(), Some(10_800.0));
    let mut total = 0u64;
    let mut chunks = 0u64;
    let mut last_fraction = 0.0;
    while let Some(chunk) = s.next() {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= STREAM_CHUNK);
        total += chunk.len() as u64;
        chunks += 1;
        if chunks.is_multiple_of(1000) {
            let f = s.progress().fraction().unwrap();
            assert!(f >= last_fraction);
            last_fraction = f;
        }
    }
    assert_eq!(total, samples);
    assert_eq!(chunks, samples / STREAM_CHUNK as u64);
    // Holding the audio would take 691 MB; other tests running alongside use a few MB.
    let grown = peak_rss().saturating_sub(before);
    assert!(
        grown < 200 << 20,
        "peak memory grew by {} MB while streaming",
        grown >> 20
    );
}

#[test]
fn a_header_declaring_three_hours_over_one_second_of_data() {
    let reference = speech();
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = wav_header(1, 1, 16_000, 16, 3 * 3600 * 16_000 * 2);
    bytes.extend(reference.iter().flat_map(|&x| ((x * 32768.0) as i16).to_le_bytes()));
    let path = write(dir.path(), "liar.wav", &bytes);
    let s = AudioStream::open(&path).unwrap();
    assert_eq!(s.duration_hint(), Some(10_800.0));
    assert_eq!(load_audio(&path).unwrap(), reference);
}
