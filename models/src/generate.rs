//! Decoding: greedy, seeded sampling and beam search over a [`CausalLm`], with the stop
//! conditions a code assistant needs (eos ids, stop strings matched on decoded text across
//! token boundaries, a caller's predicate over the text, max new tokens), cancellation
//! checked every step, and UTF-8-safe streaming of text deltas.
//!
//! Beam search follows Hugging Face transformers (`generation/utils.py`, `_beam_search`):
//! (1 + number of eos ids, at least 2) × beams candidates per step, a finished hypothesis
//! counts only when it ranks within the top `num_beams` candidates, and its score is the
//! sum of token log-probabilities divided by `generated_len ^ length_penalty` (the eos
//! token counted).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::Tensor;

use crate::kv_cache::SeqCache;
use crate::model::{BatchItem, CausalLm};
use crate::sampling::{self, Sampler, Sampling};
use crate::{Error, Result};

/// A caller's test over the decoded completion: `Some(n)` stops generation and keeps the
/// first `n` bytes of the text (the language server stops on syntax this way).
pub type StopPredicate = Arc<dyn Fn(&str) -> Option<usize> + Send + Sync>;

/// Beam search settings, with Hugging Face's names and meanings.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamParams {
    pub num_beams: usize,
    pub length_penalty: f32,
    pub early_stopping: bool,
    pub num_return_sequences: usize,
}

impl Default for BeamParams {
    fn default() -> Self {
        BeamParams {
            num_beams: 4,
            length_penalty: 1.0,
            early_stopping: false,
            num_return_sequences: 1,
        }
    }
}

/// What to generate and when to stop.
#[derive(Clone)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Number of independent samples when sampling (ignored for greedy).
    pub num_samples: usize,
    pub repetition_penalty: f32,
    /// Beam search instead of greedy/sampling when set with `num_beams > 1`.
    pub beams: Option<BeamParams>,
    pub eos_ids: Vec<u32>,
    pub stop_strings: Vec<String>,
    pub stop_predicate: Option<StopPredicate>,
    pub cancel: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for GenerateParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateParams")
            .field("max_new_tokens", &self.max_new_tokens)
            .field("sampling", &self.sampling)
            .field("beams", &self.beams)
            .field("eos_ids", &self.eos_ids)
            .field("stop_strings", &self.stop_strings)
            .finish_non_exhaustive()
    }
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_new_tokens: 64,
            sampling: Sampling::Greedy,
            num_samples: 1,
            repetition_penalty: 1.0,
            beams: None,
            eos_ids: Vec::new(),
            stop_strings: Vec::new(),
            stop_predicate: None,
            cancel: None,
        }
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token.
    Eos,
    /// A stop string or the caller's predicate.
    Stop,
    /// `max_new_tokens`.
    Length,
    /// The cancellation flag was raised.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Generated tokens (an eos token that ended it included).
    pub tokens: Vec<u32>,
    /// Decoded text, cut at a stop string or where the predicate said.
    pub text: String,
    /// Sum of log-probabilities; for beam search divided by `len ^ length_penalty`.
    pub score: f32,
    pub finish_reason: FinishReason,
}

/// Everything a decode produced, with its timings.
#[derive(Debug, Clone)]
pub struct Generation {
    pub completions: Vec<Completion>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values came from the prefix cache.
    pub reused_tokens: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    pub decode_steps: usize,
}

/// Turns token ids into text (the tokenizer's decode, without special tokens).
pub type Detokenize<'a> = &'a dyn Fn(&[u32]) -> Result<String>;

/// Streaming callback: `(sequence index, text delta)`.
pub type OnText<'a> = &'a mut dyn FnMut(usize, &str);

/// The prompt after prefill: its cache and the logits of its last token.
pub struct Prefilled {
    pub cache: SeqCache,
    pub logits: Tensor,
}

fn cancelled(params: &GenerateParams) -> bool {
    params.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
}

/// Decoded-text bookkeeping shared by all strategies: stop strings and the predicate.
struct TextCheck<'a> {
    detok: Option<Detokenize<'a>>,
    params: &'a GenerateParams,
}

