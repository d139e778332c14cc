//! Turning a raw model continuation into an edit the document can take: cut to the mode's
//! extent, drop repeated lines, trim what repeats the suffix, replace auto-closed brackets
//! on the rest of the line, match the document's indentation and line endings, and never
//! offer whitespace alone.

use crate::syntax::{Mode, closers_only};

/// How the document is laid out, read once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentStyle {
    /// `Some(n)`: indented with `n` spaces per level; `None`: tabs.
    pub indent_spaces: Option<usize>,
    pub crlf: bool,
}

impl DocumentStyle {
    /// Reads the indentation unit (the most common indentation step between consecutive
    /// lines) and the line ending of the first line break.
    pub fn detect(text: &str) -> DocumentStyle {
        let crlf = text
            .find('\n')
            .is_some_and(|i| i > 0 && text.as_bytes()[i - 1] == b'\r');
        let (mut tabs, mut spaced) = (0usize, 0usize);
        let mut steps = [0usize; 9];
        let mut prev = 0usize;
        for line in text.lines().take(5000) {
            if line.trim().is_empty() {
                continue;
            }
            if line.starts_with('\t') {
                tabs += 1;
            } else if line.starts_with(' ') {
                spaced += 1;
            }
            let width = line.len() - line.trim_start_matches(' ').len();
            if width > prev && width - prev <= 8 {
                steps[width - prev] += 1;
            }
            prev = width;
        }
        let indent_spaces = if tabs > spaced {
            None
        } else {
            let best = (1..=8).max_by_key(|&w| (steps[w], w == 4)).unwrap_or(4);
            Some(if steps[best] == 0 { 4 } else { best })
        };
        DocumentStyle { indent_spaces, crlf }
    }
}

/// The document around the cursor, as post-processing needs it.
#[derive(Debug, Clone)]
pub struct Surroundings<'a> {
    /// The text of the cursor's line before the cursor.
    pub line_before: &'a str,
    /// The text of the cursor's line after the cursor (no line ending).
    pub rest_of_line: &'a str,
    /// Everything after the cursor.
    pub suffix: &'a str,
    pub mode: Mode,
    pub style: &'a DocumentStyle,
}

/// A completion ready for the client: insert `text` over `[cursor, cursor + replace_len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub text: String,
    /// Bytes after the cursor that the edit replaces (auto-closed brackets).
    pub replace_len: usize,
}

/// Closing brackets in `text` that close nothing opened in `text`, in order.
fn unmatched_closers(text: &str) -> Vec<char> {
    let mut stack = Vec::new();
    let mut unmatched = Vec::new();
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.last() == Some(&open) {
                    stack.pop();
                } else {
                    unmatched.push(c);
                }
            }
            _ => {}
        }
    }
    unmatched
}

fn first_code_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Applies every rule; `None` when nothing useful is left.
pub fn postprocess(raw: &str, around: &Surroundings<'_>) -> Option<Edit> {
    let mut text = raw.replace("\r\n", "\n");
    if around.mode == Mode::SingleLine {
        // A single-line completion at the end of a non-empty line may not start a new one.
        if let Some(i) = text.find('\n') {
            text.truncate(i);
        }
    }
    text = drop_repeated_lines(&text, around.line_before);
    text = trim_suffix_repetition(&text, around);
    text.truncate(text.trim_end().len());
    let mut replace_len = 0;
    if around.mode == Mode::SingleLine || !text.contains('\n') {
        (text, replace_len) = over_auto_closed(&text, around.rest_of_line);
    }
    if text.trim().is_empty() {
        return None;
    }
    text = match_indentation(&text, around.style);
    if around.style.crlf {
        text = text.replace('\n', "\r\n");
    }
    Some(Edit { text, replace_len })
}

/// Cuts the completion at the first line that repeats the line before it (in the
/// completion, or the document line the cursor is on for the first line).
fn drop_repeated_lines(text: &str, line_before: &str) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut keep = lines.len();
    for i in 1..lines.len() {
        let cur = lines[i].trim();
        let prev = if i == 1 {
            format!("{line_before}{}", lines[0])
        } else {
            lines[i - 1].to_owned()
        };
        if cur.len() > 1 && cur == prev.trim() {
            keep = i;
            break;
        }
    }
    let mut out = lines[..keep].join("\n");
    if keep < lines.len() {
        out.push('\n');
        out = out.trim_end_matches([' ', '\t']).to_owned();
    }
    out
}

