//! Silero VAD v6: the probability that each 32 ms window of 16 kHz audio is speech.
//!
//! Silero Team, "Silero VAD: pre-trained enterprise-grade Voice Activity Detector",
//! <https://github.com/snakers4/silero-vad>; the weights and the calling convention are
//! those of faster-whisper 1.2.1 (`faster_whisper/assets/silero_vad_v6.onnx`,
//! `faster_whisper/vad.py`), which `scripts/fetch-models` fetches.
//!
//! Each window is 512 new samples with the 64 before them as context. Its features are
//! independent of other windows: a short-time Fourier transform as a convolution with a
//! fixed basis (reflect-padded by 128, 256-sample frames, hop 128, the first frame
//! dropped), magnitudes of 129 bins, and four 3-tap convolutions with ReLU that reduce
//! them to one 128-vector. An LSTM then runs over the windows in order, carrying its
//! state from window to window, and a linear layer with a sigmoid gives the probability.
//! Everything before the LSTM's recurrence runs as matrix products over a batch of windows
//! (the transform, the convolutions as im2col, the LSTM's input projection); only the
//! recurrent half of the LSTM, 65 k multiply-adds a window, runs window by window.

use std::path::Path;

use tessera_kernels::dense::{Epilogue, WeightLayout};

use crate::onnx::OnnxWeights;
use crate::{Error, Result};

/// Samples a window adds.
pub const WINDOW: usize = 512;
/// Samples before a window that it sees as context.
pub const CONTEXT: usize = 64;
/// The only rate the model is for.
pub const SAMPLE_RATE: u32 = 16_000;

const ROW: usize = CONTEXT + WINDOW;
const PAD: usize = 128;
const PADDED: usize = ROW + 2 * PAD;
const FFT: usize = 256;
const HOP: usize = 128;
const BINS: usize = FFT / 2 + 1;
/// STFT frames of a padded row; the first is dropped.
const FRAMES: usize = (PADDED - FFT) / HOP + 1;
const HIDDEN: usize = 128;

/// A 1-D convolution of kernel 3 and padding 1, computed as a matrix product over the
/// windows of a batch (im2col).
struct Conv3 {
    /// `[out][3][in]`: the checkpoint's `[out][in][3]` with taps outermost, to match the
    /// im2col rows.
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
    stride: usize,
}

impl Conv3 {
    fn load(w: &OnnxWeights, name: &str, inputs: usize, outputs: usize, stride: usize) -> Result<Self> {
        let raw = w.tensor(&format!("{name}.weight"), &[outputs, inputs, 3])?;
        let mut weight = vec![0f32; raw.len()];
        for o in 0..outputs {
            for i in 0..inputs {
                for k in 0..3 {
                    weight[(o * 3 + k) * inputs + i] = raw[(o * inputs + i) * 3 + k];
                }
            }
        }
        Ok(Conv3 {
            weight,
            bias: w.tensor(&format!("{name}.bias"), &[outputs])?.to_vec(),
            inputs,
            outputs,
            stride,
        })
    }

    /// `x` is `[windows][len][inputs]` (time-major); returns `[windows][len'][outputs]`
    /// after ReLU, and `len'`.
    fn forward_relu(&self, x: &[f32], windows: usize, len: usize) -> Result<(Vec<f32>, usize)> {
        let out_len = (len + 2 - 3) / self.stride + 1;
        let c = self.inputs;
        let mut cols = vec![0f32; windows * out_len * 3 * c];
        for w in 0..windows {
            for t in 0..out_len {
                let row = &mut cols[(w * out_len + t) * 3 * c..][..3 * c];
                for k in 0..3 {
                    // Input position t * stride + k - 1; zero padding outside.
                    if let Some(p) = (t * self.stride + k).checked_sub(1).filter(|&p| p < len) {
                        row[k * c..(k + 1) * c].copy_from_slice(&x[(w * len + p) * c..][..c]);
                    }
                }
            }
        }
        let mut out = tessera_kernels::dense::linear_f32(
            &cols,
            windows * out_len,
            3 * c,
            &self.weight,
            self.outputs,
            WeightLayout::OutIn,
            Some(&self.bias),
            Epilogue::None,
        )?;
        out.iter_mut().for_each(|v| *v = v.max(0.0));
        Ok((out, out_len))
    }
}

