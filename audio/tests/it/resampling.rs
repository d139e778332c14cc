//! Resampling to 16 kHz keeps a tone's frequency, amplitude and timing, removes what 16 kHz
//! cannot hold instead of folding it back, and keeps the speech of the reference.

use tessera_audio::load_audio;

use crate::common::{mono, rms, sine, write_wav};

/// Frequency from the rising zero crossings (interpolated between samples).
fn frequency(x: &[f32], rate: f64) -> f64 {
    let crossings: Vec<f64> = x
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| i as f64 + (-w[0] / (w[1] - w[0])) as f64)
        .collect();
    let (first, last) = (crossings[0], crossings[crossings.len() - 1]);
    (crossings.len() - 1) as f64 / ((last - first) / rate)
}

fn decode_tone(rate: u32, freq: f64, amplitude: f64, seconds: f64) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("tone_{rate}.wav"));
    write_wav(&path, rate, 32, true, &mono(&sine(rate, freq, amplitude, seconds)));
    load_audio(&path).unwrap()
}

#[test]
fn a_440_hz_tone_keeps_frequency_amplitude_and_phase() {
    for rate in [8_000, 11_025, 22_050, 44_100, 48_000, 96_000] {
        let out = decode_tone(rate, 440.0, 0.5, 2.0);
        assert_eq!(out.len(), 32_000, "{rate} Hz");
        let middle = &out[1600..30_400];
        let f = frequency(middle, 16_000.0);
        let amplitude = rms(middle) * 2f64.sqrt();
        assert!((f - 440.0).abs() < 0.01, "{rate} Hz: frequency {f}");
        assert!((amplitude - 0.5).abs() < 0.0025, "{rate} Hz: amplitude {amplitude}");
        // Same timing as a tone generated at 16 kHz: no delay left in the output.
        let ideal = sine(16_000, 440.0, 0.5, 2.0);
        let worst = (1600..30_400).map(|i| (out[i] - ideal[i]).abs()).fold(0f32, f32::max);
        assert!(worst < 0.005, "{rate} Hz: differs from the ideal tone by {worst}");
    }
}

#[test]
fn tones_above_8_khz_are_filtered_not_aliased() {
    // 10 kHz at 44.1 kHz would fold to 6 kHz without an anti-aliasing filter.
    for (rate, freq) in [(44_100, 10_000.0), (48_000, 12_000.0), (22_050, 9_000.0)] {
        let out = decode_tone(rate, freq, 0.5, 1.0);
        let level = rms(&out[1600..14_400]);
        assert!(
            level < 0.5 / 2f64.sqrt() * 0.01,
            "{rate} Hz, {freq} Hz tone: rms {level} left (-40 dB allowed)"
        );
    }
    // Just inside the passband survives.
    let out = decode_tone(44_100, 7_000.0, 0.5, 1.0);
    let level = rms(&out[1600..14_400]) * 2f64.sqrt();
    assert!((level - 0.5).abs() < 0.01, "7 kHz tone: amplitude {level}");
}

#[test]
fn empty_and_one_sample_files_at_other_rates() {
    let dir = tempfile::tempdir().unwrap();
    for (n, expected) in [(0usize, 0usize), (1, 1), (3, 3), (5, 4), (100, 73)] {
        let path = dir.path().join(format!("n{n}.wav"));
        write_wav(&path, 22_050, 16, false, &mono(&vec![0.25; n]));
        assert_eq!(load_audio(&path).unwrap().len(), expected, "{n} samples at 22.05 kHz");
    }
}