/// Cuts the completion where it starts writing the suffix again: a line equal to the
/// suffix's first line of code (multi-line), or its end equal to the rest of the line.
fn trim_suffix_repetition(text: &str, around: &Surroundings<'_>) -> String {
    let mut text = text.to_owned();
    // Lone closing brackets are left to the stop rule: they may close the completion's own blocks.
    let next = first_code_line(around.suffix.get(around.rest_of_line.len()..).unwrap_or(""))
        .filter(|l| l.chars().any(char::is_alphanumeric));
    if let Some(next) = next {
        let mut offset = 0;
        for (i, line) in text.split_inclusive('\n').enumerate() {
            if i > 0 && line.trim() == next {
                text.truncate(offset);
                break;
            }
            offset += line.len();
        }
    }
    let rest = around.rest_of_line.trim();
    if !rest.is_empty() && !closers_only(rest) && text.trim_end().ends_with(rest) {
        let end = text.trim_end().len() - rest.len();
        text.truncate(end);
    }
    text
}

/// When the rest of the line is auto-closed brackets that the completion writes itself,
/// the edit replaces them instead of duplicating them.
fn over_auto_closed(text: &str, rest_of_line: &str) -> (String, usize) {
    let rest = rest_of_line.trim_end();
    if rest.is_empty() || !closers_only(rest) {
        return (text.to_owned(), 0);
    }
    let unmatched = unmatched_closers(text);
    if unmatched.is_empty() {
        // A string the completion closes with the quote the editor already inserted.
        let q = rest.trim_start().chars().next().unwrap_or(' ');
        if matches!(q, '"' | '\'' | '`') && text.matches(q).count() % 2 == 1 && text.trim_end().ends_with(q) {
            let t = text.trim_end();
            return (format!("{t}{}", &rest.trim_start()[1..]), rest.len());
        }
        return (text.to_owned(), 0);
    }
    // Consume the rest's closers that the completion already wrote, keep the others.
    let mut pending = unmatched.iter().peekable();
    let mut kept = String::new();
    let mut consumed = 0;
    for c in rest.chars() {
        if pending.peek() == Some(&&c) {
            pending.next();
            consumed += 1;
        } else {
            kept.push(c);
        }
    }
    let extra = unmatched.len() - consumed;
    if extra > 0 {
        // The completion closes more than the line holds: drop its extra trailing closers.
        let mut t = text.trim_end().to_owned();
        for _ in 0..extra {
            if !t.ends_with([')', ']', '}']) {
                return (text.to_owned(), 0);
            }
            t.pop();
        }
        return over_auto_closed(&t, rest_of_line);
    }
    (format!("{text}{kept}"), rest.len())
}

