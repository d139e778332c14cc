//! A file's spectrogram as transcription reads it, 30-second windows going forward
//! ([`MelSource`]), held whole in memory or streamed.
//!
//! Whisper clamps the log-mel spectrogram at 8 below its maximum over the whole file, so no
//! window is known before all of the audio has been seen. A short file is decoded once and
//! its whole spectrogram computed ([`Mel`]). A long one ([`MelStream`]) is decoded twice: a
//! first pass computes every frame only for the maximum and the length, and the second
//! computes frames again as the windows advance, keeping only the samples the next frames
//! need and the frames not yet read. A 3-hour file then takes a few windows of memory
//! instead of 691 MB of samples and 345 MB of spectrogram, for the cost of decoding and
//! transforming it twice (a few percent of transcribing it). Both give the same values to
//! the bit: the frames are computed by the same code from the same samples.

use std::path::{Path, PathBuf};

use crate::decode::{AudioStream, Progress, STREAM_CHUNK, SampleReader};
use crate::error::{Error, Result};
use crate::mel::{Mel, MelSpectrogram, Signal};
use crate::{HOP_LENGTH, N_FFT, N_SAMPLES};

/// Frames computed per block by a streamed spectrogram.
const BLOCK: usize = 1024;

/// Samples at the start of the audio that the first frames reflect (`torch.stft` with
/// `center=True` pads with `N_FFT / 2` reflected samples).
const HEAD: usize = N_FFT / 2 + 1;

/// Files up to this long are decoded into memory once; longer ones are streamed twice
/// (their first ten minutes three times: reading stops at the limit, then both passes
/// start over). Ten minutes is 38 MB of samples and 19 MB of spectrogram.
pub const IN_MEMORY_SAMPLES: usize = 600 * crate::SAMPLE_RATE as usize;

/// A padded log-mel spectrogram (openai's `log_mel_spectrogram(audio, padding=N_SAMPLES)`)
/// read window by window.
pub trait MelSource {
    fn n_mels(&self) -> usize;
    /// Frames, the 30 s of padding included.
    fn n_frames(&self) -> usize;
    /// Frames that cover the audio itself.
    fn content_frames(&self) -> usize;
    /// The smallest value of the spectrogram: what silence comes to after the clamp.
    fn floor(&self) -> f32;
    /// As [`Mel::segment`]: frames `start .. start + size` zero-padded to `len`, row-major
    /// `[n_mels][len]`. A streamed spectrogram only goes forward: `start` must not be
    /// before an earlier call's.
    fn segment(&mut self, start: usize, size: usize, len: usize) -> Result<Vec<f32>>;
}

impl MelSource for &Mel {
    fn n_mels(&self) -> usize {
        self.n_mels
    }

    fn n_frames(&self) -> usize {
        self.n_frames
    }

    fn content_frames(&self) -> usize {
        self.content_frames
    }

    fn floor(&self) -> f32 {
        self.data.iter().copied().fold(f32::INFINITY, f32::min)
    }

    fn segment(&mut self, start: usize, size: usize, len: usize) -> Result<Vec<f32>> {
        Ok(Mel::segment(self, start, size, len))
    }
}

/// The spectrogram of an audio file, whole or streamed (see the module's documentation).
#[derive(Debug)]
pub enum Spectrogram<'m> {
    InMemory(Mel),
    /// Boxed: the stream's state is much larger than a `Mel`'s.
    Streamed(Box<MelStream<'m>>),
}

/// Opens a fresh [`SampleReader`] at the start of the audio: a streamed spectrogram reads
/// its audio more than once.
pub type OpenSamples<'a> = dyn Fn() -> Result<Box<dyn SampleReader>> + 'a;

