//! Whisper's log-mel spectrogram, computed as openai-whisper's `log_mel_spectrogram`
//! (`whisper/audio.py`) does: a periodic Hann window of 400 samples, hop 160, the STFT of
//! `torch.stft(center=True)` (the signal reflect-padded by 200 samples on each side), the
//! last frame dropped, power spectra through the mel filter bank, `log10(max(x, 1e-10))`,
//! clamped to 8 below the maximum of the whole spectrogram, then `(x + 4) / 4`.
//!
//! The arithmetic runs in f64 (torch's runs in f32), which keeps the result within 1e-4 of
//! the reference (pinned by the integration tests against values from torch). Frames are
//! computed in parallel, a block at a time, so a 3-hour file needs no second copy of its
//! spectrogram.
//!
//! Padding, and why "zero padded" means two different things in Whisper:
//! - Long-form transcription pads the *audio* with 30 s of zeros before the STFT
//!   ([`MelSpectrogram::compute_padded`], openai's `log_mel_spectrogram(audio,
//!   padding=N_SAMPLES)`). The 3000 frames after the speech are therefore the log-mel of
//!   silence, which after the normalisation is `max(-10, max - 8) / 4 + 1`, not 0; and they
//!   take part in the global maximum like any frame.
//! - Cutting a 30 s window from a spectrogram then pads with literal zeros in log-mel space
//!   where the spectrogram runs out ([`Mel::window`] and [`Mel::segment`], openai's
//!   `pad_or_trim(mel_segment, N_FRAMES)`). openai's `transcribe` cuts each segment at the
//!   end of the content (`segment_size = min(N_FRAMES, content_frames - seek, ...)`), so its
//!   last window ends in zeros rather than in the silence frames: [`Mel::segment`]
//!   reproduces that; [`Mel::window`] keeps the silence frames (what language detection
//!   sees, `pad_or_trim(mel, N_FRAMES)` on the padded spectrogram).

use std::sync::Arc;

use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

use crate::error::{Error, Result};
use crate::filters::{N_FREQS, mel_filters};
use crate::{HOP_LENGTH, N_FFT, N_SAMPLES};

/// Frames computed per parallel block; bounds the scratch memory to `BLOCK * n_mels` floats.
const BLOCK: usize = 4096;

/// A log-mel spectrogram: `data` is row-major `[n_mels][n_frames]`, the layout of Whisper's
/// encoder input.
#[derive(Debug, Clone, PartialEq)]
pub struct Mel {
    pub n_mels: usize,
    pub n_frames: usize,
    /// Frames that cover the audio itself: `n_frames` less the frames of the zero padding
    /// (openai's `content_frames = mel.shape[-1] - N_FRAMES` for a padded spectrogram).
    pub content_frames: usize,
    pub data: Vec<f32>,
}

impl Mel {
    /// The value of mel bin `mel` at frame `frame`.
    pub fn get(&self, mel: usize, frame: usize) -> f32 {
        self.data[mel * self.n_frames + frame]
    }

    /// Frames `start .. start + len` as a `[n_mels][len]` matrix, with literal zeros where
    /// the spectrogram ends: openai's `pad_or_trim(mel[:, start:], len)`. On a padded
    /// spectrogram, frames past the content are the computed log-mel of silence.
    pub fn window(&self, start: usize, len: usize) -> Vec<f32> {
        self.segment(start, len, len)
    }

    /// Frames `start .. start + size` (clipped to the spectrogram) zero-padded to `len`
    /// frames: openai's `pad_or_trim(mel[:, seek : seek + segment_size], N_FRAMES)`, what its
    /// `transcribe` feeds the encoder, with `size = min(N_FRAMES, content_frames - seek)`.
    pub fn segment(&self, start: usize, size: usize, len: usize) -> Vec<f32> {
        let begin = start.min(self.n_frames);
        let end = start.saturating_add(size.min(len)).min(self.n_frames);
        let mut out = vec![0f32; self.n_mels * len];
        for (row, dst) in self
            .data
            .chunks_exact(self.n_frames.max(1))
            .zip(out.chunks_exact_mut(len.max(1)))
        {
            dst[..end - begin].copy_from_slice(&row[begin..end]);
        }
        out
    }
}

