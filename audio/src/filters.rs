//! Whisper's mel filter banks, computed rather than shipped: they are
//! `librosa.filters.mel(sr=16000, n_fft=400, n_mels=N)` (Slaney mel scale, Slaney area
//! normalisation, float32), which openai-whisper saved as `assets/mel_filters.npz`. The
//! arithmetic follows librosa step by step, in f64 with the same float32 roundings, so the
//! result equals the shipped banks (checked in the tests against the fetched file).

use crate::{N_FFT, SAMPLE_RATE};

/// Frequency bins of a real FFT of [`N_FFT`] samples.
pub const N_FREQS: usize = N_FFT / 2 + 1;

/// The filter bank as a row-major `[n_mels][N_FREQS]` matrix of f32 weights.
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let sr = SAMPLE_RATE as f64;
    // np.fft.rfftfreq(n=400, d=1/sr): arange(0, 201) * (1 / (n * d)).
    let val = 1.0 / (N_FFT as f64 * (1.0 / sr));
    let fftfreqs: Vec<f64> = (0..N_FREQS).map(|i| i as f64 * val).collect();
    // mel_frequencies(n_mels + 2, fmin=0, fmax=sr/2): linspace in mel, back to Hz.
    let max_mel = hz_to_mel(sr / 2.0);
    let n_points = n_mels + 2;
    let step = max_mel / (n_points - 1) as f64;
    let mel_f: Vec<f64> = (0..n_points)
        .map(|i| if i == n_points - 1 { max_mel } else { i as f64 * step })
        .map(mel_to_hz)
        .collect();
    let fdiff: Vec<f64> = mel_f.windows(2).map(|w| w[1] - w[0]).collect();

    let mut weights = vec![0f32; n_mels * N_FREQS];
    for (i, row) in weights.chunks_mut(N_FREQS).enumerate() {
        // librosa stores each triangle into a float32 array, then scales the float32 values
        // by the f64 Slaney factor (numpy computes that product in f64 and rounds again).
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        for (w, &f) in row.iter_mut().zip(&fftfreqs) {
            let lower = -(mel_f[i] - f) / fdiff[i];
            let upper = (mel_f[i + 2] - f) / fdiff[i + 1];
            let tri = 0f64.max(lower.min(upper)) as f32;
            *w = (tri as f64 * enorm) as f32;
        }
    }
    weights
}

// librosa's Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn logstep() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / logstep()
    } else {
        hz / F_SP
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (logstep() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_round_trips_and_is_continuous_at_1khz() {
        for hz in [0.0, 440.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn triangles_are_slaney_normalised() {
        // Slaney normalisation makes every triangle's area (in Hz) 1; sampled on the
        // 40 Hz grid, each row sums to about 1/40 once the filters are wider than a bin.
        let w = mel_filters(80);
        for (i, row) in w.chunks(N_FREQS).enumerate().skip(10) {
            let sum: f32 = row.iter().sum::<f32>() * 40.0;
            assert!((sum - 1.0).abs() < 0.1, "row {i}: {sum}");
        }
        assert!(w.iter().all(|&x| x >= 0.0));
    }
}