impl TextCheck<'_> {
    fn needs_text(&self) -> bool {
        self.detok.is_some()
    }

    /// The text of `tokens` and, if it should stop there, where to cut it.
    fn check(&self, tokens: &[u32]) -> Result<(String, Option<usize>)> {
        let Some(detok) = self.detok else {
            return Ok((String::new(), None));
        };
        let text = detok(tokens)?;
        let mut cut: Option<usize> = None;
        for s in &self.params.stop_strings {
            if s.is_empty() {
                continue;
            }
            if let Some(i) = text.find(s.as_str()) {
                cut = Some(cut.map_or(i, |c| c.min(i)));
            }
        }
        if let Some(pred) = &self.params.stop_predicate {
            let upto = cut.unwrap_or(text.len());
            if let Some(n) = pred(&text[..upto]) {
                let n = floor_char_boundary(&text, n.min(upto));
                cut = Some(n);
            }
        }
        Ok((text, cut))
    }

    /// How much of `text` is safe to stream: not ending in a partial character (U+FFFD
    /// from a split byte sequence) and not a possible start of a stop string.
    fn stable_len(&self, text: &str) -> usize {
        let trimmed = text.trim_end_matches('\u{FFFD}');
        let mut len = trimmed.len();
        for s in &self.params.stop_strings {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && trimmed.ends_with(&s[..k]) {
                    len = len.min(trimmed.len() - k);
                    break;
                }
            }
        }
        len
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Logits of one row as a vector.
fn row(logits: &Tensor, i: usize) -> Result<Vec<f32>> {
    Ok(logits.get(i)?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
}

/// Per row of `logits` (`[rows, vocab]`): its `count` best tokens and their
/// log-probabilities. Log-probabilities are the logits shifted by one constant (the row's
/// log-sum-exp), so the best tokens are picked from the logits without materialising the
/// vector; rows are read in place and done in parallel.
fn best_log_probs(logits: &Tensor, rows: usize, count: usize) -> Result<Vec<Vec<(u32, f32)>>> {
    use rayon::prelude::*;
    let pick = |raw: &[f32]| -> Vec<(u32, f32)> {
        let lse = sampling::log_sum_exp(raw);
        sampling::top_k(raw, count)
            .into_iter()
            .map(|(tok, l)| (tok, l - lse))
            .collect()
    };
    let in_place = crate::weights::with_cpu_f32(logits, |all| {
        let vocab = all.len() / rows.max(1);
        Ok(all.par_chunks_exact(vocab.max(1)).map(pick).collect::<Vec<_>>())
    })?;
    match in_place {
        Some(best) if best.len() == rows => Ok(best),
        _ => (0..rows).map(|i| Ok(pick(&row(logits, i)?))).collect(),
    }
}

/// Runs one decode step for several sequences in one batch; returns `[n, vocab]` logits.
fn step(model: &dyn CausalLm, caches: &mut [&mut SeqCache], tokens: &[u32]) -> Result<Tensor> {
    let singles: Vec<[u32; 1]> = tokens.iter().map(|&t| [t]).collect();
    let mut batch: Vec<BatchItem<'_>> = caches
        .iter_mut()
        .zip(&singles)
        .map(|(c, t)| BatchItem {
            tokens: t,
            cache: c,
            all_logits: false,
        })
        .collect();
    let out = crate::model::forward_on_pool(model, &mut batch)?;
    Ok(Tensor::cat(&out, 0)?)
}

/// One prompt to continue: its tokens (for the repetition penalty) and its prefill.
pub struct Start<'p> {
    pub prompt: &'p [u32],
    pub prefilled: Prefilled,
}

struct Running<'p> {
    prompt: &'p [u32],
    cache: SeqCache,
    tokens: Vec<u32>,
    logprob: f32,
    done: Option<FinishReason>,
    text: String,
    streamed: usize,
    sampler: Option<Sampler>,
}

