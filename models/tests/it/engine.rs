//! Engine behaviour on tiny random checkpoints: the KV cache, batching, prefix reuse and
//! the decoding strategies agree with each other and with cache-less computation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use candle_core::Tensor;
use tessera_models::engine::{Engine, PREFILL_CHUNK_TOKENS, PrefixCacheLimits};
use tessera_models::generate::{self, BeamParams, Completion, FinishReason, GenerateParams};
use tessera_models::kv_cache::SeqCache;
use tessera_models::model::{BatchItem, CausalLm, ModelInfo};
use tessera_models::sampling::Sampling;

use crate::common::{engine, expected, load_fixture_llama, max_abs_diff};

const TOL: f32 = 1e-4;
const MODELS: [&str; 2] = ["qwen2", "llama"];

fn prompt() -> Vec<u32> {
    expected("qwen2").input_ids[0].clone()
}

#[test]
fn logits_with_kv_cache_equal_logits_without() {
    for name in MODELS {
        let model = load_fixture_llama(name);
        let ids = prompt();
        let cold = Engine::new(model.clone()).logits(&ids).unwrap();
        // Feed the same tokens in uneven chunks through one cache.
        let mut cache = SeqCache::new();
        let mut rows = Vec::new();
        for chunk in [&ids[..3], &ids[3..4], &ids[4..9], &ids[9..]] {
            let mut b = [BatchItem {
                tokens: chunk,
                cache: &mut cache,
                all_logits: true,
            }];
            rows.push(model.forward(&mut b).unwrap().remove(0));
        }
        let warm = Tensor::cat(&rows, 0).unwrap();
        let diff = max_abs_diff(&cold, &warm);
        assert!(diff <= TOL, "{name}: cached vs uncached logits differ by {diff}");
        assert_eq!(cache.tokens(), &ids[..]);
    }
}

#[test]
fn batched_sequences_equal_sequences_run_one_by_one() {
    for name in MODELS {
        let model = load_fixture_llama(name);
        let exp = expected(name);
        let (a, b) = (&exp.input_ids[0], &exp.input_ids[1]);
        // Different cache lengths and different numbers of new tokens in one batch.
        let mut ca = SeqCache::new();
        let mut cb = SeqCache::new();
        model
            .forward(&mut [BatchItem {
                tokens: &a[..4],
                cache: &mut ca,
                all_logits: false,
            }])
            .unwrap();
        model
            .forward(&mut [BatchItem {
                tokens: &b[..7],
                cache: &mut cb,
                all_logits: false,
            }])
            .unwrap();
        let out = model
            .forward(&mut [
                BatchItem {
                    tokens: &a[4..],
                    cache: &mut ca,
                    all_logits: true,
                },
                BatchItem {
                    tokens: &b[7..],
                    cache: &mut cb,
                    all_logits: true,
                },
            ])
            .unwrap();
        let e = Engine::new(model.clone());
        let full_a = e.logits(a).unwrap().narrow(0, 4, a.len() - 4).unwrap();
        let full_b = e.logits(b).unwrap().narrow(0, 7, b.len() - 7).unwrap();
        assert!(max_abs_diff(&out[0], &full_a) <= TOL, "{name}: first sequence");
        assert!(max_abs_diff(&out[1], &full_b) <= TOL, "{name}: second sequence");
    }
}

fn beam(n: usize, ret: usize, max: usize) -> GenerateParams {
    GenerateParams {
        max_new_tokens: max,
        beams: Some(BeamParams {
            num_beams: n,
            length_penalty: 1.0,
            early_stopping: false,
            num_return_sequences: ret,
        }),
        ..Default::default()
    }
}

