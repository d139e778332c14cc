//! Streaming conversion of mono audio at any sample rate to 16 kHz: a band-limited FFT
//! resampler (rubato's `Fft`, anti-aliasing filter included) fed in chunks, with its start-up
//! delay trimmed so output sample `k` is input time `k / 16000` s, and an exact output
//! length of `ceil(n_in * 16000 / rate)` samples once the stream is finished.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler as _};

use crate::SAMPLE_RATE;

/// Input frames per FFT block, as a hint: rubato rounds it to a multiple of the smallest
/// block the rate pair allows (441 frames for 44.1 kHz). Longer blocks mean a longer
/// anti-aliasing filter (a sharper cutoff) and more delay, which is trimmed anyway.
const BLOCK: usize = 1024;
/// Blocks per chunk handed to rubato at once.
const BLOCKS_PER_CHUNK: usize = 4;
/// Rates accepted. Below 1 kHz nothing intelligible is left, and rubato's chunks (a
/// minimum block times 16000 / rate) would grow large; 768 kHz is the highest rate in use.
const MIN_RATE: u32 = 1_000;
const MAX_RATE: u32 = 768_000;

/// Resamples one mono stream to [`SAMPLE_RATE`]. Audio already at 16 kHz passes through
/// untouched.
pub(crate) struct Resampler {
    rate: u32,
    fft: Option<Fft<f32>>,
    /// Input not yet handed to rubato (less than one chunk).
    input: Vec<f32>,
    /// rubato's output scratch, one chunk long.
    scratch: Vec<f32>,
    /// Output frames still to drop at the start (rubato's delay).
    delay_left: usize,
    frames_in: u64,
    frames_out: u64,
}

impl Resampler {
    /// A resampler from `rate` Hz; `Err` names the problem when rubato refuses the rate.
    pub(crate) fn new(rate: u32) -> Result<Self, String> {
        if !(MIN_RATE..=MAX_RATE).contains(&rate) {
            return Err(format!(
                "sample rate {rate} Hz is outside {MIN_RATE} Hz ..= {MAX_RATE} Hz"
            ));
        }
        let fft = if rate == SAMPLE_RATE {
            None
        } else {
            // rubato's FFT blocks are whole multiples of the smallest block the rate pair
            // allows (`rate / gcd` input frames, `16000 / gcd` output frames). An odd block on
            // either side shifts the output by half a sample of that side (the window is
            // centred between two samples), so take an even multiple: both sides are even.
            let min_block = rate as usize / gcd(rate as usize, SAMPLE_RATE as usize);
            let multiple = BLOCK.div_ceil(min_block).next_multiple_of(2);
            let block = multiple * min_block;
            let fft = Fft::<f32>::new_custom(
                rate as usize,
                SAMPLE_RATE as usize,
                block * BLOCKS_PER_CHUNK,
                BLOCKS_PER_CHUNK,
                1,
                rubato::WindowFunction::BlackmanHarris2,
                FixedSync::Input,
            )
            .map_err(|e| format!("cannot resample {rate} Hz to {SAMPLE_RATE} Hz: {e}"))?;
            Some(fft)
        };
        let (delay_left, scratch) = match &fft {
            Some(f) => (f.output_delay(), vec![0.0; f.output_frames_max()]),
            None => (0, Vec::new()),
        };
        Ok(Resampler {
            rate,
            fft,
            input: Vec::new(),
            scratch,
            delay_left,
            frames_in: 0,
            frames_out: 0,
        })
    }

    /// The input sample rate.
    pub(crate) fn rate(&self) -> u32 {
        self.rate
    }

