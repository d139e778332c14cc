//! Open documents: their text, the conversion between LSP positions (UTF-8 or UTF-16
//! code units) and byte offsets, incremental edits, and the tree-sitter tree kept in step
//! with the text (edited on every change, reparsed lazily when a completion needs it).

use std::cell::RefCell;
use std::collections::HashMap;

use tower_lsp_server::ls_types::{Position, Range};
use tree_sitter::{InputEdit, Parser, Point, Tree};

use crate::language::Language;

/// Documents larger than this are completed from plain text, without a syntax tree.
pub const MAX_PARSE_BYTES: usize = 4 << 20;

/// How `Position::character` counts: negotiated at `initialize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PositionEncoding {
    Utf8,
    #[default]
    Utf16,
}

/// One open document.
pub struct Document {
    pub uri: String,
    pub language: Language,
    pub version: i32,
    text: String,
    /// Byte offset of the start of each line (always starts with 0).
    line_starts: Vec<usize>,
    tree: Option<Tree>,
    tree_stale: bool,
}

thread_local! {
    static PARSERS: RefCell<HashMap<Language, Parser>> = RefCell::new(HashMap::new());
}

/// Parses `text` (reusing `old`, already edited, when given). `None` for plain text,
/// oversized input, or a grammar that gives up.
pub fn parse(language: Language, text: &str, old: Option<&Tree>) -> Option<Tree> {
    if text.len() > MAX_PARSE_BYTES {
        return None;
    }
    let grammar = language.grammar()?;
    PARSERS.with(|parsers| {
        let mut parsers = parsers.borrow_mut();
        let parser = parsers.entry(language).or_insert_with(|| {
            let mut p = Parser::new();
            // The grammars are compiled in; a version mismatch is a build error caught by tests.
            let _ = p.set_language(&grammar);
            p
        });
        parser.parse(text, old)
    })
}

/// Starts of the lines that begin at or after `from` (itself a line start). Lines end at
/// `\n`, `\r\n` or a lone `\r`, as the protocol says.
fn line_starts_from(text: &str, from: usize) -> impl Iterator<Item = usize> + '_ {
    let bytes = text.as_bytes();
    bytes[from..].iter().enumerate().filter_map(move |(i, &b)| {
        let at = from + i;
        match b {
            b'\n' => Some(at + 1),
            b'\r' if bytes.get(at + 1) != Some(&b'\n') => Some(at + 1),
            _ => None,
        }
    })
}

fn line_starts(text: &str) -> Vec<usize> {
    std::iter::once(0).chain(line_starts_from(text, 0)).collect()
}

/// tree-sitter's point of a byte offset: rows are counted at `\n` only.
fn point_at(text: &str, offset: usize) -> Point {
    let row = text.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count();
    let column = offset - text[..offset].rfind('\n').map_or(0, |i| i + 1);
    Point { row, column }
}

