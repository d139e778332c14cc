//! Long-form transcription as openai/whisper's `transcribe.py` does it: the spectrogram of
//! the whole file (padded with 30 s of silence; whole in memory or streamed, see
//! [`crate::spectrogram`]) is decoded in 30-second windows; each
//! window is decoded with temperature fallback (0, 0.2, … 1.0 while the text is too
//! repetitive or too unlikely), skipped when it holds no speech, cut into segments at its
//! timestamp tokens, and the next window starts at the last complete segment's end. The
//! text so far is the next window's prompt (dropped after a high-temperature decode).

pub mod alignment;
pub mod decoding;
pub mod output;

use candle_core::Tensor;
use serde::Serialize;
use tessera_models::whisper::Whisper;

use crate::spectrogram::MelSource;
use crate::{Error, FRAMES_PER_SECOND, HOP_LENGTH, N_FRAMES, Result, SAMPLE_RATE};
pub use decoding::{TIME_PRECISION, Task, WindowOptions, WindowResult, compression_ratio, detect_language};

/// Settings of a transcription (openai's `transcribe` arguments and CLI defaults).
#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    pub task: Task,
    /// Language code (`en`, `de`, ...); detected from the first window when `None` on a
    /// multilingual model.
    pub language: Option<String>,
    pub beam_size: usize,
    pub best_of: usize,
    pub patience: f32,
    pub length_penalty: Option<f32>,
    /// Tried in order while a window fails the thresholds.
    pub temperatures: Vec<f32>,
    pub compression_ratio_threshold: Option<f32>,
    pub logprob_threshold: Option<f32>,
    pub no_speech_threshold: Option<f32>,
    pub condition_on_previous_text: bool,
    pub initial_prompt: Option<String>,
    pub word_timestamps: bool,
    pub without_timestamps: bool,
    pub seed: u64,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        TranscribeOptions {
            task: Task::Transcribe,
            language: None,
            beam_size: 5,
            best_of: 5,
            patience: 1.0,
            length_penalty: None,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            compression_ratio_threshold: Some(2.4),
            logprob_threshold: Some(-1.0),
            no_speech_threshold: Some(0.6),
            condition_on_previous_text: true,
            initial_prompt: None,
            word_timestamps: false,
            without_timestamps: false,
            seed: 0,
        }
    }
}

/// A word with its time span (with `--word-timestamps`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Word {
    pub word: String,
    pub start: f32,
    pub end: f32,
    pub probability: f32,
}

/// A stretch of text with its time span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    pub id: usize,
    /// The window start (mel frame) it was decoded from.
    pub seek: usize,
    pub start: f32,
    pub end: f32,
    pub text: String,
    pub tokens: Vec<u32>,
    pub temperature: f32,
    pub avg_logprob: f32,
    pub compression_ratio: f32,
    pub no_speech_prob: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub words: Option<Vec<Word>>,
}

/// The result of a transcription.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transcript {
    pub text: String,
    pub language: String,
    /// Seconds of audio.
    pub duration: f32,
    pub segments: Vec<Segment>,
}

/// Decodes one window with temperature fallback. When every temperature fails the tests,
/// the window keeps the attempt with the best mean log-probability among those under the
/// compression threshold (all of them when none is), as faster-whisper does; openai's
/// reference keeps the last, hottest one, which on repetitive speech (the same sentence
/// twice in a window) replaced a correct greedy transcript with a sampled, garbled one.
fn decode_with_fallback(
    model: &Whisper,
    features: &tessera_models::whisper::AudioFeatures,
    suppress: &[u32],
    base: &WindowOptions,
    options: &TranscribeOptions,
) -> Result<WindowResult> {
    let mut attempts = Vec::new();
    for (i, &t) in options.temperatures.iter().enumerate() {
        let window = WindowOptions {
            temperature: t,
            seed: base.seed.wrapping_add(i as u64),
            ..base.clone()
        };
        let t0 = std::time::Instant::now();
        let r = decoding::decode_window(model, features, 0, suppress, &window)?;
        tracing::debug!(
            temperature = t,
            avg_logprob = r.avg_logprob,
            compression_ratio = r.compression_ratio,
            no_speech_prob = r.no_speech_prob,
            tokens = r.tokens.len(),
            ms = t0.elapsed().as_millis() as u64,
            text = %r.text,
            "window decoded"
        );
        if !needs_fallback(&r, options) {
            return Ok(r);
        }
        attempts.push(r);
    }
    best_failed_attempt(attempts, options.compression_ratio_threshold)
        .ok_or_else(|| Error::InvalidInput("no temperatures to decode with".into()))
}