impl Spectrogram<'_> {
    /// Decodes `path` and computes its padded spectrogram: in memory when the audio has at
    /// most `in_memory_samples` samples at 16 kHz ([`IN_MEMORY_SAMPLES`] for the CLI) or
    /// cannot be read twice (a pipe), streamed otherwise. `progress` sees the decoding (the first pass when streamed).
    pub fn open<'m>(
        mel: &'m MelSpectrogram,
        path: &Path,
        in_memory_samples: usize,
        progress: impl FnMut(Progress),
    ) -> Result<Spectrogram<'m>> {
        let open = || -> Result<Box<dyn SampleReader>> { Ok(Box::new(AudioStream::open(path)?)) };
        Self::open_samples(mel, path, &open, in_memory_samples, progress)
    }

    /// [`Spectrogram::open`] over the samples `open` reads (all of `path`'s, or only some:
    /// its speech).
    pub fn open_samples<'m>(
        mel: &'m MelSpectrogram,
        path: &Path,
        open: &OpenSamples<'_>,
        in_memory_samples: usize,
        mut progress: impl FnMut(Progress),
    ) -> Result<Spectrogram<'m>> {
        let mut stream = open()?;
        // A pipe cannot be read twice: it is held whole, whatever its length.
        let limit = if stream.rereadable() {
            in_memory_samples
        } else {
            usize::MAX
        };
        let mut samples = Vec::new();
        let mut warned = false;
        loop {
            let chunk = stream.read_samples(STREAM_CHUNK)?;
            if chunk.is_empty() {
                progress(stream.progress());
                return Ok(Spectrogram::InMemory(mel.compute_padded(&samples)));
            }
            samples.extend_from_slice(&chunk);
            progress(stream.progress());
            if samples.len() > limit {
                break;
            }
            if !warned && samples.len() > in_memory_samples {
                warned = true;
                tracing::warn!(
                    file = %path.display(),
                    "long audio from a pipe: held in memory (a regular file would be streamed)"
                );
            }
        }
        drop((samples, stream));
        tracing::debug!(file = %path.display(), "long audio: streaming its spectrogram in two passes");
        Ok(Spectrogram::Streamed(Box::new(MelStream::open_samples(
            mel, path, open, progress,
        )?)))
    }
}

impl MelSource for Spectrogram<'_> {
    fn n_mels(&self) -> usize {
        match self {
            Spectrogram::InMemory(m) => m.n_mels,
            Spectrogram::Streamed(s) => s.n_mels(),
        }
    }

    fn n_frames(&self) -> usize {
        match self {
            Spectrogram::InMemory(m) => m.n_frames,
            Spectrogram::Streamed(s) => s.n_frames(),
        }
    }

    fn content_frames(&self) -> usize {
        match self {
            Spectrogram::InMemory(m) => m.content_frames,
            Spectrogram::Streamed(s) => s.content_frames(),
        }
    }

    fn floor(&self) -> f32 {
        match self {
            Spectrogram::InMemory(m) => (&m).floor(),
            Spectrogram::Streamed(s) => s.floor(),
        }
    }

    fn segment(&mut self, start: usize, size: usize, len: usize) -> Result<Vec<f32>> {
        match self {
            Spectrogram::InMemory(m) => Ok(m.segment(start, size, len)),
            Spectrogram::Streamed(s) => s.segment(start, size, len),
        }
    }
}

/// The raw log-mel frames (`log10` of the mel energies, before the clamp) of a file, block
/// by block, holding only the samples the next frames need.
struct FrameStream<'m> {
    mel: &'m MelSpectrogram,
    stream: Box<dyn SampleReader>,
    head: Vec<f32>,
    /// Samples from index `offset` of the audio on.
    samples: Vec<f32>,
    offset: usize,
    /// The number of samples, once the audio has ended.
    total: Option<usize>,
    /// The next frame to compute.
    next: usize,
}

impl<'m> FrameStream<'m> {
    fn open(mel: &'m MelSpectrogram, open: &OpenSamples<'_>) -> Result<Self> {
        Ok(FrameStream {
            mel,
            stream: open()?,
            head: Vec::with_capacity(HEAD),
            samples: Vec::new(),
            offset: 0,
            total: None,
            next: 0,
        })
    }

    /// Frames of the padded spectrogram, once the length is known.
    fn n_frames(&self) -> Option<usize> {
        self.total.map(|t| (t + N_SAMPLES) / HOP_LENGTH)
    }

    /// The next up to `count` frames, frame-major into `out` (resized); returns how many
    /// (0 at the end) and their maximum.
    fn next_block(&mut self, count: usize, out: &mut Vec<f32>) -> Result<(usize, f32)> {
        let first = self.next;
        // Frame t reads samples t * HOP - N_FFT / 2 .. t * HOP + N_FFT / 2.
        let needed = (first + count.max(1) - 1) * HOP_LENGTH + N_FFT / 2;
        while self.total.is_none() && self.offset + self.samples.len() < needed {
            let chunk = self.stream.read_samples(STREAM_CHUNK)?;
            if chunk.is_empty() {
                self.total = Some(self.offset + self.samples.len());
                break;
            }
            if self.head.len() < HEAD {
                let take = (HEAD - self.head.len()).min(chunk.len());
                self.head.extend_from_slice(&chunk[..take]);
            }
            self.samples.extend_from_slice(&chunk);
        }
        let (count, len) = match (self.total, self.n_frames()) {
            (Some(total), Some(n)) => (count.min(n.saturating_sub(first)), total + N_SAMPLES),
            // Before the end only the reflection at the start matters: any length past the
            // frames' reach gives the same samples.
            _ => (count, 1 << 40),
        };
        out.resize(count * self.mel.n_mels(), 0.0);
        if count == 0 {
            return Ok((0, f32::NEG_INFINITY));
        }
        let signal = Signal {
            samples: &self.samples,
            offset: self.offset,
            head: &self.head,
            len,
        };
        let max = self.mel.frames(&signal, first, out);
        self.next = first + count;
        let keep_from = (self.next * HOP_LENGTH).saturating_sub(N_FFT / 2);
        if keep_from > self.offset {
            let drop = (keep_from - self.offset).min(self.samples.len());
            self.samples.drain(..drop);
            self.offset += drop;
        }
        Ok((count, max))
    }
}

