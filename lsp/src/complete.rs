//! The completion pipeline, shared by the server and `tessera complete`: results cache,
//! context, prompt template, generation with the syntax-aware stop rule and a deadline,
//! post-processing, and reranking so that candidates which leave the file parsing without
//! new ERROR/MISSING nodes come first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tree_sitter::{InputEdit, Point};

use crate::backend::{Backend, GenerateRequest};
use crate::cache::{CachedItem, ResultCache};
use crate::context::{self, ContextInputs, ContextSettings, OpenFile};
use crate::document::{self, Snapshot};
use crate::index::WorkspaceIndex;
use crate::postprocess::{self, DocumentStyle, Surroundings};
use crate::syntax::{self, Mode};
use crate::template::{Family, PromptParts, Snippet};
use crate::{Error, Result};

/// What a completion may cost and return.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionSettings {
    pub max_tokens_single_line: usize,
    pub max_tokens_multi_line: usize,
    pub num_beams: usize,
    /// Alternatives returned (at most `num_beams`).
    pub num_alternatives: usize,
    pub context: ContextSettings,
    /// A request answers with what it has by then.
    pub deadline: Duration,
    /// Repository name for templates with repo-level tokens.
    pub repo_name: String,
}

impl Default for CompletionSettings {
    fn default() -> Self {
        CompletionSettings {
            max_tokens_single_line: 48,
            max_tokens_multi_line: 160,
            num_beams: 3,
            num_alternatives: 3,
            context: ContextSettings::default(),
            deadline: Duration::from_secs(5),
            repo_name: "workspace".into(),
        }
    }
}

/// One completion: replace bytes `start..end` of the document with `text`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Item {
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub score: f32,
    /// ERROR/MISSING nodes added by this completion (None without a grammar).
    pub new_syntax_errors: Option<usize>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub context_ms: f64,
    pub generate_ms: f64,
    pub total_ms: f64,
}

/// The answer to one request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub items: Vec<Item>,
    pub mode: Mode,
    pub from_cache: bool,
    pub prompt_tokens: usize,
    pub reused_tokens: usize,
    pub timings: Timings,
}

/// A request: the document at one version and the cursor.
pub struct Request<'a> {
    pub snapshot: &'a Snapshot,
    pub offset: usize,
    /// The document's path as shown to the model.
    pub path: &'a str,
    pub others: &'a [OpenFile],
    /// Raised by the client's `$/cancelRequest` or a newer request.
    pub cancel: Arc<AtomicBool>,
}

/// The pipeline around one backend.
pub struct Completer {
    backend: Arc<dyn Backend>,
    family: Family,
    index: Arc<WorkspaceIndex>,
    cache: Mutex<ResultCache>,
    /// Generations run one at a time: they saturate the CPU anyway.
    generating: Mutex<()>,
    /// Token counts of recently measured texts (lines, mostly), by hash.
    token_counts: Mutex<HashMap<u64, usize>>,
    /// The snippets of each document's last prompt (see `ContextInputs::previous_snippets`).
    last_snippets: Mutex<HashMap<String, Vec<Snippet>>>,
}

/// Documents whose last snippets are remembered, at most.
const SNIPPET_MEMO: usize = 256;

/// Remembered token counts, at most.
const TOKEN_COUNT_MEMO: usize = 100_000;

