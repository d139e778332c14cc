//! The KV cache, owned by the engine rather than by the model, so that decoding can fork,
//! reorder and truncate sequences and requests can share prefixes.
//!
//! A [`SeqCache`] is a list of fixed-size blocks shared through `Arc`. Full blocks are
//! immutable and shared between every sequence forked from the same prefix; appending to
//! a sequence rebuilds only its last, partly filled block (copy-on-write), so forking a
//! 4,000-token cache for a beam costs a few pointer copies, and reordering beams copies
//! nothing. Keys and values are stored per layer as `[kv_heads, tokens, head_dim]`.
//!
//! A sequence may also attend to keys and values that are not its own: an encoder's output
//! for cross-attention (Whisper's decoder over its audio window). They are computed once,
//! never change, and travel with the cache as its [`Context`]: every fork shares them.

use std::sync::Arc;

use candle_core::Tensor;

use crate::Result;

/// Tokens per block. Small enough that copy-on-write of the last block is cheap, large
/// enough that gathering a long sequence concatenates few pieces.
pub const BLOCK_TOKENS: usize = 64;

#[derive(Debug)]
struct Block {
    /// Per layer: keys and values `[kv_heads, len, head_dim]`.
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
}

/// Keys and values a sequence attends to besides its own positions (an encoder's, for
/// cross-attention), per layer in the model's own layout. Immutable and shared by forks.
#[derive(Debug)]
pub struct Context {
    pub layers: Vec<(Tensor, Tensor)>,
}

/// The cached keys and values of one sequence, and the tokens they were computed for.
#[derive(Debug, Clone, Default)]
pub struct SeqCache {
    blocks: Vec<Arc<Block>>,
    tokens: Vec<u32>,
    context: Option<Arc<Context>>,
}

impl SeqCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The tokens whose keys and values are cached, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// An empty cache whose sequence also attends to `context` (cross-attention).
    pub fn with_context(context: Arc<Context>) -> Self {
        SeqCache {
            context: Some(context),
            ..Self::default()
        }
    }

    /// The keys and values this sequence cross-attends to, if any.
    pub fn context(&self) -> Option<&Arc<Context>> {
        self.context.as_ref()
    }

    /// A cheap copy sharing every block and the context: an `Arc` clone each.
    pub fn fork(&self) -> Self {
        self.clone()
    }

    /// Whether this cache shares its first block's storage with `other` (for tests of
    /// copy-on-write behaviour).
    pub fn shares_storage_with(&self, other: &SeqCache) -> bool {
        match (self.blocks.first(), other.blocks.first()) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Keeps only the first `len` positions.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len() {
            return Ok(());
        }
        let full_blocks = len / BLOCK_TOKENS;
        let rest = len % BLOCK_TOKENS;
        if rest == 0 {
            self.blocks.truncate(full_blocks);
        } else {
            let last = &self.blocks[full_blocks];
            let narrow =
                |ts: &[Tensor]| -> Result<Vec<Tensor>> { ts.iter().map(|t| Ok(t.narrow(1, 0, rest)?)).collect() };
            let block = Block {
                keys: narrow(&last.keys)?,
                values: narrow(&last.values)?,
                len: rest,
            };
            self.blocks.truncate(full_blocks);
            self.blocks.push(Arc::new(block));
        }
        self.tokens.truncate(len);
        Ok(())
    }

    /// The cached keys and values of `layer` followed by `new_k`/`new_v`, as contiguous
    /// `[kv_heads, cached + new, head_dim]` tensors, ready for attention.
    pub fn gather_with(&self, layer: usize, new_k: &Tensor, new_v: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.blocks.is_empty() {
            return Ok((new_k.contiguous()?, new_v.contiguous()?));
        }
        let mut ks: Vec<&Tensor> = self.blocks.iter().map(|b| &b.keys[layer]).collect();
        let mut vs: Vec<&Tensor> = self.blocks.iter().map(|b| &b.values[layer]).collect();
        ks.push(new_k);
        vs.push(new_v);
        Ok((Tensor::cat(&ks, 1)?, Tensor::cat(&vs, 1)?))
    }

    /// `layer`'s cached keys and values block by block, in position order: each
    /// `[kv_heads, len, head_dim]` and its `len`.
    pub fn layer_blocks(&self, layer: usize) -> impl Iterator<Item = (&Tensor, &Tensor, usize)> {
        self.blocks
            .iter()
            .map(move |b| (&b.keys[layer], &b.values[layer], b.len))
    }

    /// Appends the keys and values computed for `tokens` (per layer `[kv_heads, n, head_dim]`).
    pub fn append(&mut self, tokens: &[u32], keys: Vec<Tensor>, values: Vec<Tensor>) -> Result<()> {
        let n = tokens.len();
        let mut done = 0;
        while done < n {
            let fill = self.blocks.last().map_or(BLOCK_TOKENS, |b| b.len);
            if fill < BLOCK_TOKENS {
                // Rebuild the partly filled last block; other forks keep the old one.
                let take = (BLOCK_TOKENS - fill).min(n - done);
                let last = self.blocks.pop().expect("a partly filled block exists");
                let join = |old: &[Tensor], new: &[Tensor]| -> Result<Vec<Tensor>> {
                    old.iter()
                        .zip(new)
                        .map(|(o, t)| Ok(Tensor::cat(&[o, &t.narrow(1, done, take)?], 1)?))
                        .collect()
                };
                let block = Block {
                    keys: join(&last.keys, &keys)?,
                    values: join(&last.values, &values)?,
                    len: fill + take,
                };
                self.blocks.push(Arc::new(block));
                done += take;
            } else {
                let take = BLOCK_TOKENS.min(n - done);
                let slice = |ts: &[Tensor]| -> Result<Vec<Tensor>> {
                    ts.iter().map(|t| Ok(t.narrow(1, done, take)?.contiguous()?)).collect()
                };
                self.blocks.push(Arc::new(Block {
                    keys: slice(&keys)?,
                    values: slice(&values)?,
                    len: take,
                }));
                done += take;
            }
        }
        self.tokens.extend_from_slice(tokens);
        debug_assert_eq!(self.blocks.iter().map(|b| b.len).sum::<usize>(), self.tokens.len());
        Ok(())
    }

    /// Bytes held by this sequence's blocks (shared blocks counted in full).
    pub fn size_in_bytes(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| b.keys.iter().chain(&b.values))
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

