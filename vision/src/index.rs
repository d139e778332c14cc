//! The image index of a directory: every image under it with its CLIP embedding, kept in
//! one file inside the directory (`.tessera-index`) so `tessera search` can rank the
//! images without embedding them again.
//!
//! Updating is incremental: a file whose relative path, size and modification time match
//! its entry (under the same model) keeps its embedding; new and changed files are
//! embedded; entries of files that are gone are dropped. Files that cannot be read or
//! decoded are skipped with a warning and the rest is indexed; they are retried next time.
//!
//! The file is never left half-written: it is written to a temporary file in the same
//! directory, synced, and renamed over the old one (also every few hundred images during a
//! long first run, so an interruption keeps what was done). A trailing checksum makes a
//! damaged file an error naming it rather than wrong results.
//!
//! Layout (little-endian): the magic `TESSERA-IMAGE-INDEX\n`, a u32 version, a u64 length
//! and that many bytes of JSON header (model, fingerprint, dim, entries with path, size,
//! mtime), then `entries × dim` f32 embeddings, then the u64 FNV-1a hash of all that
//! precedes it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::decode::has_image_extension;
use crate::pipeline::ClipPipeline;
use crate::{Error, Result};

/// The index file's name inside the indexed directory.
pub const INDEX_FILE: &str = ".tessera-index";

const MAGIC: &[u8; 20] = b"TESSERA-IMAGE-INDEX\n";
const VERSION: u32 = 1;

/// Save the index after this many newly embedded images during one update.
const CHECKPOINT_EVERY: usize = 512;

/// One indexed image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Relative to the indexed directory, `/`-separated.
    pub path: String,
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    /// `--model` as given when the index was built.
    model: String,
    fingerprint: String,
    dim: usize,
    entries: Vec<EntryMeta>,
}

/// The embeddings of a directory's images.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageIndex {
    pub model: String,
    /// Identifies the weights the embeddings came from (see [`fingerprint`]).
    pub fingerprint: String,
    pub dim: usize,
    pub entries: Vec<EntryMeta>,
    /// `entries.len() × dim` values, row-major, L2-normalised rows.
    pub embeddings: Vec<f32>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What identifies a model's embeddings: its config and the size and name of every weight
/// file, hashed. Re-downloaded or converted weights with another config or size give
/// another fingerprint, so their index is rebuilt.
pub fn fingerprint(dir: &Path) -> Result<String> {
    let mut data = Vec::new();
    let config = dir.join("config.json");
    data.extend(std::fs::read(&config).map_err(|e| Error::io(&config, e))?);
    let mut weights: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().ok()?.len();
            name.ends_with(".safetensors").then_some((name, len))
        })
        .collect();
    weights.sort();
    for (name, len) in weights {
        data.extend(name.as_bytes());
        data.extend(len.to_le_bytes());
    }
    Ok(format!("{:016x}", fnv1a(&data)))
}

impl ImageIndex {
    pub fn empty(model: &str, fingerprint: &str, dim: usize) -> Self {
        ImageIndex {
            model: model.to_owned(),
            fingerprint: fingerprint.to_owned(),
            dim,
            entries: Vec::new(),
            embeddings: Vec::new(),
        }
    }

    /// The index file of a directory.
    pub fn path_for(dir: &Path) -> PathBuf {
        dir.join(INDEX_FILE)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn embedding(&self, i: usize) -> &[f32] {
        &self.embeddings[i * self.dim..(i + 1) * self.dim]
    }

    /// Reads and verifies an index file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |msg: &str| {
            Error::format(
                path,
                format!("{msg}: not a Tessera image index, or damaged (delete it and run `tessera index` again)"),
            )
        };
        if bytes.len() < MAGIC.len() + 4 + 8 + 8 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("bad magic"));
        }
        let (body, tail) = bytes.split_at(bytes.len() - 8);
        let stored = u64::from_le_bytes(tail.try_into().expect("8 bytes"));
        if fnv1a(body) != stored {
            return Err(bad("checksum mismatch"));
        }
        let mut at = MAGIC.len();
        let version = u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        at += 4;
        if version != VERSION {
            return Err(Error::format(
                path,
                format!("index version {version}, this Tessera reads version {VERSION}: run `tessera index` again"),
            ));
        }
        let header_len = u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        at += 8;
        let header_end = usize::try_from(header_len)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|&end| end <= body.len())
            .ok_or_else(|| bad("header longer than the file"))?;
        let header: Header = serde_json::from_slice(&body[at..header_end]).map_err(|_| bad("unreadable header"))?;
        let values = &body[header_end..];
        let want = header
            .entries
            .len()
            .checked_mul(header.dim)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| bad("sizes overflow"))?;
        if values.len() != want || header.dim == 0 {
            return Err(bad("embedding data does not match the header"));
        }
        let embeddings = values
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        Ok(ImageIndex {
            model: header.model,
            fingerprint: header.fingerprint,
            dim: header.dim,
            entries: header.entries,
            embeddings,
        })
    }

    /// Writes the index atomically: a temporary file next to `path`, synced, renamed.
    pub fn save(&self, path: &Path) -> Result<()> {
        let header = Header {
            model: self.model.clone(),
            fingerprint: self.fingerprint.clone(),
            dim: self.dim,
            entries: self.entries.clone(),
        };
        let json = serde_json::to_vec(&header).map_err(|e| Error::format(path, e.to_string()))?;
        let mut bytes = Vec::with_capacity(MAGIC.len() + 12 + json.len() + self.embeddings.len() * 4 + 8);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&json);
        for v in &self.embeddings {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let hash = fnv1a(&bytes);
        bytes.extend_from_slice(&hash.to_le_bytes());

        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map_or_else(|| INDEX_FILE.into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(())
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(path, e));
        }
        // Make the rename itself durable where the platform allows syncing a directory.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// An image file found under the indexed directory.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundImage {
    pub path: PathBuf,
    pub meta: EntryMeta,
}

