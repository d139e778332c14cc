//! Definitions, scopes and imports, as each language's query (`lsp/queries/<name>.scm`) finds
//! them in a syntax tree, and the workspace index of definitions by name that completion
//! context is drawn from: the files under the workspace root, replaced by the open documents'
//! current text. A definition is kept as its signature — doc comment and header, never its
//! body — since that is what a reader (or a model) needs to call it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use tree_sitter::{Node, Query, QueryCursor, StreamingIterator, Tree};

use crate::Error;
use crate::document;
use crate::language::{ALL_WITH_GRAMMAR, Language};

/// Signatures beyond this are cut: a few of them must fit a completion prompt.
const SIGNATURE_MAX_BYTES: usize = 1200;
/// A definition without a body (a constant, a macro, a type alias) is shown whole, up to this.
const BODYLESS_MAX_LINES: usize = 8;

/// A definition found by the language's query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    /// From the query's `@definition.<kind>`: "function", "method", "class", "struct",
    /// "enum", "interface", "trait", "type", "constant", "module" or "macro".
    pub kind: String,
    pub path: String,
    /// 0-based line where the definition starts.
    pub line: usize,
    /// See [`signature`].
    pub signature: String,
}

/// Compiled query of a language, once per process; `None` for plain text (or a query that
/// does not compile, which the tests rule out).
pub fn query(language: Language) -> Option<&'static Query> {
    static QUERIES: [OnceLock<Option<Query>>; ALL_WITH_GRAMMAR.len()] =
        [const { OnceLock::new() }; ALL_WITH_GRAMMAR.len()];
    let slot = ALL_WITH_GRAMMAR.iter().position(|&l| l == language)?;
    QUERIES[slot]
        .get_or_init(|| {
            let grammar = language.grammar()?;
            Query::new(&grammar, language.query_source())
                .inspect_err(|e| tracing::error!("the {} query does not compile: {e}", language.name()))
                .ok()
        })
        .as_ref()
}

