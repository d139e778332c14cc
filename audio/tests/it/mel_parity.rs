//! The log-mel spectrogram against openai-whisper: the filter banks against its
//! `mel_filters.npz` (fetched), the spectrogram of the JFK clip against values torch computed
//! with its `log_mel_spectrogram` (`tests/fixtures/gen_mel.py` wrote `mel_jfk.npz`).

use tessera_audio::filters::{N_FREQS, mel_filters};
use tessera_audio::{MelSpectrogram, N_FRAMES, load_audio};

use crate::common::{cached, fixture, read_npz};

#[test]
fn filter_banks_equal_whisper_assets() {
    let npz = read_npz(&cached("data/whisper/mel_filters.npz"));
    for n_mels in [80usize, 128] {
        let reference = &npz[&format!("mel_{n_mels}")];
        assert_eq!(reference.shape, vec![n_mels, N_FREQS]);
        let ours = mel_filters(n_mels);
        let mut worst = 0f64;
        let mut differing = 0;
        for (&a, &b) in ours.iter().zip(&reference.data) {
            let d = (a as f64 - b).abs();
            worst = worst.max(d / b.abs().max(1e-30));
            differing += usize::from(a as f64 != b);
        }
        eprintln!(
            "mel_{n_mels}: {differing} of {} weights differ, worst relative {worst:e}",
            ours.len()
        );
        // The same f64 steps and f32 roundings as librosa: bit for bit.
        assert_eq!(differing, 0, "mel_{n_mels}: worst relative difference {worst:e}");
    }
}

fn jfk() -> Vec<f32> {
    let samples = load_audio(cached("data/jfk.wav")).unwrap();
    assert_eq!(samples.len(), 176_000);
    samples
}

/// Compares every stored value of the reference case `name` with `ours`.
fn check(name: &str, ours: &tessera_audio::Mel) {
    let npz = read_npz(&fixture("mel_jfk.npz"));
    let shape = &npz[&format!("{name}_shape")].data;
    assert_eq!(
        (ours.n_mels, ours.n_frames),
        (shape[0] as usize, shape[1] as usize),
        "{name}"
    );
    let frames: Vec<usize> = npz[&format!("{name}_frames")]
        .data
        .iter()
        .map(|&f| f as usize)
        .collect();
    let values = &npz[&format!("{name}_values")];
    assert_eq!(values.shape, vec![ours.n_mels, frames.len()]);
    let mut worst = (0f64, 0, 0);
    for m in 0..ours.n_mels {
        for (k, &t) in frames.iter().enumerate() {
            let d = (ours.get(m, t) as f64 - values.data[m * frames.len() + k]).abs();
            if d > worst.0 {
                worst = (d, m, t);
            }
        }
    }
    eprintln!(
        "{name}: {} frames compared, worst difference {:e} at mel {} frame {}",
        frames.len(),
        worst.0,
        worst.1,
        worst.2
    );
    assert!(
        worst.0 <= 1e-4,
        "{name}: differs by {} at mel {} frame {}",
        worst.0,
        worst.1,
        worst.2
    );
}

#[test]
fn log_mel_80_padded_matches_whisper() {
    let mel = MelSpectrogram::new(80).unwrap().compute_padded(&jfk());
    assert_eq!(mel.content_frames, 1100);
    check("mel80_padded", &mel);
}

#[test]
fn log_mel_128_padded_matches_whisper() {
    let mel = MelSpectrogram::new(128).unwrap().compute_padded(&jfk());
    check("mel128_padded", &mel);
}

#[test]
fn log_mel_80_unpadded_matches_whisper() {
    let mel = MelSpectrogram::new(80).unwrap().compute(&jfk());
    assert_eq!(mel.content_frames, 1100);
    check("mel80_unpadded", &mel);
}

#[test]
fn windows_of_the_padded_spectrogram() {
    let mel = MelSpectrogram::new(80).unwrap().compute_padded(&jfk());
    // Language detection's view: the first 3000 frames, speech then computed silence.
    let w = mel.window(0, N_FRAMES);
    assert_eq!(w.len(), 80 * N_FRAMES);
    let silence = mel.get(0, mel.n_frames - 1);
    assert!(silence < 0.0, "log-mel of silence is {silence}");
    assert_eq!(w[2500], mel.get(0, 2500));
    assert_eq!(w[2500], silence);
    // transcribe's view: the segment stops at the content, literal zeros after it.
    let s = mel.segment(0, N_FRAMES.min(mel.content_frames), N_FRAMES);
    assert_eq!(&s[..1100], &w[..1100]);
    assert!(s[1100..N_FRAMES].iter().all(|&x| x == 0.0));
    // A window starting mid-file runs into the silence frames, then into zeros past the end.
    let w = mel.window(3000, N_FRAMES);
    assert_eq!(w[0], mel.get(0, 3000));
    assert_eq!(w[1099], mel.get(0, 4099));
    assert!(w[1100..N_FRAMES].iter().all(|&x| x == 0.0));
}
