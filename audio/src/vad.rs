//! Voice activity detection before transcription, as faster-whisper's `vad_filter` does
//! it (`faster_whisper/vad.py` 1.2.1): Silero VAD's speech probability for every 32 ms
//! window ([`detect_speech`], one streamed pass over the file), speech chunks from those
//! probabilities with hysteresis, minimum durations and padding
//! ([`speech_timestamps`]), then only the chunks, joined, are transcribed
//! ([`SpeechOnly`]) and the transcript's times mapped back to the file's
//! ([`TimestampMap`], [`restore_timestamps`]). Long silences and music then cost nothing
//! and cannot start Whisper's hallucination loops.

use std::path::Path;

use tessera_models::silero_vad::{CONTEXT, SileroVad, VadState, WINDOW};

use crate::decode::{AudioStream, Progress, STREAM_CHUNK, SampleReader};
use crate::transcribe::Transcript;
use crate::{Result, SAMPLE_RATE};

/// faster-whisper's `VadOptions`, with its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct VadOptions {
    /// Windows at or above this probability are speech. Thresholds are f64 as Python's
    /// floats are; probabilities are compared with them rounded to f32, as numpy compares.
    pub threshold: f64,
    /// Speech ends only below this; `None`: `max(threshold - 0.15, 0.01)`.
    pub neg_threshold: Option<f64>,
    /// Chunks this short or shorter are dropped.
    pub min_speech_duration_ms: u32,
    /// Longer chunks are split, at a silence of more than 98 ms if there was one.
    pub max_speech_duration_s: f32,
    /// Silence shorter than this does not end a chunk.
    pub min_silence_duration_ms: u32,
    /// Chunks are widened by this much on each side (half the gap when chunks are closer).
    pub speech_pad_ms: u32,
}

impl Default for VadOptions {
    fn default() -> Self {
        VadOptions {
            threshold: 0.5,
            neg_threshold: None,
            min_speech_duration_ms: 0,
            max_speech_duration_s: f32::INFINITY,
            min_silence_duration_ms: 2000,
            speech_pad_ms: 400,
        }
    }
}

/// A stretch of speech: samples `start..end` of the 16 kHz audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpeechChunk {
    pub start: usize,
    pub end: usize,
}

/// The speech of a file: its chunks and its length in samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Speech {
    pub chunks: Vec<SpeechChunk>,
    pub total_samples: usize,
}

impl Speech {
    /// Samples inside the chunks.
    pub fn speech_samples(&self) -> usize {
        self.chunks.iter().map(|c| c.end - c.start).sum()
    }
}

/// Windows handed to the model at once: their features are computed in parallel.
const BATCH_WINDOWS: usize = 1024;

/// The speech probability of every window of `path`, as faster-whisper computes them: the
/// audio padded with zeros to a whole number of windows (a whole extra window when it
/// already is one, as `np.pad` there does), each window with the 64 samples before it.
/// Returns the probabilities and the number of samples.
pub fn speech_probabilities(vad: &SileroVad, path: &Path, progress: impl FnMut(Progress)) -> Result<(Vec<f32>, usize)> {
    let (probs, total, _) = probabilities_keeping(vad, path, 0, progress)?;
    Ok((probs, total))
}

/// [`speech_probabilities`], also returning the decoded samples when there are at most
/// `keep_up_to` of them.
fn probabilities_keeping(
    vad: &SileroVad,
    path: &Path,
    keep_up_to: usize,
    mut progress: impl FnMut(Progress),
) -> Result<(Vec<f32>, usize, Option<Vec<f32>>)> {
    let mut stream = AudioStream::open(path)?;
    let mut kept = Some(Vec::new());
    let mut state = VadState::default();
    let mut probs = Vec::new();
    let mut pending: Vec<f32> = Vec::new();
    let mut total = 0;
    loop {
        let chunk = stream.read_samples(STREAM_CHUNK)?;
        let ended = chunk.is_empty();
        total += chunk.len();
        if let Some(k) = &mut kept {
            if total <= keep_up_to {
                k.extend_from_slice(&chunk);
            } else {
                kept = None;
            }
        }
        pending.extend_from_slice(&chunk);
        let whole = if ended {
            // The last partial window, zero-padded; a full window of zeros if none. And
            // faster-whisper's context array is a view of the audio, so zeroing the first
            // window's context (`context[-1] = 0`, before its roll) zeroes the last 64
            // samples of the last window too.
            pending.resize((pending.len() / WINDOW + 1) * WINDOW, 0.0);
            let n = pending.len();
            pending[n - CONTEXT..].fill(0.0);
            n
        } else {
            (pending.len() / (WINDOW * BATCH_WINDOWS)) * WINDOW * BATCH_WINDOWS
        };
        if whole > 0 {
            probs.extend(vad.probabilities(&mut state, &pending[..whole])?);
            pending.drain(..whole);
        }
        progress(stream.progress());
        if ended {
            return Ok((probs, total, kept));
        }
    }
}

