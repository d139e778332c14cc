//! Decoding of one 30-second window, as openai/whisper's `decoding.py` does it: the
//! initial tokens (previous text as a prompt, start of transcript, language, task), the
//! logit filters (blank and non-speech suppression, the timestamp rules), greedy decoding,
//! sampling with best-of-N, and beam search with patience, ranked by length-normalised
//! log-probability. Also language detection and the compression ratio used by the
//! temperature fallback.

use std::io::Write as _;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
pub use tessera_models::whisper::Task;
use tessera_models::whisper::{AudioFeatures, Whisper, WhisperSpecialTokens};

use crate::{Error, Result};

/// Settings of one window's decode (openai's `DecodingOptions`).
#[derive(Debug, Clone)]
pub struct WindowOptions {
    pub task: Task,
    /// Language token; `None` for English-only models.
    pub language: Option<u32>,
    pub temperature: f32,
    /// Beams at temperature 0 (1: greedy).
    pub beam_size: usize,
    /// Independent samples at temperature > 0, the best kept.
    pub best_of: usize,
    /// Beam search stops once `beam_size * patience` hypotheses finished.
    pub patience: f32,
    /// `None`: divide the log-probability by the length; `Some(a)`: Google NMT's
    /// `((5 + length) / 6) ^ a`.
    pub length_penalty: Option<f32>,
    /// Earlier text (tokens) to condition on.
    pub prompt: Vec<u32>,
    pub without_timestamps: bool,
    /// The first timestamp may not be later than this (seconds).
    pub max_initial_timestamp: Option<f32>,
    pub suppress_blank: bool,
    /// Most tokens sampled per window (openai: half the text context).
    pub sample_len: Option<usize>,
    pub seed: u64,
}

impl Default for WindowOptions {
    fn default() -> Self {
        WindowOptions {
            task: Task::Transcribe,
            language: None,
            temperature: 0.0,
            beam_size: 5,
            best_of: 5,
            patience: 1.0,
            length_penalty: None,
            prompt: Vec::new(),
            without_timestamps: false,
            max_initial_timestamp: Some(1.0),
            suppress_blank: true,
            sample_len: None,
            seed: 0,
        }
    }
}

/// The chosen decode of a window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    /// Sampled tokens (text and timestamps), without the end of text.
    pub tokens: Vec<u32>,
    /// The text tokens decoded.
    pub text: String,
    pub avg_logprob: f32,
    pub no_speech_prob: f32,
    pub temperature: f32,
    pub compression_ratio: f32,
}

/// Seconds per timestamp token step (two mel frames per encoder position).
pub const TIME_PRECISION: f32 = 0.02;

