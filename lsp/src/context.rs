//! The context around the cursor, built from the syntax tree within a token budget
//! measured with the model's tokenizer: the verbatim prefix and suffix windows; above a
//! truncated prefix, the file's imports and the headers of the enclosing scopes (kept
//! however far above they are); and snippets from elsewhere: signatures and doc comments
//! of the symbols used near the cursor (open documents and the workspace index), and the
//! most similar windows of the other open files. Everything that precedes the cursor in
//! the prompt is chosen from the lines above the cursor's line, in steps of whole line
//! blocks, so typing on one line keeps the prompt's start, and the engine's prefix cache,
//! unchanged.

use std::collections::HashSet;

use crate::document::Snapshot;
use crate::index::{self, WorkspaceIndex};
use crate::language::Language;
use crate::postprocess::DocumentStyle;
use crate::syntax::{self, Mode};
use crate::template::Snippet;

/// Window starts move in steps of this many lines, so the prompt start is stable.
const LINE_STEP: usize = 16;

/// Budget and shape of the context.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextSettings {
    /// Tokens for everything: prefix, suffix and snippets.
    pub budget_tokens: usize,
    /// Share of the budget for the suffix.
    pub suffix_share: f32,
    /// Share of the budget for snippets from other places.
    pub snippet_share: f32,
    /// Lines in a window of another file compared with the lines above the cursor.
    pub window_lines: usize,
    /// Symbols whose signatures are included, at most.
    pub max_symbols: usize,
}

impl Default for ContextSettings {
    fn default() -> Self {
        ContextSettings {
            budget_tokens: 1024,
            suffix_share: 0.15,
            snippet_share: 0.25,
            window_lines: 20,
            max_symbols: 8,
        }
    }
}

/// Another open document, as context.
#[derive(Debug, Clone)]
pub struct OpenFile {
    pub path: String,
    pub language: Language,
    pub text: String,
}

/// Everything the context is built from.
pub struct ContextInputs<'a> {
    pub doc: &'a Snapshot,
    pub offset: usize,
    /// The document's path as shown to the model.
    pub path: &'a str,
    pub others: &'a [OpenFile],
    pub index: Option<&'a WorkspaceIndex>,
    pub count_tokens: &'a dyn Fn(&str) -> usize,
    /// The snippets of the previous prompt built for this document: those still chosen
    /// keep their place at the front, so that the prompt's start (and the model's cached
    /// prefix) survives the cursor moving to the next line.
    pub previous_snippets: &'a [Snippet],
}

/// The context of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    pub prefix: String,
    pub suffix: String,
    pub snippets: Vec<Snippet>,
    pub mode: Mode,
    /// Where the verbatim prefix window starts in the document.
    pub window_start: usize,
    /// Estimated prompt tokens (prefix, suffix, snippets).
    pub tokens: usize,
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

