//! The `tessera` binary: parses the command line and hands each subcommand to the crate
//! that owns it. Errors are printed as one clear line on stderr with exit code 2.

mod generate;
mod lsp;
mod transcribe;
mod vision;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tessera",
    version,
    about = "Code-assistant language server and multimodal model engine"
)]
struct Cli {
    /// Log filter (also RUST_LOG), e.g. `info` or `tessera_models=debug`. Logs go to stderr.
    #[arg(long, global = true, env = "TESSERA_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt with a causal language model.
    Generate(generate::GenerateArgs),
    /// Run the language server over stdio (stdout carries only JSON-RPC).
    Lsp(lsp::LspArgs),
    /// Complete code at FILE:LINE:COL once, through the language server's pipeline.
    Complete(lsp::CompleteArgs),
    /// Transcribe speech with Whisper (txt, srt, vtt, tsv or json).
    Transcribe(transcribe::TranscribeArgs),
    /// Match images against texts with CLIP: cosine similarities and probabilities.
    Match(vision::MatchArgs),
    /// Embed every image under a directory into its index (incremental).
    Index(vision::IndexArgs),
    /// Rank an indexed directory's images for a text or image query (`+`/`-` combine terms).
    Search(vision::SearchArgs),
}

/// `--log`, with symphonia silenced unless named: it logs its format probe's failures at
/// ERROR level ("probe reached EOF") for input that our own error then explains.
fn default_log_filter(log: &str) -> String {
    if log.contains("symphonia") {
        log.to_string()
    } else {
        format!("{log},symphonia=off")
    }
}

fn main() -> ExitCode {
    tessera_models::allocator::keep_freed_buffers();
    // Dependency panics that the libraries catch and report as errors print nothing.
    tessera_models::panics::install_quiet_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_log_filter(&cli.log)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Lsp(args) => lsp::run_lsp(args),
        Command::Complete(args) => lsp::run_complete(args),
        Command::Transcribe(args) => transcribe::run(args),
        Command::Match(args) => vision::run_match(args),
        Command::Index(args) => vision::run_index(args),
        Command::Search(args) => vision::run_search(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