/// Tokens that are never speech: punctuation and symbols Whisper writes for music and
/// sound effects (openai's `non_speech_tokens`).
pub fn non_speech_tokens(model: &Whisper) -> Result<Vec<u32>> {
    let tok = model.tokenizer();
    let mut symbols: Vec<String> = "\"#()*+/:;<=>@[\\]^_`{|}~「」『』".chars().map(String::from).collect();
    symbols.extend(
        "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪"
            .split(' ')
            .map(String::from),
    );
    let miscellaneous: Vec<String> = "♩♪♫♬♭♮♯".chars().map(String::from).collect();
    let mut out = Vec::new();
    for s in [" -", " '"] {
        if let Some(&t) = tok.encode(s, false).map_err(Error::Model)?.first() {
            out.push(t);
        }
    }
    for symbol in symbols.iter().chain(&miscellaneous) {
        let misc = miscellaneous.contains(symbol);
        for text in [symbol.clone(), format!(" {symbol}")] {
            let ids = tok.encode(&text, false).map_err(Error::Model)?;
            if ids.len() == 1 || (misc && !ids.is_empty()) {
                out.push(ids[0]);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Tokens suppressed at every step: non-speech symbols and the special tokens that may
/// only appear in the initial sequence (openai's `suppress_tokens="-1"`).
pub fn suppressed_tokens(model: &Whisper) -> Result<Vec<u32>> {
    let s = model.special();
    let mut out = non_speech_tokens(model)?;
    out.extend([s.transcribe, s.translate, s.sot, s.sot_prev, s.sot_lm]);
    out.push(s.no_speech);
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The tokens that start a window's decode and the index of the start-of-transcript.
fn initial_tokens(model: &Whisper, options: &WindowOptions) -> Result<(Vec<u32>, usize)> {
    let s = model.special();
    let n_ctx = model.config().n_text_ctx;
    let mut tokens = Vec::new();
    if !options.prompt.is_empty() {
        tokens.push(s.sot_prev);
        let keep = (n_ctx / 2).saturating_sub(1);
        tokens.extend(&options.prompt[options.prompt.len().saturating_sub(keep)..]);
    }
    let sot_index = tokens.len();
    tokens.push(s.sot);
    if s.is_multilingual {
        let language = options
            .language
            .ok_or_else(|| Error::InvalidInput("a multilingual model needs a language token".into()))?;
        tokens.push(language);
        tokens.push(match options.task {
            Task::Transcribe => s.transcribe,
            Task::Translate => s.translate,
        });
    } else if options.task == Task::Translate {
        return Err(Error::InvalidInput("an English-only model cannot translate".into()));
    }
    if options.without_timestamps {
        tokens.push(s.no_timestamps);
    }
    Ok((tokens, sot_index))
}

/// The logit filters of one window.
struct Filters<'a> {
    special: &'a WhisperSpecialTokens,
    suppress: &'a [u32],
    blank: Vec<u32>,
    sample_begin: usize,
    timestamps: bool,
    max_initial_timestamp_index: Option<u32>,
}

impl Filters<'_> {
    /// Applies every filter to one sequence's logits; `tokens` is the whole sequence so far.
    fn apply(&self, logits: &mut [f32], tokens: &[u32]) {
        let sampled = &tokens[self.sample_begin.min(tokens.len())..];
        let mut mask = |ids: &mut dyn Iterator<Item = u32>| {
            for id in ids {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        };
        if sampled.is_empty() && !self.blank.is_empty() {
            mask(&mut self.blank.iter().copied());
        }
        mask(&mut self.suppress.iter().copied());
        if !self.timestamps {
            return;
        }
        let ts_begin = self.special.timestamp_begin as usize;
        let eot = self.special.eot as usize;
        let n = logits.len();
        if let Some(l) = logits.get_mut(self.special.no_timestamps as usize) {
            *l = f32::NEG_INFINITY;
        }
        let is_ts = |t: u32| t as usize >= ts_begin;
        let last_was_timestamp = sampled.last().is_some_and(|&t| is_ts(t));
        let penultimate_was_timestamp = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
        if last_was_timestamp {
            if penultimate_was_timestamp {
                logits[ts_begin.min(n)..].fill(f32::NEG_INFINITY);
            } else {
                logits[..eot.min(n)].fill(f32::NEG_INFINITY);
            }
        }
        if let Some(&last_ts) = sampled.iter().rev().find(|&&t| is_ts(t)) {
            // Timestamps never decrease, and a segment has a non-zero length.
            let end = if last_was_timestamp && !penultimate_was_timestamp {
                last_ts as usize
            } else {
                last_ts as usize + 1
            };
            logits[ts_begin.min(n)..end.min(n)].fill(f32::NEG_INFINITY);
        }
        if sampled.is_empty() {
            logits[..ts_begin.min(n)].fill(f32::NEG_INFINITY);
            if let Some(max) = self.max_initial_timestamp_index {
                let last_allowed = ts_begin + max as usize;
                logits[(last_allowed + 1).min(n)..].fill(f32::NEG_INFINITY);
            }
        }
        // When the timestamps together are likelier than any text token, take a timestamp.
        // (Compared as logits: both sides of openai's log-probabilities carry the same
        // normaliser.)
        let ts_logit = log_sum_exp(&logits[ts_begin.min(n)..]);
        let max_text = logits[..ts_begin.min(n)]
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        if ts_logit > max_text {
            logits[..ts_begin.min(n)].fill(f32::NEG_INFINITY);
        }
    }
}

pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&l| l - lse).collect()
}

/// Vectorised (a vocabulary of 51,865 logits per sequence per step: with one `expf` call
/// each, this was most of a sampled step's time).
fn log_sum_exp(xs: &[f32]) -> f32 {
    if xs.is_empty() {
        return f32::NEG_INFINITY;
    }
    tessera_models::sampling::log_sum_exp(xs)
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// Text bytes over zlib-compressed bytes: repetitive (hallucinated) text compresses well.
pub fn compression_ratio(text: &str) -> f32 {
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let compressed = z.write_all(text.as_bytes()).and_then(|()| z.finish()).map(|v| v.len());
    match compressed {
        Ok(len) if len > 0 => text.len() as f32 / len as f32,
        _ => 0.0,
    }
}

/// One finished hypothesis: its sampled tokens (eot excluded) and summed log-probability.
#[derive(Debug, Clone)]
struct Hypothesis {
    tokens: Vec<u32>,
    sum_logprob: f32,
}

fn logits_rows(logits: &candle_core::Tensor) -> Result<Vec<Vec<f32>>> {
    logits
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.to_vec2::<f32>())
        .map_err(|e| Error::Model(e.into()))
}

/// Decodes one window of audio features (`audio_index` in the batch of `features`).
pub fn decode_window(
    model: &Whisper,
    features: &AudioFeatures,
    audio_index: usize,
    suppress: &[u32],
    options: &WindowOptions,
) -> Result<WindowResult> {
    let special = model.special();
    let n_ctx = model.config().n_text_ctx;
    let (initial, sot_index) = initial_tokens(model, options)?;
    let sample_begin = initial.len();
    let sample_len = options.sample_len.unwrap_or(n_ctx / 2);
    let sampling = options.temperature > 0.0;
    let n_group = if sampling {
        options.best_of.max(1)
    } else {
        options.beam_size.max(1)
    };
    let blank = if options.suppress_blank {
        let mut b = model.tokenizer().encode(" ", false).map_err(Error::Model)?;
        b.push(special.eot);
        b
    } else {
        Vec::new()
    };
    let filters = Filters {
        special,
        suppress,
        blank,
        sample_begin,
        timestamps: !options.without_timestamps,
        max_initial_timestamp_index: options
            .max_initial_timestamp
            .map(|s| (s / TIME_PRECISION).round() as u32),
    };

    // The initial tokens run once, then fork into the group.
    let mut decoder = model.decoder(features, &[audio_index]).map_err(Error::Model)?;
    let sot_logits = logits_rows(&decoder.step(&[&initial[..=sot_index]]).map_err(Error::Model)?)?;
    let no_speech_prob = softmax_at(&sot_logits[0], special.no_speech as usize);
    let first_logits = if sot_index + 1 < initial.len() {
        logits_rows(&decoder.step(&[&initial[sot_index + 1..]]).map_err(Error::Model)?)?
    } else {
        sot_logits
    };
    decoder.reorder(&vec![0; n_group]).map_err(Error::Model)?;
    let mut logits: Vec<Vec<f32>> = vec![first_logits[0].clone(); n_group];
    let mut seqs: Vec<Vec<u32>> = vec![initial.clone(); n_group];
    let mut sum_logprobs = vec![0.0f32; n_group];
    let mut finished: Vec<Hypothesis> = Vec::new();
    let max_candidates = ((n_group as f32) * options.patience).round().max(1.0) as usize;
    let mut rng = StdRng::seed_from_u64(options.seed);
    let eot = special.eot;

    for _ in 0..sample_len {
        for (row, seq) in logits.iter_mut().zip(&seqs) {
            filters.apply(row, seq);
        }
        let completed = if sampling || n_group == 1 {
            // Greedy or sampling: every sequence takes one token; finished ones repeat eot.
            for (k, row) in logits.iter().enumerate() {
                if seqs[k].last() == Some(&eot) && seqs[k].len() > sample_begin {
                    seqs[k].push(eot);
                    continue;
                }
                let next = if sampling {
                    sample(row, options.temperature, &mut rng)
                } else {
                    argmax(row)
                };
                sum_logprobs[k] += row[next as usize] - log_sum_exp(row);
                seqs[k].push(next);
            }
            seqs.iter().all(|s| s.last() == Some(&eot))
        } else {
            let (next, sources, scores, newly_finished) = beam_step(&logits, &seqs, &sum_logprobs, n_group, eot);
            for h in newly_finished {
                if finished.len() >= max_candidates {
                    break;
                }
                finished.push(Hypothesis {
                    tokens: h.tokens[sample_begin..].to_vec(),
                    sum_logprob: h.sum_logprob,
                });
            }
            decoder.reorder(&sources).map_err(Error::Model)?;
            seqs = next;
            sum_logprobs = scores;
            finished.len() >= max_candidates
        };
        if completed || seqs[0].len() > n_ctx {
            break;
        }
        let last: Vec<[u32; 1]> = seqs.iter().map(|s| [*s.last().expect("non-empty")]).collect();
        let feed: Vec<&[u32]> = last.iter().map(|t| t.as_slice()).collect();
        logits = logits_rows(&decoder.step(&feed).map_err(Error::Model)?)?;
    }

    // Candidates: the finished beams, topped up with the best unfinished ones; or every
    // sample, cut at its first eot.
    let mut candidates: Vec<Hypothesis> = Vec::new();
    if !sampling && n_group > 1 {
        candidates = finished;
        if candidates.len() < n_group {
            let mut order: Vec<usize> = (0..seqs.len()).collect();
            order.sort_by(|&a, &b| sum_logprobs[b].total_cmp(&sum_logprobs[a]));
            for k in order {
                if candidates.len() >= n_group {
                    break;
                }
                candidates.push(Hypothesis {
                    tokens: seqs[k][sample_begin..].to_vec(),
                    sum_logprob: sum_logprobs[k],
                });
            }
        }
    } else {
        for (k, seq) in seqs.iter().enumerate() {
            let sampled = &seq[sample_begin..];
            let end = sampled.iter().position(|&t| t == eot).unwrap_or(sampled.len());
            candidates.push(Hypothesis {
                tokens: sampled[..end].to_vec(),
                sum_logprob: sum_logprobs[k],
            });
        }
    }
    let score = |h: &Hypothesis| {
        let length = h.tokens.len() as f32;
        let penalty = match options.length_penalty {
            None => length,
            Some(a) => ((5.0 + length) / 6.0).powf(a),
        };
        h.sum_logprob / penalty.max(f32::MIN_POSITIVE)
    };
    let best = candidates
        .iter()
        .enumerate()
        .max_by(|(ia, a), (ib, b)| score(a).total_cmp(&score(b)).then(ib.cmp(ia)))
        .map(|(_, h)| h.clone())
        .unwrap_or(Hypothesis {
            tokens: Vec::new(),
            sum_logprob: 0.0,
        });
    let text_tokens: Vec<u32> = best.tokens.iter().copied().filter(|&t| t < eot).collect();
    let text = model.tokenizer().decode(&text_tokens, true).map_err(Error::Model)?;
    Ok(WindowResult {
        avg_logprob: best.sum_logprob / (best.tokens.len() as f32 + 1.0),
        compression_ratio: compression_ratio(&text),
        tokens: best.tokens,
        text,
        no_speech_prob,
        temperature: options.temperature,
    })
}

type BeamStep = (Vec<Vec<u32>>, Vec<usize>, Vec<f32>, Vec<Hypothesis>);

/// One beam-search step over a group: every beam proposes its `beams + 1` best tokens;
/// the best `beams` unfinished sequences go on, finished ones are returned best first.
fn beam_step(logits: &[Vec<f32>], seqs: &[Vec<u32>], sum_logprobs: &[f32], beams: usize, eot: u32) -> BeamStep {
    let mut scored: Vec<(f32, usize, u32)> = Vec::new();
    for (j, row) in logits.iter().enumerate() {
        let logprobs = log_softmax(row);
        for token in top_k(&logprobs, beams + 1) {
            scored.push((sum_logprobs[j] + logprobs[token as usize], j, token));
        }
    }
    // Identical sequences (the first step's copies) count once, as openai's dict does.
    let mut seen: Vec<(usize, u32)> = Vec::new();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut next, mut sources, mut scores, mut finished) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (score, j, token) in scored {
        let duplicate = seen.iter().any(|&(k, t)| t == token && seqs[k] == seqs[j]);
        if duplicate {
            continue;
        }
        seen.push((j, token));
        if token == eot {
            finished.push((score, j));
        } else {
            let mut s = seqs[j].clone();
            s.push(token);
            next.push(s);
            sources.push(j);
            scores.push(score);
            if next.len() == beams {
                break;
            }
        }
    }
    let finished = finished
        .into_iter()
        .map(|(score, j)| Hypothesis {
            tokens: seqs[j].clone(),
            sum_logprob: score,
        })
        .collect();
    (next, sources, scores, finished)
}

fn top_k(xs: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..xs.len() as u32).collect();
    let k = k.min(idx.len());
    idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| xs[b as usize].total_cmp(&xs[a as usize]));
    idx.truncate(k);
    idx
}