/// Greedy decoding or sampling for one or more prompts, `num_samples` independent
/// sequences each when sampling, all stepped together in one batch. Completions come in
/// prompt order, the samples of a prompt together.
pub fn generate_simple(
    model: &dyn CausalLm,
    starts: Vec<Start<'_>>,
    params: &GenerateParams,
    detok: Option<Detokenize<'_>>,
    mut on_text: Option<OnText<'_>>,
) -> Result<(Vec<Completion>, usize)> {
    let check = TextCheck { detok, params };
    let per_prompt = match params.sampling {
        Sampling::Greedy => 1,
        Sampling::Sample { .. } => params.num_samples.max(1),
    };
    let n = starts.len() * per_prompt;
    let mut seqs: Vec<Running> = (0..n)
        .map(|i| Running {
            prompt: starts[i / per_prompt].prompt,
            cache: starts[i / per_prompt].prefilled.cache.fork(),
            tokens: Vec::new(),
            logprob: 0.0,
            done: None,
            text: String::new(),
            streamed: 0,
            sampler: match params.sampling {
                Sampling::Greedy => None,
                Sampling::Sample {
                    temperature,
                    top_k,
                    top_p,
                    seed,
                } => Some(Sampler::new(temperature, top_k, top_p, seed.wrapping_add(i as u64))),
            },
        })
        .collect();
    let first: Vec<Tensor> = seqs
        .iter()
        .enumerate()
        .map(|(i, _)| starts[i / per_prompt].prefilled.logits.clone())
        .collect();
    let mut logits = Tensor::cat(&first, 0)?;
    drop(starts);
    let mut alive: Vec<usize> = (0..n).collect();
    let mut steps = 0;
    while !alive.is_empty() {
        if cancelled(params) {
            for &i in &alive {
                seqs[i].done = Some(FinishReason::Cancelled);
            }
            break;
        }
        let mut next_alive = Vec::with_capacity(alive.len());
        let mut next_tokens = Vec::with_capacity(alive.len());
        for (r, &i) in alive.iter().enumerate() {
            let seq = &mut seqs[i];
            let mut l = row(&logits, r)?;
            if params.repetition_penalty != 1.0 {
                let seen: Vec<u32> = seq.prompt.iter().chain(&seq.tokens).copied().collect();
                sampling::apply_repetition_penalty(&mut l, &seen, params.repetition_penalty);
            }
            let tok = match &mut seq.sampler {
                None => sampling::argmax(&l),
                Some(s) => s.sample(&l),
            };
            seq.logprob += l[tok as usize] - sampling::log_sum_exp(&l);
            seq.tokens.push(tok);
            if params.eos_ids.contains(&tok) {
                seq.done = Some(FinishReason::Eos);
                if check.needs_text() {
                    let (text, _) = check.check(&seq.tokens[..seq.tokens.len() - 1])?;
                    seq.text = text;
                }
                continue;
            }
            if check.needs_text() {
                let (text, cut) = check.check(&seq.tokens)?;
                seq.text = text;
                if let Some(c) = cut {
                    seq.text.truncate(c);
                    seq.done = Some(FinishReason::Stop);
                    continue;
                }
                if let Some(cb) = on_text.as_deref_mut() {
                    let stable = check.stable_len(&seq.text);
                    if stable > seq.streamed {
                        cb(i, &seq.text[seq.streamed..stable]);
                        seq.streamed = stable;
                    }
                }
            }
            if seq.tokens.len() >= params.max_new_tokens {
                seq.done = Some(FinishReason::Length);
                continue;
            }
            next_alive.push(i);
            next_tokens.push(tok);
        }
        alive = next_alive;
        if alive.is_empty() {
            break;
        }
        let mut caches: Vec<&mut SeqCache> = Vec::with_capacity(alive.len());
        for (i, s) in seqs.iter_mut().enumerate() {
            if alive.contains(&i) {
                caches.push(&mut s.cache);
            }
        }
        logits = step(model, &mut caches, &next_tokens)?;
        steps += 1;
    }
    let mut out = Vec::with_capacity(n);
    for (i, mut s) in seqs.into_iter().enumerate() {
        if let Some(cb) = on_text.as_deref_mut()
            && s.text.len() > s.streamed
        {
            cb(i, &s.text[s.streamed..]);
        }
        if s.done == Some(FinishReason::Cancelled) && check.needs_text() {
            s.text = check.check(&s.tokens)?.0;
        }
        out.push(Completion {
            tokens: s.tokens,
            text: s.text,
            score: s.logprob,
            finish_reason: s.done.unwrap_or(FinishReason::Length),
        });
    }
    Ok((out, steps))
}

struct Beam {
    cache: SeqCache,
    tokens: Vec<u32>,
    sum_logprob: f32,
}