fn elapsed_ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Completer {
    /// `family`: the prompt template, detected from the model's tokens when `None`.
    pub fn new(backend: Arc<dyn Backend>, family: Option<Family>, index: Arc<WorkspaceIndex>) -> Self {
        let family = family.unwrap_or_else(|| Family::detect(|t| backend.has_token(t)));
        Completer {
            backend,
            family,
            index,
            cache: Mutex::new(ResultCache::new(64)),
            generating: Mutex::new(()),
            token_counts: Mutex::new(HashMap::new()),
            last_snippets: Mutex::new(HashMap::new()),
        }
    }

    pub fn family(&self) -> Family {
        self.family
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn index(&self) -> &Arc<WorkspaceIndex> {
        &self.index
    }

    /// Forgets cached results (settings changed).
    pub fn clear_cache(&self) {
        if let Ok(mut c) = self.cache.lock() {
            *c = ResultCache::new(64);
        }
    }

    pub fn complete(&self, settings: &CompletionSettings, req: &Request<'_>) -> Result<Outcome> {
        let t0 = Instant::now();
        let text = req.snapshot.text.as_str();
        if req.offset > text.len() || !text.is_char_boundary(req.offset) {
            return Err(Error::InvalidInput(format!(
                "offset {} is not a character boundary of {} ({} bytes)",
                req.offset,
                req.snapshot.uri,
                text.len()
            )));
        }
        let offset = req.offset;
        let language = req.snapshot.language;
        let mode_hint = syntax::completion_mode(language, text, req.snapshot.tree.as_ref(), offset);
        if let Some(items) = self
            .cache
            .lock()
            .ok()
            .and_then(|mut c| c.lookup(&req.snapshot.uri, text, offset))
        {
            let items = items
                .into_iter()
                .map(|it| Item {
                    start: offset,
                    end: offset + it.replace_len,
                    text: it.text,
                    score: it.score,
                    new_syntax_errors: None,
                })
                .collect();
            return Ok(Outcome {
                items,
                mode: mode_hint,
                from_cache: true,
                prompt_tokens: 0,
                reused_tokens: 0,
                timings: Timings {
                    total_ms: elapsed_ms(t0),
                    ..Timings::default()
                },
            });
        }

        let backend = self.backend.clone();
        let counts = &self.token_counts;
        // Lines are counted again at every keystroke: remember their counts.
        let count = move |s: &str| {
            let key = {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(s, &mut h);
                std::hash::Hasher::finish(&h)
            };
            if let Some(n) = counts.lock().ok().and_then(|m| m.get(&key).copied()) {
                return n;
            }
            let n = backend.count_tokens(s);
            if let Ok(mut m) = counts.lock() {
                if m.len() >= TOKEN_COUNT_MEMO {
                    m.clear();
                }
                m.insert(key, n);
            }
            n
        };
        let previous = self
            .last_snippets
            .lock()
            .ok()
            .and_then(|m| m.get(req.snapshot.uri.as_str()).cloned())
            .unwrap_or_default();
        let ctx = context::build(
            &settings.context,
            &ContextInputs {
                doc: req.snapshot,
                offset,
                path: req.path,
                others: req.others,
                index: Some(&self.index),
                count_tokens: &count,
                previous_snippets: &previous,
            },
        );
        if let Ok(mut m) = self.last_snippets.lock() {
            if m.len() >= SNIPPET_MEMO {
                m.clear();
            }
            m.insert(req.snapshot.uri.to_string(), ctx.snippets.clone());
        }
        let context_ms = elapsed_ms(t0);
        let suffix = if self.family.uses_suffix() {
            ctx.suffix.as_str()
        } else {
            ""
        };
        let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        // Token healing for whitespace: a prompt ending in part of a whitespace token (the
        // indentation typed so far, the space after `return`) makes the model finish that
        // token instead of writing code. The prompt stops before it; the model writes it
        // and `unheal` takes it off again.
        let line_before = &text[line_start..offset];
        let heal = &line_before[line_before.trim_end_matches([' ', '\t']).len()..];
        let prefix = &ctx.prefix[..ctx.prefix.len() - heal.len()];
        let prompt = self.family.render(&PromptParts {
            repo: &settings.repo_name,
            path: req.path,
            language,
            snippets: &ctx.snippets,
            prefix,
            suffix,
        });
        let max_tokens = match ctx.mode {
            Mode::SingleLine => settings.max_tokens_single_line,
            Mode::MultiLine => settings.max_tokens_multi_line,
        };
        let engine_cancel = Arc::new(AtomicBool::new(false));
        let request = GenerateRequest {
            prompt,
            max_tokens,
            num_beams: settings.num_beams.max(1),
            num_return: settings.num_alternatives.clamp(1, settings.num_beams.max(1)),
            // The rule skips the first line's indentation, so the healed whitespace the
            // model writes first does not change its verdict.
            stop_predicate: Some(syntax::stop_rule(language, ctx.mode, &text[..offset])),
            cancel: engine_cancel.clone(),
            timeout: settings.deadline,
        };
        let t1 = Instant::now();
        let output = {
            let _turn = self
                .generating
                .lock()
                .map_err(|_| Error::InvalidInput("generation lock poisoned".into()))?;
            if req.cancel.load(Ordering::Relaxed) {
                return Err(Error::Cancelled);
            }
            let done = Arc::new(AtomicBool::new(false));
            let watcher = {
                let (done, client, engine) = (done.clone(), req.cancel.clone(), engine_cancel.clone());
                let deadline = Instant::now() + settings.deadline;
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        if client.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            engine.store(true, Ordering::Relaxed);
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            };
            let out = self.backend.generate(&request);
            done.store(true, Ordering::Relaxed);
            let _ = watcher.join();
            out?
        };
        if req.cancel.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        let generate_ms = elapsed_ms(t1);

        let style = DocumentStyle::detect(text);
        let around = Surroundings {
            line_before: &text[line_start..offset],
            rest_of_line: text[offset..line_end].trim_end_matches('\r'),
            suffix: &text[offset..],
            mode: ctx.mode,
            style: &style,
        };
        let baseline = req.snapshot.tree.as_ref().map(syntax::error_count);
        let mut items: Vec<Item> = Vec::new();
        for cand in output.candidates {
            let mut raw = unheal(&cand.text, heal).to_owned();
            if !cand.finished {
                // Cut short by the deadline or the limit: keep whole lines only. A single
                // line cut mid-way is a fragment (`if x ==`), worse than no suggestion.
                match ctx.mode {
                    Mode::MultiLine => raw.truncate(raw.rfind('\n').unwrap_or(0)),
                    Mode::SingleLine => continue,
                }
            }
            let Some(edit) = postprocess::postprocess(&raw, &around) else {
                continue;
            };
            if items.iter().any(|i| i.text == edit.text) {
                continue;
            }
            let end = offset + edit.replace_len;
            let new_syntax_errors = baseline.and_then(|base| {
                errors_after_edit(req.snapshot, offset, end, &edit.text).map(|after| after.saturating_sub(base))
            });
            if !cand.finished && new_syntax_errors.is_some_and(|n| n > 0) {
                // Cut short mid-block: the whole lines kept leave a block open. Not a
                // suggestion, a fragment.
                continue;
            }
            items.push(Item {
                text: edit.text,
                start: offset,
                end,
                score: cand.score,
                new_syntax_errors,
            });
        }
        // Stable: among equally clean candidates the beam order (score) stands.
        items.sort_by(|a, b| {
            let ka = a.new_syntax_errors.unwrap_or(0) > 0;
            let kb = b.new_syntax_errors.unwrap_or(0) > 0;
            ka.cmp(&kb).then(b.score.total_cmp(&a.score))
        });
        items.truncate(settings.num_alternatives.max(1));
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(
                &req.snapshot.uri,
                text,
                offset,
                items
                    .iter()
                    .map(|i| CachedItem {
                        text: i.text.clone(),
                        replace_len: i.end - i.start,
                        score: i.score,
                    })
                    .collect(),
            );
        }
        Ok(Outcome {
            items,
            mode: ctx.mode,
            from_cache: false,
            prompt_tokens: output.prompt_tokens,
            reused_tokens: output.reused_tokens,
            timings: Timings {
                context_ms,
                generate_ms,
                total_ms: elapsed_ms(t0),
            },
        })
    }
}