/// The length of the longest common prefix of two token sequences.
pub fn common_prefix_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn kv(start: usize, n: usize) -> (Vec<Tensor>, Vec<Tensor>) {
        let dev = Device::Cpu;
        let t = Tensor::arange(start as f32, (start + n) as f32, &dev)
            .unwrap()
            .reshape((1, n, 1))
            .unwrap();
        (vec![t.clone(), (t.clone() * 2.0).unwrap()], vec![(t * 3.0).unwrap(); 2])
    }

    fn layer0(c: &SeqCache) -> Vec<f32> {
        let empty = Tensor::zeros((1, 0, 1), DType::F32, &Device::Cpu).unwrap();
        let (k, _) = c.gather_with(0, &empty, &empty).unwrap();
        k.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn append_across_blocks_and_truncate() {
        let mut c = SeqCache::new();
        let (k, v) = kv(0, 100);
        c.append(&(0..100).collect::<Vec<_>>(), k, v).unwrap();
        let (k, v) = kv(100, 50);
        c.append(&(100..150).collect::<Vec<_>>(), k, v).unwrap();
        assert_eq!(c.len(), 150);
        assert_eq!(layer0(&c), (0..150).map(|x| x as f32).collect::<Vec<_>>());
        c.truncate(70).unwrap();
        assert_eq!(layer0(&c), (0..70).map(|x| x as f32).collect::<Vec<_>>());
        let (k, v) = kv(500, 3);
        c.append(&[7, 8, 9], k, v).unwrap();
        assert_eq!(c.len(), 73);
        assert_eq!(&layer0(&c)[68..], &[68.0, 69.0, 500.0, 501.0, 502.0]);
        assert_eq!(&c.tokens()[69..], &[69, 7, 8, 9]);
    }

    #[test]
    fn the_cross_attention_context_is_shared_by_forks_and_kept_through_truncation() {
        let (k, v) = kv(0, 3);
        let context = Arc::new(Context {
            layers: k.into_iter().zip(v).collect(),
        });
        let mut a = SeqCache::with_context(context.clone());
        assert!(a.is_empty());
        let (k, v) = kv(10, 70);
        a.append(&(0..70).collect::<Vec<_>>(), k, v).unwrap();
        let mut b = a.fork();
        b.truncate(5).unwrap();
        for c in [&a, &b] {
            assert!(Arc::ptr_eq(c.context().unwrap(), &context));
        }
        // Forks and truncations add no copy: the context's owners are these caches and us.
        assert_eq!(Arc::strong_count(&context), 3);
        assert!(SeqCache::new().context().is_none());
    }

    #[test]
    fn fork_shares_blocks_and_appends_are_copy_on_write() {
        let mut a = SeqCache::new();
        let (k, v) = kv(0, 70);
        a.append(&(0..70).collect::<Vec<_>>(), k, v).unwrap();
        let mut b = a.fork();
        assert!(b.shares_storage_with(&a));
        let (k, v) = kv(1000, 1);
        b.append(&[1], k, v).unwrap();
        let (k, v) = kv(2000, 1);
        a.append(&[2], k, v).unwrap();
        // The shared full block stays shared; the partial block diverged.
        assert!(b.shares_storage_with(&a));
        assert_eq!(layer0(&a)[70], 2000.0);
        assert_eq!(layer0(&b)[70], 1000.0);
        assert_eq!(layer0(&a)[..70], layer0(&b)[..70]);
    }

    /// Whether each block of `a` is the very same storage as `b`'s block at that position.
    fn same_blocks(a: &SeqCache, b: &SeqCache) -> Vec<bool> {
        a.blocks.iter().zip(&b.blocks).map(|(x, y)| Arc::ptr_eq(x, y)).collect()
    }

    #[test]
    fn beams_forked_from_a_long_cache_share_its_full_blocks_through_appends_and_truncation() {
        let n = 2 * BLOCK_TOKENS + 22;
        let mut base = SeqCache::new();
        let (k, v) = kv(0, n);
        base.append(&(0..n as u32).collect::<Vec<_>>(), k, v).unwrap();
        let mut beams: Vec<SeqCache> = (0..3).map(|_| base.fork()).collect();
        for (i, b) in beams.iter_mut().enumerate() {
            assert_eq!(same_blocks(b, &base), [true, true, true], "a fork copies nothing");
            let (k, v) = kv(1000 * (i + 1), 1);
            b.append(&[i as u32], k, v).unwrap();
        }
        for (i, b) in beams.iter().enumerate() {
            // Only the partial last block was rebuilt, for each beam separately.
            assert_eq!(same_blocks(b, &base), [true, true, false], "beam {i}");
            for (j, other) in beams.iter().enumerate().filter(|&(j, _)| j != i) {
                assert_eq!(same_blocks(b, other), [true, true, false], "beams {i} and {j}");
            }
            let values = layer0(b);
            assert_eq!(values.len(), n + 1);
            assert_eq!(values[n], (1000 * (i + 1)) as f32);
            assert_eq!(values[..n], layer0(&base)[..]);
        }
        assert_eq!(
            layer0(&base),
            (0..n).map(|x| x as f32).collect::<Vec<_>>(),
            "base untouched"
        );

        // Dropping the beam's token (back into the partial block): the full blocks stay
        // shared, the last one is a narrowed copy.
        let mut b = beams[0].fork();
        b.truncate(n).unwrap();
        assert_eq!(same_blocks(&b, &base), [true, true, false]);
        assert_eq!(layer0(&b), layer0(&base));
        assert_eq!(b.tokens(), base.tokens());
        // To a block boundary: nothing is copied at all.
        let mut b = beams[1].fork();
        b.truncate(2 * BLOCK_TOKENS).unwrap();
        assert_eq!(b.blocks.len(), 2);
        assert_eq!(same_blocks(&b, &base), [true, true]);
        // Into a full block: the blocks before it stay shared, it is narrowed into a copy.
        let mut b = beams[2].fork();
        b.truncate(BLOCK_TOKENS + 10).unwrap();
        assert_eq!(same_blocks(&b, &base), [true, false]);
        assert_eq!(layer0(&b), (0..BLOCK_TOKENS + 10).map(|x| x as f32).collect::<Vec<_>>());
        // The beams themselves were not affected by their forks' truncation.
        assert!(beams.iter().all(|b| b.len() == n + 1));
        assert_eq!(same_blocks(&beams[2], &base), [true, true, false]);
    }
}