/// What a capture of the query files stands for.
#[derive(Clone, Copy)]
enum Role {
    Definition(&'static str),
    Name,
    Scope,
    Import,
    /// Captures used only by predicates (`@_require`).
    Other,
}

fn roles(query: &'static Query) -> Vec<Role> {
    query
        .capture_names()
        .iter()
        .map(|&name| match name {
            "name" => Role::Name,
            "scope" => Role::Scope,
            "import" => Role::Import,
            _ => name.strip_prefix("definition.").map_or(Role::Other, Role::Definition),
        })
        .collect()
}

/// The text of `range`, or nothing when the tree does not belong to `text` (a stale tree must
/// not panic the server).
fn slice(text: &str, range: Range<usize>) -> &str {
    text.get(range).unwrap_or("")
}

/// The node that carries a definition's prefix: decorators, `export`, `template <...>`, Go's
/// `type`/`const` keyword of a single spec. Its start is where the header starts, and doc
/// comments sit above it.
fn anchor(node: Node<'_>) -> Node<'_> {
    let mut node = node;
    while let Some(parent) = node.parent() {
        let wraps = match parent.kind() {
            "decorated_definition" | "template_declaration" | "ambient_declaration" => true,
            "export_statement" => parent.child_by_field_name("declaration") == Some(node),
            "type_declaration" | "const_declaration" => parent.named_child_count() == 1,
            _ => false,
        };
        if !wraps {
            break;
        }
        node = parent;
    }
    node
}

/// Where the body starts, for definitions that have one.
fn body_start(node: Node<'_>) -> Option<usize> {
    if let Some(body) = node.child_by_field_name("body") {
        // A tuple struct's fields are its constructor's parameters, not a body.
        if body.kind() == "ordered_field_declaration_list" {
            return None;
        }
        // Comments before the body belong to it (Python puts a comment above a block's first
        // statement there).
        let mut start = body.start_byte();
        let mut previous = body.prev_sibling();
        while let Some(comment) = previous.filter(|p| p.kind().contains("comment")) {
            start = comment.start_byte();
            previous = comment.prev_sibling();
        }
        return Some(start);
    }
    let function = match node.kind() {
        // `const f = (a) => ...`: the body is the function's.
        "lexical_declaration" | "variable_declaration" => {
            let mut cursor = node.walk();
            let declarator = node
                .named_children(&mut cursor)
                .find(|c| c.kind() == "variable_declarator")?;
            declarator.child_by_field_name("value")?
        }
        "field_definition" | "public_field_definition" => node.child_by_field_name("value")?,
        _ => return None,
    };
    function.child_by_field_name("body").map(|body| body.start_byte())
}

/// The previous node in the text: the previous sibling, or that of an ancestor starting at the
/// same place (a comment before the first statement of a Python block lands outside the block).
fn previous_item(node: Node<'_>) -> Option<Node<'_>> {
    let mut node = node;
    loop {
        if let Some(previous) = node.prev_sibling() {
            return Some(previous);
        }
        let parent = node.parent()?;
        if parent.start_byte() != node.start_byte() {
            return None;
        }
        node = parent;
    }
}

fn starts_line(text: &str, offset: usize) -> bool {
    let line_start = text
        .get(..offset)
        .and_then(|before| before.rfind('\n'))
        .map_or(0, |i| i + 1);
    slice(text, line_start..offset).trim().is_empty()
}

/// Start of the comments (and Rust attributes) right above `anchor`: contiguous, each on its
/// own lines, no blank line in between.
fn doc_start(language: Language, text: &str, anchor: Node<'_>) -> usize {
    let mut start = anchor.start_byte();
    let mut current = anchor;
    while let Some(previous) = previous_item(current) {
        let is_doc =
            previous.kind().contains("comment") || (language == Language::Rust && previous.kind() == "attribute_item");
        if !is_doc || !starts_line(text, previous.start_byte()) {
            break;
        }
        let Some(gap) = text.get(previous.end_byte()..start) else {
            break;
        };
        // Some grammars end a line comment after its newline.
        let newlines = gap.matches('\n').count() + usize::from(slice(text, previous.byte_range()).ends_with('\n'));
        if !gap.trim().is_empty() || newlines > 1 {
            break;
        }
        start = previous.start_byte();
        current = previous;
    }
    start
}

/// Removes up to `column` leading blanks from every line but the first, so that a member's
/// signature reads as if it were at the top level.
fn dedent(text: &str, column: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i == 0 {
            out.push_str(line);
            continue;
        }
        let blanks = line
            .bytes()
            .take(column)
            .take_while(|b| *b == b' ' || *b == b'\t')
            .count();
        out.push_str(&line[blanks..]);
    }
    out
}

fn first_lines(text: &str, lines: usize) -> &str {
    match text.match_indices('\n').nth(lines.saturating_sub(1)) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

fn truncate_to_char_boundary(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Keeps the whole lines of `text` that fit in `budget` bytes. A block comment or docstring
/// cut short is closed again, so that it cannot swallow what follows it in a prompt.
fn fit_lines(text: &str, budget: usize) -> String {
    if text.len() <= budget {
        return text.to_owned();
    }
    let closer = ["*/", "\"\"\"", "'''"]
        .into_iter()
        .find(|c| text.trim_end().ends_with(c));
    let reserve = closer.map_or(0, |c| c.len() + 1);
    let mut kept = String::new();
    for line in text.split_inclusive('\n') {
        if kept.len() + line.len() + reserve > budget {
            break;
        }
        kept.push_str(line);
    }
    let kept_closed = closer.is_none_or(|c| match c {
        "*/" => kept.matches("/*").count() <= kept.matches("*/").count(),
        _ => kept.matches(c).count() % 2 == 0,
    });
    if let (Some(closer), false) = (closer, kept_closed) {
        if !kept.is_empty() && !kept.ends_with('\n') {
            kept.push('\n');
        }
        kept.push_str(closer);
        kept.push('\n');
    }
    kept
}

/// The definition's header: from its anchor to its body (or all of it, up to
/// [`BODYLESS_MAX_LINES`]), with the `{` or `:` that opens the body removed.
fn header(text: &str, node: Node<'_>) -> String {
    let anchor = anchor(node);
    let start = anchor.start_byte();
    let raw = match body_start(node) {
        Some(body) => slice(text, start..body),
        None => first_lines(slice(text, start..node.end_byte()), BODYLESS_MAX_LINES),
    };
    let mut header = dedent(raw, anchor.start_position().column);
    let trimmed = header.trim_end();
    let trimmed = trimmed.strip_suffix(['{', ':']).unwrap_or(trimmed).trim_end();
    header.truncate(trimmed.len());
    truncate_to_char_boundary(&mut header, SIGNATURE_MAX_BYTES);
    header
}

/// A Python docstring: the string that is the first statement of the body.
fn docstring<'t>(node: Node<'t>) -> Option<Node<'t>> {
    let body = node.child_by_field_name("body")?;
    let mut cursor = body.walk();
    let first = body
        .named_children(&mut cursor)
        .find(|c| !c.kind().contains("comment"))?;
    let string = first.named_child(0)?;
    (first.kind() == "expression_statement" && first.named_child_count() == 1 && string.kind() == "string")
        .then_some(string)
}

/// The text a reader needs to call or use a definition: the comments right above it (doc
/// comments, attributes; for Python also the docstring) and its header — the text up to its
/// body, or the whole definition up to a few lines when it has none. For Python the colon is
/// kept when a docstring follows, as in the source. Bounded to about a kilobyte.
pub fn signature(language: Language, text: &str, node: Node<'_>) -> String {
    let header = header(text, node);
    let anchor = anchor(node);
    let column = anchor.start_position().column;
    let mut budget = SIGNATURE_MAX_BYTES.saturating_sub(header.len());

    let mut docstring_text = String::new();
    if language == Language::Python
        && let Some(string) = docstring(node)
    {
        let indent = if starts_line(text, string.start_byte()) {
            string.start_position().column.saturating_sub(column)
        } else {
            4
        };
        let raw = format!("{}{}", " ".repeat(indent), slice(text, string.byte_range()));
        let fitted = fit_lines(&dedent(&raw, column), budget.saturating_sub(2));
        if !fitted.trim().is_empty() {
            docstring_text = format!(":\n{}", fitted.trim_end());
            budget = budget.saturating_sub(docstring_text.len());
        }
    }

    let start = doc_start(language, text, anchor);
    let comments = dedent(slice(text, start..anchor.start_byte()), column);
    let comments = fit_lines(comments.trim_end(), budget.saturating_sub(1));
    let mut signature = String::with_capacity(comments.len() + header.len() + docstring_text.len() + 1);
    if !comments.trim().is_empty() {
        signature.push_str(comments.trim_end());
        signature.push('\n');
    }
    signature.push_str(&header);
    signature.push_str(&docstring_text);
    truncate_to_char_boundary(&mut signature, SIGNATURE_MAX_BYTES);
    signature
}

/// A definition as the query matched it.
#[derive(Clone, Copy)]
struct Found<'tree> {
    pattern: usize,
    kind: &'static str,
    node: Node<'tree>,
    name: Node<'tree>,
}

/// All definitions in a parsed file, in the order of the text.
pub fn symbols(language: Language, text: &str, tree: &Tree, path: &str) -> Vec<Symbol> {
    let Some(query) = query(language) else {
        return Vec::new();
    };
    let roles = roles(query);
    // The same node can match several patterns (a method is also a function): the first
    // pattern of the file wins. The name is part of the key since a Go `const a, b = 1, 2`
    // defines two names with one node (one match with several `@name`s).
    let mut found: BTreeMap<(usize, Reverse<usize>, usize), Found<'_>> = BTreeMap::new();
    let mut cursor = QueryCursor::new();
    let mut matches = cursor.matches(query, tree.root_node(), text.as_bytes());
    while let Some(m) = matches.next() {
        let Some((node, kind)) = m.captures().iter().find_map(|c| match roles.get(c.index as usize) {
            Some(Role::Definition(kind)) => Some((c.node, *kind)),
            _ => None,
        }) else {
            continue;
        };
        let names = m
            .captures()
            .iter()
            .filter(|c| matches!(roles.get(c.index as usize), Some(Role::Name)));
        for name in names.map(|c| c.node) {
            let key = (node.start_byte(), Reverse(node.end_byte()), name.start_byte());
            let candidate = Found {
                pattern: m.pattern_index,
                kind,
                node,
                name,
            };
            found
                .entry(key)
                .and_modify(|best| {
                    if candidate.pattern < best.pattern {
                        *best = candidate;
                    }
                })
                .or_insert(candidate);
        }
    }
    found
        .into_values()
        .filter_map(|Found { kind, node, name, .. }| {
            let name = slice(text, name.byte_range()).trim();
            (!name.is_empty()).then(|| Symbol {
                name: name.to_owned(),
                kind: kind.to_owned(),
                path: path.to_owned(),
                line: node.start_position().row,
                signature: signature(language, text, node),
            })
        })
        .collect()
}

/// Byte ranges of the file's import statements (`use`, `import`, `#include`, `package`, ...),
/// in order.
pub fn imports(language: Language, tree: &Tree, text: &str) -> Vec<Range<usize>> {
    let Some(query) = query(language) else {
        return Vec::new();
    };
    let roles = roles(query);
    let mut ranges = Vec::new();
    let mut cursor = QueryCursor::new();
    // Imports sit at the top of a file's tree (or one level in, under `#ifdef`): matching
    // only there keeps this cheap on files of thousands of lines.
    cursor.set_max_start_depth(Some(2));
    let mut matches = cursor.matches(query, tree.root_node(), text.as_bytes());
    while let Some(m) = matches.next() {
        for capture in m.captures() {
            if let Some(Role::Import) = roles.get(capture.index as usize) {
                ranges.push(capture.node.byte_range());
            }
        }
    }
    // Preprocessor lines end after their newline.
    for range in &mut ranges {
        range.end = range.start + slice(text, range.clone()).trim_end().len();
    }
    ranges.sort_by_key(|r| (r.start, Reverse(r.end)));
    ranges.dedup();
    ranges
}

/// The scopes (functions, classes, impls, modules, ...) that contain byte `offset` — strictly,
/// `start < offset <= end` — outermost first, each as its start byte and its header (the
/// signature without the doc comment).
///
/// In Python a block ends with its last statement, yet a cursor on a blank line (or after
/// trailing blanks) below it, indented deeper than the scope's header, is still inside.
pub fn enclosing_scopes(language: Language, tree: &Tree, text: &str, offset: usize) -> Vec<(usize, String)> {
    let Some(query) = query(language) else {
        return Vec::new();
    };
    let roles = roles(query);
    let before = text.get(..offset).unwrap_or("");
    // Where the scopes are looked for, and the cursor's indentation when it is on a line of its
    // own below them.
    let (probe, indent) = match language.indent_blocks() {
        true => {
            let probe = before.trim_end().len();
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let indent = (probe < line_start).then_some(offset - line_start);
            (probe, indent)
        }
        false => (offset, None),
    };
    let mut scopes = BTreeMap::new();
    let mut cursor = QueryCursor::new();
    cursor.set_byte_range(probe.saturating_sub(1)..probe.saturating_add(1));
    let mut matches = cursor.matches(query, tree.root_node(), text.as_bytes());
    while let Some(m) = matches.next() {
        for capture in m.captures() {
            let node = capture.node;
            let contains = node.start_byte() < probe
                && probe <= node.end_byte()
                && (offset <= node.end_byte() || indent.is_none_or(|i| i > node.start_position().column));
            if let Some(Role::Scope) = roles.get(capture.index as usize)
                && contains
            {
                scopes.insert((node.start_byte(), Reverse(node.end_byte())), node);
            }
        }
    }
    scopes
        .into_values()
        .map(|node| (node.start_byte(), header(text, node)))
        .collect()
}

/// Bounds of a workspace index.
#[derive(Debug, Clone)]
pub struct IndexLimits {
    /// Files indexed at most; the walk stops there.
    pub max_files: usize,
    /// Larger files are skipped (generated code, bundles, data).
    pub max_file_bytes: usize,
    /// Source bytes read at most; the walk stops there.
    pub max_total_bytes: usize,
}

impl Default for IndexLimits {
    fn default() -> Self {
        IndexLimits {
            max_files: 5000,
            max_file_bytes: 1 << 20,
            max_total_bytes: 64 << 20,
        }
    }
}

/// What a walk of the workspace indexed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct IndexStats {
    /// Files indexed.
    pub files: usize,
    /// Definitions found in them.
    pub symbols: usize,
    /// Files of a known language left out: too large, not UTF-8, unreadable or unparsable.
    pub skipped: usize,
    /// Source bytes indexed.
    pub bytes: usize,
}