/// Audio trimmed or zero-padded to `len` samples (openai's `pad_or_trim` on audio).
pub fn pad_or_trim(samples: &[f32], len: usize) -> Vec<f32> {
    let mut out = samples[..samples.len().min(len)].to_vec();
    out.resize(len, 0.0);
    out
}

/// Computes log-mel spectrograms with a fixed number of mel bins (80 for most Whisper
/// models, 128 for large-v3 and turbo).
pub struct MelSpectrogram {
    n_mels: usize,
    filters: Vec<f32>,
    /// Per mel bin: the first frequency bin with a non-zero weight and the weights from there
    /// on (a triangle spans a few bins; the dense product would be ~25 times the work).
    sparse: Vec<(usize, Vec<f64>)>,
    window: Vec<f64>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for MelSpectrogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelSpectrogram")
            .field("n_mels", &self.n_mels)
            .finish_non_exhaustive()
    }
}

impl MelSpectrogram {
    /// A spectrogram with `n_mels` bins (1 to 512).
    pub fn new(n_mels: usize) -> Result<Self> {
        if !(1..=512).contains(&n_mels) {
            return Err(Error::InvalidInput(format!(
                "n_mels {n_mels}: a mel filter bank needs 1 to 512 bins (Whisper uses 80 or 128)"
            )));
        }
        let filters = mel_filters(n_mels);
        let sparse = filters
            .chunks_exact(N_FREQS)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(0, |l| l + 1);
                (first, row[first..last.max(first)].iter().map(|&w| w as f64).collect())
            })
            .collect();
        Ok(MelSpectrogram {
            n_mels,
            filters,
            sparse,
            window: hann_window(),
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT),
        })
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The filter bank, row-major `[n_mels][201]`.
    pub fn filters(&self) -> &[f32] {
        &self.filters
    }

    /// The spectrogram of `samples` (16 kHz mono): openai's `log_mel_spectrogram(audio)`,
    /// `samples.len() / 160` frames.
    pub fn compute(&self, samples: &[f32]) -> Mel {
        self.compute_with_padding(samples, 0)
    }

    /// The spectrogram of `samples` followed by 30 s of silence, for long-form
    /// transcription: openai's `log_mel_spectrogram(audio, padding=N_SAMPLES)`,
    /// `samples.len() / 160 + 3000` frames of which `content_frames` cover the audio.
    pub fn compute_padded(&self, samples: &[f32]) -> Mel {
        self.compute_with_padding(samples, N_SAMPLES)
    }

    /// The spectrogram of `samples` followed by `padding` zeros (not copied: the padding is
    /// virtual).
    ///
    /// torch refuses to reflect-pad a signal of 200 samples or fewer; here such a signal is
    /// reflected as often as needed instead, and an empty one gives zero frames.
    pub fn compute_with_padding(&self, samples: &[f32], padding: usize) -> Mel {
        let signal = Signal::whole(samples, samples.len() + padding);
        let n_frames = signal.len / HOP_LENGTH;
        let n_mels = self.n_mels;
        let mut data = vec![0f32; n_mels * n_frames];
        let mut block = vec![0f32; n_mels * BLOCK.min(n_frames)];
        let mut max = f32::NEG_INFINITY;
        for start in (0..n_frames).step_by(BLOCK) {
            let count = BLOCK.min(n_frames - start);
            let block = &mut block[..count * n_mels];
            let block_max = self.frames(&signal, start, block);
            max = max.max(block_max);
            // Scatter the frame-major block into the row-major spectrogram.
            data.par_chunks_mut(n_frames).enumerate().for_each(|(m, row)| {
                for (i, dst) in row[start..start + count].iter_mut().enumerate() {
                    *dst = block[i * n_mels + m];
                }
            });
        }
        let floor = max - 8.0;
        data.par_iter_mut().for_each(|x| *x = (x.max(floor) + 4.0) / 4.0);
        Mel {
            n_mels,
            n_frames,
            content_frames: n_frames.saturating_sub(padding / HOP_LENGTH),
            data,
        }
    }

    /// Frames `start .. start + count` of `signal`, frame-major into `out`
    /// (`count * n_mels` values of `log10(max(mel power, 1e-10))`), in parallel; returns
    /// their maximum.
    pub(crate) fn frames(&self, signal: &Signal<'_>, start: usize, out: &mut [f32]) -> f32 {
        out.par_chunks_mut(self.n_mels)
            .enumerate()
            .map_init(
                || Scratch::new(&*self.fft),
                |scratch, (i, out)| self.frame(signal, start + i, scratch, out),
            )
            .reduce(|| f32::NEG_INFINITY, f32::max)
    }

    /// `log10(max(mel power, 1e-10))` of frame `t` into `out`; returns the frame's maximum.
    fn frame(&self, signal: &Signal<'_>, t: usize, s: &mut Scratch, out: &mut [f32]) -> f32 {
        signal.frame(t * HOP_LENGTH, &mut s.input);
        for (x, w) in s.input.iter_mut().zip(&self.window) {
            *x *= w;
        }
        // Lengths come from the plan itself, so the transform cannot refuse them.
        self.fft
            .process_with_scratch(&mut s.input, &mut s.spectrum, &mut s.fft_scratch)
            .expect("buffers sized by the fft plan");
        for (p, c) in s.power.iter_mut().zip(&s.spectrum) {
            *p = c.norm_sqr();
        }
        let mut max = f32::NEG_INFINITY;
        for (o, (first, weights)) in out.iter_mut().zip(&self.sparse) {
            let energy: f64 = weights.iter().zip(&s.power[*first..]).map(|(w, p)| w * p).sum();
            *o = energy.max(1e-10).log10() as f32;
            max = max.max(*o);
        }
        max
    }
}

