//! `tessera match`, `tessera index` and `tessera search`: CLIP image-text matching and
//! rclip-style search of an indexed directory, over `tessera-vision`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_models::loader::parse_device;
use tessera_vision::index::{ImageIndex, IndexObserver, Skipped, update};
use tessera_vision::pipeline::{ClipPipeline, NO_CLIP_WEIGHTS};
use tessera_vision::search::{parse_query, query_vector, rank};

/// Environment variable naming the CLIP model when `--model` is not given.
const MODEL_ENV: &str = "TESSERA_CLIP_MODEL";

#[derive(Args, Debug)]
pub struct MatchArgs {
    /// A CLIP checkpoint directory (Hugging Face layout) or a Hugging Face id
    /// (openai/clip-vit-base-patch32). None ships with Tessera.
    #[arg(long, short, env = MODEL_ENV)]
    model: Option<String>,
    /// Image files (JPEG, PNG, WebP, GIF, BMP, TIFF).
    #[arg(long = "image", short, num_args = 1.., required = true)]
    images: Vec<PathBuf>,
    /// Texts to match the images against.
    #[arg(long = "text", short, num_args = 1.., required = true)]
    texts: Vec<String>,
    /// Print JSON: images, texts, similarity, probs.
    #[arg(long)]
    json: bool,
    /// Add the normalised embeddings to the JSON (image_embeds, text_embeds); implies --json.
    #[arg(long)]
    embeddings: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args, Debug)]
pub struct IndexArgs {
    /// The directory whose images (searched recursively) are indexed into DIR/.tessera-index.
    dir: PathBuf,
    /// A CLIP checkpoint directory or Hugging Face id; by default the one the index was
    /// built with.
    #[arg(long, short, env = MODEL_ENV)]
    model: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Args, Debug)]
pub struct SearchArgs {
    /// Text and image terms joined by + and -, e.g. `horse + stripes`, `./city.jpg + night`,
    /// `2:golden retriever - dog`.
    #[arg(required = true, num_args = 1..)]
    query: Vec<String>,
    /// The indexed directory.
    #[arg(long, short, default_value = ".")]
    dir: PathBuf,
    /// How many results.
    #[arg(long, short, default_value_t = 10)]
    top: usize,
    /// Print only the paths, best first (for piping).
    #[arg(long, short = 'p')]
    paths_only: bool,
    /// The CLIP model for the query; by default the one the index was built with.
    #[arg(long, short, env = MODEL_ENV)]
    model: Option<String>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
}

fn load(spec: Option<&str>, device: &str) -> Result<(ClipPipeline, String)> {
    let Some(spec) = spec else {
        bail!("no CLIP model given; {NO_CLIP_WEIGHTS} (or set {MODEL_ENV})");
    };
    let device = parse_device(device)?;
    let t0 = Instant::now();
    let pipeline = ClipPipeline::load(spec, &device)?;
    tracing::info!(model = spec, ms = t0.elapsed().as_millis() as u64, "CLIP model loaded");
    Ok((pipeline, spec.to_owned()))
}

fn warn_truncated(truncated: &[usize], context: usize) {
    if truncated.is_empty() {
        return;
    }
    let which: Vec<String> = truncated.iter().map(|i| format!("#{}", i + 1)).collect();
    eprintln!(
        "tessera: warning: {} longer than {context} tokens and cut to fit: text {}",
        if truncated.len() == 1 {
            "one text is"
        } else {
            "some texts are"
        },
        which.join(", ")
    );
}