/// [`speech_probabilities`] then [`speech_timestamps`].
pub fn detect_speech(
    vad: &SileroVad,
    path: &Path,
    options: &VadOptions,
    progress: impl FnMut(Progress),
) -> Result<Speech> {
    Ok(detect_speech_keeping(vad, path, options, 0, progress)?.0)
}

/// [`detect_speech`], also returning the speech's samples, joined, when the file has at
/// most `keep_up_to` samples: a short file then needs no second read (which a pipe could
/// not give).
pub fn detect_speech_keeping(
    vad: &SileroVad,
    path: &Path,
    options: &VadOptions,
    keep_up_to: usize,
    progress: impl FnMut(Progress),
) -> Result<(Speech, Option<Vec<f32>>)> {
    let (probs, total, kept) = probabilities_keeping(vad, path, keep_up_to, progress)?;
    let speech = Speech {
        chunks: speech_timestamps(&probs, total, options),
        total_samples: total,
    };
    let joined = kept.map(|all| {
        speech
            .chunks
            .iter()
            .flat_map(|c| all[c.start..c.end].iter().copied())
            .collect()
    });
    Ok((speech, joined))
}

/// faster-whisper's `get_speech_timestamps` after the model: speech chunks from the
/// windows' probabilities (`audio_samples` long), step for step, with its float and
/// integer arithmetic.
pub fn speech_timestamps(probs: &[f32], audio_samples: usize, options: &VadOptions) -> Vec<SpeechChunk> {
    let sr = f64::from(SAMPLE_RATE);
    let window = WINDOW as i64;
    let threshold = options.threshold as f32;
    let neg_threshold = options.neg_threshold.unwrap_or((options.threshold - 0.15).max(0.01)) as f32;
    let min_speech_samples = sr * f64::from(options.min_speech_duration_ms) / 1000.0;
    let speech_pad_samples = sr * f64::from(options.speech_pad_ms) / 1000.0;
    let max_speech_samples = sr * f64::from(options.max_speech_duration_s) - window as f64 - 2.0 * speech_pad_samples;
    let min_silence_samples = sr * f64::from(options.min_silence_duration_ms) / 1000.0;
    let min_silence_samples_at_max_speech = sr * 98.0 / 1000.0;
    let audio_length = audio_samples as i64;

    let mut triggered = false;
    // (start, end) in samples; `current` is the open chunk.
    let mut speeches: Vec<(i64, i64)> = Vec::new();
    let mut current: Option<i64> = None;
    // Where speech may have ended (after some silence), and the split points kept for
    // chunks that reach the maximum length.
    let (mut temp_end, mut prev_end, mut next_start) = (0i64, 0i64, 0i64);
    let reset = |temp_end: &mut i64, prev_end: &mut i64, next_start: &mut i64| {
        (*temp_end, *prev_end, *next_start) = (0, 0, 0);
    };

    for (i, &prob) in probs.iter().enumerate() {
        let at = window * i as i64;
        if prob >= threshold && temp_end != 0 {
            temp_end = 0;
            if next_start < prev_end {
                next_start = at;
            }
        }
        if prob >= threshold && !triggered {
            triggered = true;
            current = Some(at);
            continue;
        }
        if triggered
            && let Some(start) = current
            && (at - start) as f64 > max_speech_samples
        {
            if prev_end != 0 {
                speeches.push((start, prev_end));
                current = None;
                // Silence was reached (below the low threshold) and speech has not resumed.
                if next_start < prev_end {
                    triggered = false;
                } else {
                    current = Some(next_start);
                }
                reset(&mut temp_end, &mut prev_end, &mut next_start);
            } else {
                speeches.push((start, at));
                current = None;
                reset(&mut temp_end, &mut prev_end, &mut next_start);
                triggered = false;
                continue;
            }
        }
        if prob < neg_threshold && triggered {
            if temp_end == 0 {
                temp_end = at;
            }
            // Avoid cutting at very short silences.
            if (at - temp_end) as f64 > min_silence_samples_at_max_speech {
                prev_end = temp_end;
            }
            if ((at - temp_end) as f64) < min_silence_samples {
                continue;
            }
            if let Some(start) = current
                && (temp_end - start) as f64 > min_speech_samples
            {
                speeches.push((start, temp_end));
            }
            current = None;
            reset(&mut temp_end, &mut prev_end, &mut next_start);
            triggered = false;
            continue;
        }
    }
    if let Some(start) = current
        && (audio_length - start) as f64 > min_speech_samples
    {
        speeches.push((start, audio_length));
    }

    // Padding: half the gap between chunks closer than two pads.
    let n = speeches.len();
    for i in 0..n {
        if i == 0 {
            speeches[0].0 = (speeches[0].0 as f64 - speech_pad_samples).max(0.0) as i64;
        }
        if i + 1 < n {
            let silence = speeches[i + 1].0 - speeches[i].1;
            if (silence as f64) < 2.0 * speech_pad_samples {
                speeches[i].1 += silence.div_euclid(2);
                speeches[i + 1].0 = (speeches[i + 1].0 - silence.div_euclid(2)).max(0);
            } else {
                speeches[i].1 = (audio_length as f64).min(speeches[i].1 as f64 + speech_pad_samples) as i64;
                speeches[i + 1].0 = (speeches[i + 1].0 as f64 - speech_pad_samples).max(0.0) as i64;
            }
        } else {
            speeches[i].1 = (audio_length as f64).min(speeches[i].1 as f64 + speech_pad_samples) as i64;
        }
    }
    speeches
        .into_iter()
        .map(|(start, end)| SpeechChunk {
            start: start.max(0) as usize,
            end: end.max(0) as usize,
        })
        .collect()
}