/// Finished hypotheses, keeping the best `capacity` by normalised score.
struct Hypotheses {
    capacity: usize,
    length_penalty: f32,
    items: Vec<Completion>,
}

impl Hypotheses {
    fn normalise(&self, sum: f32, len: usize) -> f32 {
        sum / (len.max(1) as f32).powf(self.length_penalty)
    }

    fn add(&mut self, c: Completion) {
        if self.items.len() < self.capacity || c.score > self.worst() {
            self.items.push(c);
            self.items
                .sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(std::cmp::Ordering::Equal));
            self.items.truncate(self.capacity);
        }
    }

    fn worst(&self) -> f32 {
        self.items.last().map_or(f32::NEG_INFINITY, |c| c.score)
    }

    fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }
}

/// Beam search. Beams are batched into one forward per step; a beam's cache is a fork of
/// its parent's (shared blocks), so reordering beams never copies the cache.
pub fn generate_beam(
    model: &dyn CausalLm,
    prompt: &[u32],
    prefilled: Prefilled,
    params: &GenerateParams,
    beam: &BeamParams,
    detok: Option<Detokenize<'_>>,
) -> Result<(Vec<Completion>, usize)> {
    if beam.num_beams == 0 {
        return Err(Error::InvalidInput("num_beams must be at least 1".into()));
    }
    if beam.num_return_sequences > beam.num_beams {
        return Err(Error::InvalidInput(format!(
            "num_return_sequences ({}) cannot exceed num_beams ({})",
            beam.num_return_sequences, beam.num_beams
        )));
    }
    let check = TextCheck { detok, params };
    let k = beam.num_beams;
    // As in transformers: enough candidates that `k` beams keep running even when every
    // eos id of every beam ranks on top (with 2k, several eos ids could leave fewer).
    let keep = (1 + params.eos_ids.len()).max(2) * k;
    let mut hyps = Hypotheses {
        capacity: k,
        length_penalty: beam.length_penalty,
        items: Vec::new(),
    };
    let mut beams = vec![Beam {
        cache: prefilled.cache,
        tokens: Vec::new(),
        sum_logprob: 0.0,
    }];
    let mut logits = prefilled.logits;
    let mut steps = 0;
    for step_index in 0..params.max_new_tokens {
        if cancelled(params) {
            for b in &beams {
                let (text, _) = check.check(&b.tokens)?;
                hyps.add(Completion {
                    score: hyps.normalise(b.sum_logprob, b.tokens.len()),
                    tokens: b.tokens.clone(),
                    text,
                    finish_reason: FinishReason::Cancelled,
                });
            }
            break;
        }
        let last_step = step_index + 1 == params.max_new_tokens;
        // Candidates: (total log-prob, beam, token), the best `keep` over all beams.
        let mut cands: Vec<(f32, usize, u32)> = Vec::with_capacity(beams.len() * keep);
        let best = if params.repetition_penalty == 1.0 {
            best_log_probs(&logits, beams.len(), keep)?
        } else {
            Vec::new()
        };
        for (bi, b) in beams.iter().enumerate() {
            if params.repetition_penalty != 1.0 {
                let raw = row(&logits, bi)?;
                let mut lp = sampling::log_softmax(&raw);
                let seen: Vec<u32> = prompt.iter().chain(&b.tokens).copied().collect();
                sampling::apply_repetition_penalty(&mut lp, &seen, params.repetition_penalty);
                for (tok, l) in sampling::top_k(&lp, keep) {
                    cands.push((b.sum_logprob + l, bi, tok));
                }
            } else {
                for &(tok, l) in &best[bi] {
                    cands.push((b.sum_logprob + l, bi, tok));
                }
            }
        }
        cands.sort_by(|a, b| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
        });
        cands.truncate(keep);
        let mut next: Vec<(f32, usize, u32)> = Vec::with_capacity(k);
        for (rank, &(score, bi, tok)) in cands.iter().enumerate() {
            let mut tokens = beams[bi].tokens.clone();
            tokens.push(tok);
            let (finish, text) = if params.eos_ids.contains(&tok) {
                (Some(FinishReason::Eos), check.check(&tokens[..tokens.len() - 1])?.0)
            } else {
                let (mut text, cut) = check.check(&tokens)?;
                match cut {
                    Some(c) => {
                        text.truncate(c);
                        (Some(FinishReason::Stop), text)
                    }
                    None if last_step => (Some(FinishReason::Length), text),
                    None => (None, text),
                }
            };
            match finish {
                Some(reason) => {
                    if rank < k {
                        hyps.add(Completion {
                            score: hyps.normalise(score, tokens.len()),
                            tokens,
                            text,
                            finish_reason: reason,
                        });
                    }
                }
                None => {
                    if next.len() < k {
                        next.push((score, bi, tok));
                    }
                }
            }
            if next.len() == k && rank + 1 >= k {
                break;
            }
        }
        if last_step || next.is_empty() {
            break;
        }
        if hyps.is_full() {
            let done = beam.early_stopping || {
                let best_running = next[0].0;
                let cur_len = beams[0].tokens.len() + 1;
                hyps.worst() >= hyps.normalise(best_running, cur_len)
            };
            if done {
                break;
            }
        }
        let mut new_beams: Vec<Beam> = next
            .iter()
            .map(|&(score, bi, tok)| {
                let parent = &beams[bi];
                let mut tokens = parent.tokens.clone();
                tokens.push(tok);
                Beam {
                    cache: parent.cache.fork(),
                    tokens,
                    sum_logprob: score,
                }
            })
            .collect();
        drop(beams);
        let toks: Vec<u32> = next.iter().map(|c| c.2).collect();
        let mut caches: Vec<&mut SeqCache> = new_beams.iter_mut().map(|b| &mut b.cache).collect();
        logits = step(model, &mut caches, &toks)?;
        steps += 1;
        beams = new_beams;
    }
    let mut out = hyps.items;
    out.truncate(beam.num_return_sequences.max(1));
    Ok((out, steps))
}

