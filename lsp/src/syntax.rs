//! Syntax decisions at the cursor: single-line or multi-line completion, the stop rule
//! applied while decoding (the completion closes its block, dedents out of it, or ends its
//! line), counting ERROR/MISSING nodes to rerank candidates, and the identifiers used near
//! the cursor (whose definitions the context builder looks up).

use std::sync::Arc;

use tessera_models::generate::StopPredicate;
use tree_sitter::{Node, Tree};

use crate::document;
use crate::language::Language;

/// How much a completion may span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The rest of the current line.
    SingleLine,
    /// A block body or several statements.
    MultiLine,
}

const CLOSERS: &[char] = &[')', ']', '}', '>', '"', '\'', '`', ';', ',', ':'];

/// The text after the cursor on its line, when it is only closing brackets, quotes or
/// separators (what editors auto-insert): completions may replace it.
pub fn closers_only(rest_of_line: &str) -> bool {
    rest_of_line.trim().chars().all(|c| CLOSERS.contains(&c))
}

fn line_bounds(text: &str, offset: usize) -> (usize, usize) {
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    (start, end)
}

/// Block-like nodes: their emptiness at the cursor means a body is to be written.
fn is_block(kind: &str) -> bool {
    kind == "block"
        || kind.ends_with("_block")
        || kind.ends_with("_body")
        || kind == "compound_statement"
        || kind == "declaration_list"
        || kind == "field_declaration_list"
        || kind == "statement_block"
        || kind == "class_body"
        || kind == "enum_body"
        || kind == "interface_body"
}

/// Decides single- or multi-line from the tree at the cursor (text rules when there is no
/// tree): an empty block body, or a fresh line right after a block opener (`{`, or `:` in
/// Python), is multi-line; inside an expression or mid-line it is the rest of the line.
pub fn completion_mode(language: Language, text: &str, tree: Option<&Tree>, offset: usize) -> Mode {
    let (line_start, line_end) = line_bounds(text, offset);
    let before = &text[line_start..offset];
    let rest = &text[offset..line_end];
    if !closers_only(rest) {
        return Mode::SingleLine;
    }
    if let Some(tree) = tree
        && inside_string(tree, offset)
    {
        return Mode::SingleLine;
    }
    let opener = if language.indent_blocks() { ':' } else { '{' };
    if !before.trim().is_empty() {
        // `fn f() {|` at the end of a line: the body follows.
        let closing = rest.trim().is_empty() || (!language.indent_blocks() && rest.trim_start().starts_with('}'));
        return if before.trim_end().ends_with(opener) && closing {
            Mode::MultiLine
        } else {
            Mode::SingleLine
        };
    }
    // A blank line (indentation only): what precedes it?
    let prev = text[..line_start].trim_end();
    if prev.ends_with(opener) {
        return Mode::MultiLine;
    }
    if let Some(tree) = tree {
        // An empty block around the cursor (e.g. `{` `}` with comments only).
        let mut node = tree.root_node().descendant_for_byte_range(offset, offset);
        while let Some(n) = node {
            if is_block(n.kind()) && n.start_byte() < offset && offset <= n.end_byte() {
                let has_code = (0..n.named_child_count())
                    .filter_map(|i| n.named_child(i as u32))
                    .any(|c| !c.kind().contains("comment"));
                return if has_code { Mode::SingleLine } else { Mode::MultiLine };
            }
            node = n.parent();
        }
    }
    Mode::SingleLine
}

/// The cursor is inside a string literal (where `{` opens an interpolation, not a block).
fn inside_string(tree: &Tree, offset: usize) -> bool {
    let mut node = tree
        .root_node()
        .descendant_for_byte_range(offset.saturating_sub(1), offset);
    while let Some(n) = node {
        let kind = n.kind();
        if kind.contains("string") && n.start_byte() < offset && offset < n.end_byte() {
            return true;
        }
        node = n.parent();
    }
    false
}

/// Net bracket depth change of `line`, ignoring brackets inside string literals and after
/// a line comment; `min` is the lowest depth reached within the line.
fn bracket_walk(line: &str, comment: &str) -> (i32, i32) {
    let mut depth = 0;
    let mut min = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if line[i..].starts_with(comment) {
            break;
        }
        match c {
            '"' | '`' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                min = min.min(depth);
            }
            _ => {}
        }
    }
    (depth, min)
}

fn indent_width(line: &str) -> usize {
    line.chars()
        .take_while(|c| c.is_whitespace())
        .map(|c| if c == '\t' { 4 } else { 1 })
        .sum()
}

