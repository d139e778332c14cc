//! Line-completion quality: the completion pipeline against the bare model on a seeded set
//! of lines from real code on this machine (Python's standard library, Rust crates in
//! `~/.cargo/registry/src`).
//!
//! From each sampled file one line is picked (seeded): 10-120 characters of code after its
//! indentation, inside a function, not a comment or string, where the pipeline completes a
//! single line. Its content after the indentation is hidden and the cursor put there.
//!
//! - pipeline: `Completer::complete` (context modeling with a workspace index of the file's
//!   directory, beam search, post-processing, reranking), top item;
//! - bare: `<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>` with the last
//!   `--bare-prefix-chars` of the prefix and the first `--bare-suffix-chars` of the suffix,
//!   greedy, at most 48 tokens, stopped at a line break.
//!
//! Metrics: exact match (trailing whitespace trimmed) and edit similarity (1 - Levenshtein /
//! longer length, in characters), per language and overall, and the mean latency.
//!
//! ```sh
//! cargo run --release -p tessera-lsp --example eval_completions -- [--per-lang 30] [--seed 42]
//!     [--beams 3] [--budget 1024] [--snippet-share 0.25] [--json out.json] [--only pipeline|bare]
//!     [--ablation 1|2]   # instead: decodes of variants of the pipeline's prompt (see the code)
//!     [--with-raw]   # also, in the JSON: the pipeline's prompt, its raw beams (before post-processing
//!                    # and reranking), the same prompt decoded greedily and by beams scored by sum
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tessera_lsp::backend::{Backend, GenerateRequest, LocalBackend};
use tessera_lsp::complete::{Completer, CompletionSettings, Request};
use tessera_lsp::context::{self, ContextInputs};
use tessera_lsp::document::{self, Document};
use tessera_lsp::index::{IndexLimits, WorkspaceIndex};
use tessera_lsp::language::Language;
use tessera_lsp::syntax::{self, Mode};
use tessera_lsp::template::{Family, PromptParts};
use tessera_models::generate::{BeamParams, GenerateParams};
use tessera_models::loader::{self, TextModel};

/// Deterministic splitmix64 (no dependency beyond the crate's).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

fn files_under(dir: &Path, ext: &str, skip: &dyn Fn(&Path) -> bool, out: &mut Vec<PathBuf>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if skip(&p) {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|e| e.to_str()) == Some(ext)
                && e.metadata().is_ok_and(|m| (2_000..200_000).contains(&m.len()))
            {
                out.push(p);
            }
        }
    }
}

fn python_files() -> Vec<PathBuf> {
    let lib = Path::new("/root/.pyenv/versions/3.11.7/lib/python3.11");
    let mut out = Vec::new();
    let skip = |p: &Path| {
        let s = p.to_string_lossy();
        s.contains("/test") || s.contains("site-packages") || s.contains("/idle_test") || s.contains("__pycache__")
    };
    files_under(lib, "py", &skip, &mut out);
    out.sort();
    out
}

fn rust_files() -> Vec<PathBuf> {
    let home = std::env::var_os("HOME").unwrap_or_default();
    let src = Path::new(&home).join(".cargo/registry/src");
    let mut out = Vec::new();
    let skip = |p: &Path| {
        let s = p.to_string_lossy();
        s.contains("/tests") || s.contains("/benches") || s.contains("/examples") || s.contains("/target")
    };
    for reg in std::fs::read_dir(src).into_iter().flatten().flatten() {
        for krate in std::fs::read_dir(reg.path()).into_iter().flatten().flatten() {
            let dir = krate.path().join("src");
            if dir.is_dir() {
                files_under(&dir, "rs", &skip, &mut out);
            }
        }
    }
    out.sort();
    out
}

/// A hidden line: the document without it, the cursor, what was there.
struct Sample {
    lang: &'static str,
    language: Language,
    file: PathBuf,
    line: usize,
    masked: String,
    offset: usize,
    expected: String,
}

fn is_comment(code: &str) -> bool {
    ["#", "//", "/*", "*", "\"\"\"", "'''", "r\"\"\"", "///", "//!"]
        .iter()
        .any(|c| code.starts_with(c))
}

