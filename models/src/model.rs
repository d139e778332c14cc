//! The interface every causal language model implements for the engine: a stateless
//! forward pass over a batch of sequences whose KV caches the engine owns.

use candle_core::{Device, Tensor};

use crate::Result;
use crate::kv_cache::SeqCache;

/// Facts about a loaded model that the engine and callers need.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// `llama`, `qwen2`, `starcoder2`, ...
    pub architecture: String,
    pub vocab_size: usize,
    /// Positions the model can attend over (prompt + generated tokens).
    pub max_context: usize,
    pub num_layers: usize,
    /// Bytes of weights read per generated token (for bandwidth estimates).
    pub weight_bytes: usize,
}

/// One sequence of a batch: its new tokens and its cache, which the forward pass extends.
pub struct BatchItem<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SeqCache,
    /// Return logits for every new token rather than only the last.
    pub all_logits: bool,
}

/// Runs `work` on a thread of rayon's pool when `device` is the CPU. The CPU kernels split
/// every matrix product over the pool; called from outside it, each product would wake a
/// worker and put the caller to sleep until the pool finished (two thread wake-ups on the
/// critical path, about 150 times per decode step of a 24-layer model). From a worker, the
/// caller takes its share of each product at once and the other workers join as they can:
/// decode went from 46 to 55 tokens/s on 2 cores.
pub fn on_pool<R: Send>(device: &Device, work: impl FnOnce() -> R + Send) -> R {
    if !device.is_cpu() || rayon::current_thread_index().is_some() {
        return work();
    }
    rayon::scope(|_| work())
}

/// `model.forward(batch)` through [`on_pool`].
pub fn forward_on_pool(model: &dyn CausalLm, batch: &mut [BatchItem<'_>]) -> Result<Vec<Tensor>> {
    on_pool(model.device(), || model.forward(batch))
}

/// A decoder-only transformer. Implementations hold weights only; all per-sequence state
/// lives in the [`SeqCache`]s passed in, so one model serves any number of sequences.
pub trait CausalLm: Send + Sync {
    fn info(&self) -> &ModelInfo;
    fn device(&self) -> &Device;
    /// Runs every item's new tokens in one packed batch (no padding), appends their keys
    /// and values to the items' caches, and returns per item the logits `[n, vocab]` (or
    /// `[1, vocab]` for the last token when `all_logits` is false), as f32.
    fn forward(&self, batch: &mut [BatchItem<'_>]) -> Result<Vec<Tensor>>;
}

/// Checks a batch before running it: non-empty inputs that fit in the context.
pub(crate) fn check_batch(info: &ModelInfo, batch: &[BatchItem<'_>]) -> Result<()> {
    for item in batch {
        if item.tokens.is_empty() {
            return Err(crate::Error::InvalidInput(
                "a sequence in the batch has no new tokens".into(),
            ));
        }
        let total = item.cache.len() + item.tokens.len();
        if total > info.max_context {
            return Err(crate::Error::InvalidInput(format!(
                "{total} tokens exceed the model's context of {} tokens",
                info.max_context
            )));
        }
    }
    Ok(())
}