/// A completion of a healed prompt, without the whitespace the document already has: the
/// healed part when the model wrote it, else whatever whitespace the model began with.
fn unheal<'a>(text: &'a str, heal: &str) -> &'a str {
    if heal.is_empty() {
        return text;
    }
    match text.strip_prefix(heal) {
        Some(rest) => rest,
        None => text.trim_start_matches([' ', '\t']),
    }
}

fn point_of(text: &str, offset: usize) -> Point {
    let row = text[..offset].matches('\n').count();
    let col = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1);
    Point { row, column: col }
}

/// ERROR/MISSING nodes once `text[start..end]` is replaced by `insert` (incremental reparse).
fn errors_after_edit(snapshot: &Snapshot, start: usize, end: usize, insert: &str) -> Option<usize> {
    let mut tree = snapshot.tree.clone()?;
    let old = &snapshot.text;
    let mut new_text = String::with_capacity(old.len() + insert.len());
    new_text.push_str(&old[..start]);
    new_text.push_str(insert);
    new_text.push_str(&old[end..]);
    tree.edit(&InputEdit {
        start_byte: start,
        old_end_byte: end,
        new_end_byte: start + insert.len(),
        start_position: point_of(old, start),
        old_end_position: point_of(old, end),
        new_end_position: point_of(&new_text, start + insert.len()),
    });
    document::parse(snapshot.language, &new_text, Some(&tree)).map(|t| syntax::error_count(&t))
}

#[cfg(test)]
mod tests {
    use super::unheal;

    #[test]
    fn healed_whitespace_is_taken_off_once() {
        assert_eq!(unheal(" n % 2 == 0", " "), "n % 2 == 0");
        assert_eq!(unheal("n % 2 == 0", " "), "n % 2 == 0");
        assert_eq!(unheal("        x = 1", "    "), "    x = 1");
        assert_eq!(unheal("  x = 1", "    "), "x = 1");
        assert_eq!(unheal("\n    y", "    "), "\n    y");
        assert_eq!(unheal(" x", ""), " x");
    }
}