/// One line of `file` (seeded), or None when it has no eligible line.
fn pick(lang: &'static str, language: Language, file: &Path, rng: &mut Rng) -> Option<Sample> {
    let text = std::fs::read_to_string(file).ok()?;
    if text.contains('\r') {
        return None;
    }
    let tree = document::parse(language, &text, None)?;
    let function_kinds: &[&str] = match language {
        Language::Python => &["function_definition"],
        _ => &["function_item", "closure_expression"],
    };
    let mut eligible = Vec::new();
    let mut start = 0;
    for (i, line) in text.split('\n').enumerate() {
        let end = start + line.len();
        let code = line.trim();
        let indent = line.len() - line.trim_start().len();
        if (10..=120).contains(&code.chars().count()) && !is_comment(code) && start + indent < text.len() {
            let node = tree
                .root_node()
                .descendant_for_byte_range(start + indent, start + indent + 1);
            let mut in_fn = false;
            let mut in_str = false;
            let mut n = node;
            while let Some(x) = n {
                let k = x.kind();
                if k.contains("string") || k.contains("comment") {
                    in_str = true;
                }
                if function_kinds.contains(&k) && x.start_byte() < start + indent {
                    in_fn = true;
                    break;
                }
                n = x.parent();
            }
            if in_fn && !in_str {
                eligible.push((i, start, indent, end));
            }
        }
        start = end + 1;
    }
    rng.shuffle(&mut eligible);
    for (i, start, indent, end) in eligible.into_iter().take(8) {
        let cursor = start + indent;
        let masked = format!("{}{}", &text[..cursor], &text[end..]);
        let masked_tree = document::parse(language, &masked, None);
        if syntax::completion_mode(language, &masked, masked_tree.as_ref(), cursor) != Mode::SingleLine {
            continue;
        }
        return Some(Sample {
            lang,
            language,
            file: file.to_path_buf(),
            line: i + 1,
            masked,
            offset: cursor,
            expected: text[cursor..end].trim_end().to_owned(),
        });
    }
    None
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn edit_similarity(a: &str, b: &str) -> f64 {
    let n = a.chars().count().max(b.chars().count());
    if n == 0 {
        return 1.0;
    }
    1.0 - levenshtein(a, b) as f64 / n as f64
}

#[derive(Default, Clone, serde::Serialize)]
struct Answer {
    text: String,
    ms: f64,
    prompt_tokens: usize,
    exact: bool,
    es: f64,
    note: String,
    /// `--with-raw`: the pipeline's prompt and its beams before post-processing and reranking.
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    raw: Vec<(String, f32)>,
    /// `--with-raw`: the same prompt decoded greedily, and by the same beam search scored by
    /// the sum of log-probabilities (length penalty 0) instead of their mean.
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_greedy: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    raw_sum_scored: Vec<(String, f32)>,
}

fn score(mut a: Answer, expected: &str) -> Answer {
    let first = a.text.split('\n').next().unwrap_or("").trim_end().to_owned();
    if first != a.text.trim_end() {
        a.note.push_str("multi-line answer, first line scored; ");
    }
    a.exact = first == expected;
    a.es = edit_similarity(&first, expected);
    a.text = first;
    a
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let per_lang: usize = opt("--per-lang").map_or(Ok(30), |v| v.parse())?;
    let seed: u64 = opt("--seed").map_or(Ok(42), |v| v.parse())?;
    let beams: usize = opt("--beams").map_or(Ok(3), |v| v.parse())?;
    let budget: usize = opt("--budget").map_or(Ok(1024), |v| v.parse())?;
    let snippet_share: f32 = opt("--snippet-share").map_or(Ok(0.25), |v| v.parse())?;
    let bare_prefix: usize = opt("--bare-prefix-chars").map_or(Ok(3000), |v| v.parse())?;
    let bare_suffix: usize = opt("--bare-suffix-chars").map_or(Ok(600), |v| v.parse())?;
    let index_files: usize = opt("--index-files").map_or(Ok(100), |v| v.parse())?;
    let only = opt("--only").unwrap_or_default();
    let langs = opt("--lang").unwrap_or_else(|| "both".into());
    let json_out = opt("--json");
    let with_raw = args.iter().any(|a| a == "--with-raw");
    let ablation_set: Option<u32> = opt("--ablation").and_then(|v| v.parse().ok());
    let ablation = ablation_set.is_some();

    let model = TextModel::load("qwen2.5-coder-0.5b", &loader::parse_device("cpu")?)?;
    let family = Family::detect(|t| model.tokenizer.token_id(t).is_some());
    let local = Arc::new(LocalBackend::new(model, family.stop_tokens()));
    let backend: Arc<dyn Backend> = local.clone();
    let model = local.model();
    let mut eos = model.eos_ids.clone();
    for t in ["<|endoftext|>", "<|file_sep|>"] {
        if let Some(id) = model.tokenizer.token_id(t)
            && !eos.contains(&id)
        {
            eos.push(id);
        }
    }
    // The ids that end a fill, as the local backend has them.
    let mut stop_ids = model.eos_ids.clone();
    for t in family.stop_tokens() {
        if let Some(id) = model.tokenizer.token_id(t)
            && !stop_ids.contains(&id)
        {
            stop_ids.push(id);
        }
    }
    let bare_params = GenerateParams {
        max_new_tokens: 48,
        eos_ids: eos,
        stop_strings: vec!["\n".into()],
        ..GenerateParams::default()
    };
    let mut settings = CompletionSettings {
        num_beams: beams,
        num_alternatives: beams.clamp(1, 3),
        // Quality, not the deadline: let every request finish (latency is reported).
        deadline: Duration::from_secs(120),
        ..CompletionSettings::default()
    };
    settings.context.budget_tokens = budget;
    settings.context.snippet_share = snippet_share;

    // The sample set.
    let mut rng = Rng(seed);
    let mut samples = Vec::new();
    let sets: Vec<(&'static str, Language, Vec<PathBuf>)> = [
        ("python", Language::Python, python_files()),
        ("rust", Language::Rust, rust_files()),
    ]
    .into_iter()
    .filter(|(l, _, _)| langs == "both" || langs == *l)
    .collect();
    for (lang, language, mut files) in sets {
        eprintln!("{lang}: {} candidate files", files.len());
        rng.shuffle(&mut files);
        let mut got = 0;
        for f in &files {
            if got == per_lang {
                break;
            }
            if let Some(s) = pick(lang, language, f, &mut rng) {
                samples.push(s);
                got += 1;
            }
        }
    }
    eprintln!(
        "{} samples; pipeline: {beams} beams, budget {budget}, snippet share {snippet_share}; bare: {bare_prefix}+{bare_suffix} chars, greedy",
        samples.len()
    );

    #[derive(serde::Serialize)]
    struct Row {
        lang: &'static str,
        file: String,
        line: usize,
        expected: String,
        pipeline: Answer,
        bare: Answer,
    }
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let load_before = loadavg();
    let mut rows = Vec::new();
    let mut ablations: Vec<(&'static str, Vec<(&'static str, Answer)>)> = Vec::new();
    let t_all = Instant::now();
    for (n, s) in samples.iter().enumerate() {
        let dir = s.file.parent().unwrap_or(Path::new("."));
        let rel = s
            .file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        // Alternate which runs first, so that drifts in machine load spread evenly.
        let run_pipeline = || -> Answer {
            let idx = WorkspaceIndex::new(IndexLimits {
                max_files: index_files,
                ..IndexLimits::default()
            });
            idx.index_root(dir);
            let mut doc = Document::new(format!("file://{}", s.file.display()), s.language, 0, s.masked.clone());
            let snapshot = doc.snapshot();
            // As the server does on didOpen: the open document replaces the file on disk.
            if let Some(tree) = &snapshot.tree {
                idx.update_file(&rel, s.language, &snapshot.text, tree);
            }
            let completer = Completer::new(backend.clone(), Some(family), Arc::new(idx));
            let repo = dir
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut st = settings.clone();
            st.repo_name = repo;
            let t = Instant::now();
            let out = completer.complete(
                &st,
                &Request {
                    snapshot: &snapshot,
                    offset: s.offset,
                    path: &rel,
                    others: &[],
                    cancel: Arc::new(AtomicBool::new(false)),
                },
            );
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let mut raw = Vec::new();
            let mut raw_greedy = None;
            let mut raw_sum_scored = Vec::new();
            let mut prompt_text = None;
            if with_raw {
                // The same prompt again (answered from the prefix cache but for its last
                // token), generated without post-processing and reranking.
                let count = |t: &str| backend.count_tokens(t);
                let ctx = context::build(
                    &st.context,
                    &ContextInputs {
                        doc: &snapshot,
                        offset: s.offset,
                        path: &rel,
                        others: &[],
                        index: Some(completer.index()),
                        count_tokens: &count,
                        previous_snippets: &[],
                    },
                );
                let prompt = family.render(&PromptParts {
                    repo: &st.repo_name,
                    path: &rel,
                    language: s.language,
                    snippets: &ctx.snippets,
                    prefix: &ctx.prefix,
                    suffix: &ctx.suffix,
                });
                let req = GenerateRequest {
                    prompt: prompt.clone(),
                    max_tokens: st.max_tokens_single_line,
                    num_beams: st.num_beams.max(1),
                    num_return: st.num_alternatives.clamp(1, st.num_beams.max(1)),
                    stop_predicate: Some(syntax::stop_rule(s.language, ctx.mode, &s.masked[..s.offset])),
                    cancel: Arc::new(AtomicBool::new(false)),
                    timeout: st.deadline,
                };
                if let Ok(g) = backend.generate(&req) {
                    raw = g.candidates.into_iter().map(|c| (c.text, c.score)).collect();
                }
                let mut params = GenerateParams {
                    max_new_tokens: st.max_tokens_single_line,
                    eos_ids: stop_ids.clone(),
                    stop_predicate: req.stop_predicate.clone(),
                    ..GenerateParams::default()
                };
                if let Ok(g) = model.generate(&prompt, &params, None) {
                    raw_greedy = g.completions.first().map(|c| c.text.clone());
                }
                params.beams = Some(BeamParams {
                    num_beams: st.num_beams.max(2),
                    length_penalty: 0.0,
                    early_stopping: true,
                    num_return_sequences: st.num_alternatives.clamp(1, st.num_beams.max(2)),
                });
                if let Ok(g) = model.generate(&prompt, &params, None) {
                    raw_sum_scored = g.completions.into_iter().map(|c| (c.text, c.score)).collect();
                }
                prompt_text = Some(prompt);
            }
            let pipeline = match out {
                Ok(o) => Answer {
                    text: o.items.first().map(|i| i.text.clone()).unwrap_or_default(),
                    ms,
                    prompt_tokens: o.prompt_tokens,
                    note: format!(
                        "{:?}, {} items{}; ",
                        o.mode,
                        o.items.len(),
                        o.items
                            .first()
                            .map_or(String::new(), |i| format!(", replace {}", i.end - i.start))
                    ),
                    ..Answer::default()
                },
                Err(e) => Answer {
                    ms,
                    note: format!("error: {e}; "),
                    ..Answer::default()
                },
            };
            let mut a = score(pipeline, &s.expected);
            a.raw = raw;
            a.raw_greedy = raw_greedy;
            a.raw_sum_scored = raw_sum_scored;
            a.prompt = prompt_text;
            a
        };
        let run_bare = || -> Answer {
            let prefix = &s.masked[..s.offset];
            let suffix = &s.masked[s.offset..];
            let p0 = floor_boundary(prefix, prefix.len().saturating_sub(bare_prefix));
            let s1 = floor_boundary(suffix, bare_suffix.min(suffix.len()));
            let prompt = format!(
                "<|fim_prefix|>{}<|fim_suffix|>{}<|fim_middle|>",
                &prefix[p0..],
                &suffix[..s1]
            );
            let t = Instant::now();
            let g = model.generate(&prompt, &bare_params, None);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let bare = match g {
                Ok(g) => Answer {
                    text: g.completions.first().map(|c| c.text.clone()).unwrap_or_default(),
                    ms,
                    prompt_tokens: g.prompt_tokens,
                    ..Answer::default()
                },
                Err(e) => Answer {
                    ms,
                    note: format!("error: {e}; "),
                    ..Answer::default()
                },
            };
            score(bare, &s.expected)
        };
        if ablation {
            // Greedy, single line, on variants of the pipeline's context (no Completer).
            let idx = WorkspaceIndex::new(IndexLimits {
                max_files: index_files,
                ..IndexLimits::default()
            });
            idx.index_root(dir);
            let mut doc = Document::new(format!("file://{}", s.file.display()), s.language, 0, s.masked.clone());
            let snapshot = doc.snapshot();
            if let Some(tree) = &snapshot.tree {
                idx.update_file(&rel, s.language, &snapshot.text, tree);
            }
            let count = |t: &str| backend.count_tokens(t);
            let ctx = context::build(
                &settings.context,
                &ContextInputs {
                    doc: &snapshot,
                    offset: s.offset,
                    path: &rel,
                    others: &[],
                    index: Some(&idx),
                    count_tokens: &count,
                    previous_snippets: &[],
                },
            );
            let repo = dir
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let prefix = &s.masked[..s.offset];
            let suffix = &s.masked[s.offset..];
            let p0 = floor_boundary(prefix, prefix.len().saturating_sub(bare_prefix));
            let s1 = floor_boundary(suffix, bare_suffix.min(suffix.len()));
            let plain_fim = format!("<|fim_prefix|>{}<|fim_suffix|>{}<|fim_middle|>", ctx.prefix, ctx.suffix);
            // Snippets as comments under path headers (the layout of families without
            // repo-level tokens), at the top of the prefix.
            let commented = {
                let parts = PromptParts {
                    repo: &repo,
                    path: &rel,
                    language: s.language,
                    snippets: &ctx.snippets,
                    prefix: &ctx.prefix,
                    suffix: &ctx.suffix,
                };
                let plain = Family::Plain.render(&parts);
                format!("<|fim_prefix|>{plain}<|fim_suffix|>{}<|fim_middle|>", ctx.suffix)
            };
            // (name, prompt, beams + post-processing instead of greedy)
            let variants: Vec<(&'static str, String, bool)> = if ablation_set == Some(2) {
                vec![
                    (
                        "plain FIM, pipeline context, no snippets, greedy",
                        plain_fim.clone(),
                        false,
                    ),
                    (
                        "plain FIM, pipeline context, no snippets, 3 beams + post-processing",
                        plain_fim,
                        true,
                    ),
                    (
                        "plain FIM, pipeline context, snippets as comments, greedy",
                        commented,
                        false,
                    ),
                ]
            } else {
                vec![
                    (
                        "pipeline context without snippets",
                        family.render(&PromptParts {
                            repo: &repo,
                            path: &rel,
                            language: s.language,
                            snippets: &[],
                            prefix: &ctx.prefix,
                            suffix: &ctx.suffix,
                        }),
                        false,
                    ),
                    (
                        "pipeline prefix and suffix, plain FIM (no repo/file header, no snippets)",
                        plain_fim,
                        false,
                    ),
                    (
                        "bare prefix and suffix under the repo/file header",
                        format!(
                            "<|repo_name|>{repo}\n<|file_sep|>{rel}\n<|fim_prefix|>{}<|fim_suffix|>{}<|fim_middle|>",
                            &prefix[p0..],
                            &suffix[..s1]
                        ),
                        false,
                    ),
                ]
            };
            let text = s.masked.as_str();
            let line_start = text[..s.offset].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[s.offset..].find('\n').map_or(text.len(), |i| s.offset + i);
            let style = tessera_lsp::postprocess::DocumentStyle::detect(text);
            let around = tessera_lsp::postprocess::Surroundings {
                line_before: &text[line_start..s.offset],
                rest_of_line: &text[s.offset..line_end],
                suffix: &text[s.offset..],
                mode: ctx.mode,
                style: &style,
            };
            let mut outs = Vec::new();
            for (name, prompt, beams_post) in variants {
                let t = Instant::now();
                let text = if beams_post {
                    let req = GenerateRequest {
                        prompt: prompt.clone(),
                        max_tokens: settings.max_tokens_single_line,
                        num_beams: settings.num_beams.max(1),
                        num_return: settings.num_alternatives.clamp(1, settings.num_beams.max(1)),
                        stop_predicate: Some(syntax::stop_rule(s.language, ctx.mode, &text[..s.offset])),
                        cancel: Arc::new(AtomicBool::new(false)),
                        timeout: settings.deadline,
                    };
                    backend
                        .generate(&req)
                        .ok()
                        .and_then(|g| {
                            g.candidates
                                .iter()
                                .find_map(|c| tessera_lsp::postprocess::postprocess(&c.text, &around))
                        })
                        .map(|e| e.text)
                        .unwrap_or_default()
                } else {
                    model
                        .generate(&prompt, &bare_params, None)
                        .ok()
                        .and_then(|g| g.completions.first().map(|c| c.text.clone()))
                        .unwrap_or_default()
                };
                let a = score(
                    Answer {
                        text,
                        ms: t.elapsed().as_secs_f64() * 1e3,
                        ..Answer::default()
                    },
                    &s.expected,
                );
                outs.push((name, a));
            }
            eprintln!(
                "[{}/{}] {} {}:{} | expected {:?}",
                n + 1,
                samples.len(),
                s.lang,
                s.file.display(),
                s.line,
                s.expected
            );
            for (name, a) in &outs {
                eprintln!("    {name}: {:?} (es {:.2})", a.text, a.es);
            }
            ablations.push((s.lang, outs));
            continue;
        }
        let (pipeline, bare) = match (only.as_str(), n % 2) {
            ("bare", _) => (Answer::default(), run_bare()),
            ("pipeline", _) => (run_pipeline(), Answer::default()),
            (_, 0) => {
                let p = run_pipeline();
                (p, run_bare())
            }
            _ => {
                let b = run_bare();
                (run_pipeline(), b)
            }
        };
        eprintln!(
            "[{}/{}] {} {}:{} | expected {:?}\n    pipeline {:?} ({:.0} ms, es {:.2}) | bare {:?} ({:.0} ms, es {:.2})",
            n + 1,
            samples.len(),
            s.lang,
            s.file.display(),
            s.line,
            s.expected,
            pipeline.text,
            pipeline.ms,
            pipeline.es,
            bare.text,
            bare.ms,
            bare.es
        );
        rows.push(Row {
            lang: s.lang,
            file: s.file.display().to_string(),
            line: s.line,
            expected: s.expected.clone(),
            pipeline,
            bare,
        });
    }

    if ablation {
        println!(
            "\n{} samples (seed {seed}), {:.0} s; greedy, stopped at a line break, on variants of the pipeline's prompt\n",
            ablations.len(),
            t_all.elapsed().as_secs_f64()
        );
        println!("| prompt | set | exact match | edit similarity | mean ms |");
        println!("|---|---|---|---|---|");
        let names: Vec<&str> = ablations
            .first()
            .map(|a| a.1.iter().map(|v| v.0).collect())
            .unwrap_or_default();
        for (i, name) in names.iter().enumerate() {
            for set in ["python", "rust", "all"] {
                let r: Vec<&Answer> = ablations
                    .iter()
                    .filter(|a| set == "all" || a.0 == set)
                    .map(|a| &a.1[i].1)
                    .collect();
                if r.is_empty() {
                    continue;
                }
                let n = r.len() as f64;
                println!(
                    "| {name} | {set} | {:.1}% | {:.3} | {:.0} |",
                    100.0 * r.iter().filter(|a| a.exact).count() as f64 / n,
                    r.iter().map(|a| a.es).sum::<f64>() / n,
                    r.iter().map(|a| a.ms).sum::<f64>() / n
                );
            }
        }
        if let Some(path) = json_out {
            std::fs::write(&path, serde_json::to_string_pretty(&ablations)?)?;
        }
        return Ok(());
    }
    println!(
        "\n{} samples (seed {seed}), {:.0} s; pipeline: Completer::complete, {beams} beams, context budget {budget} tokens, \
         snippet share {snippet_share}, index of the file's directory (<= {index_files} files); bare: FIM, last {bare_prefix} + \
         first {bare_suffix} characters, greedy\n",
        rows.len(),
        t_all.elapsed().as_secs_f64()
    );
    println!(
        "| set | n | exact match: pipeline | bare | edit similarity: pipeline | bare | mean ms: pipeline | bare | prompt tokens: pipeline | bare |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for set in ["python", "rust", "all"] {
        let r: Vec<&Row> = rows.iter().filter(|r| set == "all" || r.lang == set).collect();
        if r.is_empty() {
            continue;
        }
        let n = r.len() as f64;
        let mean = |f: &dyn Fn(&Row) -> f64| r.iter().map(|x| f(x)).sum::<f64>() / n;
        println!(
            "| {set} | {} | {:.1}% | {:.1}% | {:.3} | {:.3} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.len(),
            100.0 * mean(&|x| f64::from(u8::from(x.pipeline.exact))),
            100.0 * mean(&|x| f64::from(u8::from(x.bare.exact))),
            mean(&|x| x.pipeline.es),
            mean(&|x| x.bare.es),
            mean(&|x| x.pipeline.ms),
            mean(&|x| x.bare.ms),
            mean(&|x| x.pipeline.prompt_tokens as f64),
            mean(&|x| x.bare.prompt_tokens as f64),
        );
    }
    println!("\nload average: before {load_before}, after {}", loadavg());
    if with_raw {
        // The pipeline's own prompt, decoded three ways, first line scored as the items are.
        let first = |t: &str| t.split('\n').next().unwrap_or("").trim_end().to_owned();
        println!(
            "\n| pipeline prompt, decoded (first line, no post-processing) | set | exact match | edit similarity |"
        );
        println!("|---|---|---|---|");
        for set in ["python", "rust", "all"] {
            let r: Vec<&Row> = rows.iter().filter(|r| set == "all" || r.lang == set).collect();
            if r.is_empty() {
                continue;
            }
            let n = r.len() as f64;
            #[allow(clippy::type_complexity)]
            let variants: [(&str, &dyn Fn(&Row) -> String); 4] = [
                ("3 beams, mean log-prob (the backend's), top", &|x| {
                    x.pipeline.raw.first().map(|c| first(&c.0)).unwrap_or_default()
                }),
                ("3 beams, sum of log-probs, top", &|x| {
                    x.pipeline
                        .raw_sum_scored
                        .first()
                        .map(|c| first(&c.0))
                        .unwrap_or_default()
                }),
                ("greedy", &|x| first(x.pipeline.raw_greedy.as_deref().unwrap_or(""))),
                ("post-processed and reranked (the items)", &|x| x.pipeline.text.clone()),
            ];
            for (name, f) in variants {
                let em = r.iter().filter(|x| f(x) == x.expected).count() as f64 / n;
                let es = r.iter().map(|x| edit_similarity(&f(x), &x.expected)).sum::<f64>() / n;
                println!("| {name} | {set} | {:.1}% | {:.3} |", 100.0 * em, es);
            }
        }
    }
    let wins = rows.iter().filter(|r| r.pipeline.es > r.bare.es + 1e-9).count();
    let losses = rows.iter().filter(|r| r.pipeline.es + 1e-9 < r.bare.es).count();
    println!(
        "\nper sample: pipeline better {wins}, bare better {losses}, tied {}",
        rows.len() - wins - losses
    );
    let empty = rows.iter().filter(|r| r.pipeline.text.is_empty()).count();
    let empty_bare = rows.iter().filter(|r| r.bare.text.is_empty()).count();
    println!("empty answers: pipeline {empty}, bare {empty_bare}");
    let mut diffs: Vec<&Row> = rows.iter().filter(|r| r.pipeline.es + 1e-9 < r.bare.es).collect();
    diffs.sort_by(|a, b| (b.bare.es - b.pipeline.es).total_cmp(&(a.bare.es - a.pipeline.es)));
    println!("\nworst samples for the pipeline (bare better):");
    for r in diffs.iter().take(12) {
        println!(
            "- {}:{}\n  expected {:?}\n  pipeline {:?} (es {:.2}; {})\n  bare     {:?} (es {:.2})",
            r.file, r.line, r.expected, r.pipeline.text, r.pipeline.es, r.pipeline.note, r.bare.text, r.bare.es
        );
    }
    if let Some(path) = json_out {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("\nall samples: {path}");
    }
    Ok(())
}