/// Whether a window's decode fails openai's tests and is tried again hotter: its text is
/// too repetitive (gzip compression ratio above the threshold) or too unlikely (mean
/// log-probability below it), unless it is also likely silence (no-speech probability
/// above its threshold), where a hotter decode would only make text up.
fn needs_fallback(r: &WindowResult, options: &TranscribeOptions) -> bool {
    let repetitive = options
        .compression_ratio_threshold
        .is_some_and(|th| r.compression_ratio > th);
    let unlikely = options.logprob_threshold.is_some_and(|th| r.avg_logprob < th);
    let silence = unlikely && options.no_speech_threshold.is_some_and(|th| r.no_speech_prob > th);
    (repetitive || unlikely) && !silence
}

/// Whether a decoded window is silence, to be skipped: the model's no-speech probability
/// is above its threshold and the text it found anyway fails the log-probability test
/// (openai's rule; confident text overrides the no-speech token).
fn is_no_speech(r: &WindowResult, options: &TranscribeOptions) -> bool {
    let Some(th) = options.no_speech_threshold else {
        return false;
    };
    r.no_speech_prob > th && !options.logprob_threshold.is_some_and(|lp| r.avg_logprob > lp)
}

/// The text each window is conditioned on: what was transcribed since the last reset,
/// after the `--initial-prompt`. A window decoded hotter than 0.5 (its text is unreliable)
/// or `condition_on_previous_text = false` starts the history afresh after that window.
#[derive(Debug, Default)]
struct PromptHistory {
    tokens: Vec<u32>,
    reset_since: usize,
}

impl PromptHistory {
    fn new(initial_prompt: Vec<u32>) -> Self {
        PromptHistory {
            tokens: initial_prompt,
            reset_since: 0,
        }
    }

    /// The next window's prompt (its last tokens are kept when it is too long, see
    /// [`decoding::initial_tokens`]).
    fn prompt(&self) -> &[u32] {
        &self.tokens[self.reset_since..]
    }

    /// Adds a window's segments' tokens, decoded at `temperature`.
    fn push(&mut self, tokens: &[u32], temperature: f32, condition_on_previous_text: bool) {
        self.tokens.extend_from_slice(tokens);
        if !condition_on_previous_text || temperature > 0.5 {
            self.reset_since = self.tokens.len();
        }
    }
}

/// The attempt to keep when all failed (see [`decode_with_fallback`]).
fn best_failed_attempt(attempts: Vec<WindowResult>, compression_threshold: Option<f32>) -> Option<WindowResult> {
    let under = |r: &WindowResult| compression_threshold.is_none_or(|th| r.compression_ratio <= th);
    let pool: Vec<WindowResult> = if attempts.iter().any(under) {
        attempts.into_iter().filter(under).collect()
    } else {
        attempts
    };
    // The first of equals: the coolest temperature.
    pool.into_iter()
        .reduce(|best, r| if r.avg_logprob > best.avg_logprob { r } else { best })
}

