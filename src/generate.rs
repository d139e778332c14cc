//! `tessera generate`: one prompt through the engine, printed as text or JSON.

use std::io::{Read, Write};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use tessera_models::generate::{BeamParams, GenerateParams};
use tessera_models::loader::{DEFAULT_CODE_MODEL, TextModel, parse_device};
use tessera_models::sampling::Sampling;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A .gguf file, a checkpoint directory, a Hugging Face repo id, or a fetched model's
    /// short name (qwen2.5-coder-0.5b, smollm2-135m).
    #[arg(long, short, default_value = DEFAULT_CODE_MODEL)]
    model: String,
    /// The prompt; `-` reads standard input. Special tokens such as <|fim_prefix|> are
    /// parsed as special tokens.
    #[arg(long, short)]
    prompt: String,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Beam search with this many beams (1: greedy or sampling).
    #[arg(long, default_value_t = 1)]
    beams: usize,
    /// Number of completions to return: the best beams (at most --beams), or independent
    /// samples with --temperature > 0. Greedy decoding gives exactly one.
    #[arg(long, default_value_t = 1)]
    num_return: usize,
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f32,
    /// Stop beam search as soon as `beams` hypotheses are finished.
    #[arg(long)]
    early_stopping: bool,
    /// Sampling temperature; 0 (the default) decodes greedily.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f32,
    /// Stop when the generated text contains this string (repeatable).
    #[arg(long = "stop")]
    stops: Vec<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print the result as JSON with scores, usage and timings.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let prompt = if args.prompt == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the prompt from standard input")?;
        s
    } else {
        args.prompt.clone()
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if args.beams == 0 {
        bail!("--beams must be at least 1");
    }
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a finite number >= 0");
    }
    if args.num_return == 0 {
        bail!("--num-return must be at least 1");
    }
    // Greedy decoding has exactly one answer: returning fewer than asked must not pass
    // silently.
    if args.num_return > 1 && args.beams == 1 && args.temperature == 0.0 {
        bail!(
            "--num-return {} needs --beams N (N >= {0}) or --temperature > 0: greedy decoding gives one completion",
            args.num_return
        );
    }
    if args.beams > 1 && args.num_return > args.beams {
        bail!("--num-return {} cannot exceed --beams {}", args.num_return, args.beams);
    }
    let device = parse_device(&args.device)?;
    let model = TextModel::load(&args.model, &device)?;
    let sampling = if args.temperature > 0.0 {
        Sampling::Sample {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            seed: args.seed,
        }
    } else {
        Sampling::Greedy
    };
    let params = GenerateParams {
        max_new_tokens: args.max_tokens,
        sampling,
        num_samples: args.num_return,
        repetition_penalty: args.repetition_penalty,
        beams: (args.beams > 1).then_some(BeamParams {
            num_beams: args.beams,
            length_penalty: args.length_penalty,
            early_stopping: args.early_stopping,
            num_return_sequences: args.num_return,
        }),
        stop_strings: args.stops.clone(),
        ..Default::default()
    };
    // Plain single-sequence output streams as it is generated.
    let stream = !args.json && args.beams == 1 && args.num_return <= 1;
    let mut stdout = std::io::stdout().lock();
    let mut on_text = |_: usize, delta: &str| {
        let _ = stdout.write_all(delta.as_bytes());
        let _ = stdout.flush();
    };
    let generation = model.generate(&prompt, &params, if stream { Some(&mut on_text) } else { None })?;
    if args.json {
        let completion_tokens: usize = generation.completions.iter().map(|c| c.tokens.len()).sum();
        let new_prefill = generation.prompt_tokens - generation.reused_tokens;
        let per_s = |n: usize, ms: f64| if ms > 0.0 { n as f64 / (ms / 1e3) } else { 0.0 };
        let out = json!({
            "completions": generation.completions.iter().map(|c| json!({
                "text": c.text,
                "score": c.score,
                "tokens": c.tokens.len(),
                "finish_reason": c.finish_reason.as_str(),
            })).collect::<Vec<_>>(),
            "usage": {
                "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": completion_tokens,
            },
            "timings": {
                "load_ms": model.load_ms,
                "prefill_ms": generation.prefill_ms,
                "decode_ms": generation.decode_ms,
                "prefill_tokens_per_s": per_s(new_prefill, generation.prefill_ms),
                "decode_tokens_per_s": per_s(generation.decode_steps, generation.decode_ms),
            },
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?)?;
    } else if stream {
        writeln!(stdout)?;
    } else if let Some(best) = generation.completions.first() {
        writeln!(stdout, "{}", best.text)?;
    }
    Ok(())
}
