//! The interface every causal language model implements for the engine: a stateless
//! forward pass over a batch of sequences whose KV caches the engine owns.

use std::sync::atomic::{AtomicBool, Ordering};

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
///
/// While `work` runs, the other workers do not go to sleep between products: each runs a
/// job that takes the pool's pending work as it appears and spins otherwise. Between two
/// products (norms, attention, sampling) an idle worker used to fall asleep, and waking it
/// for the next product cost a futex call and a reschedule: about 10% of a 4-beam step's
/// time was the kernel's scheduler. The spinning ends with `work`.
pub fn on_pool<R: Send>(device: &Device, work: impl FnOnce() -> R + Send) -> R {
    if !device.is_cpu() || rayon::current_thread_index().is_some() {
        return work();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        let owner = rayon::current_thread_index();
        let done = &done;
        for _ in 1..rayon::current_num_threads() {
            scope.spawn(move |_| {
                // The thread running `work` may pop this job itself while it waits for a
                // product's other half: spinning there would wait for itself.
                if rayon::current_thread_index() == owner {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let result = work();
        done.store(true, Ordering::Release);
        result
    })
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

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    #[test]
    fn on_pool_runs_parallel_work_from_many_callers_and_returns() {
        // Several callers at once, each with parallel products inside: every call must
        // finish (the spinning helpers end with their call) and compute the right sums.
        let callers: Vec<_> = (0..4u64)
            .map(|c| {
                std::thread::spawn(move || {
                    (0..50u64)
                        .map(|i| {
                            on_pool(&Device::Cpu, || {
                                let a: u64 = (0..10_000u64).into_par_iter().map(|x| x * c + i).sum();
                                let b: u64 = (0..1_000u64).into_par_iter().map(|x| x ^ i).sum();
                                a + b
                            })
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        for (c, caller) in callers.into_iter().enumerate() {
            let c = c as u64;
            let sums = caller.join().expect("caller finishes");
            for (i, sum) in sums.into_iter().enumerate() {
                let i = i as u64;
                let a: u64 = (0..10_000u64).map(|x| x * c + i).sum();
                let b: u64 = (0..1_000u64).map(|x| x ^ i).sum();
                assert_eq!(sum, a + b);
            }
        }
        // From inside the pool it runs in place.
        let inside = rayon::scope(|_| on_pool(&Device::Cpu, || rayon::current_thread_index().is_some()));
        assert!(inside);
    }
}