/// A file's samples with everything outside the speech chunks left out: what is
/// transcribed when the VAD filter is on.
pub struct SpeechOnly {
    stream: AudioStream,
    chunks: Vec<SpeechChunk>,
    /// Samples of the file read so far.
    position: usize,
}

impl SpeechOnly {
    pub fn open(path: &Path, chunks: &[SpeechChunk]) -> Result<Self> {
        Ok(SpeechOnly {
            stream: AudioStream::open(path)?,
            chunks: chunks.to_vec(),
            position: 0,
        })
    }
}

impl SampleReader for SpeechOnly {
    fn read_samples(&mut self, n: usize) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        while out.is_empty() {
            let chunk = self.stream.read_samples(n)?;
            if chunk.is_empty() {
                break;
            }
            let (from, to) = (self.position, self.position + chunk.len());
            for c in &self.chunks {
                let (start, end) = (c.start.max(from), c.end.min(to));
                if start < end {
                    out.extend_from_slice(&chunk[start - from..end - from]);
                }
            }
            self.position = to;
        }
        Ok(out)
    }

    fn progress(&self) -> Progress {
        self.stream.progress()
    }

    fn rereadable(&self) -> bool {
        self.stream.rereadable()
    }
}

/// faster-whisper's `SpeechTimestampsMap`: from a time in the joined speech back to the
/// file's time.
#[derive(Debug, Clone)]
pub struct TimestampMap {
    /// Where each chunk ends in the joined speech, in samples.
    chunk_end_sample: Vec<usize>,
    /// Seconds of silence left out before each chunk.
    total_silence_before: Vec<f64>,
}

impl TimestampMap {
    pub fn new(chunks: &[SpeechChunk]) -> Self {
        let (mut previous_end, mut silent) = (0usize, 0usize);
        let mut chunk_end_sample = Vec::with_capacity(chunks.len());
        let mut total_silence_before = Vec::with_capacity(chunks.len());
        for c in chunks {
            silent += c.start.saturating_sub(previous_end);
            previous_end = c.end;
            chunk_end_sample.push(c.end - silent);
            total_silence_before.push(silent as f64 / f64::from(SAMPLE_RATE));
        }
        TimestampMap {
            chunk_end_sample,
            total_silence_before,
        }
    }

    /// The chunk a time of the joined speech falls in (the one it ends, for an end time
    /// exactly at a chunk's end).
    pub fn chunk_index(&self, time: f32, is_end: bool) -> usize {
        let sample = (f64::from(time) * f64::from(SAMPLE_RATE)) as usize;
        if is_end && let Some(i) = self.chunk_end_sample.iter().position(|&e| e == sample) {
            return i;
        }
        let after = self.chunk_end_sample.partition_point(|&e| e <= sample);
        after.min(self.chunk_end_sample.len().saturating_sub(1))
    }