fn softmax_at(logits: &[f32], index: usize) -> f32 {
    let lse = log_sum_exp(logits);
    logits.get(index).map_or(0.0, |&l| (l - lse).exp())
}

/// A token drawn from `softmax(logits / temperature)`: one uniform number, walked down
/// the cumulative probabilities (vectorised softmax; no per-step distribution object).
fn sample(logits: &[f32], temperature: f32, rng: &mut StdRng) -> u32 {
    let mut probs: Vec<f32> = logits.iter().map(|&l| l / temperature).collect();
    if !probs.iter().any(|p| p.is_finite()) {
        return argmax(logits);
    }
    tessera_models::sampling::softmax_in_place(&mut probs);
    let total: f32 = probs.iter().sum();
    let mut left = rng.random::<f32>() * total;
    let mut last_possible = None;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            if left < p {
                return i as u32;
            }
            left -= p;
            last_possible = Some(i);
        }
    }
    // Rounding left a sliver past the last token with any probability.
    last_possible.map_or_else(|| argmax(logits), |i| i as u32)
}

/// The most likely language of a window: `(code, token, probability)`.
pub fn detect_language(model: &Whisper, features: &AudioFeatures, audio_index: usize) -> Result<(String, u32, f32)> {
    let special = model.special();
    if special.languages.is_empty() {
        return Err(Error::InvalidInput(
            "an English-only model has no language detection".into(),
        ));
    }
    let mut decoder = model.decoder(features, &[audio_index]).map_err(Error::Model)?;
    let logits = logits_rows(&decoder.step(&[&[special.sot]]).map_err(Error::Model)?)?;
    let row = &logits[0];
    let lang_logits: Vec<f32> = special
        .languages
        .iter()
        .map(|(_, id)| row.get(*id as usize).copied().unwrap_or(f32::NEG_INFINITY))
        .collect();
    let probs = log_softmax(&lang_logits);
    let best = argmax(&probs) as usize;
    let (code, id) = &special.languages[best];
    Ok((code.clone(), *id, probs[best].exp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_tempered_distribution_and_skips_masked_tokens() {
        // p(1) = 3/4 at temperature 1; token 2 is masked; at temperature 0.5 p(1) = 9/10.
        let logits = [0.0, 3f32.ln(), f32::NEG_INFINITY];
        for (temperature, want) in [(1.0, 0.75), (0.5, 0.9)] {
            let mut rng = StdRng::seed_from_u64(7);
            let mut counts = [0usize; 3];
            for _ in 0..20_000 {
                counts[sample(&logits, temperature, &mut rng) as usize] += 1;
            }
            assert_eq!(counts[2], 0, "a masked token was drawn");
            let share = counts[1] as f64 / 20_000.0;
            assert!((share - want).abs() < 0.015, "T={temperature}: {share} vs {want}");
        }
        // Same seed, same draws; only one possible token: that one.
        let draws = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50).map(|_| sample(&logits, 1.0, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draws(3), draws(3));
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(sample(&[f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY], 0.7, &mut rng), 1);
        assert_eq!(sample(&[f32::NEG_INFINITY; 3], 0.7, &mut rng), 0);
    }

    /// 20 text tokens, eot 20, sot 21, ..., no-timestamps 27, timestamps from 28 to 99.
    fn special() -> WhisperSpecialTokens {
        WhisperSpecialTokens {
            eot: 20,
            sot: 21,
            translate: 22,
            transcribe: 23,
            sot_lm: 24,
            sot_prev: 25,
            no_speech: 26,
            no_timestamps: 27,
            timestamp_begin: 28,
            languages: Vec::new(),
            is_multilingual: false,
        }
    }

    const SUPPRESS: [u32; 7] = [3, 21, 22, 23, 24, 25, 26];

    fn filters(special: &WhisperSpecialTokens) -> Filters<'_> {
        Filters {
            special,
            suppress: &SUPPRESS,
            blank: vec![5, 20],
            sample_begin: 1,
            timestamps: true,
            max_initial_timestamp_index: Some(50),
        }
    }

    fn allowed(logits: &[f32]) -> Vec<usize> {
        (0..logits.len()).filter(|&i| logits[i] > f32::NEG_INFINITY).collect()
    }

    #[test]
    fn the_first_token_is_a_timestamp_within_the_initial_limit() {
        let s = special();
        let mut logits = vec![0.0f32; 100];
        filters(&s).apply(&mut logits, &[21]);
        assert_eq!(allowed(&logits), (28..=78).collect::<Vec<_>>());
    }

    #[test]
    fn timestamps_come_in_pairs_and_never_go_back() {
        let s = special();
        let f = filters(&s);
        // After the opening timestamp: text or eot, no timestamp; no blank rule any more.
        let mut logits = vec![0.0f32; 100];
        f.apply(&mut logits, &[21, 40]);
        let mut text: Vec<usize> = (0..=20).collect();
        text.retain(|&t| t != 3);
        assert_eq!(allowed(&logits), text);
        // After text: more text, eot, or a closing timestamp later than the opening one.
        let mut logits = vec![0.0f32; 100];
        logits[7] = 10.0;
        f.apply(&mut logits, &[21, 40, 7]);
        let ok = allowed(&logits);
        assert!(
            ok.contains(&7) && ok.contains(&20) && ok.contains(&41) && ok.contains(&99),
            "{ok:?}"
        );
        assert!(
            !ok.contains(&40) && !ok.contains(&28) && !ok.contains(&3) && !ok.contains(&27),
            "{ok:?}"
        );
        // After a closing timestamp: eot, or the next opening one (which may repeat it).
        let mut logits = vec![0.0f32; 100];
        logits[20] = 10.0;
        f.apply(&mut logits, &[21, 40, 7, 45]);
        let ok = allowed(&logits);
        assert_eq!(ok[0], 20, "eot");
        assert_eq!(ok[1..], (45..100).collect::<Vec<_>>());
    }

    #[test]
    fn likely_timestamps_win_over_any_text_token() {
        let s = special();
        // Each timestamp alone is less likely than token 7, together they are likelier.
        let mut logits = vec![-10.0f32; 100];
        logits[7] = 2.0;
        for l in &mut logits[28..100] {
            *l = 0.5;
        }
        filters(&s).apply(&mut logits, &[21, 40, 7]);
        assert_eq!(allowed(&logits), (41..100).collect::<Vec<_>>());
    }

    #[test]
    fn compression_ratio_is_high_for_repetitive_text() {
        let plain = "And so my fellow Americans, ask not what your country can do for you.";
        let repeated = "ask not ".repeat(40);
        assert!(compression_ratio(plain) < 2.0, "{}", compression_ratio(plain));
        assert!(compression_ratio(&repeated) > 2.4, "{}", compression_ratio(&repeated));
        assert_eq!(compression_ratio(""), 0.0);
    }

    #[test]
    fn beam_step_keeps_the_best_unfinished_and_reports_finished() {
        // Two beams over a vocabulary of 4 where token 3 is eot.
        let logits = vec![vec![0.0, 2.0, 1.0, 3.0], vec![0.0, 0.0, 5.0, -9.0]];
        let seqs = vec![vec![7, 1], vec![7, 2]];
        let (next, sources, scores, finished) = beam_step(&logits, &seqs, &[0.0, -1.0], 2, 3);
        assert_eq!(next.len(), 2);
        // Beam 1 with token 2 (score about -1.03) beats beam 0 with token 1 (about -1.41).
        assert_eq!(next[0], vec![7, 2, 2]);
        assert_eq!(sources, vec![1, 0]);
        assert!(scores[0] > scores[1]);
        // Beam 0's eot (about -0.41) ranked above the cut: finished.
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].tokens, vec![7, 1]);
    }

    /// A tiny random-weight Whisper of the models crate's fixtures: `tiny` is multilingual
    /// (en, de, fr), `tiny-128` English-only; both have a text context of 64.
    fn fixture_model(name: &str) -> Whisper {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/tests/fixtures/whisper")
            .join(name);
        Whisper::load(&dir, &candle_core::Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
    }

    // The fixtures' token ids, as their tokenizer.json lists them (the same order as the
    // real vocabularies): asserted literally, not read back through `special()`.
    const SOT: u32 = 257;
    const DE: u32 = 259;
    const TRANSLATE: u32 = 261;
    const TRANSCRIBE: u32 = 262;
    const SOT_PREV: u32 = 264;
    const NO_TIMESTAMPS: u32 = 266;

    #[test]
    fn initial_tokens_follow_openai_order_for_a_multilingual_model() {
        let model = fixture_model("tiny");
        assert_eq!(model.config().n_text_ctx, 64);
        let options = |task, prompt: Vec<u32>, without_timestamps| WindowOptions {
            task,
            language: Some(DE),
            prompt,
            without_timestamps,
            ..WindowOptions::default()
        };
        // No prompt: the sot sequence alone, sot first.
        let (tokens, sot) = initial_tokens(&model, &options(Task::Transcribe, vec![], false)).unwrap();
        assert_eq!((tokens, sot), (vec![SOT, DE, TRANSCRIBE], 0));
        let (tokens, sot) = initial_tokens(&model, &options(Task::Translate, vec![], true)).unwrap();
        assert_eq!((tokens, sot), (vec![SOT, DE, TRANSLATE, NO_TIMESTAMPS], 0));
        // A short prompt goes whole after sot_prev, before the sot sequence.
        let (tokens, sot) = initial_tokens(&model, &options(Task::Transcribe, vec![10, 11, 12], true)).unwrap();
        assert_eq!(
            (tokens, sot),
            (vec![SOT_PREV, 10, 11, 12, SOT, DE, TRANSCRIBE, NO_TIMESTAMPS], 4)
        );
        // A long one keeps its last n_text_ctx / 2 - 1 = 31 tokens (openai's
        // `prompt_tokens[-(n_ctx // 2 - 1):]`): tokens 9..40 of 0..40.
        let prompt: Vec<u32> = (0..40).collect();
        let (tokens, sot) = initial_tokens(&model, &options(Task::Translate, prompt, false)).unwrap();
        let mut want = vec![SOT_PREV];
        want.extend(9..40);
        want.extend([SOT, DE, TRANSLATE]);
        assert_eq!((tokens, sot), (want, 32));
        // Exactly 31 tokens: nothing is cut.
        let prompt: Vec<u32> = (100..131).collect();
        let (tokens, _) = initial_tokens(&model, &options(Task::Transcribe, prompt.clone(), false)).unwrap();
        assert_eq!(tokens[1..32], prompt[..]);
        assert_eq!(tokens[32], SOT);
        // A multilingual model needs its language.
        let no_language = WindowOptions {
            language: None,
            ..options(Task::Transcribe, vec![], false)
        };
        assert!(initial_tokens(&model, &no_language).is_err());
    }

    #[test]
    fn initial_tokens_of_an_english_only_model_have_no_language_or_task() {
        let model = fixture_model("tiny-128");
        assert!(!model.special().is_multilingual);
        let opts = |task, prompt: Vec<u32>, without_timestamps| WindowOptions {
            task,
            prompt,
            without_timestamps,
            ..WindowOptions::default()
        };
        assert_eq!(
            initial_tokens(&model, &opts(Task::Transcribe, vec![], false)).unwrap(),
            (vec![SOT], 0)
        );
        assert_eq!(
            initial_tokens(&model, &opts(Task::Transcribe, vec![7, 8], true)).unwrap(),
            (vec![SOT_PREV, 7, 8, SOT, NO_TIMESTAMPS], 3)
        );
        let err = initial_tokens(&model, &opts(Task::Translate, vec![], false)).unwrap_err();
        assert!(err.to_string().contains("English-only"), "{err}");
    }

    #[test]
    fn identical_beams_propose_each_sequence_once() {
        let logits = vec![vec![1.0, 2.0, 3.0, 0.0]; 3];
        let seqs = vec![vec![5]; 3];
        let (next, _, _, _) = beam_step(&logits, &seqs, &[0.0; 3], 3, 3);
        assert_eq!(next, vec![vec![5, 2], vec![5, 1], vec![5, 0]]);
    }
}
