//! The engine: one loaded model and the state it serves — a bounded LRU of cached
//! prompt prefixes, so that a request whose tokens start with an earlier request's tokens
//! (the next keystroke in an editor) prefills only the tokens that changed — and the entry
//! points that tokenise, prefill and decode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::Tensor;

use crate::generate::{
    self, Completion, Detokenize, FinishReason, GenerateParams, Generation, OnText, Prefilled, Start, ms_since,
};
use crate::kv_cache::{SeqCache, common_prefix_len};
use crate::model::{BatchItem, CausalLm};
use crate::{Error, Result};

/// Prompt tokens run per forward pass when a prefill can be cancelled: small enough that a
/// cancel is seen within a fraction of a second on a laptop CPU, large enough that the
/// matrix products stay efficient.
pub const PREFILL_CHUNK_TOKENS: usize = 64;

/// Limits of the prefix cache.
#[derive(Debug, Clone, Copy)]
pub struct PrefixCacheLimits {
    pub max_entries: usize,
    pub max_tokens: usize,
}

impl Default for PrefixCacheLimits {
    fn default() -> Self {
        PrefixCacheLimits {
            max_entries: 8,
            max_tokens: 32 * 1024,
        }
    }
}

/// Recently prefilled prompts, least recently used first out.
#[derive(Debug, Default)]
struct PrefixCache {
    limits: PrefixCacheLimits,
    /// Most recently used last.
    entries: Vec<SeqCache>,
}

impl PrefixCache {
    /// The cached sequence sharing the longest prefix with `prompt`, forked and truncated
    /// so that at least one prompt token remains to be run (its logits are needed).
    fn lookup(&mut self, prompt: &[u32]) -> Result<Option<SeqCache>> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix_len(e.tokens(), prompt)))
            .max_by_key(|&(i, l)| (l, i));
        let Some((i, lcp)) = best else {
            return Ok(None);
        };
        let keep = lcp.min(prompt.len().saturating_sub(1));
        if keep == 0 {
            return Ok(None);
        }
        let entry = self.entries.remove(i);
        let mut fork = entry.fork();
        self.entries.push(entry);
        fork.truncate(keep)?;
        Ok(Some(fork))
    }

    fn insert(&mut self, cache: SeqCache) {
        if cache.is_empty() || self.limits.max_entries == 0 {
            return;
        }
        // An entry that is a prefix of the new one adds nothing.
        self.entries
            .retain(|e| common_prefix_len(e.tokens(), cache.tokens()) < e.len());
        self.entries.push(cache);
        while self.entries.len() > self.limits.max_entries
            || self.entries.iter().map(SeqCache::len).sum::<usize>() > self.limits.max_tokens
        {
            if self.entries.len() == 1 {
                break;
            }
            self.entries.remove(0);
        }
    }
}

/// A model ready to serve requests. Cheap to share (`Arc`); requests may run concurrently.
pub struct Engine {
    model: Arc<dyn CausalLm>,
    prefix_cache: Mutex<PrefixCache>,
}

impl Engine {
    pub fn new(model: Arc<dyn CausalLm>) -> Self {
        Self::with_limits(model, PrefixCacheLimits::default())
    }

    pub fn with_limits(model: Arc<dyn CausalLm>, limits: PrefixCacheLimits) -> Self {
        Engine {
            model,
            prefix_cache: Mutex::new(PrefixCache {
                limits,
                entries: Vec::new(),
            }),
        }
    }

    pub fn model(&self) -> &dyn CausalLm {
        self.model.as_ref()
    }

    /// Drops every cached prefix.
    pub fn clear_prefix_cache(&self) {
        self.prefix_cache.lock().expect("prefix cache lock").entries.clear();
    }

    /// Runs the prompt, reusing the longest cached prefix, and remembers the result for
    /// later requests. Returns the cache, the last token's logits and how many prompt
    /// tokens were reused.
    /// Runs in chunks of [`PREFILL_CHUNK_TOKENS`]: on CPU that is as fast as one pass or
    /// faster (the chunk's activations stay in cache; see docs/BENCHMARKS.md).
    pub fn prefill(&self, prompt: &[u32]) -> Result<(Prefilled, usize)> {
        let never = AtomicBool::new(false);
        Ok(self
            .prefill_cancellable(prompt, &never)?
            .expect("a prefill that cannot be cancelled completes"))
    }