/// The model's weights.
pub struct SileroVad {
    /// `[2 * BINS][FFT]`: real parts, then imaginary parts.
    basis: Vec<f32>,
    convs: [Conv3; 4],
    /// LSTM input and recurrent weights `[4 * HIDDEN][HIDDEN]`, gates in ONNX's order
    /// (input, output, forget, cell), and the two biases summed.
    w_input: Vec<f32>,
    w_hidden: Vec<f32>,
    bias: Vec<f32>,
    out_weight: Vec<f32>,
    out_bias: f32,
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroVad").finish_non_exhaustive()
    }
}

/// What carries from one window to the next: the LSTM's state and the context samples.
#[derive(Clone, Debug)]
pub struct VadState {
    h: Vec<f32>,
    c: Vec<f32>,
    context: Vec<f32>,
}

impl Default for VadState {
    fn default() -> Self {
        VadState {
            h: vec![0.0; HIDDEN],
            c: vec![0.0; HIDDEN],
            context: vec![0.0; CONTEXT],
        }
    }
}

/// `Σ a·b` in 16 independent lanes, which the compiler vectorises (one running sum is a
/// dependency chain it may not reorder).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

impl SileroVad {
    /// Loads `silero_vad_v6.onnx` (faster-whisper's).
    pub fn load(path: &Path) -> Result<Self> {
        let w = OnnxWeights::open(path)?;
        let lstm = |name: &str, dims: &[usize]| -> Result<Vec<f32>> {
            w.tensor(name, dims).map(<[f32]>::to_vec).map_err(|e| {
                Error::format(
                    path,
                    format!("{e}; not Silero VAD v6 as faster-whisper ships it (silero_vad_v6.onnx)"),
                )
            })
        };
        let w_input = lstm("onnx::LSTM_209", &[1, 4 * HIDDEN, HIDDEN])?;
        let w_hidden = lstm("onnx::LSTM_210", &[1, 4 * HIDDEN, HIDDEN])?;
        let biases = lstm("onnx::LSTM_211", &[1, 8 * HIDDEN])?;
        let bias = (0..4 * HIDDEN).map(|i| biases[i] + biases[4 * HIDDEN + i]).collect();
        Ok(SileroVad {
            basis: w
                .tensor("encoder.feature_extractor.forward_basis_buffer", &[2 * BINS, 1, FFT])?
                .to_vec(),
            convs: [
                Conv3::load(&w, "encoder.conv_layers.0", BINS, 128, 1)?,
                Conv3::load(&w, "encoder.conv_layers.1", 128, 64, 2)?,
                Conv3::load(&w, "encoder.conv_layers.2", 64, 64, 2)?,
                Conv3::load(&w, "encoder.conv_layers.3", 64, HIDDEN, 1)?,
            ],
            w_input,
            w_hidden,
            bias,
            out_weight: w.tensor("decoder.conv1d.weight", &[1, HIDDEN, 1])?.to_vec(),
            out_bias: w.tensor("decoder.conv1d.bias", &[1])?[0],
        })
    }

