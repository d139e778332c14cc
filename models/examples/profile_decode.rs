//! Runs one kind of decode for a while, for `perf record`:
//! `profile_decode greedy|beam3|beam4 [ROUNDS] [PROMPT_TOKENS]`.
//! Prints each round's mean step time.

use candle_core::Device;
use tessera_models::generate::{BeamParams, GenerateParams};
use tessera_models::loader::TextModel;

fn main() {
    tessera_models::allocator::keep_freed_buffers();
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "greedy".into());
    let rounds: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(5);
    let prompt_tokens: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(512);
    let t = std::time::Instant::now();
    let model = TextModel::load("qwen2.5-coder-0.5b", &Device::Cpu).expect("model loads");
    eprintln!("load: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let engine = &model.engine;
    let code = include_str!("../src/generate.rs");
    let mut prompt = model.tokenizer.encode(code, false).unwrap();
    prompt.truncate(prompt_tokens);
    let beams = match mode.as_str() {
        "greedy" => None,
        "beam4" => Some(BeamParams {
            num_beams: 4,
            ..Default::default()
        }),
        "beam3" => Some(BeamParams {
            num_beams: 3,
            ..Default::default()
        }),
        other => panic!("unknown mode {other}"),
    };
    let params = GenerateParams {
        max_new_tokens: 33,
        beams,
        ..Default::default()
    };
    engine.generate_tokens(&prompt, &params, None, None).unwrap();
    for _ in 0..rounds {
        let r = engine.generate_tokens(&prompt, &params, None, None).unwrap();
        println!(
            "{mode}: {:.2} ms/step over {} steps",
            r.decode_ms / r.decode_steps.max(1) as f64,
            r.decode_steps
        );
    }
}