/// Builds the context for the cursor at `inputs.offset` (clamped into the text).
pub fn build(settings: &ContextSettings, inputs: &ContextInputs<'_>) -> Context {
    let text = inputs.doc.text.as_str();
    let mut offset = inputs.offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let language = inputs.doc.language;
    let tree = inputs.doc.tree.as_ref();
    let count = inputs.count_tokens;
    let mode = syntax::completion_mode(language, text, tree, offset);
    let starts = line_starts(text);
    let cursor_line = starts.partition_point(|&s| s <= offset) - 1;

    let budget = settings.budget_tokens.max(64);
    let suffix_budget = (budget as f32 * settings.suffix_share) as usize;
    let snippet_budget = (budget as f32 * settings.snippet_share) as usize;
    let prefix_budget = budget - suffix_budget - snippet_budget;

    // Prefix window: whole lines back from the cursor's line while they fit. Only the lines
    // above the cursor's line decide where it starts, so that typing on that line cannot move
    // it: the cursor's line gets a reserve that grows in coarse steps.
    let line_text = |l: usize| &text[starts[l]..starts.get(l + 1).copied().unwrap_or(text.len())];
    let reserve_step = (prefix_budget / 16).max(8);
    let reserve = count(&text[starts[cursor_line]..offset]).div_ceil(reserve_step).max(1) * reserve_step;
    let above_budget = prefix_budget.saturating_sub(reserve);
    // Tokens of the lines that fit, from the cursor's line upwards.
    let mut line_tokens = Vec::new();
    let mut above_used = 0;
    while line_tokens.len() < cursor_line {
        let t = count(line_text(cursor_line - 1 - line_tokens.len()));
        if above_used + t > above_budget {
            break;
        }
        above_used += t;
        line_tokens.push(t);
    }
    // The first line of a window of the lines that fit in `budget`, rounded up to a block
    // boundary so the start moves rarely (keeping at least half of the lines).
    let window_first = |budget: usize| {
        let mut used = 0;
        let fitted = line_tokens
            .iter()
            .take_while(|&&t| {
                used += t;
                used <= budget
            })
            .count();
        let first = cursor_line - fitted;
        if first == 0 {
            return 0;
        }
        let step = LINE_STEP.min(fitted / 2).max(1);
        (first.div_ceil(step) * step).min(cursor_line)
    };
    let mut first = window_first(above_budget);
    let mut prefix = String::new();
    if first > 0
        && let Some(tree) = tree
    {
        // The header sits above the window within the same budget: the lines it displaces
        // leave the window's top.
        let header_budget = prefix_budget / 3;
        let imports = index::imports(language, tree, text);
        let header = elided_header(language, tree, text, &imports, starts[first], header_budget, count);
        first = window_first(above_budget.saturating_sub(count(&header))).max(first);
        let window: usize = line_tokens[..cursor_line - first].iter().sum();
        let left = above_budget.saturating_sub(window);
        prefix = elided_header(
            language,
            tree,
            text,
            &imports,
            starts[first],
            header_budget.min(left),
            count,
        );
    }
    let window_start = starts[first];
    let used = count(&prefix) + count(&text[window_start..offset]);
    prefix.push_str(&text[window_start..offset]);

    // Suffix: the rest of the cursor's line, then whole lines while they fit.
    let mut suffix_end = starts.get(cursor_line + 1).copied().unwrap_or(text.len());
    let mut suffix_used = count(&text[offset..suffix_end]);
    let mut next = cursor_line + 1;
    while next < starts.len() {
        let t = count(line_text(next));
        if suffix_used + t > suffix_budget {
            break;
        }
        suffix_used += t;
        next += 1;
        suffix_end = starts.get(next).copied().unwrap_or(text.len());
    }
    let suffix = text[offset..suffix_end].to_owned();

    // Snippets, chosen from the lines above the cursor's line only.
    let above_from = starts[cursor_line.saturating_sub(settings.window_lines)];
    let above = &text[above_from..starts[cursor_line]];
    let mut snippets = Vec::new();
    let mut snippet_used = 0;
    let mut push = |snip: Snippet, snippets: &mut Vec<Snippet>| {
        let t = count(&snip.text) + count(&snip.path) + 4;
        if snippet_used + t <= snippet_budget {
            snippet_used += t;
            snippets.push(snip);
        }
    };
    let mut candidates = Vec::new();
    if let (Some(tree), Some(idx)) = (tree, inputs.index) {
        candidates.extend(symbol_snippets(
            settings,
            idx,
            tree,
            text,
            inputs.path,
            above_from,
            starts[cursor_line],
            first..next,
        ));
    }
    candidates.extend(similar_windows(settings, above, inputs.others));
    for snip in stable_order(inputs.previous_snippets, candidates) {
        push(snip, &mut snippets);
    }

    Context {
        tokens: used + suffix_used + snippet_used,
        prefix,
        suffix,
        snippets,
        mode,
        window_start,
    }
}

/// The chosen snippets, those of the previous prompt that are still chosen first and in
/// their previous order, then the others in order of relevance. A snippet change near
/// the top of the prompt costs a prefill of everything below it (seconds on a CPU for an
/// 800-token prompt), where the order of the snippets matters little to the model.
fn stable_order(previous: &[Snippet], candidates: Vec<Snippet>) -> Vec<Snippet> {
    let mut rest = candidates;
    let mut ordered = Vec::with_capacity(rest.len());
    for old in previous {
        if let Some(i) = rest.iter().position(|c| c == old) {
            ordered.push(rest.remove(i));
        }
    }
    ordered.extend(rest);
    ordered
}

