//! `tessera complete FILE:LINE:COL`: the server's completion pipeline run once on a file
//! from disk, with the workspace around it indexed as the server would.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crate::complete::{self, Completer, Outcome};
use crate::document::{self, Document};
use crate::index::{IndexLimits, IndexStats, WorkspaceIndex};
use crate::language::Language;
use crate::settings::Settings;
use crate::{Error, Result};

/// A file and a 1-based line and column (in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl Location {
    /// Parses `FILE:LINE:COL` (the file name may itself contain `:`).
    pub fn parse(spec: &str) -> Result<Location> {
        let bad = || Error::InvalidInput(format!("{spec:?}: expected FILE:LINE:COL with 1-based LINE and COL"));
        let mut parts = spec.rsplitn(3, ':');
        let column = parts.next().and_then(|c| c.parse::<usize>().ok()).ok_or_else(bad)?;
        let line = parts.next().and_then(|l| l.parse::<usize>().ok()).ok_or_else(bad)?;
        let file = parts.next().filter(|f| !f.is_empty()).ok_or_else(bad)?;
        if line == 0 || column == 0 {
            return Err(bad());
        }
        Ok(Location {
            file: PathBuf::from(file),
            line,
            column,
        })
    }
}

/// What one run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub outcome: Outcome,
    pub backend: String,
    pub template: String,
    pub load_ms: f64,
    pub index: Option<IndexStatsView>,
    /// The cursor's byte offset and the document text it refers to.
    #[serde(skip)]
    pub offset: usize,
    #[serde(skip)]
    pub text: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexStatsView {
    pub files: usize,
    pub symbols: usize,
    pub ms: f64,
}

/// The repository root above `file` (a directory with `.git`), else its directory.
pub fn workspace_root(file: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cur = Some(dir.as_path());
    while let Some(d) = cur {
        if d.join(".git").exists() {
            return d.to_path_buf();
        }
        cur = d.parent();
    }
    dir
}

/// Reads the file as UTF-8 and finds the byte offset of the location.
pub fn load_document(loc: &Location) -> Result<Document> {
    let bytes = std::fs::read(&loc.file).map_err(|e| Error::io(loc.file.display(), e))?;
    let text = String::from_utf8(bytes).map_err(|_| Error::NotUtf8(loc.file.display().to_string()))?;
    let uri = format!(
        "file://{}",
        std::fs::canonicalize(&loc.file).unwrap_or(loc.file.clone()).display()
    );
    Ok(Document::new(uri, Language::from_path(&loc.file), 0, text))
}

/// Byte offset of a 1-based line and character column.
pub fn offset_of(doc: &Document, loc: &Location) -> Result<usize> {
    let out_of_range = || Error::PositionOutOfRange {
        uri: loc.file.display().to_string(),
        line: loc.line as u32,
        character: loc.column as u32,
        lines: doc.line_count(),
    };
    if loc.line > doc.line_count() {
        return Err(out_of_range());
    }
    let line = doc.line(loc.line - 1);
    if loc.column > line.chars().count() + 1 {
        return Err(out_of_range());
    }
    let start = doc.offset_at(
        tower_lsp_server::ls_types::Position::new((loc.line - 1) as u32, 0),
        document::PositionEncoding::Utf8,
    );
    let within: usize = line.chars().take(loc.column - 1).map(char::len_utf8).sum();
    Ok(start.unwrap_or(0) + within)
}

/// Loads the backend, indexes the workspace, and completes at `loc`.
pub fn complete_at(settings: &Settings, loc: &Location) -> Result<Report> {
    let mut doc = load_document(loc)?;
    let offset = offset_of(&doc, loc)?;
    let t0 = Instant::now();
    let backend = settings.build_backend()?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let root = workspace_root(&loc.file);
    let index = Arc::new(WorkspaceIndex::new(IndexLimits {
        max_files: settings.index_max_files,
        ..IndexLimits::default()
    }));
    let index_stats = (settings.index_max_files > 0).then(|| {
        let t = Instant::now();
        let stats: IndexStats = index.index_root(&root);
        IndexStatsView {
            files: stats.files,
            symbols: stats.symbols,
            ms: t.elapsed().as_secs_f64() * 1e3,
        }
    });
    let completer = Completer::new(backend, settings.family(), index);
    let snapshot = doc.snapshot();
    let abs = std::fs::canonicalize(&loc.file).unwrap_or(loc.file.clone());
    let path = abs
        .strip_prefix(&root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| loc.file.display().to_string());
    let repo = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let outcome = completer.complete(
        &settings.completion(&repo),
        &complete::Request {
            snapshot: &snapshot,
            offset,
            path: &path,
            others: &[],
            cancel: Arc::new(AtomicBool::new(false)),
        },
    )?;
    Ok(Report {
        outcome,
        backend: completer.backend().describe(),
        template: completer.family().name().into(),
        load_ms,
        index: index_stats,
        offset,
        text: snapshot.text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_reject_bad_specs() {
        let l = Location::parse("C:/x/a.rs:3:7").unwrap();
        assert_eq!((l.file.to_str().unwrap(), l.line, l.column), ("C:/x/a.rs", 3, 7));
        for bad in ["a.rs", "a.rs:3", "a.rs:0:1", "a.rs:1:0", ":1:1", "a.rs:x:1"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn columns_count_characters_and_bounds_are_checked() {
        let doc = Document::new("u", Language::PlainText, 0, "héllo\nworld".into());
        let at = |line, column| {
            offset_of(
                &doc,
                &Location {
                    file: "f".into(),
                    line,
                    column,
                },
            )
        };
        assert_eq!(at(1, 3).unwrap(), 3);
        assert_eq!(at(1, 6).unwrap(), 6);
        assert_eq!(at(2, 6).unwrap(), 12);
        assert!(at(1, 8).is_err());
        assert!(at(3, 1).is_err());
    }
}