#[derive(Default)]
struct Inner {
    /// Name → file → that file's definitions of the name. Files are ordered so that lookups
    /// are deterministic.
    by_name: HashMap<String, BTreeMap<String, Vec<Symbol>>>,
    /// File → the names it defines, to drop them when the file is replaced.
    names: HashMap<String, Vec<String>>,
    symbols: usize,
}

impl Inner {
    fn remove(&mut self, path: &str) {
        let Some(names) = self.names.remove(path) else {
            return;
        };
        for name in names {
            let Some(files) = self.by_name.get_mut(&name) else {
                continue;
            };
            if let Some(removed) = files.remove(path) {
                self.symbols -= removed.len();
            }
            if files.is_empty() {
                self.by_name.remove(&name);
            }
        }
    }

    fn replace(&mut self, path: &str, symbols: Vec<Symbol>) {
        self.remove(path);
        let mut names = Vec::new();
        self.symbols += symbols.len();
        for symbol in symbols {
            let files = self.by_name.entry(symbol.name.clone()).or_default();
            let in_file = files.entry(path.to_owned()).or_default();
            if in_file.is_empty() {
                names.push(symbol.name.clone());
            }
            in_file.push(symbol);
        }
        if !names.is_empty() {
            self.names.insert(path.to_owned(), names);
        }
    }
}

/// Definitions of the workspace and of the open documents, by name. Thread-safe: share it as
/// an `Arc`; parsing happens outside the lock.
pub struct WorkspaceIndex {
    limits: IndexLimits,
    inner: RwLock<Inner>,
}