/// Imports, then the headers of the scopes that enclose the window's start, each followed
/// by an elision comment, within `budget` tokens.
fn elided_header(
    language: Language,
    tree: &tree_sitter::Tree,
    text: &str,
    import_ranges: &[std::ops::Range<usize>],
    window_start: usize,
    budget: usize,
    count: &dyn Fn(&str) -> usize,
) -> String {
    let comment = language.line_comment();
    let mut head = String::new();
    let mut used = 0;
    let mut imports = String::new();
    for r in import_ranges.iter().cloned() {
        if r.end > window_start {
            break;
        }
        let stmt = &text[r.clone()];
        let t = count(stmt);
        if used + t > budget / 2 {
            break;
        }
        used += t;
        imports.push_str(stmt);
        imports.push('\n');
    }
    if !imports.is_empty() {
        head.push_str(&imports);
        head.push('\n');
    }
    let mut scopes = String::new();
    // The file's own indentation step, for the elision comment inside each scope.
    let unit = match DocumentStyle::detect(text).indent_spaces {
        Some(n) => " ".repeat(n),
        None => "\t".to_owned(),
    };
    for (start, header) in index::enclosing_scopes(language, tree, text, window_start) {
        if start >= window_start {
            continue;
        }
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let indent: String = text[line_start..start]
            .chars()
            .take_while(|c| c.is_whitespace())
            .collect();
        // The header comes dedented to column 0: its continuation lines (a decorator, a long
        // parameter list) get the scope's indentation back.
        let header = header.replace('\n', &format!("\n{indent}"));
        let block = format!("{indent}{header}{}\n{indent}{unit}{comment} ...\n", opener(language));
        let t = count(&block);
        if used + t > budget {
            break;
        }
        used += t;
        scopes.push_str(&block);
    }
    if scopes.is_empty() {
        head.push_str(&format!("{comment} ...\n"));
    } else {
        head.push_str(&scopes);
    }
    head
}

fn opener(language: Language) -> &'static str {
    if language.indent_blocks() { ":" } else { " {" }
}

/// Signatures of the symbols used in `[from, to)` that are defined outside the lines of the
/// document the prompt shows (`visible`: the prefix window and the suffix), grouped by file,
/// nearest use first.
#[allow(clippy::too_many_arguments)]
fn symbol_snippets(
    settings: &ContextSettings,
    idx: &WorkspaceIndex,
    tree: &tree_sitter::Tree,
    text: &str,
    path: &str,
    from: usize,
    to: usize,
    visible: std::ops::Range<usize>,
) -> Vec<Snippet> {
    let mut by_file: Vec<(String, Vec<String>)> = Vec::new();
    let mut taken = 0;
    let mut seen = HashSet::new();
    for name in syntax::identifiers_in(tree, text, from, to) {
        if taken >= settings.max_symbols {
            break;
        }
        // One-letter names (`i`, `x`) are locals: skipped, and the search goes on.
        if name.len() < 2 {
            continue;
        }
        for sym in idx.lookup_preferring(&name, 2, Some(path)) {
            // Visible in the prompt already.
            if sym.path == path && visible.contains(&sym.line) {
                continue;
            }
            if sym.signature.is_empty() || !seen.insert((sym.path.clone(), sym.line)) {
                continue;
            }
            match by_file.iter_mut().find(|(p, _)| *p == sym.path) {
                Some((_, sigs)) => sigs.push(sym.signature.clone()),
                None => by_file.push((sym.path.clone(), vec![sym.signature.clone()])),
            }
            taken += 1;
        }
    }
    by_file
        .into_iter()
        .map(|(path, sigs)| Snippet {
            path,
            text: sigs.join("\n\n"),
        })
        .collect()
}

fn words(text: &str) -> HashSet<&str> {
    text.split(|c: char| !c.is_alphanumeric() && c != '_')
        .filter(|w| w.len() > 1)
        .collect()
}

/// The windows of other open files most similar (Jaccard over identifiers) to the lines
/// above the cursor: at most two, better than 0.1.
fn similar_windows(settings: &ContextSettings, above: &str, others: &[OpenFile]) -> Vec<Snippet> {
    let target = words(above);
    if target.is_empty() {
        return Vec::new();
    }
    let n = settings.window_lines.max(1);
    let mut scored: Vec<(f32, Snippet)> = Vec::new();
    for file in others {
        let lines: Vec<&str> = file.text.lines().collect();
        let mut best: Option<(f32, usize)> = None;
        let mut start = 0;
        loop {
            let end = (start + n).min(lines.len());
            let window = lines[start..end].join("\n");
            let w = words(&window);
            let inter = w.intersection(&target).count();
            let union = w.len() + target.len() - inter;
            let score = inter as f32 / union.max(1) as f32;
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, start));
            }
            if end >= lines.len() {
                break;
            }
            start += n / 2;
        }
        if let Some((score, start)) = best
            && score > 0.1
        {
            let end = (start + n).min(lines.len());
            scored.push((
                score,
                Snippet {
                    path: file.path.clone(),
                    text: lines[start..end].join("\n"),
                },
            ));
        }
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(2).map(|(_, s)| s).collect()
}