    /// The file's time of `time` in the joined speech, in `chunk` (else the chunk it falls
    /// in), rounded to 10 ms as faster-whisper rounds it.
    pub fn original_time(&self, time: f32, chunk: Option<usize>, is_end: bool) -> f32 {
        if self.chunk_end_sample.is_empty() {
            return time;
        }
        let chunk = chunk.unwrap_or_else(|| self.chunk_index(time, is_end));
        let t = self.total_silence_before[chunk] + f64::from(time);
        ((t * 100.0).round() / 100.0) as f32
    }
}

/// faster-whisper's `restore_speech_timestamps`: segment and word times of a transcript of
/// the joined speech, as times of the file. A word's start and end are mapped through the
/// chunk its middle falls in; a segment with words spans its words.
pub fn restore_timestamps(transcript: &mut Transcript, speech: &Speech) {
    let map = TimestampMap::new(&speech.chunks);
    for segment in &mut transcript.segments {
        match &mut segment.words {
            Some(words) if !words.is_empty() => {
                for word in words.iter_mut() {
                    let chunk = map.chunk_index((word.start + word.end) / 2.0, false);
                    word.start = map.original_time(word.start, Some(chunk), false);
                    word.end = map.original_time(word.end, Some(chunk), false);
                }
                segment.start = words[0].start;
                segment.end = words[words.len() - 1].end;
            }
            _ => {
                segment.start = map.original_time(segment.start, None, false);
                segment.end = map.original_time(segment.end, None, true);
            }
        }
    }
    transcript.duration = speech.total_samples as f32 / SAMPLE_RATE as f32;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(pairs: &[(usize, usize)]) -> Vec<SpeechChunk> {
        pairs.iter().map(|&(start, end)| SpeechChunk { start, end }).collect()
    }

    #[test]
    fn hysteresis_minimum_silence_and_padding() {
        // 0.1 s windows are 3.125 windows; build probabilities per window directly.
        let mut probs = vec![0.0f32; 200];
        // Speech in windows 20..60, a dip below the low threshold for 10 windows (160 ms,
        // shorter than the minimum silence), speech again 70..100, silence after.
        probs[20..60].fill(0.9);
        probs[60..70].fill(0.1);
        probs[70..100].fill(0.9);
        let options = VadOptions {
            min_silence_duration_ms: 500,
            speech_pad_ms: 0,
            ..VadOptions::default()
        };
        let got = speech_timestamps(&probs, 200 * WINDOW, &options);
        assert_eq!(got, chunks(&[(20 * WINDOW, 100 * WINDOW)]));
        // A probability between the two thresholds keeps speech going but does not start it.
        let mut probs = vec![0.0f32; 100];
        probs[10..20].fill(0.4);
        probs[20..30].fill(0.9);
        probs[30..60].fill(0.4);
        let got = speech_timestamps(&probs, 100 * WINDOW, &options);
        assert_eq!(got, chunks(&[(20 * WINDOW, 60 * WINDOW)]));
        // Padding widens each side, clipped to the audio; near chunks meet halfway.
        let mut probs = vec![0.0f32; 100];
        probs[1..10].fill(0.9);
        probs[50..60].fill(0.9);
        let options = VadOptions {
            min_silence_duration_ms: 100,
            speech_pad_ms: 100,
            ..VadOptions::default()
        };
        let got = speech_timestamps(&probs, 100 * WINDOW - 7, &options);
        assert_eq!(
            got,
            chunks(&[(0, 10 * WINDOW + 1600), (50 * WINDOW - 1600, 60 * WINDOW + 1600)])
        );
        assert!(speech_timestamps(&[0.0; 10], 10 * WINDOW, &options).is_empty());
    }

    #[test]
    fn the_map_adds_the_silence_left_out() {
        // Speech at 1-2 s and 5-6 s: 1 s left out before the first, 4 s before the second.
        let map = TimestampMap::new(&chunks(&[(16_000, 32_000), (80_000, 96_000)]));
        assert_eq!(map.original_time(0.5, None, false), 1.5);
        assert_eq!(map.original_time(1.5, None, false), 5.5);
        // The end of the first chunk, as an end, stays in the first chunk.
        assert_eq!(map.original_time(1.0, None, true), 2.0);
        assert_eq!(map.original_time(1.0, None, false), 5.0);
        // Past the last chunk: the last chunk's offset.
        assert_eq!(map.original_time(9.0, None, false), 13.0);
        assert_eq!(TimestampMap::new(&[]).original_time(3.0, None, false), 3.0);
    }
}