    /// [`Engine::prefill`] for several prompts in one packed batch, in one pass.
    pub fn prefill_many(&self, prompts: &[&[u32]]) -> Result<Vec<(Prefilled, usize)>> {
        let mut caches = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            caches.push(self.reusable_cache(prompt)?);
        }
        let reused: Vec<usize> = caches.iter().map(SeqCache::len).collect();
        let logits = {
            let mut batch: Vec<BatchItem<'_>> = caches
                .iter_mut()
                .zip(prompts)
                .zip(&reused)
                .map(|((cache, prompt), &r)| BatchItem {
                    tokens: &prompt[r..],
                    cache,
                    all_logits: false,
                })
                .collect();
            crate::model::forward_on_pool(self.model.as_ref(), &mut batch)?
        };
        let mut lru = self.prefix_cache.lock().expect("prefix cache lock");
        Ok(caches
            .into_iter()
            .zip(logits)
            .zip(reused)
            .map(|((cache, logits), r)| {
                lru.insert(cache.fork());
                (Prefilled { cache, logits }, r)
            })
            .collect())
    }

    /// [`Engine::prefill`] in chunks of [`PREFILL_CHUNK_TOKENS`], checking `cancel` between
    /// chunks: a long prompt (a cold editor request) stops within one chunk of a cancel.
    /// What was prefilled before the cancel stays in the prefix cache for the next request.
    /// Returns `None` when cancelled.
    pub fn prefill_cancellable(&self, prompt: &[u32], cancel: &AtomicBool) -> Result<Option<(Prefilled, usize)>> {
        let mut cache = self.reusable_cache(prompt)?;
        let reused = cache.len();
        let mut done = reused;
        loop {
            if cancel.load(Ordering::Relaxed) {
                if cache.len() > reused {
                    self.prefix_cache.lock().expect("prefix cache lock").insert(cache);
                }
                return Ok(None);
            }
            let end = (done + PREFILL_CHUNK_TOKENS).min(prompt.len());
            let logits = {
                let mut batch = [BatchItem {
                    tokens: &prompt[done..end],
                    cache: &mut cache,
                    all_logits: false,
                }];
                crate::model::forward_on_pool(self.model.as_ref(), &mut batch)?.remove(0)
            };
            done = end;
            if done == prompt.len() {
                self.prefix_cache
                    .lock()
                    .expect("prefix cache lock")
                    .insert(cache.fork());
                return Ok(Some((Prefilled { cache, logits }, reused)));
            }
        }
    }

    /// Checks the prompt's length and finds the longest cached prefix to start from.
    fn reusable_cache(&self, prompt: &[u32]) -> Result<SeqCache> {
        let max = self.model.info().max_context;
        if prompt.is_empty() {
            return Err(Error::InvalidInput("the prompt is empty".into()));
        }
        if prompt.len() >= max {
            return Err(Error::InvalidInput(format!(
                "the prompt has {} tokens but the model's context is {max} tokens (room is needed to generate)",
                prompt.len()
            )));
        }
        let reused = self.prefix_cache.lock().expect("prefix cache lock").lookup(prompt)?;
        Ok(reused.unwrap_or_default())
    }

    /// Logits for every prompt position from a cold cache (no prefix reuse): for tests and
    /// scoring.
    pub fn logits(&self, tokens: &[u32]) -> Result<Tensor> {
        let mut cache = SeqCache::new();
        let mut batch = [BatchItem {
            tokens,
            cache: &mut cache,
            all_logits: true,
        }];
        Ok(crate::model::forward_on_pool(self.model.as_ref(), &mut batch)?.remove(0))
    }

    /// Generates from token ids. `detok` is needed for stop strings, the stop predicate,
    /// completion text and streaming.
    pub fn generate_tokens(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        detok: Option<Detokenize<'_>>,
        on_text: Option<OnText<'_>>,
    ) -> Result<Generation> {
        if params.max_new_tokens == 0 {
            return Err(Error::InvalidInput("max new tokens must be at least 1".into()));
        }
        let t0 = Instant::now();
        let (prefilled, reused_tokens) = match &params.cancel {
            Some(cancel) => match self.prefill_cancellable(prompt, cancel)? {
                Some(prefilled) => prefilled,
                None => {
                    return Ok(Generation {
                        completions: vec![Completion {
                            tokens: Vec::new(),
                            text: String::new(),
                            score: 0.0,
                            finish_reason: FinishReason::Cancelled,
                        }],
                        prompt_tokens: prompt.len(),
                        reused_tokens: 0,
                        prefill_ms: ms_since(t0),
                        decode_ms: 0.0,
                        decode_steps: 0,
                    });
                }
            },
            None => self.prefill(prompt)?,
        };
        let prefill_ms = ms_since(t0);
        let room = self.model.info().max_context - prompt.len();
        let mut params_local;
        let params = if params.max_new_tokens > room {
            params_local = params.clone();
            params_local.max_new_tokens = room;
            &params_local
        } else {
            params
        };
        let t1 = Instant::now();
        let (completions, decode_steps) = match &params.beams {
            Some(b) if b.num_beams > 1 => generate::generate_beam(self.model(), prompt, prefilled, params, b, detok)?,
            _ => generate::generate_simple(self.model(), vec![Start { prompt, prefilled }], params, detok, on_text)?,
        };
        Ok(Generation {
            completions,
            prompt_tokens: prompt.len(),
            reused_tokens,
            prefill_ms,
            decode_ms: ms_since(t1),
            decode_steps,
        })
    }

    /// Greedy decoding or sampling of several independent prompts, prefilled and stepped
    /// together in one batch. Returns each prompt's completions, in prompt order.
    pub fn generate_batch(
        &self,
        prompts: &[&[u32]],
        params: &GenerateParams,
        detok: Option<Detokenize<'_>>,
    ) -> Result<Vec<Vec<Completion>>> {
        if params.beams.as_ref().is_some_and(|b| b.num_beams > 1) {
            return Err(Error::InvalidInput(
                "batched requests use greedy decoding or sampling, not beams".into(),
            ));
        }
        if params.max_new_tokens == 0 {
            return Err(Error::InvalidInput("max new tokens must be at least 1".into()));
        }
        let room = prompts
            .iter()
            .map(|p| self.model.info().max_context.saturating_sub(p.len()))
            .min()
            .unwrap_or(0);
        let mut params = params.clone();
        params.max_new_tokens = params.max_new_tokens.min(room.max(1));
        let starts = self
            .prefill_many(prompts)?
            .into_iter()
            .zip(prompts)
            .map(|((prefilled, _), prompt)| Start { prompt, prefilled })
            .collect();
        let (completions, _) = generate::generate_simple(self.model(), starts, &params, detok, None)?;
        let per_prompt = completions.len() / prompts.len().max(1);
        let mut out = Vec::with_capacity(prompts.len());
        let mut it = completions.into_iter();
        for _ in 0..prompts.len() {
            out.push(it.by_ref().take(per_prompt).collect());
        }
        Ok(out)
    }
}