/// The rule that ends a completion while it is decoded, given the document text before
/// the cursor. Single-line: the first line break. Multi-line: the completion closes the
/// enclosing block (a bracket below depth 0 that begins its line), dedents out of it
/// (indentation-blocked languages), or runs into two blank lines.
pub fn stop_rule(language: Language, mode: Mode, text_before_cursor: &str) -> StopPredicate {
    match mode {
        Mode::SingleLine => Arc::new(|s: &str| s.find('\n')),
        Mode::MultiLine => {
            let line_start = text_before_cursor.rfind('\n').map_or(0, |i| i + 1);
            let cursor_line = &text_before_cursor[line_start..];
            // The body's indentation: the cursor's column on a blank line, else one level
            // deeper than the line that opens the block.
            let body_indent = if cursor_line.trim().is_empty() {
                indent_width(cursor_line)
            } else {
                indent_width(cursor_line) + 1
            };
            let indent_blocks = language.indent_blocks();
            let comment = language.line_comment();
            Arc::new(move |s: &str| {
                let mut depth = 0;
                let mut offset = 0;
                let mut blank_run = 0;
                let lines = s.split_inclusive('\n').peekable();
                let mut first = true;
                for line in lines {
                    let complete = line.ends_with('\n');
                    let content = line.trim_end_matches(['\n', '\r']);
                    if !first && content.trim().is_empty() {
                        blank_run += usize::from(complete);
                        if blank_run >= 2 {
                            return Some(offset);
                        }
                    } else if !content.trim().is_empty() {
                        blank_run = 0;
                    }
                    if indent_blocks {
                        // A complete-enough line (its first character is known) that dedents
                        // below the body ends the block.
                        if !first && !content.trim().is_empty() && indent_width(content) < body_indent {
                            return Some(offset);
                        }
                    } else {
                        let (delta, min) = bracket_walk(content, comment);
                        if depth + min < 0 {
                            // The enclosing block closes here: stop before this line if it
                            // only closes, else before the closing bracket.
                            let lead = content.trim_start();
                            if !first && lead.starts_with(['}', ')', ']']) {
                                return Some(offset);
                            }
                            let mut d = depth;
                            for (i, c) in content.char_indices() {
                                match c {
                                    '(' | '[' | '{' => d += 1,
                                    ')' | ']' | '}' => {
                                        d -= 1;
                                        if d < 0 {
                                            return Some(offset + i);
                                        }
                                    }
                                    _ => {}
                                }
                            }
                            return Some(offset);
                        }
                        if complete {
                            depth += delta;
                        }
                    }
                    first = false;
                    offset += line.len();
                }
                None
            })
        }
    }
}

/// Number of ERROR and MISSING nodes in a tree.
pub fn error_count(tree: &Tree) -> usize {
    fn walk(node: Node<'_>, acc: &mut usize) {
        if node.is_error() || node.is_missing() {
            *acc += 1;
        }
        if !node.has_error() {
            return;
        }
        let mut cursor = node.walk();
        for child in node.children(&mut cursor) {
            walk(child, acc);
        }
    }
    let mut n = 0;
    if tree.root_node().has_error() {
        walk(tree.root_node(), &mut n);
    }
    n
}

/// ERROR/MISSING nodes of `text` parsed as `language`; `None` without a grammar.
pub fn parse_errors(language: Language, text: &str) -> Option<usize> {
    document::parse(language, text, None).map(|t| error_count(&t))
}

