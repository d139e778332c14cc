//! `tessera lsp` (the language server over stdio) and `tessera complete` (its completion
//! pipeline once, from the command line).

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use tessera_lsp::document::{PositionEncoding, position_in};
use tessera_lsp::oneshot::{self, Location};
use tessera_lsp::settings::{BackendKind, Settings};
use tessera_models::loader::DEFAULT_CODE_MODEL;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Local,
    Openai,
}

/// Settings shared by `lsp` and `complete`.
#[derive(Args, Debug)]
pub struct ModelArgs {
    /// A .gguf file, a checkpoint directory, a Hugging Face repo id, or a fetched model's
    /// short name. With `--backend openai`, the model name sent to the server.
    #[arg(long, short, default_value = DEFAULT_CODE_MODEL)]
    model: String,
    #[arg(long, value_enum, default_value = "local")]
    backend: BackendArg,
    /// Base URL of an OpenAI-compatible server (`--backend openai`).
    #[arg(long)]
    endpoint: Option<String>,
    /// Environment variable that holds the server's API key.
    #[arg(long)]
    api_key_env: Option<String>,
    /// Prompt template: qwen, starcoder2, starcoder, codellama, deepseek, codestral, plain
    /// (default: detected from the model's tokens).
    #[arg(long)]
    template: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl ModelArgs {
    fn settings(&self) -> Settings {
        Settings {
            model: self.model.clone(),
            device: self.device.clone(),
            backend: match self.backend {
                BackendArg::Local => BackendKind::Local,
                BackendArg::Openai => BackendKind::Openai,
            },
            endpoint: self.endpoint.clone(),
            api_key_env: self.api_key_env.clone(),
            remote_model: matches!(self.backend, BackendArg::Openai).then(|| self.model.clone()),
            template: self.template.clone(),
            ..Settings::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct LspArgs {
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run_lsp(args: LspArgs) -> Result<()> {
    let settings = args.model.settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(tessera_lsp::server::serve_stdio(settings))?;
    // Blocking tasks (a decode at its last step) must not hold the process after `exit`.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    Ok(())
}

#[derive(Args, Debug)]
pub struct CompleteArgs {
    /// Where to complete: FILE:LINE:COL, 1-based (COL counts characters).
    location: String,
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    beams: Option<usize>,
    /// Alternatives to print.
    #[arg(long)]
    alternatives: Option<usize>,
    /// Token limit of a single-line completion (multi-line ones get more).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Prompt budget in tokens.
    #[arg(long)]
    context_tokens: Option<usize>,
    /// Print items with ranges and scores, and timings, as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_complete(args: CompleteArgs) -> Result<()> {
    let loc = Location::parse(&args.location)?;
    let mut settings = args.model.settings();
    if let Some(b) = args.beams {
        settings.beams = b;
    }
    if let Some(a) = args.alternatives {
        settings.alternatives = a;
    }
    if let Some(m) = args.max_tokens {
        settings.max_tokens = m;
    }
    if let Some(c) = args.context_tokens {
        settings.context_tokens = c;
    }
    settings.validate()?;
    let report = oneshot::complete_at(&settings, &loc)?;
    if args.json {
        let one_based = |off: usize| {
            let p = position_in(&report.text, off, PositionEncoding::Utf8);
            let line_start = report.text[..off].rfind('\n').map_or(0, |i| i + 1);
            json!({ "line": p.line + 1, "col": report.text[line_start..off].chars().count() + 1 })
        };
        let items: Vec<_> = report
            .outcome
            .items
            .iter()
            .map(|it| {
                json!({
                    "text": it.text,
                    "range": { "start": one_based(it.start), "end": one_based(it.end) },
                    "score": it.score,
                    "new_syntax_errors": it.new_syntax_errors,
                })
            })
            .collect();
        let out = json!({
            "file": loc.file,
            "line": loc.line,
            "col": loc.column,
            "mode": report.outcome.mode,
            "backend": report.backend,
            "template": report.template,
            "items": items,
            "prompt_tokens": report.outcome.prompt_tokens,
            "timings": {
                "load_ms": report.load_ms,
                "index_ms": report.index.as_ref().map(|i| i.ms),
                "context_ms": report.outcome.timings.context_ms,
                "generate_ms": report.outcome.timings.generate_ms,
                "total_ms": report.outcome.timings.total_ms,
            },
            "index": report.index,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        match report.outcome.items.first() {
            Some(best) => println!("{}", best.text),
            None => eprintln!("tessera: no completion at {}", args.location),
        }
    }
    Ok(())
}
