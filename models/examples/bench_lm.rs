//! Engine benchmark for docs/BENCHMARKS.md (run by `scripts/bench-lm`, side by side with
//! llama.cpp): prefill throughput on a 512-token prompt, greedy decode throughput over 128
//! tokens, one 4-beam step vs one greedy step, FIM latency after a one-character edit with
//! the prefix cache warm vs cold, peak RSS, and the machine's memory bandwidth. Prints JSON.
//!
//! Usage: bench_lm MODEL [THREADS]

use std::time::Instant;

use candle_core::Device;
use tessera_models::generate::{BeamParams, GenerateParams};
use tessera_models::loader::TextModel;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Read bandwidth in GB/s: summing a 1 GiB buffer on every thread of the pool.
fn bandwidth_gbs() -> f64 {
    let words = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..words as u64).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = words.div_ceil(threads);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(chunk)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best / 1e9
}

fn main() {
    // As `tessera` itself does.
    tessera_models::allocator::keep_freed_buffers();
    let mut args = std::env::args().skip(1);
    let model_name = args.next().unwrap_or_else(|| "qwen2.5-coder-0.5b".into());
    let t = Instant::now();
    let model = TextModel::load(&model_name, &Device::Cpu).expect("model loads");
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let engine = &model.engine;

    // 512-token prompt of real code.
    let code = include_str!("../src/generate.rs");
    let mut prompt = model.tokenizer.encode(code, false).unwrap();
    prompt.truncate(512);
    assert_eq!(prompt.len(), 512);

    // Prefill (cold), best of 3, in chunks (the engine's default) and in one pass,
    // alternating.
    let mut prefill_s = f64::MAX;
    let mut one_pass_prefill_s = f64::MAX;
    for _ in 0..3 {
        engine.clear_prefix_cache();
        let t = Instant::now();
        engine.prefill_many(&[&prompt]).unwrap();
        one_pass_prefill_s = one_pass_prefill_s.min(t.elapsed().as_secs_f64());
        engine.clear_prefix_cache();
        let t = Instant::now();
        engine.prefill(&prompt).unwrap();
        prefill_s = prefill_s.min(t.elapsed().as_secs_f64());
    }

    // Greedy decode of 128 tokens after a short prompt, no stop.
    engine.clear_prefix_cache();
    let short = &prompt[..16];
    let greedy = GenerateParams {
        max_new_tokens: 129,
        ..Default::default()
    };
    let g = engine.generate_tokens(short, &greedy, None, None).unwrap();
    let decode_tps = g.decode_steps as f64 / (g.decode_ms / 1e3);
    let greedy_step_ms = g.decode_ms / g.decode_steps as f64;

    // 4-beam steps over the same prompt.
    engine.clear_prefix_cache();
    let beams = GenerateParams {
        max_new_tokens: 33,
        beams: Some(BeamParams {
            num_beams: 4,
            ..Default::default()
        }),
        ..Default::default()
    };
    let b = engine.generate_tokens(short, &beams, None, None).unwrap();
    let beam_step_ms = b.decode_ms / b.decode_steps.max(1) as f64;

    // The same steps after the 512-token prompt: what a completion request decodes over.
    engine.clear_prefix_cache();
    let long_greedy = GenerateParams {
        max_new_tokens: 33,
        ..Default::default()
    };
    let lg = engine.generate_tokens(&prompt, &long_greedy, None, None).unwrap();
    let long_greedy_step_ms = lg.decode_ms / lg.decode_steps.max(1) as f64;
    let lb = engine.generate_tokens(&prompt, &beams, None, None).unwrap();
    let long_beam_step_ms = lb.decode_ms / lb.decode_steps.max(1) as f64;

    // FIM request (16 tokens) after a one-character edit: warm (the previous request's
    // prefix is cached) vs cold.
    let before = format!("<|fim_prefix|>{}<|fim_suffix|>\n<|fim_middle|>", &code[..1500]);
    let after = format!("<|fim_prefix|>{}x<|fim_suffix|>\n<|fim_middle|>", &code[..1500]);
    let fim = GenerateParams {
        max_new_tokens: 16,
        ..Default::default()
    };
    let (mut warm_ms, mut cold_ms) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        engine.clear_prefix_cache();
        model.generate(&before, &fim, None).unwrap();
        let t = Instant::now();
        model.generate(&after, &fim, None).unwrap();
        warm_ms = warm_ms.min(t.elapsed().as_secs_f64() * 1e3);
        engine.clear_prefix_cache();
        let t = Instant::now();
        model.generate(&after, &fim, None).unwrap();
        cold_ms = cold_ms.min(t.elapsed().as_secs_f64() * 1e3);
    }
    let fim_tokens = model.encode(&after).unwrap().len();
    let weight_bytes = engine.model().info().weight_bytes as f64;
    // Read before the bandwidth probe, which allocates 1 GiB.
    let peak_rss = peak_rss_mib();
    let bandwidth = bandwidth_gbs();
    println!(
        "{}",
        serde_json::json!({
            "model": model_name,
            "load_ms": load_ms,
            "prefill_tokens": 512,
            "prefill_tokens_per_s": 512.0 / prefill_s,
            "one_pass_prefill_tokens_per_s": 512.0 / one_pass_prefill_s,
            "decode_tokens": g.decode_steps,
            "decode_tokens_per_s": decode_tps,
            "greedy_step_ms": greedy_step_ms,
            "beam4_step_ms": beam_step_ms,
            "beam4_over_greedy": beam_step_ms / greedy_step_ms,
            "greedy_step_ms_at_512": long_greedy_step_ms,
            "beam4_step_ms_at_512": long_beam_step_ms,
            "beam4_over_greedy_at_512": long_beam_step_ms / long_greedy_step_ms,
            "fim_prompt_tokens": fim_tokens,
            "fim_warm_ms": warm_ms,
            "fim_cold_ms": cold_ms,
            "warm_over_cold": warm_ms / cold_ms,
            "peak_rss_mib": peak_rss,
            "weight_bytes": weight_bytes,
            "bandwidth_gb_s": bandwidth,
            "decode_fraction_of_bandwidth_bound": weight_bytes * decode_tps / (bandwidth * 1e9),
        })
    );
}