/// A padded spectrogram computed from its file as the windows advance (see the module's
/// documentation).
pub struct MelStream<'m> {
    path: PathBuf,
    frames: FrameStream<'m>,
    n_mels: usize,
    n_frames: usize,
    content_frames: usize,
    /// Samples the first pass counted (the second must count the same).
    total: usize,
    /// The clamp: 8 below the maximum.
    clamp: f32,
    floor: f32,
    /// Normalised frames from frame `first` on, frame-major.
    buffered: Vec<f32>,
    first: usize,
    block: Vec<f32>,
}

impl std::fmt::Debug for MelStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelStream")
            .field("path", &self.path)
            .field("n_frames", &self.n_frames)
            .field("first", &self.first)
            .finish_non_exhaustive()
    }
}

impl<'m> MelStream<'m> {
    /// Runs the first pass over `path` (reporting its progress) and readies the second.
    pub fn open(mel: &'m MelSpectrogram, path: &Path, progress: impl FnMut(Progress)) -> Result<Self> {
        let open = || -> Result<Box<dyn SampleReader>> { Ok(Box::new(AudioStream::open(path)?)) };
        Self::open_samples(mel, path, &open, progress)
    }

    /// [`MelStream::open`] over the samples `open` reads; `path` names them.
    pub fn open_samples(
        mel: &'m MelSpectrogram,
        path: &Path,
        open: &OpenSamples<'_>,
        mut progress: impl FnMut(Progress),
    ) -> Result<Self> {
        let mut pass = FrameStream::open(mel, open)?;
        let (mut max, mut min) = (f32::NEG_INFINITY, f32::INFINITY);
        let mut block = Vec::new();
        loop {
            let (count, block_max) = pass.next_block(BLOCK, &mut block)?;
            if count == 0 {
                break;
            }
            max = max.max(block_max);
            min = block.iter().copied().fold(min, f32::min);
            progress(pass.stream.progress());
        }
        let total = pass.total.expect("the first pass read to the end");
        let n_frames = pass.n_frames().expect("the length is known at the end");
        let clamp = max - 8.0;
        Ok(MelStream {
            path: path.to_path_buf(),
            frames: FrameStream::open(mel, open)?,
            n_mels: mel.n_mels(),
            n_frames,
            content_frames: n_frames.saturating_sub(N_SAMPLES / HOP_LENGTH),
            total,
            clamp,
            floor: (min.max(clamp) + 4.0) / 4.0,
            buffered: Vec::new(),
            first: 0,
            block,
        })
    }

    fn buffered_frames(&self) -> usize {
        self.buffered.len() / self.n_mels
    }