/// Re-indents continuation lines into the document's unit (tabs or n spaces).
fn match_indentation(text: &str, style: &DocumentStyle) -> String {
    if !text.contains('\n') {
        return text.to_owned();
    }
    let lines: Vec<&str> = text.split('\n').collect();
    // The completion's own unit: tabs, or its smallest positive space indentation step.
    let uses_tabs = lines[1..].iter().any(|l| l.starts_with('\t'));
    let mut widths: Vec<usize> = lines[1..]
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches(' ').len())
        .collect();
    widths.sort_unstable();
    widths.dedup();
    let mut unit = 0;
    for w in widths.windows(2) {
        let step = w[1] - w[0];
        if step > 0 && (unit == 0 || step < unit) {
            unit = step;
        }
    }
    if unit == 0 {
        unit = widths.iter().copied().find(|&w| w > 0).unwrap_or(4);
    }
    let mut out = String::with_capacity(text.len());
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if i == 0 {
            out.push_str(line);
            continue;
        }
        let body = line.trim_start_matches([' ', '\t']);
        let lead = &line[..line.len() - body.len()];
        let levels_and_rem = if uses_tabs {
            let tabs = lead.chars().filter(|&c| c == '\t').count();
            (tabs, lead.chars().filter(|&c| c == ' ').count())
        } else {
            (lead.len() / unit, lead.len() % unit)
        };
        let (levels, rem) = levels_and_rem;
        match style.indent_spaces {
            None => {
                out.extend(std::iter::repeat_n('\t', levels));
                out.extend(std::iter::repeat_n(' ', rem));
            }
            Some(n) => out.extend(std::iter::repeat_n(' ', levels * n + rem)),
        }
        out.push_str(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACES4: DocumentStyle = DocumentStyle {
        indent_spaces: Some(4),
        crlf: false,
    };

    fn run(raw: &str, doc: &str, mode: Mode, style: &DocumentStyle) -> Option<(String, usize)> {
        let cursor = doc.find("$0").unwrap();
        let text = doc.replace("$0", "");
        let line_start = text[..cursor].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[cursor..].find('\n').map_or(text.len(), |i| cursor + i);
        let around = Surroundings {
            line_before: &text[line_start..cursor],
            rest_of_line: text[cursor..line_end].trim_end_matches('\r'),
            suffix: &text[cursor..],
            mode,
            style,
        };
        postprocess(raw, &around).map(|e| (e.text, e.replace_len))
    }

    #[test]
    fn single_line_is_cut_at_the_line_end() {
        let got = run(
            "n % 2 == 0\n\ndef other():",
            "def f(n):\n    return $0",
            Mode::SingleLine,
            &SPACES4,
        );
        assert_eq!(got, Some(("n % 2 == 0".into(), 0)));
    }

    #[test]
    fn text_repeating_the_rest_of_the_line_is_trimmed() {
        let got = run("a, b), c)", "f($0, c)\n", Mode::SingleLine, &SPACES4);
        assert_eq!(got, Some(("a, b)".into(), 0)));
    }

    #[test]
    fn a_line_repeating_the_suffix_ends_the_completion() {
        let doc = "fn f() {\n    $0\n    return 1;\n}\n";
        let got = run("let a = 2;\n    return 1;\n}", doc, Mode::MultiLine, &SPACES4);
        assert_eq!(got, Some(("let a = 2;".into(), 0)));
    }

    #[test]
    fn auto_closed_brackets_are_replaced_not_duplicated() {
        // The completion writes the `)` the editor auto-inserted: replace it.
        assert_eq!(
            run("x + 1)", "print($0)\n", Mode::SingleLine, &SPACES4),
            Some(("x + 1)".into(), 1))
        );
        // It closes the inner call only: keep the line's remaining `;`.
        assert_eq!(
            run("a, g(b))", "f($0);\n", Mode::SingleLine, &SPACES4),
            Some(("a, g(b));".into(), 2))
        );
        // Balanced completion: plain insertion, the `)` stays.
        assert_eq!(
            run("g(b)", "f($0)\n", Mode::SingleLine, &SPACES4),
            Some(("g(b)".into(), 0))
        );
        // Closing more than the line holds: the extra closer goes.
        assert_eq!(
            run("a))", "f($0)\n", Mode::SingleLine, &SPACES4),
            Some(("a)".into(), 1))
        );
    }

    #[test]
    fn indentation_and_line_endings_follow_the_document() {
        let tabs = DocumentStyle {
            indent_spaces: None,
            crlf: true,
        };
        let got = run(
            "if x {\n        y();\n    }",
            "fn f() {\n\t$0\n}",
            Mode::MultiLine,
            &tabs,
        );
        // The model indented with 4 spaces from column 4; the document uses tabs and CRLF.
        assert_eq!(got, Some(("if x {\r\n\t\ty();\r\n\t}".into(), 0)));
        let two = DocumentStyle {
            indent_spaces: Some(2),
            crlf: false,
        };
        let got = run("if x:\n        y()\n    z()", "def f():\n  $0", Mode::MultiLine, &two);
        assert_eq!(got, Some(("if x:\n    y()\n  z()".into(), 0)));
    }

    #[test]
    fn repeated_lines_are_dropped() {
        let got = run(
            "x += 1;\n    x += 1;\n    x += 1;",
            "fn f() {\n    $0\n}",
            Mode::MultiLine,
            &SPACES4,
        );
        assert_eq!(got, Some(("x += 1;".into(), 0)));
        let got = run("\n    return 1;", "    return 1;$0", Mode::MultiLine, &SPACES4);
        assert_eq!(got, None);
    }

    #[test]
    fn whitespace_alone_is_never_offered() {
        assert_eq!(run("   \n  ", "x = $0", Mode::SingleLine, &SPACES4), None);
        assert_eq!(run("", "x = $0", Mode::MultiLine, &SPACES4), None);
    }

    #[test]
    fn style_is_detected() {
        assert_eq!(
            DocumentStyle::detect("a\r\n\tb\r\n\t\tc\r\n"),
            DocumentStyle {
                indent_spaces: None,
                crlf: true
            }
        );
        assert_eq!(DocumentStyle::detect("a\n  b\n    c\n  d\n").indent_spaces, Some(2));
        assert_eq!(DocumentStyle::detect("x\n").indent_spaces, Some(4));
    }
}