pub fn run_match(args: MatchArgs) -> Result<()> {
    let (pipeline, _) = load(args.model.as_deref(), &args.device)?;
    let mut images = Vec::with_capacity(args.images.len());
    for path in &args.images {
        images.push(tessera_vision::decode::load_rgb(path, &pipeline.decode)?);
    }
    let text = pipeline.embed_texts(&args.texts)?;
    warn_truncated(&text.truncated, pipeline.tokenizer.context_length());
    let image_embeds = pipeline.embed_images(&images)?;
    let table = pipeline.match_table(&image_embeds, &text.embeddings);
    let mut out = std::io::stdout().lock();
    if args.json || args.embeddings {
        let mut json = serde_json::json!({
            "images": args.images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "texts": args.texts,
            "similarity": table.similarity,
            "probs": table.probs,
        });
        if args.embeddings {
            json["image_embeds"] = serde_json::json!(image_embeds);
            json["text_embeds"] = serde_json::json!(text.embeddings);
        }
        writeln!(out, "{json}")?;
    } else {
        for (path, (sims, probs)) in args.images.iter().zip(table.similarity.iter().zip(&table.probs)) {
            writeln!(out, "{}", path.display())?;
            for ((text, s), p) in args.texts.iter().zip(sims).zip(probs) {
                writeln!(out, "  {:>7.2}%  {s:>7.4}  {text}", p * 100.0)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// A progress bar on a terminal; warnings for skipped files either way.
struct Progress {
    bar: Option<ProgressBar>,
}

impl IndexObserver for Progress {
    fn planned(&mut self, to_embed: usize, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_length(to_embed as u64);
            bar.set_message(format!("of {total} images need embedding"));
        }
    }

    fn advanced(&mut self, n: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(n as u64);
        }
    }

    fn skipped(&mut self, s: &Skipped) {
        let line = format!("tessera: warning: skipping {}: {}", s.path.display(), s.reason);
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}

/// The model an existing index of `dir` was built with, if any.
fn indexed_model(dir: &Path) -> Option<String> {
    ImageIndex::load(&ImageIndex::path_for(dir)).ok().map(|i| i.model)
}

pub fn run_index(args: IndexArgs) -> Result<()> {
    let meta = std::fs::metadata(&args.dir).with_context(|| format!("{}", args.dir.display()))?;
    if !meta.is_dir() {
        bail!("{}: not a directory", args.dir.display());
    }
    let spec = args.model.clone().or_else(|| indexed_model(&args.dir));
    let (pipeline, spec) = load(spec.as_deref(), &args.device)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} {elapsed}<{eta}").expect("a valid template"),
        )
    });
    let mut progress = Progress { bar };
    let t0 = Instant::now();
    let (index, report) = update(&args.dir, &pipeline, &spec, &mut progress)?;
    if let Some(bar) = &progress.bar {
        bar.finish_and_clear();
    }
    if let Some(why) = &report.rebuilt {
        eprintln!("tessera: warning: {why}");
    }
    eprintln!(
        "indexed {} images in {:.1} s ({} new, {} changed, {} unchanged, {} removed, {} skipped) -> {}",
        index.len(),
        t0.elapsed().as_secs_f64(),
        report.added,
        report.updated,
        report.unchanged,
        report.removed,
        report.skipped.len(),
        ImageIndex::path_for(&args.dir).display()
    );
    Ok(())
}

pub fn run_search(args: SearchArgs) -> Result<()> {
    let terms = parse_query(&args.query)?;
    let index_path = ImageIndex::path_for(&args.dir);
    if !index_path.exists() {
        bail!(
            "{}: no image index here; run `tessera index {} --model M` first",
            args.dir.display(),
            args.dir.display()
        );
    }
    let index = ImageIndex::load(&index_path)?;
    let spec = args.model.clone().unwrap_or_else(|| index.model.clone());
    let (pipeline, _) = load(Some(&spec), &args.device)
        .with_context(|| format!("loading the model the index was built with ({spec}); pass --model to use another"))?;
    if pipeline.dim() != index.dim {
        bail!(
            "{}: the index holds {}-dimensional embeddings but {spec} makes {}-dimensional ones; re-index with this model",
            index_path.display(),
            index.dim,
            pipeline.dim()
        );
    }
    let fp = tessera_vision::index::fingerprint(&pipeline.dir)?;
    if fp != index.fingerprint {
        tracing::warn!(
            "{spec} is not the model the index was built with ({}); scores may mean little",
            index.model
        );
    }
    let query = query_vector(&pipeline, &terms)?;
    let hits = rank(&index, &query, args.top);
    let mut out = std::io::stdout().lock();
    for hit in hits {
        let path = args.dir.join(&hit.path);
        if args.paths_only {
            writeln!(out, "{}", path.display())?;
        } else {
            writeln!(out, "{:.4}\t{}", hit.score, path.display())?;
        }
    }
    out.flush()?;
    Ok(())
}