#[test]
fn one_beam_equals_greedy() {
    for name in MODELS {
        let e = engine(name);
        let greedy = GenerateParams {
            max_new_tokens: 10,
            ..Default::default()
        };
        let g = e.generate_tokens(&prompt(), &greedy, None, None).unwrap();
        // The engine routes one beam to greedy decoding, so call the beam search itself.
        let params = beam(1, 1, 10);
        let (prefilled, _) = e.prefill(&prompt()).unwrap();
        let (b, steps) = generate::generate_beam(
            e.model(),
            &prompt(),
            prefilled,
            &params,
            params.beams.as_ref().unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(b.len(), 1, "{name}");
        assert_eq!(steps, 9, "{name}: the beam search ran its own decode steps");
        assert_eq!(b[0].tokens, g.completions[0].tokens, "{name}");
        assert_eq!(b[0].finish_reason, FinishReason::Length, "{name}");
        // Same log-probabilities, divided by the length (length_penalty 1).
        let want = g.completions[0].score / 10.0;
        assert!((b[0].score - want).abs() <= 1e-5, "{name}: {} vs {want}", b[0].score);
    }
}

#[test]
fn beams_come_sorted_and_beat_greedy() {
    for name in MODELS {
        let e = engine(name);
        let greedy = GenerateParams {
            max_new_tokens: 8,
            ..Default::default()
        };
        let g = e.generate_tokens(&prompt(), &greedy, None, None).unwrap();
        let greedy_score = g.completions[0].score / 8.0; // same length penalty (1.0)
        let b = e.generate_tokens(&prompt(), &beam(4, 4, 8), None, None).unwrap();
        assert_eq!(b.completions.len(), 4);
        let scores: Vec<f32> = b.completions.iter().map(|c| c.score).collect();
        assert!(
            scores.windows(2).all(|w| w[0] >= w[1]),
            "{name}: not sorted: {scores:?}"
        );
        assert!(
            scores[0] >= greedy_score - 1e-5,
            "{name}: best beam {} < greedy {greedy_score}",
            scores[0]
        );
        let distinct: std::collections::HashSet<_> = b.completions.iter().map(|c| c.tokens.clone()).collect();
        assert_eq!(distinct.len(), 4, "{name}: returned beams must differ");
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let e = engine("qwen2");
    let params = |seed| GenerateParams {
        max_new_tokens: 12,
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: Some(50),
            top_p: Some(0.95),
            seed,
        },
        num_samples: 3,
        ..Default::default()
    };
    let run = |seed| {
        e.generate_tokens(&prompt(), &params(seed), None, None)
            .unwrap()
            .completions
            .into_iter()
            .map(|c| c.tokens)
            .collect::<Vec<_>>()
    };
    let a = run(42);
    assert_eq!(a, run(42));
    assert_ne!(a, run(43));
    assert_eq!(a.len(), 3);
    assert!(a.iter().all(|t| t.len() == 12));
}

#[test]
fn prefix_reuse_gives_the_same_logits_as_a_cold_prefill() {
    let e = engine("qwen2");
    let base = prompt();
    let (first, reused) = e.prefill(&base).unwrap();
    assert_eq!(reused, 0);
    // An edit of the last token: everything before it comes from the cache.
    let mut edited = base.clone();
    *edited.last_mut().unwrap() = (edited.last().unwrap() + 1) % 256;
    edited.push(17);
    let (warm, reused) = e.prefill(&edited).unwrap();
    assert_eq!(reused, base.len() - 1);
    e.clear_prefix_cache();
    let (cold, reused) = e.prefill(&edited).unwrap();
    assert_eq!(reused, 0);
    assert!(max_abs_diff(&warm.logits, &cold.logits) <= TOL);
    // The identical prompt again reuses all but its last token.
    let (_, reused) = e.prefill(&base).unwrap();
    assert_eq!(reused, base.len() - 1);
    drop(first);
}

fn qwen2_engine_with_limits(max_entries: usize, max_tokens: usize) -> Engine {
    Engine::with_limits(
        load_fixture_llama("qwen2"),
        PrefixCacheLimits {
            max_entries,
            max_tokens,
        },
    )
}

#[test]
fn prefix_cache_is_bounded() {
    let e = qwen2_engine_with_limits(2, 1000);
    let p = |x: u32| vec![x, 1, 2, 3, 4];
    for x in 10..13 {
        e.prefill(&p(x)).unwrap();
    }
    // Entry 10 was evicted, 12 is still there.
    assert_eq!(e.prefill(&p(10)).unwrap().1, 0);
    assert_eq!(e.prefill(&p(12)).unwrap().1, 4);
}

#[test]
fn prefix_cache_evicts_the_least_recently_used_entry() {
    let e = qwen2_engine_with_limits(2, 1000);
    let first = vec![10, 1, 2, 3, 4];
    let second = vec![11, 1, 2, 3, 4];
    e.prefill(&first).unwrap();
    e.prefill(&second).unwrap();
    // A different prompt that reuses `first` (a use, not a re-insertion of it); caching it
    // makes three entries, so one must go: the unused `second`, though it is newer.
    let (_, reused) = e.prefill(&[10, 1, 2, 3, 99, 98]).unwrap();
    assert_eq!(reused, 4, "the lookup used the first entry");
    let mut longer = first.clone();
    longer.push(7);
    assert_eq!(
        e.prefill(&longer).unwrap().1,
        first.len(),
        "the first entry survived whole"
    );
    assert_eq!(e.prefill(&second).unwrap().1, 0, "the second entry was evicted");
}

#[test]
fn prefix_cache_is_bounded_by_cached_tokens() {
    let e = qwen2_engine_with_limits(8, 12);
    let p = |x: u32| vec![x, 1, 2, 3, 4];
    e.prefill(&p(10)).unwrap();
    e.prefill(&p(11)).unwrap();
    // 15 cached tokens > 12: the oldest entry goes although far fewer than 8 are held.
    e.prefill(&p(12)).unwrap();
    assert_eq!(e.prefill(&p(11)).unwrap().1, 4);
    assert_eq!(e.prefill(&p(12)).unwrap().1, 4);
    assert_eq!(e.prefill(&p(10)).unwrap().1, 0);
    // A prompt longer than the whole budget is still kept on its own, replacing the rest.
    let long: Vec<u32> = (0..20).collect();
    e.prefill(&long).unwrap();
    assert_eq!(e.prefill(&long).unwrap().1, long.len() - 1);
    assert_eq!(e.prefill(&p(12)).unwrap().1, 0);
}

/// A model wrapper that raises the cancel flag after a number of forward calls.
struct CancelAfter {
    inner: Arc<dyn CausalLm>,
    calls: AtomicUsize,
    after: usize,
    flag: Arc<AtomicBool>,
}

impl CausalLm for CancelAfter {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn device(&self) -> &candle_core::Device {
        self.inner.device()
    }
    fn forward(&self, batch: &mut [BatchItem<'_>]) -> tessera_models::Result<Vec<Tensor>> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 >= self.after {
            self.flag.store(true, Ordering::SeqCst);
        }
        self.inner.forward(batch)
    }
}

#[test]
fn cancellation_stops_within_a_step() {
    for beams in [None, Some(3)] {
        let flag = Arc::new(AtomicBool::new(false));
        let model = Arc::new(CancelAfter {
            inner: load_fixture_llama("qwen2"),
            calls: AtomicUsize::new(0),
            after: 4, // prefill + 3 decode steps
            flag: flag.clone(),
        });
        let e = Engine::new(model.clone());
        let mut params = match beams {
            Some(n) => beam(n, 1, 100),
            None => GenerateParams {
                max_new_tokens: 100,
                ..Default::default()
            },
        };
        params.cancel = Some(flag);
        let g = e.generate_tokens(&prompt(), &params, None, None).unwrap();
        let c = &g.completions[0];
        assert_eq!(c.finish_reason, FinishReason::Cancelled, "beams {beams:?}");
        assert_eq!(model.calls.load(Ordering::SeqCst), 4, "no forward after the flag");
        // Prefill + 3 steps chose 3 tokens; the logits of the 4th forward are dropped.
        assert_eq!(c.tokens.len(), 3, "returns what it had");
    }
}

/// A prompt of several prefill chunks.
fn long_prompt() -> Vec<u32> {
    (0..(PREFILL_CHUNK_TOKENS * 2 + 17) as u32)
        .map(|i| (i * 37 + 11) % 256)
        .collect()
}

#[test]
fn chunked_prefill_equals_one_pass() {
    let e = engine("qwen2");
    let ids = long_prompt();
    let (one_pass, _) = e.prefill(&ids).unwrap();
    e.clear_prefix_cache();
    let (chunked, reused) = e.prefill_cancellable(&ids, &AtomicBool::new(false)).unwrap().unwrap();
    assert_eq!(reused, 0);
    assert_eq!(chunked.cache.len(), ids.len());
    assert!(max_abs_diff(&one_pass.logits, &chunked.logits) <= TOL);
}

#[test]
fn cancellation_stops_a_long_prefill_within_a_chunk_and_keeps_its_work() {
    let flag = Arc::new(AtomicBool::new(false));
    let model = Arc::new(CancelAfter {
        inner: load_fixture_llama("qwen2"),
        calls: AtomicUsize::new(0),
        after: 2,
        flag: flag.clone(),
    });
    let e = Engine::new(model.clone());
    let params = GenerateParams {
        max_new_tokens: 10,
        cancel: Some(flag.clone()),
        ..Default::default()
    };
    let ids = long_prompt();
    let g = e.generate_tokens(&ids, &params, None, None).unwrap();
    assert_eq!(g.completions.len(), 1);
    assert_eq!(g.completions[0].finish_reason, FinishReason::Cancelled);
    assert!(g.completions[0].tokens.is_empty());
    assert_eq!(model.calls.load(Ordering::SeqCst), 2, "no chunk after the flag");
    // The two chunks run before the cancel are reused by the next request.
    flag.store(false, Ordering::SeqCst);
    let (_, reused) = e.prefill(&ids).unwrap();
    assert_eq!(reused, 2 * PREFILL_CHUNK_TOKENS);
}

#[test]
fn eos_stops_and_is_reported() {
    let e = engine("qwen2");
    let exp = expected("qwen2");
    let params = GenerateParams {
        max_new_tokens: 20,
        eos_ids: vec![exp.greedy[3]],
        ..Default::default()
    };
    let g = e.generate_tokens(&exp.input_ids[0], &params, None, None).unwrap();
    assert_eq!(g.completions[0].finish_reason, FinishReason::Eos);
    assert_eq!(g.completions[0].tokens, exp.greedy[..4]);
}

/// Text whose bytes a detokenizer reveals one per generated token: multi-byte characters
/// (2, 3 and 4 bytes), a false start of the stop string, then the stop string.
const STREAMED: &str = "é<E→😀 ñ<END>tail";
const STREAM_STOP: &str = "<END>";

/// Greedy generation on the tiny model, detokenized as the first n bytes of [`STREAMED`]
/// for n generated tokens (lossily, as a real detokenizer shows a split character), with
/// every streamed delta recorded.
fn stream_bytes(stop_strings: Vec<String>, max_new_tokens: usize) -> (Vec<String>, Completion) {
    let e = engine("qwen2");
    let detok = |ids: &[u32]| -> tessera_models::Result<String> {
        Ok(String::from_utf8_lossy(&STREAMED.as_bytes()[..ids.len()]).into_owned())
    };
    let mut deltas: Vec<String> = Vec::new();
    let mut on_text = |seq: usize, d: &str| {
        assert_eq!(seq, 0);
        deltas.push(d.to_owned());
    };
    let params = GenerateParams {
        max_new_tokens,
        stop_strings,
        ..Default::default()
    };
    let g = e
        .generate_tokens(&prompt(), &params, Some(&detok), Some(&mut on_text))
        .unwrap();
    (deltas, g.completions.into_iter().next().unwrap())
}

#[test]
fn streaming_never_shows_split_characters_or_a_stop_string_prefix() {
    let (deltas, c) = stream_bytes(vec![STREAM_STOP.into()], STREAMED.len());
    assert_eq!(c.finish_reason, FinishReason::Stop);
    assert_eq!(c.text, "é<E→😀 ñ");
    assert!(deltas.len() > 3, "streamed as it went: {deltas:?}");
    let mut shown = String::new();
    for d in &deltas {
        assert!(!d.is_empty());
        assert!(!d.contains('\u{FFFD}'), "a split character was streamed: {deltas:?}");
        shown.push_str(d);
        // What the client has seen never ends in a start of the stop string: it could
        // turn out to be the stop and then would have to be taken back.
        for k in 1..STREAM_STOP.len() {
            assert!(!shown.ends_with(&STREAM_STOP[..k]), "{shown:?} after {deltas:?}");
        }
    }
    assert_eq!(shown, c.text);
    // The false start was held back, then released with the character that ruled it out.
    assert!(deltas.iter().any(|d| d.starts_with("<E→")), "{deltas:?}");

    // Without a stop string every byte arrives, whole characters only.
    let (deltas, c) = stream_bytes(Vec::new(), STREAMED.len());
    assert_eq!(c.finish_reason, FinishReason::Length);
    assert_eq!(c.text, STREAMED);
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    assert_eq!(deltas.concat(), STREAMED);
}

#[test]
fn bad_requests_are_errors_not_panics() {
    let e = engine("qwen2");
    let p = GenerateParams::default();
    let err = e.generate_tokens(&[], &p, None, None).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    let long = vec![1u32; 600];
    let err = e.generate_tokens(&long, &p, None, None).unwrap_err().to_string();
    assert!(err.contains("context"), "{err}");
    let err = e.generate_tokens(&[1, 9999], &p, None, None).unwrap_err().to_string();
    assert!(err.contains("9999"), "{err}");
    let err = e
        .generate_tokens(&[1, 2], &beam(2, 3, 4), None, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_return_sequences"), "{err}");
}

#[test]
fn independent_requests_batched_equal_requests_run_alone() {
    for name in MODELS {
        let exp = expected(name);
        let (a, b) = (&exp.input_ids[0][..], &exp.input_ids[1][..7]);
        let params = GenerateParams {
            max_new_tokens: 6,
            ..Default::default()
        };
        let alone: Vec<Vec<u32>> = [a, b]
            .iter()
            .map(|p| {
                engine(name)
                    .generate_tokens(p, &params, None, None)
                    .unwrap()
                    .completions[0]
                    .tokens
                    .clone()
            })
            .collect();
        let batched = engine(name).generate_batch(&[a, b], &params, None).unwrap();
        assert_eq!(batched.len(), 2);
        assert_eq!(batched[0][0].tokens, alone[0], "{name}: first request");
        assert_eq!(batched[1][0].tokens, alone[1], "{name}: second request");
    }
}

#[test]
fn lockstep_beam_batches_equal_sequences_run_one_by_one() {
    // Forks of one prefix, each adding a different token at the same position: the
    // shape of every beam-search step.
    for name in MODELS {
        let model = load_fixture_llama(name);
        let ids = prompt();
        let mut base = SeqCache::new();
        model
            .forward(&mut [BatchItem {
                tokens: &ids,
                cache: &mut base,
                all_logits: false,
            }])
            .unwrap();
        let next = [5u32, 77, 200];
        let mut forks: Vec<SeqCache> = next.iter().map(|_| base.fork()).collect();
        let singles: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut batch: Vec<BatchItem<'_>> = forks
            .iter_mut()
            .zip(&singles)
            .map(|(cache, t)| BatchItem {
                tokens: t,
                cache,
                all_logits: false,
            })
            .collect();
        let together = model.forward(&mut batch).unwrap();
        for (i, &t) in next.iter().enumerate() {
            let mut alone = ids.clone();
            alone.push(t);
            let want = Engine::new(model.clone())
                .logits(&alone)
                .unwrap()
                .narrow(0, ids.len(), 1)
                .unwrap();
            let diff = max_abs_diff(&together[i], &want);
            assert!(diff <= TOL, "{name}: beam {i} differs by {diff}");
            assert_eq!(forks[i].len(), ids.len() + 1);
        }
    }
}