/// A file or directory that could not be looked at or used.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    match meta.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
        },
        Err(_) => 0,
    }
}

/// Every file with an image extension under `dir`, sorted by path. Hidden files and
/// directories (names starting with `.`) are left out, and symbolic links to directories
/// are not followed (no cycles); links to files are. What cannot be examined is reported.
pub fn scan(dir: &Path) -> Result<(Vec<FoundImage>, Vec<Skipped>)> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    if !meta.is_dir() {
        return Err(Error::InvalidInput(format!("{}: not a directory", dir.display())));
    }
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) => {
                skipped.push(Skipped {
                    path: d.clone(),
                    reason: format!("cannot list the directory: {e}"),
                });
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    skipped.push(Skipped {
                        path: d.clone(),
                        reason: format!("cannot list the directory: {e}"),
                    });
                    continue;
                }
            };
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let Ok(file_type) = entry.file_type() else {
                skipped.push(Skipped {
                    path,
                    reason: "cannot read its file type".into(),
                });
                continue;
            };
            if file_type.is_dir() {
                stack.push(path);
                continue;
            }
            if !has_image_extension(&path) {
                continue;
            }
            // Follows a symbolic link to its file; a dangling one is reported.
            let meta = match std::fs::metadata(&path) {
                Ok(m) => m,
                Err(e) => {
                    skipped.push(Skipped {
                        path,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            if !meta.is_file() {
                continue; // a link to a directory, a socket, ...
            }
            let Some(rel) = relative(dir, &path) else {
                skipped.push(Skipped {
                    path,
                    reason: "its path is not valid UTF-8".into(),
                });
                continue;
            };
            found.push(FoundImage {
                path,
                meta: EntryMeta {
                    path: rel,
                    size: meta.len(),
                    mtime_ns: mtime_ns(&meta),
                },
            });
        }
    }
    found.sort_by(|a, b| a.meta.path.cmp(&b.meta.path));
    skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((found, skipped))
}

fn relative(dir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(dir).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// What an update did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateReport {
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Files skipped (unreadable, not decodable, ...), with the reason.
    pub skipped: Vec<Skipped>,
    /// The index was built by another model, or was unreadable, and was rebuilt.
    pub rebuilt: Option<String>,
    pub total: usize,
}

/// Hooks for progress display; every method has a do-nothing default.
pub trait IndexObserver {
    /// `to_embed` of `total` images need embedding.
    fn planned(&mut self, _to_embed: usize, _total: usize) {}
    /// `n` more images were embedded (or failed).
    fn advanced(&mut self, _n: usize) {}
    /// A file was skipped.
    fn skipped(&mut self, _skipped: &Skipped) {}
}

impl IndexObserver for () {}

/// Brings the index of `dir` up to date with the files under it, using `pipeline` (whose
/// `--model` spelling is `model`), and saves it. An existing index built by another model
/// or unreadable is rebuilt (the report says why).
pub fn update(
    dir: &Path,
    pipeline: &ClipPipeline,
    model: &str,
    observer: &mut dyn IndexObserver,
) -> Result<(ImageIndex, UpdateReport)> {
    let index_path = ImageIndex::path_for(dir);
    let fp = fingerprint(&pipeline.dir)?;
    let dim = pipeline.dim();
    let mut report = UpdateReport::default();
    let old = if index_path.exists() {
        match ImageIndex::load(&index_path) {
            Ok(old) if old.fingerprint == fp && old.dim == dim => Some(old),
            Ok(old) => {
                report.rebuilt = Some(format!(
                    "the index was built with model {} (a different model): embedding everything again",
                    old.model
                ));
                None
            }
            Err(e) => {
                report.rebuilt = Some(format!("{e}; rebuilding it"));
                None
            }
        }
    } else {
        None
    };
    let known: HashMap<&str, usize> = old
        .as_ref()
        .map(|o| {
            o.entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.path.as_str(), i))
                .collect()
        })
        .unwrap_or_default();

    let (found, skipped) = scan(dir)?;
    for s in &skipped {
        observer.skipped(s);
    }
    report.skipped = skipped;
    let still_there: std::collections::HashSet<&str> = found.iter().map(|f| f.meta.path.as_str()).collect();
    report.removed = old.as_ref().map_or(0, |o| {
        o.entries
            .iter()
            .filter(|e| !still_there.contains(e.path.as_str()))
            .count()
    });

    let mut index = ImageIndex::empty(model, &fp, dim);
    let mut todo: Vec<&FoundImage> = Vec::new();
    for f in &found {
        match (old.as_ref(), known.get(f.meta.path.as_str())) {
            (Some(o), Some(&i)) if o.entries[i].size == f.meta.size && o.entries[i].mtime_ns == f.meta.mtime_ns => {
                index.entries.push(f.meta.clone());
                index.embeddings.extend_from_slice(o.embedding(i));
                report.unchanged += 1;
            }
            (_, Some(_)) => {
                todo.push(f);
                report.updated += 1;
            }
            (_, None) => {
                todo.push(f);
                report.added += 1;
            }
        }
    }
    observer.planned(todo.len(), found.len());
    let mut since_save = 0;
    for chunk in todo.chunks(crate::pipeline::BATCH) {
        let paths: Vec<PathBuf> = chunk.iter().map(|f| f.path.clone()).collect();
        for (f, result) in chunk.iter().zip(pipeline.embed_files(&paths)) {
            match result {
                Ok(e) => {
                    index.entries.push(f.meta.clone());
                    index.embeddings.extend(e);
                }
                Err(e) => {
                    let s = Skipped {
                        path: f.path.clone(),
                        reason: e.to_string(),
                    };
                    observer.skipped(&s);
                    report.skipped.push(s);
                    if known.contains_key(f.meta.path.as_str()) {
                        report.updated -= 1;
                    } else {
                        report.added -= 1;
                    }
                }
            }
        }
        observer.advanced(chunk.len());
        since_save += chunk.len();
        if since_save >= CHECKPOINT_EVERY {
            index.save(&index_path)?;
            since_save = 0;
        }
    }
    sort_entries(&mut index);
    index.save(&index_path)?;
    report.total = index.len();
    Ok((index, report))
}

