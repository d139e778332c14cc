//! Turning logits into the next token: the logits processors (repetition penalty,
//! temperature, top-k, top-p) in Hugging Face's order, greedy choice, seeded sampling, and
//! the top candidates beam search expands.

use rand::SeedableRng;
use rand::distr::Distribution;
use rand::rngs::StdRng;

/// How to pick each next token when not using beam search.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    Greedy,
    Sample {
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        seed: u64,
    },
}

/// Hugging Face's repetition penalty (Keskar et al. 2019): logits of tokens already in
/// the sequence are divided by `penalty` when positive and multiplied when negative.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::with_capacity(seen.len());
    for &t in seen {
        if let Some(l) = logits.get_mut(t as usize)
            && done.insert(t)
        {
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// Index of the largest value (the first on ties, as `torch.argmax`).
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// `ln(sum(exp(xs)))`, computed stably: `log_softmax(xs)[i] == xs[i] - log_sum_exp(xs)`.
pub fn log_sum_exp(xs: &[f32]) -> f32 {
    tessera_kernels::elementwise::log_sum_exp(xs)
}

/// `xs` replaced by its softmax, vectorised.
pub fn softmax_in_place(xs: &mut [f32]) {
    let len = xs.len();
    if len > 0 {
        tessera_kernels::elementwise::softmax_rows(xs, len);
    }
}

/// Numerically stable log-softmax.
pub fn log_softmax(xs: &[f32]) -> Vec<f32> {
    let log_sum = log_sum_exp(xs);
    xs.iter().map(|&x| x - log_sum).collect()
}

/// The `k` largest values as `(index, value)`, largest first (ties: lower index first).
pub fn top_k(xs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(xs.len());
    if k == 0 {
        return Vec::new();
    }
    // Beam search asks for 2 x beams of a 150k vocabulary every step: one pass keeping a
    // small sorted buffer beats partitioning an index array of the whole vocabulary.
    if k <= 64 {
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        for (i, &x) in xs.iter().enumerate() {
            if best.len() == k && x.partial_cmp(&best[k - 1].1) != Some(std::cmp::Ordering::Greater) {
                continue;
            }
            let pos = best.partition_point(|&(_, v)| v >= x);
            best.insert(pos, (i as u32, x));
            best.truncate(k);
        }
        return best;
    }
    let mut idx: Vec<u32> = (0..xs.len() as u32).collect();
    let cmp = |a: &u32, b: &u32| {
        xs[*b as usize]
            .partial_cmp(&xs[*a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    };
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, xs[i as usize])).collect()
}

/// A seeded sampler: the same seed and logits give the same tokens.
pub struct Sampler {
    rng: StdRng,
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
}

impl Sampler {
    pub fn new(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> Self {
        Sampler {
            rng: StdRng::seed_from_u64(seed),
            temperature,
            top_k,
            top_p,
        }
    }

    /// The distribution the next token is drawn from: temperature, then top-k, then top-p
    /// (Hugging Face's warpers in `generate`'s order) applied to `logits` (the repetition
    /// penalty already applied), as `(token, probability)` of the tokens kept, most likely
    /// first. Greedy (temperature 0) keeps the argmax alone.
    pub fn distribution(&self, logits: &[f32]) -> Vec<(u32, f64)> {
        if self.temperature <= 0.0 {
            return vec![(argmax(logits), 1.0)];
        }
        let (cands, probs) = self.kept(logits);
        let total: f64 = probs.iter().sum();
        cands.iter().zip(&probs).map(|(&(id, _), &q)| (id, q / total)).collect()
    }

    /// The tokens top-k and top-p keep, most likely first, with their probabilities before
    /// top-p (which the draw weighs as they are: only their ratios matter).
    fn kept(&self, logits: &[f32]) -> (Vec<(u32, f32)>, Vec<f64>) {
        let k = self.top_k.filter(|&k| k > 0).unwrap_or(logits.len());
        let mut cands = top_k(logits, k);
        let t = self.temperature;
        let max = cands[0].1;
        let mut probs: Vec<f64> = cands.iter().map(|&(_, l)| (((l - max) / t) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(p) = self.top_p.filter(|&p| p > 0.0 && p < 1.0) {
            // Keep the smallest prefix whose mass reaches p (always at least one token).
            let mut mass = 0.0;
            let mut keep = 0;
            for &q in &probs {
                keep += 1;
                mass += q;
                if mass >= p as f64 {
                    break;
                }
            }
            cands.truncate(keep);
            probs.truncate(keep);
        }
        (cands, probs)
    }

    /// Draws a token from [`Sampler::distribution`].
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let (cands, probs) = self.kept(logits);
        match rand::distr::weighted::WeightedIndex::new(&probs) {
            Ok(dist) => cands[dist.sample(&mut self.rng)].0,
            Err(_) => cands[0].0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_follows_hf_sign_rule() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 1], 2.0);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_is_sorted_and_stable() {
        let xs = [0.1, 0.5, 0.5, -1.0, 0.3];
        assert_eq!(top_k(&xs, 3), vec![(1, 0.5), (2, 0.5), (4, 0.3)]);
        // The small-k scan and the partition path agree on a large input.
        let big: Vec<f32> = (0..5000).map(|i| ((i * 7919) % 1013) as f32 * 0.5).collect();
        let fast = top_k(&big, 64);
        let slow = top_k(&big, 65);
        assert_eq!(fast[..], slow[..64]);
        assert_eq!(argmax(&xs), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(1.0, Some(5), None, seed);
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let allowed: Vec<u32> = top_k(&logits, 5).into_iter().map(|(i, _)| i).collect();
        assert!(draw(3).iter().all(|t| allowed.contains(t)));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        // One token holds almost all the mass: top_p 0.5 must always pick it.
        let mut logits = vec![0.0; 10];
        logits[4] = 10.0;
        let mut s = Sampler::new(1.0, None, Some(0.5), 1);
        assert!((0..100).all(|_| s.sample(&logits) == 4));
    }

    #[test]
    fn log_softmax_normalises() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((lp[2] - (3.0 - log_sum_exp(&[1.0, 2.0, 3.0]))).abs() < 1e-7);
        // Large logits do not overflow.
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f32.ln())).abs() < 1e-3);
    }
}