/// torch's `hann_window(400)` (periodic), computed in f32 as torch does:
/// `0.5 - 0.5 * cos(2 pi n / 400)`.
fn hann_window() -> Vec<f64> {
    let step = (std::f64::consts::PI * 2.0 / N_FFT as f64) as f32;
    (0..N_FFT)
        .map(|n| (-0.5f32 * (n as f32 * step).cos() + 0.5) as f64)
        .collect()
}

/// The samples, `len - samples.len()` zeros after them, reflect-padded by `N_FFT / 2` on
/// each side as `torch.stft(center=True)` pads.
///
/// A streamed signal holds only a stretch of its samples: `samples` starts at index
/// `offset` of the audio, and `head` keeps the audio's first samples, which the frames at
/// the start reflect.
pub(crate) struct Signal<'a> {
    pub samples: &'a [f32],
    pub offset: usize,
    pub head: &'a [f32],
    pub len: usize,
}

impl<'a> Signal<'a> {
    /// All of `samples`, followed by `len - samples.len()` zeros.
    pub fn whole(samples: &'a [f32], len: usize) -> Self {
        Signal {
            samples,
            offset: 0,
            head: samples,
            len,
        }
    }

    /// The sample at `i` of the unpadded signal (zero in the virtual padding).
    fn at(&self, i: usize) -> f64 {
        let x = match i.checked_sub(self.offset) {
            Some(j) => self.samples.get(j),
            None => self.head.get(i),
        };
        x.map_or(0.0, |&x| x as f64)
    }

    /// The `N_FFT` samples of the reflect-padded signal starting at `start`, where index 0
    /// of the padded signal is index -200 of the signal.
    fn frame(&self, start: usize, out: &mut [f64]) {
        let half = N_FFT / 2;
        if start >= half && start - half + N_FFT <= self.len {
            let from = start - half;
            for (k, o) in out.iter_mut().enumerate() {
                *o = self.at(from + k);
            }
            return;
        }
        let len = self.len as i64;
        for (k, o) in out.iter_mut().enumerate() {
            let mut i = (start + k) as i64 - half as i64;
            if len == 1 {
                i = 0;
            } else {
                let period = 2 * (len - 1);
                i = i.rem_euclid(period);
                if i >= len {
                    i = period - i;
                }
            }
            *o = self.at(i as usize);
        }
    }
}

/// Per-thread buffers of the transform.
struct Scratch {
    input: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    fft_scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
}