fn sort_entries(index: &mut ImageIndex) {
    let dim = index.dim;
    let mut order: Vec<usize> = (0..index.entries.len()).collect();
    order.sort_by(|&a, &b| index.entries[a].path.cmp(&index.entries[b].path));
    let entries = order.iter().map(|&i| index.entries[i].clone()).collect();
    let embeddings = order
        .iter()
        .flat_map(|&i| index.embeddings[i * dim..(i + 1) * dim].iter().copied())
        .collect();
    index.entries = entries;
    index.embeddings = embeddings;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageIndex {
        ImageIndex {
            model: "m".into(),
            fingerprint: "f".into(),
            dim: 2,
            entries: vec![
                EntryMeta {
                    path: "a.jpg".into(),
                    size: 3,
                    mtime_ns: -5,
                },
                EntryMeta {
                    path: "sub/b.png".into(),
                    size: 4,
                    mtime_ns: 1_700_000_000_000_000_000,
                },
            ],
            embeddings: vec![1.0, 0.0, 0.6, 0.8],
        }
    }

    #[test]
    fn round_trip_and_damage_detection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        let idx = sample();
        idx.save(&path).unwrap();
        assert_eq!(ImageIndex::load(&path).unwrap(), idx);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        for cut in [0, 10, bytes.len() / 2, bytes.len() - 1] {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let err = ImageIndex::load(&path).unwrap_err().to_string();
            assert!(err.contains("damaged"), "{cut}: {err}");
        }
        let n = bytes.len();
        bytes[n - 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(ImageIndex::load(&path).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn sorting_keeps_rows_with_their_paths() {
        let mut idx = sample();
        idx.entries.swap(0, 1);
        idx.embeddings = vec![0.6, 0.8, 1.0, 0.0];
        sort_entries(&mut idx);
        assert_eq!(idx, sample());
    }
}