    /// The LSTM's input projections (`W x + b`, `[windows][4 * HIDDEN]`) of `rows`
    /// (`[windows][ROW]`: each window with its context), which do not depend on other
    /// windows.
    fn encode(&self, rows: &[f32], windows: usize) -> Result<Vec<f32>> {
        let frames = FRAMES - 1;
        // Frames 1.. of every reflect-padded row (the edge sample is not repeated).
        let mut x = vec![0f32; windows * frames * FFT];
        let mut padded = [0f32; PADDED];
        for w in 0..windows {
            let row = &rows[w * ROW..][..ROW];
            for (i, p) in padded.iter_mut().enumerate() {
                *p = if i < PAD {
                    row[PAD - i]
                } else if i < PAD + ROW {
                    row[i - PAD]
                } else {
                    row[2 * ROW - 2 - (i - PAD)]
                };
            }
            for t in 0..frames {
                x[(w * frames + t) * FFT..][..FFT].copy_from_slice(&padded[(t + 1) * HOP..][..FFT]);
            }
        }
        let spectrum = tessera_kernels::dense::linear_f32(
            &x,
            windows * frames,
            FFT,
            &self.basis,
            2 * BINS,
            WeightLayout::OutIn,
            None,
            Epilogue::None,
        )?;
        // Magnitudes, `[windows][frames][BINS]`.
        let mut act: Vec<f32> = spectrum
            .chunks_exact(2 * BINS)
            .flat_map(|s| (0..BINS).map(move |b| (s[b] * s[b] + s[BINS + b] * s[BINS + b]).sqrt()))
            .collect();
        let mut len = frames;
        for conv in &self.convs {
            (act, len) = conv.forward_relu(&act, windows, len)?;
        }
        debug_assert_eq!(len, 1);
        Ok(tessera_kernels::dense::linear_f32(
            &act,
            windows,
            HIDDEN,
            &self.w_input,
            4 * HIDDEN,
            WeightLayout::OutIn,
            Some(&self.bias),
            Epilogue::None,
        )?)
    }

    /// One LSTM step from a window's input projection; returns its speech probability.
    fn step(&self, state: &mut VadState, projected: &[f32]) -> f32 {
        let mut gates = [0f32; 4 * HIDDEN];
        for (g, gate) in gates.iter_mut().enumerate() {
            *gate = projected[g] + dot(&self.w_hidden[g * HIDDEN..][..HIDDEN], &state.h);
        }
        let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
        for j in 0..HIDDEN {
            let input = sigmoid(gates[j]);
            let output = sigmoid(gates[HIDDEN + j]);
            let forget = sigmoid(gates[2 * HIDDEN + j]);
            let cell = gates[3 * HIDDEN + j].tanh();
            state.c[j] = forget * state.c[j] + input * cell;
            state.h[j] = output * state.c[j].tanh();
        }
        let relu_h: Vec<f32> = state.h.iter().map(|h| h.max(0.0)).collect();
        sigmoid(self.out_bias + dot(&self.out_weight, &relu_h))
    }

    /// The speech probability of each whole window of `samples` (16 kHz; a multiple of
    /// [`WINDOW`] long), continuing from `state` and leaving it ready for the next call.
    pub fn probabilities(&self, state: &mut VadState, samples: &[f32]) -> Result<Vec<f32>> {
        if !samples.len().is_multiple_of(WINDOW) {
            return Err(Error::InvalidInput(format!(
                "the voice activity detector takes whole windows of {WINDOW} samples, not {}",
                samples.len()
            )));
        }
        let windows = samples.len() / WINDOW;
        if windows == 0 {
            return Ok(Vec::new());
        }
        let mut rows = Vec::with_capacity(windows * ROW);
        for i in 0..windows {
            if i == 0 {
                rows.extend_from_slice(&state.context);
            } else {
                rows.extend_from_slice(&samples[i * WINDOW - CONTEXT..i * WINDOW]);
            }
            rows.extend_from_slice(&samples[i * WINDOW..(i + 1) * WINDOW]);
        }
        let projected = self.encode(&rows, windows)?;
        let probs = projected
            .chunks_exact(4 * HIDDEN)
            .map(|p| self.step(state, p))
            .collect();
        state.context.copy_from_slice(&samples[samples.len() - CONTEXT..]);
        Ok(probs)
    }
}