/// Identifiers used in `text[from..to]`, most recent (closest to `to`) first, each once.
pub fn identifiers_in(tree: &Tree, text: &str, from: usize, to: usize) -> Vec<String> {
    let mut found: Vec<(usize, String)> = Vec::new();
    let mut cursor = tree.walk();
    let mut stack = vec![tree.root_node()];
    while let Some(node) = stack.pop() {
        if node.end_byte() <= from || node.start_byte() >= to {
            continue;
        }
        if node.child_count() == 0 {
            let kind = node.kind();
            if kind.ends_with("identifier")
                && !kind.starts_with("field")
                && let Some(name) = text.get(node.start_byte()..node.end_byte())
            {
                found.push((node.start_byte(), name.to_owned()));
            }
            continue;
        }
        stack.extend(node.children(&mut cursor));
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut seen = std::collections::HashSet::new();
    found
        .into_iter()
        .filter_map(|(_, n)| seen.insert(n.clone()).then_some(n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_at(language: Language, marked: &str) -> Mode {
        let offset = marked.find("$0").unwrap();
        let text = marked.replace("$0", "");
        let tree = document::parse(language, &text, None);
        completion_mode(language, &text, tree.as_ref(), offset)
    }

    #[test]
    fn single_or_multi_line_follows_the_syntax_at_the_cursor() {
        use Language::*;
        use Mode::*;
        let cases = [
            (Python, "def is_even(n):\n    return $0", SingleLine),
            (Python, "def is_even(n):\n    $0", MultiLine),
            (Python, "def f(n):\n    x = 1\n    $0\n    return x\n", SingleLine),
            (Python, "print(foo($0))", SingleLine),
            (Rust, "fn main() {\n    $0\n}\n", MultiLine),
            (Rust, "fn main() {$0}\n", MultiLine),
            (Rust, "fn main() {$0\n", MultiLine),
            (Rust, "fn main() {\n    let x = $0;\n}\n", SingleLine),
            (Rust, "fn main() {\n    let x = 1;\n    $0\n}\n", SingleLine),
            (Rust, "fn main() {\n    foo($0, 2);\n}\n", SingleLine),
            (Rust, "fn main() {\n    println!(\"{$0}\");\n}\n", SingleLine),
            (JavaScript, "const s = `Total: ${$0}`;\n", SingleLine),
            (Go, "func f() int {\n\t$0\n}\n", MultiLine),
            (
                Java,
                "class A {\n  void f() {\n    // todo\n    $0\n  }\n}\n",
                MultiLine,
            ),
            (C, "int main(void) {\n    return $0\n}\n", SingleLine),
            (PlainText, "hello {\n$0", MultiLine),
        ];
        for (lang, src, want) in cases {
            assert_eq!(mode_at(lang, src), want, "{lang:?}: {src:?}");
        }
    }

    fn stop(language: Language, mode: Mode, before: &str, completion: &str) -> Option<String> {
        let rule = stop_rule(language, mode, before);
        rule(completion).map(|n| completion[..n].to_owned())
    }

    #[test]
    fn single_line_stops_at_the_line_break() {
        assert_eq!(
            stop(Language::Rust, Mode::SingleLine, "let x = ", "1;\nlet"),
            Some("1;".into())
        );
        assert_eq!(stop(Language::Rust, Mode::SingleLine, "let x = ", "foo(1"), None);
    }

    #[test]
    fn multi_line_stops_when_the_block_closes() {
        let before = "fn main() {\n    ";
        let got = stop(
            Language::Rust,
            Mode::MultiLine,
            before,
            "let x = 1;\n    if x > 0 {\n        go();\n    }\n}\nfn",
        );
        assert_eq!(
            got.as_deref(),
            Some("let x = 1;\n    if x > 0 {\n        go();\n    }\n")
        );
        // Still open: go on.
        assert_eq!(
            stop(Language::Rust, Mode::MultiLine, before, "let s = \"}\";\n    if x {\n"),
            None
        );
        // Closing on the same line as code.
        assert_eq!(
            stop(Language::Rust, Mode::MultiLine, "fn f() {", " 1 }").as_deref(),
            Some(" 1 ")
        );
        // Two blank lines end it too.
        assert_eq!(
            stop(Language::Rust, Mode::MultiLine, before, "a();\n\n\nb").as_deref(),
            Some("a();\n\n")
        );
    }

    #[test]
    fn python_multi_line_stops_at_the_dedent() {
        let before = "def f(n):\n    ";
        let got = stop(
            Language::Python,
            Mode::MultiLine,
            before,
            "if n:\n        return 1\n    return 2\ndef g",
        );
        assert_eq!(got.as_deref(), Some("if n:\n        return 1\n    return 2\n"));
        assert_eq!(stop(Language::Python, Mode::MultiLine, before, "x = 1\n    y"), None);
    }

    #[test]
    fn errors_are_counted_and_identifiers_found() {
        assert_eq!(
            parse_errors(Language::Python, "def f(n):\n    return n % 2 == 0\n"),
            Some(0)
        );
        assert!(parse_errors(Language::Python, "def f(n):\n    return n %\n").unwrap() > 0);
        assert_eq!(parse_errors(Language::PlainText, "x"), None);
        let text = "fn f() { let total = compute(a, b); total }";
        let tree = document::parse(Language::Rust, text, None).unwrap();
        assert_eq!(
            identifiers_in(&tree, text, 0, text.len()),
            ["total", "b", "a", "compute", "f"]
        );
    }
}