impl Scratch {
    fn new(fft: &dyn RealToComplex<f64>) -> Self {
        Scratch {
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            fft_scratch: fft.make_scratch_vec(),
            power: vec![0.0; N_FREQS],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_counts_follow_torch() {
        let mel = MelSpectrogram::new(80).unwrap();
        for (n, frames) in [(0, 0), (159, 0), (160, 1), (16_000, 100), (16_159, 100)] {
            let m = mel.compute(&vec![0.1; n]);
            assert_eq!((m.n_frames, m.content_frames), (frames, frames), "{n} samples");
            assert_eq!(m.data.len(), 80 * frames);
        }
        let m = mel.compute_padded(&vec![0.1; 16_000]);
        assert_eq!((m.n_frames, m.content_frames), (3100, 100));
        let m = mel.compute_padded(&[]);
        assert_eq!((m.n_frames, m.content_frames), (3000, 0));
    }

    #[test]
    fn silence_is_the_floor() {
        // All zeros: log10(1e-10) = -10 everywhere, which is also the maximum.
        let m = MelSpectrogram::new(80).unwrap().compute_padded(&[]);
        assert!(m.data.iter().all(|&x| x == (-10.0 + 4.0) / 4.0));
    }

    #[test]
    fn reflect_padding_matches_torch_indices() {
        let samples: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        let signal = Signal::whole(&samples, 1000);
        let mut out = vec![0.0; N_FFT];
        signal.frame(0, &mut out);
        // Padded index 0 is signal index -200, reflected to 200; index 200 is sample 0.
        assert_eq!((out[0], out[199], out[200], out[399]), (200.0, 1.0, 0.0, 199.0));
        // Last frame of 1000 samples (t = 6, start 960): indices 760..1160, reflected at 999.
        signal.frame(960, &mut out);
        assert_eq!(
            (out[0], out[239], out[240], out[241], out[399]),
            (760.0, 999.0, 998.0, 997.0, 839.0)
        );
        // Virtual zero padding is reflected like any sample.
        let padded = Signal::whole(&samples, 2000);
        padded.frame(1900, &mut out);
        assert_eq!((out[0], out[299], out[300], out[399]), (0.0, 0.0, 0.0, 0.0));
        padded.frame(1000, &mut out);
        assert_eq!((out[0], out[199], out[200]), (800.0, 999.0, 0.0));
    }

    #[test]
    fn tiny_signals_do_not_panic() {
        let mel = MelSpectrogram::new(80).unwrap();
        for n in [1usize, 2, 3, 160, 161, 200, 201] {
            let m = mel.compute(&vec![0.5; n]);
            assert!(m.data.iter().all(|x| x.is_finite()), "{n}");
        }
    }

    #[test]
    fn a_tone_lands_in_its_mel_bin() {
        let mel = MelSpectrogram::new(80).unwrap();
        let tone: Vec<f32> = (0..16_000)
            .map(|i| (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin())
            .collect();
        let m = mel.compute(&tone);
        let frame = 50;
        let loudest = (0..80)
            .max_by(|&a, &b| m.get(a, frame).total_cmp(&m.get(b, frame)))
            .unwrap();
        // 1 kHz is mel 15 on the Slaney scale; 80 bins over 0..45.2 mel puts it at bin ~26.
        let peak = mel.filters()[loudest * N_FREQS + 25]; // bin 25 = 1000 Hz
        assert!(peak > 0.0, "loudest bin {loudest} does not cover 1 kHz");
    }

    #[test]
    fn windows_and_segments() {
        let m = Mel {
            n_mels: 2,
            n_frames: 4,
            content_frames: 3,
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        };
        assert_eq!(m.window(1, 5), vec![2.0, 3.0, 4.0, 0.0, 0.0, 6.0, 7.0, 8.0, 0.0, 0.0]);
        assert_eq!(m.window(0, 2), vec![1.0, 2.0, 5.0, 6.0]);
        assert_eq!(m.window(9, 2), vec![0.0; 4]);
        assert_eq!(m.segment(1, 2, 3), vec![2.0, 3.0, 0.0, 6.0, 7.0, 0.0]);
        assert_eq!(m.segment(0, 9, 2), vec![1.0, 2.0, 5.0, 6.0]);
        assert_eq!(m.window(0, 0), Vec::<f32>::new());
    }

    #[test]
    fn pad_or_trim_audio() {
        assert_eq!(pad_or_trim(&[1.0, 2.0, 3.0], 2), vec![1.0, 2.0]);
        assert_eq!(pad_or_trim(&[1.0], 3), vec![1.0, 0.0, 0.0]);
    }

    #[test]
    fn bad_bin_counts_are_errors() {
        assert!(MelSpectrogram::new(0).is_err());
        assert!(MelSpectrogram::new(100_000).is_err());
        assert_eq!(MelSpectrogram::new(128).unwrap().filters().len(), 128 * N_FREQS);
    }
}