/// Milliseconds since `t`.
pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stable(stops: &[&str], text: &str) -> usize {
        let params = GenerateParams {
            stop_strings: stops.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        TextCheck {
            detok: None,
            params: &params,
        }
        .stable_len(text)
    }

    #[test]
    fn stable_len_holds_back_split_characters() {
        assert_eq!(stable(&[], "abc"), 3);
        assert_eq!(stable(&[], "ab\u{FFFD}"), 2);
        // Several cut characters in a row (a lossy decode's U+FFFD each).
        assert_eq!(stable(&[], "é\u{FFFD}\u{FFFD}"), "é".len());
        // A replacement character before the end is settled text.
        assert_eq!(stable(&[], "a\u{FFFD}b"), "a\u{FFFD}b".len());
        assert_eq!(stable(&[], ""), 0);
    }

    #[test]
    fn stable_len_holds_back_a_possible_start_of_a_stop_string() {
        let stop = ["<END>"];
        assert_eq!(stable(&stop, "ab<"), 2);
        assert_eq!(stable(&stop, "ab<EN"), 2);
        assert_eq!(stable(&stop, "ab<END"), 2);
        // Ruled out as a stop: everything is stable.
        assert_eq!(stable(&stop, "ab<EX"), 5);
        assert_eq!(stable(&stop, "a<E b"), 5);
        // The longest matching prefix counts ("aa" of "aab", not just "a").
        assert_eq!(stable(&["aab"], "xaa"), 1);
        assert_eq!(stable(&["aab"], "xa"), 1);
        // Several stop strings: the largest hold-back wins.
        assert_eq!(stable(&["\n\n", "<END>"], "ab<E"), 2);
        assert_eq!(stable(&["\n\n", "<END>"], "ab\n"), 2);
        // Empty stop strings hold nothing back.
        assert_eq!(stable(&[""], "ab"), 2);
    }

    #[test]
    fn stable_len_handles_multibyte_stops_and_split_characters_together() {
        // A stop prefix is only matched at the stop's character boundaries.
        assert_eq!(stable(&["→→"], "a→"), 1);
        assert_eq!(stable(&["é!"], "xé"), 1);
        // A split character after a stop prefix: both are held back.
        assert_eq!(stable(&["<END>"], "ab<E\u{FFFD}"), 2);
        // The split character may itself begin a multi-byte stop: still only whole
        // characters before it are shown.
        assert_eq!(stable(&["→→"], "ab\u{FFFD}"), 2);
    }
}