impl Document {
    pub fn new(uri: impl Into<String>, language: Language, version: i32, text: String) -> Self {
        let line_starts = line_starts(&text);
        Document {
            uri: uri.into(),
            language,
            version,
            text,
            line_starts,
            tree: None,
            tree_stale: true,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn line_count(&self) -> usize {
        self.line_starts.len()
    }

    /// The text of line `line` without its line ending.
    pub fn line(&self, line: usize) -> &str {
        let start = self.line_starts[line];
        let end = self.line_starts.get(line + 1).copied().unwrap_or(self.text.len());
        let line = &self.text[start..end];
        line.strip_suffix("\r\n")
            .or_else(|| line.strip_suffix('\n'))
            .or_else(|| line.strip_suffix('\r'))
            .unwrap_or(line)
    }

    /// Byte offset of `pos`. A character past the end of its line means the end of the
    /// line (as the protocol says); a line past the end of the document is `None`.
    pub fn offset_at(&self, pos: Position, encoding: PositionEncoding) -> Option<usize> {
        let line = pos.line as usize;
        let start = *self.line_starts.get(line)?;
        let line_text = self.line(line);
        let want = pos.character as usize;
        let mut units = 0;
        for (i, ch) in line_text.char_indices() {
            if units >= want {
                return Some(start + i);
            }
            units += match encoding {
                PositionEncoding::Utf8 => ch.len_utf8(),
                PositionEncoding::Utf16 => ch.len_utf16(),
            };
            if units > want {
                // Inside a multi-unit character: snap to its start.
                return Some(start + i);
            }
        }
        Some(start + line_text.len())
    }

    /// Like [`Document::offset_at`], but a line past the end means the end of the document.
    pub fn offset_at_clamped(&self, pos: Position, encoding: PositionEncoding) -> usize {
        self.offset_at(pos, encoding).unwrap_or(self.text.len())
    }

    /// The LSP position of byte `offset` (snapped down to a character boundary).
    pub fn position_at(&self, offset: usize, encoding: PositionEncoding) -> Position {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let character = match encoding {
            PositionEncoding::Utf8 => offset - start,
            PositionEncoding::Utf16 => self.text[start..offset].chars().map(char::len_utf16).sum(),
        };
        Position::new(line as u32, character as u32)
    }

    /// Applies one `didChange` content change: a range edit, or the whole text when
    /// `range` is `None`. Ranges past the end are clamped to it.
    pub fn apply_change(&mut self, range: Option<Range>, new_text: &str, encoding: PositionEncoding) {
        let Some(range) = range else {
            self.text = new_text.to_owned();
            self.line_starts = line_starts(&self.text);
            self.tree = None;
            self.tree_stale = true;
            return;
        };
        let start = self.offset_at_clamped(range.start, encoding);
        let end = self.offset_at_clamped(range.end, encoding).max(start);
        let start_position = point_at(&self.text, start);
        let old_end_position = point_at(&self.text, end);
        // The line before the edit may change too (a `\r` joined with a new `\n`).
        let first_line = self.line_starts.partition_point(|&s| s <= start).saturating_sub(2);
        self.text.replace_range(start..end, new_text);
        self.line_starts.truncate(first_line + 1);
        let from = self.line_starts[first_line];
        let rest: Vec<usize> = line_starts_from(&self.text, from).collect();
        self.line_starts.extend(rest);
        let new_end = start + new_text.len();
        let new_end_position = point_at(&self.text, new_end);
        if let Some(tree) = &mut self.tree {
            tree.edit(&InputEdit {
                start_byte: start,
                old_end_byte: end,
                new_end_byte: new_end,
                start_position,
                old_end_position,
                new_end_position,
            });
        }
        self.tree_stale = true;
    }

    /// The syntax tree of the current text, reparsed incrementally if edits came since.
    pub fn tree(&mut self) -> Option<&Tree> {
        if self.tree_stale {
            self.tree = parse(self.language, &self.text, self.tree.as_ref());
            self.tree_stale = false;
        }
        self.tree.as_ref()
    }

    /// A copy of the text and an up-to-date tree, for work outside the document lock.
    pub fn snapshot(&mut self) -> Snapshot {
        let tree = self.tree().cloned();
        Snapshot {
            uri: self.uri.clone(),
            language: self.language,
            version: self.version,
            text: self.text.clone(),
            tree,
        }
    }
}

/// An immutable copy of a document at one version.
#[derive(Clone)]
pub struct Snapshot {
    pub uri: String,
    pub language: Language,
    pub version: i32,
    pub text: String,
    pub tree: Option<Tree>,
}

/// The LSP position of byte `offset` in `text` (for snapshots, which keep no line index).
pub fn position_in(text: &str, offset: usize, encoding: PositionEncoding) -> Position {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let (line, line_start) = line_starts_from(text, 0)
        .take_while(|&s| s <= offset)
        .fold((0, 0), |(n, _), s| (n + 1, s));
    let character = match encoding {
        PositionEncoding::Utf8 => offset - line_start,
        PositionEncoding::Utf16 => text[line_start..offset].chars().map(char::len_utf16).sum(),
    };
    Position::new(line as u32, character as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: u32, character: u32) -> Position {
        Position::new(line, character)
    }

    #[test]
    fn utf16_and_utf8_positions_round_trip_over_non_ascii() {
        let doc = Document::new("u", Language::PlainText, 0, "aé😀b\nxyz".into());
        // é is 2 bytes/1 unit, 😀 is 4 bytes/2 units.
        assert_eq!(doc.offset_at(pos(0, 3), PositionEncoding::Utf16), Some(3));
        assert_eq!(doc.offset_at(pos(0, 4), PositionEncoding::Utf16), Some(7));
        assert_eq!(doc.offset_at(pos(0, 7), PositionEncoding::Utf8), Some(7));
        // Inside the surrogate pair: snapped to the character's start.
        assert_eq!(doc.offset_at(pos(0, 2), PositionEncoding::Utf16), Some(3));
        assert_eq!(doc.offset_at(pos(0, 99), PositionEncoding::Utf16), Some(8));
        assert_eq!(doc.offset_at(pos(2, 0), PositionEncoding::Utf16), None);
        for offset in [0, 1, 3, 7, 8, 9, 12] {
            for enc in [PositionEncoding::Utf8, PositionEncoding::Utf16] {
                assert_eq!(doc.offset_at(doc.position_at(offset, enc), enc), Some(offset));
            }
        }
    }

    #[test]
    fn lone_cr_and_crlf_end_lines_as_the_protocol_says() {
        let mut doc = Document::new("u", Language::PlainText, 0, "a\rb\r\nc\nd".into());
        assert_eq!(doc.line_count(), 4);
        assert_eq!(
            (doc.line(0), doc.line(1), doc.line(2), doc.line(3)),
            ("a", "b", "c", "d")
        );
        assert_eq!(doc.offset_at(pos(1, 5), PositionEncoding::Utf16), Some(3));
        assert_eq!(position_in(doc.text(), 5, PositionEncoding::Utf16), pos(2, 0));
        // Inserting `\n` after the lone `\r` turns two line breaks into one.
        doc.apply_change(Some(Range::new(pos(1, 0), pos(1, 0))), "\n", PositionEncoding::Utf16);
        assert_eq!(doc.text(), "a\r\nb\r\nc\nd");
        assert_eq!(doc.line_count(), 4);
        assert_eq!(doc.line(1), "b");
        for off in 0..doc.text().len() {
            let p = doc.position_at(off, PositionEncoding::Utf16);
            assert_eq!(position_in(doc.text(), off, PositionEncoding::Utf16), p, "{off}");
        }
    }

    #[test]
    fn incremental_edits_keep_text_lines_and_tree_in_step() {
        let mut doc = Document::new("a.rs", Language::Rust, 0, "fn main() {\n}\n".into());
        assert!(doc.tree().is_some());
        let r = Range::new(pos(0, 11), pos(0, 11));
        doc.apply_change(Some(r), "\n    let x = 1;", PositionEncoding::Utf16);
        assert_eq!(doc.text(), "fn main() {\n    let x = 1;\n}\n");
        assert_eq!(doc.line(1), "    let x = 1;");
        let reparsed = doc.tree().unwrap().root_node().to_sexp();
        let fresh = parse(Language::Rust, doc.text(), None).unwrap().root_node().to_sexp();
        assert_eq!(reparsed, fresh);
        doc.apply_change(Some(Range::new(pos(1, 8), pos(1, 9))), "yé", PositionEncoding::Utf16);
        assert_eq!(doc.line(1), "    let yé = 1;");
        doc.apply_change(
            Some(Range::new(pos(9, 0), pos(9, 0))),
            "// end",
            PositionEncoding::Utf16,
        );
        assert!(doc.text().ends_with("}\n// end"));
        assert_eq!(doc.line_count(), 4);
    }
}