    /// Drops the buffered frames before `frame`.
    fn forget_before(&mut self, frame: usize) {
        let drop = frame.saturating_sub(self.first).min(self.buffered_frames());
        self.buffered.drain(..drop * self.n_mels);
        self.first += drop;
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    pub fn n_frames(&self) -> usize {
        self.n_frames
    }

    pub fn content_frames(&self) -> usize {
        self.content_frames
    }

    pub fn floor(&self) -> f32 {
        self.floor
    }

    /// See [`MelSource::segment`].
    pub fn segment(&mut self, start: usize, size: usize, len: usize) -> Result<Vec<f32>> {
        if start < self.first {
            return Err(Error::InvalidInput(format!(
                "{}: a streamed spectrogram only goes forward: frame {start} was asked for after frame {}",
                self.path.display(),
                self.first
            )));
        }
        let end = start.saturating_add(size.min(len)).min(self.n_frames);
        self.forget_before(start);
        while self.first + self.buffered_frames() < end {
            let (count, _) = self.frames.next_block(BLOCK, &mut self.block)?;
            if count == 0 || self.frames.total.is_some_and(|t| t != self.total) {
                return Err(Error::corrupt(
                    &self.path,
                    "the file changed while it was being read (its length differs between two reads)",
                ));
            }
            let clamp = self.clamp;
            self.buffered
                .extend(self.block.iter().map(|&x| (x.max(clamp) + 4.0) / 4.0));
            self.forget_before(start);
        }
        let begin = start.min(end);
        let mut out = vec![0f32; self.n_mels * len];
        let n_mels = self.n_mels;
        for (i, frame) in self.buffered.chunks_exact(n_mels).take(end - begin).enumerate() {
            for (m, &x) in frame.iter().enumerate() {
                out[m * len + i] = x;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAV file of `samples` (16-bit) at `rate`.
    fn wav(dir: &Path, name: &str, rate: u32, samples: &[f32]) -> PathBuf {
        let data: Vec<u8> = samples
            .iter()
            .flat_map(|&x| ((x.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
            .collect();
        let mut bytes = Vec::new();
        bytes.extend(b"RIFF");
        bytes.extend((36 + data.len() as u32).to_le_bytes());
        bytes.extend(b"WAVEfmt ");
        bytes.extend(16u32.to_le_bytes());
        bytes.extend(1u16.to_le_bytes());
        bytes.extend(1u16.to_le_bytes());
        bytes.extend(rate.to_le_bytes());
        bytes.extend((rate * 2).to_le_bytes());
        bytes.extend(2u16.to_le_bytes());
        bytes.extend(16u16.to_le_bytes());
        bytes.extend(b"data");
        bytes.extend((data.len() as u32).to_le_bytes());
        bytes.extend(data);
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn chirp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                0.5 * (2.0 * std::f32::consts::PI * (200.0 + 300.0 * t) * t).sin() * (1.0 + (3.0 * t).sin()) / 2.0
            })
            .collect()
    }

    #[test]
    fn streamed_windows_equal_the_whole_spectrogram_to_the_bit() {
        let dir = tempfile::tempdir().unwrap();
        let mel = MelSpectrogram::new(80).unwrap();
        // Lengths around the block and window boundaries, and shorter than the reflection.
        for n in [0usize, 1, 150, 201, 16_000, 160 * BLOCK + 37, 47 * 16_000 + 123] {
            let path = wav(dir.path(), &format!("{n}.wav"), 16_000, &chirp(n));
            let whole = mel.compute_padded(&crate::load_audio(&path).unwrap());
            let mut streamed = MelStream::open(&mel, &path, |_| {}).unwrap();
            assert_eq!(streamed.n_frames(), whole.n_frames, "{n} samples");
            assert_eq!(streamed.content_frames(), whole.content_frames, "{n} samples");
            assert_eq!(streamed.floor(), (&whole).floor(), "{n} samples");
            // Language detection's first window, then windows that seek as transcription does.
            let mut starts = vec![(0, 3000)];
            let mut seek = 0;
            while seek < whole.content_frames {
                let size = 3000.min(whole.content_frames - seek);
                starts.push((seek, size));
                seek += 1234.min(size);
            }
            for (start, size) in starts {
                assert_eq!(
                    streamed.segment(start, size, 3000).unwrap(),
                    whole.segment(start, size, 3000),
                    "{n} samples, window at {start}"
                );
            }
            // Going back is refused, not answered wrongly.
            if whole.content_frames > 3000 {
                let err = streamed.segment(0, 10, 10).unwrap_err().to_string();
                assert!(
                    err.contains("only goes forward") && err.contains(&format!("{n}.wav")),
                    "{err}"
                );
            }
        }
    }

    #[test]
    fn resampled_audio_streams_the_same_as_it_loads() {
        // 44.1 kHz through the resampler, long enough for several blocks.
        let dir = tempfile::tempdir().unwrap();
        let mel = MelSpectrogram::new(128).unwrap();
        let samples: Vec<f32> = (0..44_100 * 20)
            .map(|i| (i as f32 * 0.031).sin() * 0.3 + (i as f32 * 0.0007).cos() * 0.2)
            .collect();
        let path = wav(dir.path(), "a.wav", 44_100, &samples);
        let whole = mel.compute_padded(&crate::load_audio(&path).unwrap());
        let mut streamed = MelStream::open(&mel, &path, |_| {}).unwrap();
        assert_eq!(
            streamed.segment(500, 3000, 3000).unwrap(),
            whole.segment(500, 3000, 3000)
        );
    }

    #[test]
    fn short_files_stay_in_memory_and_long_ones_stream() {
        let dir = tempfile::tempdir().unwrap();
        let mel = MelSpectrogram::new(80).unwrap();
        let path = wav(dir.path(), "a.wav", 16_000, &chirp(40_000));
        let mut counted = 0;
        let s = Spectrogram::open(&mel, &path, 40_000, |_| counted += 1).unwrap();
        assert!(matches!(s, Spectrogram::InMemory(_)));
        assert!(counted > 0);
        let mut s = Spectrogram::open(&mel, &path, 39_999, |_| {}).unwrap();
        assert!(matches!(s, Spectrogram::Streamed(_)));
        let whole = mel.compute_padded(&crate::load_audio(&path).unwrap());
        assert_eq!(s.content_frames(), whole.content_frames);
        assert_eq!(s.segment(0, 250, 3000).unwrap(), whole.segment(0, 250, 3000));
    }
}