impl WorkspaceIndex {
    pub fn new(limits: IndexLimits) -> Self {
        WorkspaceIndex {
            limits,
            inner: RwLock::new(Inner::default()),
        }
    }

    // A panic while holding the lock leaves the maps consistent (each update is a single
    // `replace`), so a poisoned lock is still usable.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Indexes the files of known languages under `root` (keyed by their path relative to it), honouring `.gitignore` (with or
    /// without a git repository) and `.ignore` and skipping hidden files, within the limits.
    /// Files indexed before are replaced; files that cannot be read are skipped.
    pub fn index_root(&self, root: &Path) -> IndexStats {
        let mut stats = IndexStats::default();
        let walk = ignore::WalkBuilder::new(root)
            .require_git(false)
            .sort_by_file_name(|a, b| a.cmp(b))
            .build();
        for entry in walk {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::debug!("workspace index: {e}");
                    continue;
                }
            };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let path = entry.path();
            let language = Language::from_path(path);
            if language.grammar().is_none() {
                continue;
            }
            if stats.files >= self.limits.max_files {
                tracing::info!("workspace index: stopped at {} files", stats.files);
                break;
            }
            // Keys are workspace-relative: the path the model is shown, and the key open
            // documents are updated under.
            let key = path.strip_prefix(root).unwrap_or(path).to_string_lossy();
            let size = entry.metadata().map_or(0, |m| m.len());
            if size > self.limits.max_file_bytes as u64 {
                tracing::debug!("workspace index: skipping {key}: {size} bytes");
                stats.skipped += 1;
                continue;
            }
            if stats.bytes as u64 + size > self.limits.max_total_bytes as u64 {
                tracing::info!("workspace index: stopped at {} bytes", stats.bytes);
                break;
            }
            let bytes = match std::fs::read(path) {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::debug!("workspace index: skipping {}", Error::io(&key, e));
                    stats.skipped += 1;
                    continue;
                }
            };
            // The file may have grown since its metadata was read.
            if bytes.len() > self.limits.max_file_bytes || stats.bytes + bytes.len() > self.limits.max_total_bytes {
                stats.skipped += 1;
                continue;
            }
            let Ok(text) = String::from_utf8(bytes) else {
                tracing::debug!("workspace index: skipping {}", Error::NotUtf8(key.into_owned()));
                stats.skipped += 1;
                continue;
            };
            let Some(tree) = document::parse(language, &text, None) else {
                tracing::debug!("workspace index: skipping {key}: not parsed");
                stats.skipped += 1;
                continue;
            };
            let symbols = symbols(language, &text, &tree, &key);
            stats.files += 1;
            stats.bytes += text.len();
            stats.symbols += symbols.len();
            self.write().replace(&key, symbols);
        }
        stats
    }

    /// Replaces the definitions of one file (an open document, keyed by its uri or path).
    pub fn update_file(&self, path: &str, language: Language, text: &str, tree: &Tree) {
        let symbols = symbols(language, text, tree, path);
        self.write().replace(path, symbols);
    }

    pub fn remove_file(&self, path: &str) {
        self.write().remove(path);
    }

    /// Definitions named `name`, at most `limit`, ordered by file and line.
    pub fn lookup(&self, name: &str, limit: usize) -> Vec<Symbol> {
        self.lookup_preferring(name, limit, None)
    }

    /// Like [`lookup`](Self::lookup), with the definitions in `prefer_path` (the document
    /// being completed) first.
    pub fn lookup_preferring(&self, name: &str, limit: usize, prefer_path: Option<&str>) -> Vec<Symbol> {
        let inner = self.read();
        let Some(files) = inner.by_name.get(name) else {
            return Vec::new();
        };
        let preferred = prefer_path.and_then(|p| files.get(p)).into_iter().flatten();
        let others = files
            .iter()
            .filter(|(path, _)| Some(path.as_str()) != prefer_path)
            .flat_map(|(_, s)| s);
        preferred.chain(others).take(limit).cloned().collect()
    }

    /// Number of definitions indexed.
    pub fn len(&self) -> usize {
        self.read().symbols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use expect_test::{Expect, expect};

    use super::*;

    fn parse(language: Language, text: &str) -> Tree {
        document::parse(language, text, None).expect("parses")
    }

    fn check_symbols(language: Language, text: &str, expected: Expect) {
        let tree = parse(language, text);
        let mut out = String::new();
        for s in symbols(language, text, &tree, "file") {
            writeln!(out, "{} {} {}:", s.kind, s.name, s.line).unwrap();
            for line in s.signature.lines() {
                writeln!(out, "{}", format!("    {line}").trim_end()).unwrap();
            }
        }
        expected.assert_eq(&out);
    }

    fn check_imports(language: Language, text: &str, expected: Expect) {
        let tree = parse(language, text);
        let out: Vec<&str> = imports(language, &tree, text).into_iter().map(|r| &text[r]).collect();
        expected.assert_eq(&out.join("\n"));
    }

    /// Scopes around the `$0` marker, which is removed from the text.
    fn check_scopes(language: Language, marked: &str, expected: Expect) {
        let offset = marked.find("$0").expect("marker");
        let text = marked.replacen("$0", "", 1);
        let tree = parse(language, &text);
        let mut out = String::new();
        for (start, header) in enclosing_scopes(language, &tree, &text, offset) {
            assert!(start < offset);
            writeln!(out, "{header}").unwrap();
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn queries_compile_with_known_captures() {
        for language in ALL_WITH_GRAMMAR {
            let query = query(language).unwrap_or_else(|| panic!("{} query compiles", language.name()));
            for name in query.capture_names() {
                let known = matches!(*name, "name" | "scope" | "import")
                    || name.starts_with('_')
                    || name.strip_prefix("definition.").is_some_and(|kind| {
                        [
                            "function",
                            "method",
                            "class",
                            "struct",
                            "enum",
                            "interface",
                            "trait",
                            "type",
                            "constant",
                            "module",
                            "macro",
                        ]
                        .contains(&kind)
                    });
                assert!(known, "{}: unknown capture @{name}", language.name());
            }
        }
        assert!(query(Language::PlainText).is_none());
    }

    #[test]
    fn rust_symbols() {
        check_symbols(
            Language::Rust,
            r#"use std::collections::HashMap;

/// Retries before giving up.
pub const MAX_RETRIES: u32 = 3;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A key-value store.
///
/// Keeps everything in memory.
#[derive(Debug, Default)]
pub struct Store<K, V> {
    map: HashMap<K, V>,
}

pub struct Meters(pub f64);

pub enum Mode {
    Read,
    Write,
}

union Bits {
    i: u32,
    f: f32,
}

pub type Map = HashMap<String, String>;

/// Things that can be stored.
pub trait Storable {
    /// The key it is stored under.
    fn key(&self) -> String;

    fn size(&self) -> usize {
        0
    }
}

impl<K: Eq + Hash, V> Store<K, V> {
    /// Inserts `value`, returning the previous one.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.map.insert(key, value)
    }

    // Not a doc comment, still worth reading.
    pub fn get(&self, key: &K) -> Option<&V>
    where
        K: Clone,
    {
        self.map.get(key)
    }
}

// A note about something else.

/// Parses a mode.
pub fn parse_mode(s: &str) -> Result<Mode, Error> {
    match s {
        _ => Ok(Mode::Read),
    }
}

mod tests {
    fn helper() {}
}

mod generated;

macro_rules! square {
    ($x:expr) => {
        $x * $x
    };
}

extern "C" {
    fn abs(x: i32) -> i32;
}
"#,
            expect![[r#"
                constant MAX_RETRIES 3:
                    /// Retries before giving up.
                    pub const MAX_RETRIES: u32 = 3;
                constant COUNTER 5:
                    static COUNTER: AtomicUsize = AtomicUsize::new(0);
                struct Store 11:
                    /// A key-value store.
                    ///
                    /// Keeps everything in memory.
                    #[derive(Debug, Default)]
                    pub struct Store<K, V>
                struct Meters 15:
                    pub struct Meters(pub f64);
                enum Mode 17:
                    pub enum Mode
                struct Bits 22:
                    union Bits
                type Map 27:
                    pub type Map = HashMap<String, String>;
                trait Storable 30:
                    /// Things that can be stored.
                    pub trait Storable
                method key 32:
                    /// The key it is stored under.
                    fn key(&self) -> String;
                method size 34:
                    fn size(&self) -> usize
                method insert 41:
                    /// Inserts `value`, returning the previous one.
                    pub fn insert(&mut self, key: K, value: V) -> Option<V>
                method get 46:
                    // Not a doc comment, still worth reading.
                    pub fn get(&self, key: &K) -> Option<&V>
                    where
                        K: Clone,
                function parse_mode 57:
                    /// Parses a mode.
                    pub fn parse_mode(s: &str) -> Result<Mode, Error>
                module tests 63:
                    mod tests
                function helper 64:
                    fn helper()
                module generated 67:
                    mod generated;
                macro square 69:
                    macro_rules! square {
                        ($x:expr) => {
                            $x * $x
                        };
                    }
                function abs 76:
                    fn abs(x: i32) -> i32;
            "#]],
        );
    }

    #[test]
    fn python_symbols() {
        check_symbols(
            Language::Python,
            r#""""Caching helpers."""
import os
from typing import Optional

# Default timeout, in seconds.
TIMEOUT = 30
type Pair = tuple[int, int]


class Cache(Base):
    """A small LRU cache."""

    # Makes an empty cache.
    def __init__(self, size: int = 10) -> None:
        self.size = size

    @property
    def full(self) -> bool:
        """Whether the cache is full.

        Full caches evict their oldest entry.
        """
        return len(self) >= self.size


def lookup(cache: Cache,
           key: str) -> Optional[str]:
    '''Returns the cached value.'''
    def inner():
        pass
    return cache.get(key)


class Empty:
    # Nothing to see yet.
    def noop(self):
        pass
"#,
            expect![[r#"
                constant TIMEOUT 5:
                    # Default timeout, in seconds.
                    TIMEOUT = 30
                type Pair 6:
                    type Pair = tuple[int, int]
                class Cache 9:
                    class Cache(Base):
                        """A small LRU cache."""
                method __init__ 13:
                    # Makes an empty cache.
                    def __init__(self, size: int = 10) -> None
                method full 17:
                    @property
                    def full(self) -> bool:
                        """Whether the cache is full.

                        Full caches evict their oldest entry.
                        """
                function lookup 25:
                    def lookup(cache: Cache,
                               key: str) -> Optional[str]:
                        '''Returns the cached value.'''
                function inner 28:
                    def inner()
                class Empty 33:
                    class Empty
                method noop 35:
                    # Nothing to see yet.
                    def noop(self)
            "#]],
        );
    }

    #[test]
    fn javascript_symbols() {
        check_symbols(
            Language::JavaScript,
            r#"import { readFile } from "fs";
const path = require("path");

/** Default options. */
export const DEFAULTS = { retries: 3 };

/**
 * Reads a config file.
 * @param {string} name
 */
export async function readConfig(name) {
  return JSON.parse(await readFile(name));
}

function* ids() {
  let i = 0;
  while (true) yield i++;
}

// Adds two numbers.
const add = (a, b) => a + b;

class Counter extends Base {
  count = 0;
  onClick = () => {
    this.count++;
  };

  // Increments by `n`.
  increment(n = 1) {
    this.count += n;
  }
}
"#,
            expect![[r#"
                constant DEFAULTS 4:
                    /** Default options. */
                    export const DEFAULTS = { retries: 3 };
                function readConfig 10:
                    /**
                     * Reads a config file.
                     * @param {string} name
                     */
                    export async function readConfig(name)
                function ids 14:
                    function* ids()
                function add 20:
                    // Adds two numbers.
                    const add = (a, b) =>
                class Counter 22:
                    class Counter extends Base
                method onClick 24:
                    onClick = () =>
                method increment 29:
                    // Increments by `n`.
                    increment(n = 1)
            "#]],
        );
    }

    #[test]
    fn typescript_symbols() {
        check_symbols(
            Language::TypeScript,
            r#"import { Request } from "express";

/** A user. */
export interface User {
  id: number;
  name(): string;
}

export type Id = string | number;

enum Color {
  Red,
  Green,
}

declare function greet(name: string): void;

namespace Geometry.Shapes {
  export const PI = 3.14;
}

export abstract class Repo<T> {
  abstract find(id: Id): Promise<T>;

  /** Saves an entity. */
  async save(entity: T): Promise<void> {
    await this.store(entity);
  }
}

export const handler = async (req: Request): Promise<Response> => {
  return new Response();
};
"#,
            expect![[r#"
                interface User 3:
                    /** A user. */
                    export interface User
                method name 5:
                    name(): string
                type Id 8:
                    export type Id = string | number;
                enum Color 10:
                    enum Color
                function greet 15:
                    declare function greet(name: string): void;
                module Geometry.Shapes 17:
                    namespace Geometry.Shapes
                class Repo 21:
                    export abstract class Repo<T>
                method find 22:
                    abstract find(id: Id): Promise<T>
                method save 25:
                    /** Saves an entity. */
                    async save(entity: T): Promise<void>
                function handler 30:
                    export const handler = async (req: Request): Promise<Response> =>
            "#]],
        );
    }

    #[test]
    fn tsx_symbols() {
        check_symbols(
            Language::Tsx,
            r#"interface Props {
  label: string;
}

/** A button. */
export function Button(props: Props) {
  return <button>{props.label}</button>;
}

const App = () => <Button label="ok" />;
"#,
            expect![[r#"
                interface Props 0:
                    interface Props
                function Button 5:
                    /** A button. */
                    export function Button(props: Props)
                function App 9:
                    const App = () =>
            "#]],
        );
    }

    #[test]
    fn go_symbols() {
        check_symbols(
            Language::Go,
            r#"package store

import (
	"fmt"
	"strings"
)

// MaxSize bounds the store.
const MaxSize = 100

const (
	A = iota
	B
)

const Lo, Hi = 0, 9

// Store keeps things.
type Store struct {
	items []string
}

type Reader interface {
	Read(p []byte) (int, error)
}

type ID = int

// New makes a store.
func New(size int) *Store {
	return &Store{}
}

// Add appends an item.
func (s *Store) Add(item string) error {
	return nil
}
"#,
            expect![[r#"
                constant MaxSize 8:
                    // MaxSize bounds the store.
                    const MaxSize = 100
                constant A 11:
                    A = iota
                constant B 12:
                    B
                constant Lo 15:
                    const Lo, Hi = 0, 9
                constant Hi 15:
                    const Lo, Hi = 0, 9
                struct Store 18:
                    // Store keeps things.
                    type Store struct {
                    	items []string
                    }
                interface Reader 22:
                    type Reader interface {
                    	Read(p []byte) (int, error)
                    }
                type ID 26:
                    type ID = int
                function New 29:
                    // New makes a store.
                    func New(size int) *Store
                method Add 34:
                    // Add appends an item.
                    func (s *Store) Add(item string) error
            "#]],
        );
    }

    #[test]
    fn java_symbols() {
        check_symbols(
            Language::Java,
            r#"package com.example.store;

import java.util.List;

/**
 * A store of things.
 */
public class Store<T> implements Iterable<T> {
    public static final int CAPACITY = 16;

    private final List<T> items;

    /** Creates an empty store. */
    public Store() {
        this.items = new ArrayList<>();
    }

    // Adds an item.
    @Override
    public boolean add(T item) throws StoreException {
        return items.add(item);
    }

    interface Visitor<T> {
        void visit(T item);
    }

    enum Mode { READ, WRITE }

    record Entry(String key, int value) {}
}
"#,
            expect![[r#"
                class Store 7:
                    /**
                     * A store of things.
                     */
                    public class Store<T> implements Iterable<T>
                constant CAPACITY 8:
                    public static final int CAPACITY = 16;
                method Store 13:
                    /** Creates an empty store. */
                    public Store()
                method add 18:
                    // Adds an item.
                    @Override
                    public boolean add(T item) throws StoreException
                interface Visitor 23:
                    interface Visitor<T>
                method visit 24:
                    void visit(T item);
                enum Mode 27:
                    enum Mode
                class Entry 29:
                    record Entry(String key, int value)
            "#]],
        );
    }

    #[test]
    fn c_symbols() {
        check_symbols(
            Language::C,
            r#"#include <stdio.h>
#include "store.h"

#define MAX_ITEMS 64
#define SQUARE(x) ((x) * (x))

/* A point in the plane. */
struct point {
    int x, y;
};

typedef struct {
    int len;
} buffer_t;

enum color { RED, GREEN };

typedef int (*compare_fn)(const void *, const void *);

// Returns the distance to the origin.
double norm(const struct point *p);

char *copy_string(const char *s) {
    return strdup(s);
}

static int add(int a, int b)
{
    return a + b;
}
"#,
            expect![[r#"
                constant MAX_ITEMS 3:
                    #define MAX_ITEMS 64
                macro SQUARE 4:
                    #define SQUARE(x) ((x) * (x))
                struct point 7:
                    /* A point in the plane. */
                    struct point
                type buffer_t 11:
                    typedef struct {
                        int len;
                    } buffer_t;
                enum color 15:
                    enum color
                type compare_fn 17:
                    typedef int (*compare_fn)(const void *, const void *);
                function norm 20:
                    // Returns the distance to the origin.
                    double norm(const struct point *p);
                function copy_string 22:
                    char *copy_string(const char *s)
                function add 26:
                    static int add(int a, int b)
            "#]],
        );
    }

    #[test]
    fn cpp_symbols() {
        check_symbols(
            Language::Cpp,
            r#"#include <vector>
using namespace std;

namespace geo {

/// A shape.
class Shape : public Base {
public:
    Shape(int sides);
    ~Shape();
    /// The area.
    virtual double area() const = 0;
    int sides() const { return sides_; }
    Shape &operator=(const Shape &other);
private:
    int sides_;
};

struct Point { double x, y; };

template <typename T>
T max_of(T a, T b) {
    return a > b ? a : b;
}

// Defined out of line.
double Shape::perimeter() const {
    return 0;
}

Shape::~Shape() {}

using Points = std::vector<Point>;

}  // namespace geo
"#,
            expect![[r#"
                module geo 3:
                    namespace geo
                class Shape 6:
                    /// A shape.
                    class Shape : public Base
                method Shape 8:
                    Shape(int sides);
                method ~Shape 9:
                    ~Shape();
                method area 11:
                    /// The area.
                    virtual double area() const = 0;
                method sides 12:
                    int sides() const
                method operator= 13:
                    Shape &operator=(const Shape &other);
                struct Point 18:
                    struct Point
                function max_of 21:
                    template <typename T>
                    T max_of(T a, T b)
                method perimeter 26:
                    // Defined out of line.
                    double Shape::perimeter() const
                method ~Shape 30:
                    Shape::~Shape()
                type Points 32:
                    using Points = std::vector<Point>;
            "#]],
        );
    }

    #[test]
    fn imports_of_each_language() {
        check_imports(
            Language::Rust,
            "use std::fmt;\nextern crate alloc;\nfn f() { use std::io::Read; }\nmod m;\n",
            expect![[r#"
                use std::fmt;
                extern crate alloc;"#]],
        );
        check_imports(
            Language::Python,
            "from __future__ import annotations\nimport os, sys\nfrom . import util\nx = 1\n",
            expect![[r#"
                from __future__ import annotations
                import os, sys
                from . import util"#]],
        );
        check_imports(
            Language::JavaScript,
            "import fs from \"fs\";\nconst path = require(\"path\");\nconst x = load(\"y\");\n",
            expect![[r#"
                import fs from "fs";
                const path = require("path");"#]],
        );
        check_imports(
            Language::TypeScript,
            "import type { A } from \"./a\";\nimport fs = require(\"fs\");\nlet n = 1;\n",
            expect![[r#"
                import type { A } from "./a";
                import fs = require("fs");"#]],
        );
        check_imports(
            Language::Tsx,
            "import React from \"react\";\nconst el = <div />;\n",
            expect![[r#"import React from "react";"#]],
        );
        check_imports(
            Language::Go,
            "package main\n\nimport \"fmt\"\nimport (\n\t\"os\"\n)\n",
            expect![[r#"
                package main
                import "fmt"
                import (
                	"os"
                )"#]],
        );
        check_imports(
            Language::Java,
            "package a.b;\nimport java.util.*;\nimport static java.lang.Math.max;\nclass A {}\n",
            expect![[r#"
                package a.b;
                import java.util.*;
                import static java.lang.Math.max;"#]],
        );
        check_imports(
            Language::C,
            "#include <stdio.h>\n#include \"a.h\"\nint x;\n",
            expect![[r##"
            #include <stdio.h>
            #include "a.h""##]],
        );
        check_imports(
            Language::Cpp,
            "#include <vector>\nusing namespace std;\nusing std::string;\nint x;\n",
            expect![[r#"
                #include <vector>
                using namespace std;
                using std::string;"#]],
        );
    }

    #[test]
    fn scopes_around_the_cursor() {
        check_scopes(
            Language::Rust,
            r#"mod outer {
    /// A store.
    impl<K: Eq + Hash, V> Store<K, V> {
        /// Inserts.
        pub fn insert(&mut self, key: K) -> Option<V> {
            let x = $0;
        }
    }
}
"#,
            expect![[r#"
                mod outer
                impl<K: Eq + Hash, V> Store<K, V>
                pub fn insert(&mut self, key: K) -> Option<V>
            "#]],
        );
        check_scopes(
            Language::Python,
            r#"class Cache(Base):
    @property
    def full(self) -> bool:
        """Whether it is full."""
        return $0
"#,
            expect![[r#"
                class Cache(Base)
                @property
                def full(self) -> bool
            "#]],
        );
        // Below the last statement of a block, the indentation says which blocks go on.
        let python = "class A:\n    def f(self):\n        x = 1\n\n";
        for (cursor, expected) in [
            (
                "        $0",
                expect![[r#"
                class A
                def f(self)
            "#]],
            ),
            (
                "    $0",
                expect![[r#"
                class A
            "#]],
            ),
            ("$0", expect![[r#""#]]),
        ] {
            check_scopes(
                Language::Python,
                &format!("{python}{cursor}\n\ndef g():\n    pass\n"),
                expected,
            );
        }
        check_scopes(
            Language::Java,
            r#"public class Outer {
    static class Inner<T> extends Base {
        public void run(int n) throws Exception {
            $0
        }
    }
}
"#,
            expect![[r#"
                public class Outer
                static class Inner<T> extends Base
                public void run(int n) throws Exception
            "#]],
        );
        check_scopes(
            Language::TypeScript,
            r#"export class Api {
  get = async (url: string): Promise<void> => {
    const f = function named() { $0 };
  };
}
"#,
            expect![[r#"
                export class Api
                get = async (url: string): Promise<void> =>
                const f = function named()
            "#]],
        );
        check_scopes(
            Language::Cpp,
            r#"namespace geo {
template <typename T>
class Box {
    T get() const {
        return $0;
    }
};
}
"#,
            expect![[r#"
                namespace geo
                template <typename T>
                class Box
                T get() const
            "#]],
        );
        check_scopes(
            Language::Go,
            "func (s *Store) Add(item string) error {\n\treturn $0\n}\n",
            expect![[r#"
            func (s *Store) Add(item string) error
        "#]],
        );
        // At a scope's first byte the cursor is outside it, right after its last one inside.
        check_scopes(Language::Rust, "$0fn f() {}\n", expect![[r#""#]]);
        check_scopes(
            Language::Rust,
            "fn f() {}$0\n",
            expect![[r#"
            fn f()
        "#]],
        );
    }

    #[test]
    fn signatures_are_bounded() {
        let doc: String = (0..200).map(|i| format!("/// Line {i} of a long story.\n")).collect();
        let params: String = (0..150).map(|i| format!("a{i}: u32, ")).collect();
        let text = format!("{doc}fn long({params}) {{}}\n/**\n{doc}*/\nfn block() {{}}\n");
        let tree = parse(Language::Rust, &text);
        let symbols = symbols(Language::Rust, &text, &tree, "f.rs");
        assert_eq!(symbols.len(), 2);
        for s in &symbols {
            assert!(s.signature.len() <= SIGNATURE_MAX_BYTES, "{}", s.signature.len());
        }
        // The header survives, the doc comment gives way.
        assert!(
            symbols[0].signature.starts_with("fn long(a0: u32,"),
            "{}",
            symbols[0].signature
        );
        // A block comment cut short is closed again.
        assert!(
            symbols[1].signature.starts_with("/**\n/// Line 0"),
            "{}",
            symbols[1].signature
        );
        assert!(
            symbols[1].signature.ends_with("*/\nfn block()"),
            "{}",
            symbols[1].signature
        );

        let docstring: String = (0..200).map(|i| format!("    Line {i} of a long story.\n")).collect();
        let text = format!("def f(x):\n    \"\"\"Summary.\n\n{docstring}    \"\"\"\n    return x\n");
        let tree = parse(Language::Python, &text);
        let symbols = super::symbols(Language::Python, &text, &tree, "f.py");
        let signature = &symbols[0].signature;
        assert!(signature.len() <= SIGNATURE_MAX_BYTES);
        assert!(signature.starts_with("def f(x):\n    \"\"\"Summary.\n"), "{signature}");
        assert!(signature.ends_with("\n\"\"\""), "{signature}");
    }

    #[test]
    fn stale_trees_do_not_panic() {
        let old = "/// Doc.\npub fn a_function_with_a_long_name(x: u32) -> u32 { x }\nimpl A { fn b() { 1 } }\n";
        let tree = parse(Language::Rust, old);
        for text in ["", "fn", "é".repeat(40).as_str()] {
            let _ = symbols(Language::Rust, text, &tree, "f.rs");
            let _ = imports(Language::Rust, &tree, text);
            for offset in [0, 5, 30, 70, 1000] {
                let _ = enclosing_scopes(Language::Rust, &tree, text, offset);
            }
        }
        let tree = parse(Language::Python, "def f():\n    \"\"\"Doc.\"\"\"\n");
        let _ = symbols(Language::Python, "def", &tree, "f.py");
    }

    #[test]
    fn index_root_honours_ignores_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |path: &str, bytes: &[u8]| {
            let path = root.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        write(".gitignore", b"generated/\n");
        write(
            "src/lib.rs",
            b"/// Adds.\npub fn add(a: u32, b: u32) -> u32 {\n    a + b\n}\n",
        );
        write("src/util.py", b"def helper(x):\n    return x\n");
        write("generated/out.rs", b"pub fn ignored() {}\n");
        write(".hidden/secret.rs", b"pub fn hidden() {}\n");
        write(
            "big.rs",
            format!("pub fn big() {{}}\n{}", "// padding\n".repeat(200)).as_bytes(),
        );
        write("latin1.rs", b"// caf\xe9\npub fn latin() {}\n");
        write("notes.txt", b"pub fn not_code() {}\n");

        let index = WorkspaceIndex::new(IndexLimits {
            max_file_bytes: 1000,
            ..IndexLimits::default()
        });
        let stats = index.index_root(root);
        assert_eq!(
            stats,
            IndexStats {
                files: 2,
                symbols: 2,
                skipped: 2,
                bytes: 86
            }
        );
        assert_eq!(index.len(), 2);
        for name in ["ignored", "hidden", "big", "latin", "not_code"] {
            assert!(index.lookup(name, 10).is_empty(), "{name} is not indexed");
        }
        let add = index.lookup("add", 10);
        assert_eq!(add.len(), 1);
        assert_eq!(add[0].signature, "/// Adds.\npub fn add(a: u32, b: u32) -> u32");
        assert_eq!(add[0].line, 1);
        assert!(
            add[0].path.ends_with("lib.rs") && !add[0].path.starts_with('/'),
            "{}",
            add[0].path
        );
        assert_eq!(index.lookup("helper", 10)[0].kind, "function");

        // Indexing again replaces rather than duplicates.
        index.index_root(root);
        assert_eq!(index.len(), 2);

        let bounded = WorkspaceIndex::new(IndexLimits {
            max_files: 1,
            ..IndexLimits::default()
        });
        let stats = bounded.index_root(root);
        assert_eq!(stats.files, 1);
        assert_eq!(bounded.len(), 1);

        let bounded = WorkspaceIndex::new(IndexLimits {
            max_total_bytes: 10,
            ..IndexLimits::default()
        });
        assert_eq!(bounded.index_root(root).files, 0);
        assert!(bounded.is_empty());
    }

    #[test]
    fn open_documents_replace_their_definitions() {
        let index = WorkspaceIndex::new(IndexLimits::default());
        let v1 = "fn run() {}\nfn stop() {}\n";
        index.update_file("file:///a.rs", Language::Rust, v1, &parse(Language::Rust, v1));
        let other = "/// The other run.\nfn run(n: u32) {}\n";
        index.update_file("file:///b.rs", Language::Rust, other, &parse(Language::Rust, other));
        assert_eq!(index.len(), 3);

        let v2 = "fn run(fast: bool) {}\n";
        index.update_file("file:///a.rs", Language::Rust, v2, &parse(Language::Rust, v2));
        assert_eq!(index.len(), 2);
        assert!(index.lookup("stop", 10).is_empty());
        let run: Vec<_> = index.lookup("run", 10).into_iter().map(|s| s.signature).collect();
        assert_eq!(run, ["fn run(fast: bool)", "/// The other run.\nfn run(n: u32)"]);
        let run: Vec<_> = index
            .lookup_preferring("run", 1, Some("file:///b.rs"))
            .into_iter()
            .map(|s| s.path)
            .collect();
        assert_eq!(run, ["file:///b.rs"]);

        index.remove_file("file:///a.rs");
        index.remove_file("file:///missing.rs");
        assert_eq!(index.len(), 1);
        index.remove_file("file:///b.rs");
        assert!(index.is_empty());
        assert!(index.lookup("run", 10).is_empty());
    }
}