    /// Feeds `samples` and appends whatever 16 kHz output is ready to `out`.
    pub(crate) fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) {
        self.frames_in += samples.len() as u64;
        let Some(fft) = &mut self.fft else {
            out.extend_from_slice(samples);
            self.frames_out += samples.len() as u64;
            return;
        };
        let need = fft.input_frames_next();
        let mut rest = samples;
        // Whole chunks straight from `samples`, once any carried-over input is completed.
        if !self.input.is_empty() {
            let take = (need - self.input.len()).min(rest.len());
            self.input.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.input.len() < need {
                return;
            }
            let chunk = std::mem::take(&mut self.input);
            self.process(&chunk, None, out);
            self.input = chunk;
            self.input.clear();
        }
        while rest.len() >= need {
            let (chunk, tail) = rest.split_at(need);
            self.process(chunk, None, out);
            rest = tail;
        }
        self.input.extend_from_slice(rest);
    }

    /// Ends the stream: flushes what rubato still holds and appends the remaining output, so
    /// that in total exactly `ceil(n_in * 16000 / rate)` samples came out.
    pub(crate) fn finish(&mut self, out: &mut Vec<f32>) {
        if self.fft.is_none() {
            return;
        }
        let expected = (self.frames_in * SAMPLE_RATE as u64).div_ceil(self.rate as u64);
        let chunk = std::mem::take(&mut self.input);
        let mut partial = Some(chunk.len());
        // The first call takes the carried-over input; later ones feed silence
        // (`partial_len` 0) until the delayed tail of the signal has come out.
        while self.frames_out < expected {
            let before = out.len();
            let len = partial.take().unwrap_or(0);
            let mut padded = chunk[..len].to_vec();
            let need = self.fft.as_ref().map_or(0, |f| f.input_frames_next());
            padded.resize(need.max(len), 0.0);
            self.process(&padded, Some(len), out);
            if out.len() == before && len == 0 && self.delay_left == 0 {
                // rubato produced nothing from a silent chunk: nothing more will come.
                break;
            }
        }
        let excess = self.frames_out.saturating_sub(expected) as usize;
        out.truncate(out.len() - excess.min(out.len()));
        self.frames_out -= excess as u64;
    }

    /// One rubato call on a full-size `chunk` (`partial` of it real input), then the start-up
    /// delay trimmed off what came out.
    fn process(&mut self, chunk: &[f32], partial: Option<usize>, out: &mut Vec<f32>) {
        let Some(fft) = &mut self.fft else { return };
        let frames = chunk.len();
        // Both adapters are sized from the slices themselves, so they cannot be refused;
        // rubato checks the lengths again and reports nothing else for one channel.
        let input = InterleavedSlice::new(chunk, 1, frames).expect("one channel, sized from the slice");
        let out_len = self.scratch.len();
        let mut output =
            InterleavedSlice::new_mut(&mut self.scratch, 1, out_len).expect("one channel, sized from the slice");
        let indexing = partial.map(|p| Indexing::new().partial_len(p));
        let (_, produced) = fft
            .process_into_buffer(&input, &mut output, indexing.as_ref())
            .expect("chunk and scratch sizes come from the resampler itself");
        let skip = self.delay_left.min(produced);
        self.delay_left -= skip;
        out.extend_from_slice(&self.scratch[skip..produced]);
        self.frames_out += (produced - skip) as u64;
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, freq: f64, seconds: f64) -> Vec<f32> {
        let n = (rate as f64 * seconds) as usize;
        (0..n)
            .map(|i| (0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as f32)
            .collect()
    }

    fn resample(rate: u32, input: &[f32], piece: usize) -> Vec<f32> {
        let mut r = Resampler::new(rate).unwrap();
        let mut out = Vec::new();
        for p in input.chunks(piece.max(1)) {
            r.push(p, &mut out);
        }
        r.finish(&mut out);
        out
    }

    #[test]
    fn output_length_is_exact_for_any_feeding() {
        for rate in [8_000, 11_025, 22_050, 44_100, 48_000, 96_000, 44_099] {
            for n in [0usize, 1, 7, 441, 1000, 12_345] {
                let input = vec![0.1f32; n];
                let expected = (n as u64 * 16_000).div_ceil(rate as u64) as usize;
                for piece in [1usize, 100, 5000] {
                    assert_eq!(
                        resample(rate, &input, piece).len(),
                        expected,
                        "rate {rate} n {n} piece {piece}"
                    );
                }
            }
        }
    }

    #[test]
    fn chunking_does_not_change_the_output() {
        let input = sine(44_100, 440.0, 0.5);
        let whole = resample(44_100, &input, input.len());
        let bits = resample(44_100, &input, 333);
        assert_eq!(whole, bits);
    }

    #[test]
    fn sixteen_khz_passes_through() {
        let input = sine(16_000, 440.0, 0.1);
        assert_eq!(resample(16_000, &input, 100), input);
    }

    #[test]
    fn delay_is_trimmed() {
        // A sine keeps its phase: compare with the ideal 16 kHz sine away from the ends.
        for rate in [
            8_000, 11_025, 12_000, 22_050, 44_100, 44_099, 48_000, 88_200, 96_000, 192_000,
        ] {
            let out = resample(rate, &sine(rate, 440.0, 1.0), 1000);
            let ideal = sine(16_000, 440.0, 1.0);
            let worst = (1000..15_000).map(|i| (out[i] - ideal[i]).abs()).fold(0.0f32, f32::max);
            assert!(worst < 2e-3, "rate {rate}: worst difference {worst}");
        }
    }

    #[test]
    fn impossible_rates_are_refused() {
        assert!(Resampler::new(0).is_err());
        assert!(Resampler::new(7).is_err());
        assert!(Resampler::new(10_000_000).is_err());
    }
}
