//! Every container, codec and sample format decodes to the reference speech: lossless ones
//! sample for sample (within the quantisation of their bit depth), lossy ones by correlation
//! at lag zero (so their encoder delay is trimmed), other rates through the resampler.

use tessera_audio::{AudioStream, load_audio};

use crate::common::{best_lag, cached, correlation_at, fixture, mono, read_wav_i16, speech, write_wav};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn wav_16k_is_the_samples_themselves() {
    let decoded = load_audio(fixture("speech_16k.wav")).unwrap();
    assert_eq!(decoded, speech());
}

#[test]
fn flac_is_lossless() {
    let decoded = load_audio(fixture("speech.flac")).unwrap();
    assert_eq!(decoded, speech());
}

#[test]
fn wav_bit_depths_and_float() {
    let reference = speech();
    let dir = tempfile::tempdir().unwrap();
    // (bits, float, tolerance: half a step of the format, or float rounding)
    for (bits, float, tol) in [
        (8u16, false, 1.0 / 128.0),
        (16, false, 1e-7),
        (24, false, 1.0 / (1 << 23) as f32),
        (32, false, 1e-7),
        (32, true, 1e-7),
    ] {
        let path = dir
            .path()
            .join(format!("speech_{bits}{}.wav", if float { "f" } else { "" }));
        write_wav(&path, 16_000, bits, float, &mono(&reference));
        let decoded = load_audio(&path).unwrap();
        let diff = max_diff(&decoded, &reference);
        assert!(
            diff <= tol,
            "{bits}-bit{}: max difference {diff}",
            if float { " float" } else { "" }
        );
    }
}

#[test]
fn stereo_is_downmixed_to_the_mean() {
    let reference = speech();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stereo.wav");
    // Left the speech, right its negation at half level: the mean is a quarter of it.
    let frames: Vec<Vec<f32>> = reference.iter().map(|&x| vec![x, -0.5 * x]).collect();
    write_wav(&path, 16_000, 32, true, &frames);
    let decoded = load_audio(&path).unwrap();
    let expected: Vec<f32> = reference.iter().map(|&x| 0.25 * x).collect();
    assert!(max_diff(&decoded, &expected) < 1e-7);

    // Six channels (5.1 in WAVE_FORMAT_EXTENSIBLE), speech in one of them.
    let path = dir.path().join("surround.wav");
    let frames: Vec<Vec<f32>> = reference.iter().map(|&x| vec![0.0, 0.0, x, 0.0, 0.0, 0.0]).collect();
    write_wav(&path, 16_000, 16, false, &frames);
    let decoded = load_audio(&path).unwrap();
    let expected: Vec<f32> = reference.iter().map(|&x| x / 6.0).collect();
    assert!(max_diff(&decoded, &expected) < 1e-6);
}

/// A lossy or resampled version must line up with the reference (best lag 0) and correlate
/// at least `min_corr` with it.
fn check_close(name: &str, min_corr: f64) {
    let reference = speech();
    let stream = AudioStream::open(fixture(name)).unwrap();
    let declared = stream.duration_hint().unwrap_or_else(|| panic!("{name}: no duration"));
    let decoded = load_audio(fixture(name)).unwrap();
    let (lag, corr) = best_lag(&reference, &decoded, 3000);
    eprintln!(
        "{name}: {} samples (reference {}), declared {declared:.4} s, best lag {lag}, correlation {corr:.5} (at 0: {:.5})",
        decoded.len(),
        reference.len(),
        correlation_at(&reference, &decoded, 0)
    );
    assert_eq!(lag, 0, "{name}: decoded audio is shifted by {lag} samples");
    assert!(corr >= min_corr, "{name}: correlation {corr} < {min_corr}");
    // Encoder delay and padding are trimmed (MP3: LAME header, M4A: edit list, rounded to
    // the millisecond): the length is the reference's within a few samples.
    let extra = decoded.len() as i64 - reference.len() as i64;
    assert!(
        (0..=32).contains(&extra),
        "{name}: {} samples vs {}",
        decoded.len(),
        reference.len()
    );
    assert!(
        (declared - decoded.len() as f64 / 16_000.0).abs() < 0.002,
        "{name}: declared {declared} s"
    );
}

#[test]
fn mp3() {
    check_close("speech.mp3", 0.97);
}

#[test]
fn ogg_vorbis() {
    check_close("speech.ogg", 0.99);
}

#[test]
fn aac_in_m4a() {
    check_close("speech.m4a", 0.98);
}

#[test]
fn flac_44k_stereo_is_resampled() {
    check_close("speech_44k_stereo.flac", 0.999);
}

#[test]
fn wav_8k_is_resampled() {
    // 8 kHz keeps only the band below 4 kHz: what is lost is the speech's upper band.
    check_close("speech_8k.wav", 0.95);
}

#[test]
fn source_info_describes_the_file() {
    let s = AudioStream::open(fixture("speech_44k_stereo.flac")).unwrap();
    let info = s.info();
    assert_eq!((info.container.as_str(), info.codec.as_str()), ("flac", "flac"));
    assert_eq!((info.sample_rate, info.channels), (Some(44_100), Some(2)));
    let s = AudioStream::open(fixture("speech.mp3")).unwrap();
    assert_eq!(s.info().codec, "mp3");
    let s = AudioStream::open(fixture("speech.ogg")).unwrap();
    assert_eq!(
        (s.info().container.as_str(), s.info().codec.as_str()),
        ("ogg", "vorbis")
    );
    let s = AudioStream::open(fixture("speech.m4a")).unwrap();
    assert_eq!(
        (s.info().container.as_str(), s.info().codec.as_str()),
        ("isomp4", "aac")
    );
}

#[test]
fn jfk_mp3_matches_jfk_wav() {
    let (spec, wav) = read_wav_i16(&cached("data/jfk.wav"));
    assert_eq!(spec.sample_rate, 16_000);
    assert_eq!(load_audio(cached("data/jfk.wav")).unwrap(), wav);
    let mp3 = load_audio(cached("data/jfk.mp3")).unwrap();
    let (lag, corr) = best_lag(&wav, &mp3, 2000);
    eprintln!(
        "jfk.mp3: {} samples vs {}, lag {lag}, correlation {corr:.5}",
        mp3.len(),
        wav.len()
    );
    // Gapless decoding (the LAME header's delay and padding) lines it up exactly.
    assert_eq!((lag, mp3.len()), (0, wav.len()));
    assert!(corr > 0.999, "correlation {corr}");
}