/// The language token for `code`, or the detected one.
fn choose_language(
    model: &Whisper,
    mel: &mut dyn MelSource,
    options: &TranscribeOptions,
) -> Result<(String, Option<u32>)> {
    let special = model.special();
    if !special.is_multilingual {
        if let Some(code) = &options.language
            && code != "en"
        {
            return Err(Error::InvalidInput(format!(
                "language {code:?}: this model is English-only (use a multilingual model such as whisper-base)"
            )));
        }
        return Ok(("en".into(), None));
    }
    match &options.language {
        Some(code) => {
            let code = code.to_lowercase();
            match special.languages.iter().find(|(c, _)| *c == code) {
                Some((c, id)) => Ok((c.clone(), Some(*id))),
                None => Err(Error::InvalidInput(format!(
                    "language {code:?} is not one the model knows; it knows: {}",
                    special
                        .languages
                        .iter()
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
        None => {
            let window = mel.segment(0, N_FRAMES, N_FRAMES)?;
            let features = encode(model, window, mel.n_mels())?;
            let (code, id, _) = detect_language(model, &features, 0)?;
            Ok((code, Some(id)))
        }
    }
}

/// Encodes a 30 s window of the spectrogram (`[n_mels][N_FRAMES]`).
fn encode(model: &Whisper, window: Vec<f32>, n_mels: usize) -> Result<tessera_models::whisper::AudioFeatures> {
    let input = Tensor::from_vec(window, (1, n_mels, N_FRAMES), model.device()).map_err(|e| Error::Model(e.into()))?;
    model.encode(&input).map_err(Error::Model)
}

/// Whether the first `len` frames of a window (`[n_mels][N_FRAMES]`) carry no energy above
/// the spectrogram's floor (the clamp at 8 below its maximum, or log10 of 1e-10 for
/// digital silence).
fn is_silent(window: &[f32], floor: f32, len: usize) -> bool {
    const MARGIN: f32 = 0.05;
    window
        .chunks_exact(N_FRAMES)
        .all(|row| row[..len.min(N_FRAMES)].iter().all(|&v| v <= floor + MARGIN))
}

/// What a caller sees while a transcription runs.
pub trait Observer {
    /// `done` of `total` seconds are transcribed.
    fn progress(&mut self, _done: f32, _total: f32) {}
    /// Segments as soon as their window is decoded.
    fn segments(&mut self, _segments: &[Segment]) {}
}

impl Observer for () {}

/// Transcribes a padded spectrogram ([`crate::MelSpectrogram::compute_padded`] as `&Mel`,
/// or a [`crate::spectrogram::Spectrogram`] of a file).
pub fn transcribe(
    model: &Whisper,
    mel: &mut dyn MelSource,
    options: &TranscribeOptions,
    observer: &mut dyn Observer,
) -> Result<Transcript> {
    if mel.n_mels() != model.config().n_mels {
        return Err(Error::InvalidInput(format!(
            "the spectrogram has {} mel bins but the model expects {}",
            mel.n_mels(),
            model.config().n_mels
        )));
    }
    let content_frames = mel.content_frames();
    let duration = (content_frames * HOP_LENGTH) as f32 / SAMPLE_RATE as f32;
    let (language, language_token) = if content_frames == 0 {
        (options.language.clone().unwrap_or_else(|| "en".into()), None)
    } else {
        choose_language(model, mel, options)?
    };
    let special = model.special().clone();
    let suppress = decoding::suppressed_tokens(model)?;
    let input_stride = N_FRAMES / model.config().n_audio_ctx;
    let time_precision = (input_stride * HOP_LENGTH) as f32 / SAMPLE_RATE as f32;

    let mut history = PromptHistory::default();
    if let Some(prompt) = &options.initial_prompt {
        let text = format!(" {}", prompt.trim());
        history = PromptHistory::new(model.tokenizer().encode(&text, false).map_err(Error::Model)?);
    }
    let floor = mel.floor();
    let mut segments: Vec<Segment> = Vec::new();
    // Where the last word heard ended (word timestamps): a first word far after it follows
    // a pause, which the alignment tends to swallow.
    let mut last_speech_timestamp = 0.0f32;
    let mut seek = 0usize;
    while seek < content_frames {
        observer.progress(seek as f32 * HOP_LENGTH as f32 / SAMPLE_RATE as f32, duration);
        let time_offset = (seek * HOP_LENGTH) as f32 / SAMPLE_RATE as f32;
        let segment_size = N_FRAMES.min(content_frames - seek);
        let segment_duration = (segment_size * HOP_LENGTH) as f32 / SAMPLE_RATE as f32;
        let window = mel.segment(seek, segment_size, N_FRAMES)?;
        if is_silent(&window, floor, segment_size) {
            // Digital silence: Whisper would hallucinate text ("you") with a log-prob good
            // enough to pass its no-speech test. There is nothing to hear: skip the window.
            seek += segment_size;
            continue;
        }
        let t0 = std::time::Instant::now();
        let features = encode(model, window, mel.n_mels())?;
        tracing::debug!(seek, ms = t0.elapsed().as_millis() as u64, "window encoded");
        let base = WindowOptions {
            task: options.task,
            language: language_token,
            beam_size: options.beam_size,
            best_of: options.best_of,
            patience: options.patience,
            length_penalty: options.length_penalty,
            prompt: history.prompt().to_vec(),
            without_timestamps: options.without_timestamps,
            seed: options.seed.wrapping_add(seek as u64),
            ..WindowOptions::default()
        };
        let result = decode_with_fallback(model, &features, &suppress, &base, options)?;
        if is_no_speech(&result, options) {
            seek += segment_size;
            continue;
        }
        let previous_seek = seek;
        let tokens = &result.tokens;
        let is_ts = |t: u32| t >= special.timestamp_begin;
        let ts_pos = |t: u32| (t - special.timestamp_begin) as f32;
        let single_timestamp_ending =
            tokens.len() >= 2 && !is_ts(tokens[tokens.len() - 2]) && is_ts(tokens[tokens.len() - 1]);
        let consecutive: Vec<usize> = (1..tokens.len())
            .filter(|&i| is_ts(tokens[i - 1]) && is_ts(tokens[i]))
            .collect();
        let mut current: Vec<(f32, f32, Vec<u32>)> = Vec::new();
        if !consecutive.is_empty() {
            let mut slices = consecutive.clone();
            if single_timestamp_ending {
                slices.push(tokens.len());
            }
            let mut last_slice = 0;
            for &slice in &slices {
                let sliced = &tokens[last_slice..slice];
                let start = time_offset + ts_pos(sliced[0]) * time_precision;
                let end = time_offset + ts_pos(sliced[sliced.len() - 1]) * time_precision;
                current.push((start, end, sliced.to_vec()));
                last_slice = slice;
            }
            if single_timestamp_ending {
                seek += segment_size;
            } else {
                let last_timestamp_pos = tokens[last_slice - 1] - special.timestamp_begin;
                seek += last_timestamp_pos as usize * input_stride;
            }
        } else {
            let mut seg_duration = segment_duration;
            if let Some(&last) = tokens.iter().rev().find(|&&t| is_ts(t))
                && last != special.timestamp_begin
            {
                seg_duration = ts_pos(last) * time_precision;
            }
            current.push((time_offset, time_offset + seg_duration, tokens.clone()));
            seek += segment_size;
        }
        // A window that moved nothing forward would loop forever.
        if seek <= previous_seek {
            seek = previous_seek + segment_size;
        }

        let first_new = segments.len();
        // The model may place a timestamp past the audio in the window (noise decoded as
        // text, a 10 s file with segments up to 29 s): times are clipped to the window's
        // content, so segments stay within the file.
        let window_end = time_offset + segment_duration;
        for (start, end, toks) in current {
            let text_tokens: Vec<u32> = toks.iter().copied().filter(|&t| t < special.eot).collect();
            let mut text = model.tokenizer().decode(&text_tokens, true).map_err(Error::Model)?;
            let mut toks = toks;
            if start == end || text.trim().is_empty() {
                text.clear();
                toks.clear();
            }
            let (start, end) = (start.min(window_end), end.min(window_end));
            segments.push(Segment {
                id: segments.len(),
                seek: previous_seek,
                start,
                end,
                text,
                tokens: toks,
                temperature: result.temperature,
                avg_logprob: result.avg_logprob,
                compression_ratio: result.compression_ratio,
                no_speech_prob: result.no_speech_prob,
                words: None,
            });
        }
        if options.word_timestamps {
            let mut sot_sequence = vec![special.sot];
            if let Some(language) = language_token {
                sot_sequence.push(language);
                sot_sequence.push(match options.task {
                    Task::Transcribe => special.transcribe,
                    Task::Translate => special.translate,
                });
            }
            alignment::add_word_timestamps(
                model,
                &features,
                &sot_sequence,
                &mut segments[first_new..],
                segment_size,
                window_end,
                last_speech_timestamp,
            )?;
            // The next window starts where the last word ended, when the window did not
            // end on a lone timestamp (openai's `transcribe` with `word_timestamps`).
            let new = &segments[first_new..];
            let last_word_end = new
                .iter()
                .rev()
                .flat_map(|s| s.words.iter().flatten().rev())
                .map(|w| w.end)
                .next()
                .or(new.last().map(|s| s.end));
            if let Some(end) = last_word_end {
                last_speech_timestamp = end;
            }
            if !single_timestamp_ending
                && let Some(end) = last_word_end
                && end > time_offset
            {
                seek = ((end * FRAMES_PER_SECOND as f32).round() as usize).max(previous_seek + 1);
            }
        }
        // Empty segments carry nothing forward.
        let window_tokens: Vec<u32> = segments[first_new..]
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        history.push(&window_tokens, result.temperature, options.condition_on_previous_text);
        observer.segments(&segments[first_new..]);
    }
    observer.progress(duration, duration);
    segments.retain(|s| !s.text.is_empty());
    for (i, s) in segments.iter_mut().enumerate() {
        s.id = i;
    }
    Ok(Transcript {
        text: segments.iter().map(|s| s.text.as_str()).collect(),
        language,
        duration,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(temperature: f32, avg_logprob: f32, compression_ratio: f32) -> WindowResult {
        WindowResult {
            tokens: vec![],
            text: format!("t={temperature}"),
            avg_logprob,
            no_speech_prob: 0.1,
            temperature,
            compression_ratio,
        }
    }

    fn decoded(avg_logprob: f32, compression_ratio: f32, no_speech_prob: f32) -> WindowResult {
        WindowResult {
            no_speech_prob,
            ..attempt(0.0, avg_logprob, compression_ratio)
        }
    }

    #[test]
    fn repetitive_or_unlikely_text_falls_back_unless_it_is_silence() {
        let defaults = TranscribeOptions::default();
        assert!(!needs_fallback(&decoded(-0.3, 1.5, 0.1), &defaults), "good text");
        assert!(needs_fallback(&decoded(-0.3, 2.6, 0.1), &defaults), "too repetitive");
        assert!(needs_fallback(&decoded(-1.2, 1.5, 0.1), &defaults), "too unlikely");
        // Unlikely text where the model also hears no speech: silence, not retried hotter.
        assert!(!needs_fallback(&decoded(-1.2, 1.5, 0.9), &defaults));
        // ... but repetitive text with a confident log-probability still falls back.
        assert!(needs_fallback(&decoded(-0.3, 2.6, 0.9), &defaults));
        // Disabled tests never fire.
        let none = TranscribeOptions {
            compression_ratio_threshold: None,
            logprob_threshold: None,
            ..TranscribeOptions::default()
        };
        assert!(!needs_fallback(&decoded(-5.0, 9.0, 0.1), &none));
        // Without a log-probability test, a no-speech probability alone does not stop a
        // repetitive window's fallback (openai's rule needs both).
        let no_logprob = TranscribeOptions {
            logprob_threshold: None,
            ..TranscribeOptions::default()
        };
        assert!(needs_fallback(&decoded(-5.0, 2.6, 0.9), &no_logprob));
    }

    #[test]
    fn a_window_is_skipped_as_silence_only_when_its_text_is_also_unlikely() {
        let defaults = TranscribeOptions::default();
        assert!(is_no_speech(&decoded(-1.5, 1.0, 0.7), &defaults));
        assert!(!is_no_speech(&decoded(-1.5, 1.0, 0.5), &defaults), "speech heard");
        assert!(
            !is_no_speech(&decoded(-0.5, 1.0, 0.9), &defaults),
            "confident text wins"
        );
        let no_logprob = TranscribeOptions {
            logprob_threshold: None,
            ..TranscribeOptions::default()
        };
        assert!(is_no_speech(&decoded(-0.5, 1.0, 0.9), &no_logprob));
        let disabled = TranscribeOptions {
            no_speech_threshold: None,
            ..TranscribeOptions::default()
        };
        assert!(!is_no_speech(&decoded(-5.0, 1.0, 1.0), &disabled));
    }

    #[test]
    fn the_prompt_history_restarts_after_a_hot_window_or_when_not_conditioning() {
        let mut h = PromptHistory::new(vec![1, 2]);
        assert_eq!(h.prompt(), [1, 2], "the initial prompt conditions the first window");
        h.push(&[3, 4], 0.0, true);
        assert_eq!(h.prompt(), [1, 2, 3, 4]);
        h.push(&[5], 0.5, true);
        assert_eq!(h.prompt(), [1, 2, 3, 4, 5], "0.5 is not above 0.5");
        h.push(&[6], 0.6, true);
        assert!(h.prompt().is_empty(), "text decoded hotter than 0.5 is not trusted");
        h.push(&[7, 8], 0.0, true);
        assert_eq!(h.prompt(), [7, 8]);
        h.push(&[], 0.0, true);
        assert_eq!(h.prompt(), [7, 8], "an empty window keeps the history");

        let mut h = PromptHistory::new(vec![1]);
        assert_eq!(h.prompt(), [1], "the initial prompt is used even when not conditioning");
        h.push(&[2], 0.0, false);
        assert!(h.prompt().is_empty());
    }

    #[test]
    fn silence_is_judged_on_the_window_content_only() {
        let floor = -1.5;
        let mut window = vec![floor; 2 * N_FRAMES];
        assert!(is_silent(&window, floor, N_FRAMES));
        // Energy past the content (the window's zero padding) does not count.
        window[N_FRAMES + 2000] = 0.5;
        assert!(is_silent(&window, floor, 1000));
        assert!(!is_silent(&window, floor, 2001));
    }

    #[test]
    fn when_every_temperature_fails_the_best_attempt_under_the_compression_threshold_is_kept() {
        let attempts = vec![
            attempt(0.0, -0.2, 2.5),
            attempt(0.2, -1.5, 1.8),
            attempt(0.4, -1.2, 1.9),
            attempt(1.0, -0.1, 2.6),
        ];
        let kept = best_failed_attempt(attempts, Some(2.4)).unwrap();
        assert_eq!(kept.temperature, 0.4, "best log-probability among those under 2.4");
    }

    #[test]
    fn when_all_are_too_repetitive_the_best_log_probability_wins_and_ties_keep_the_coolest() {
        let attempts = vec![
            attempt(0.0, -0.3, 2.5),
            attempt(0.2, -0.3, 2.5),
            attempt(1.0, -0.4, 2.7),
        ];
        assert_eq!(best_failed_attempt(attempts, Some(2.4)).unwrap().temperature, 0.0);
        assert!(best_failed_attempt(vec![], Some(2.4)).is_none());
        let attempts = vec![attempt(0.0, -1.3, 3.0), attempt(0.2, -1.1, 3.5)];
        assert_eq!(best_failed_attempt(attempts, None).unwrap().temperature, 0.2);
    }
}
