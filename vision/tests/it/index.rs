//! The image index: incremental updates (new, changed, removed, unchanged files), files
//! that cannot be read, a model change, a damaged index file, and search over it.

use std::path::{Path, PathBuf};

use candle_core::Device;
use tessera_vision::index::{INDEX_FILE, ImageIndex, IndexObserver, Skipped, update};
use tessera_vision::pipeline::ClipPipeline;
use tessera_vision::search::{Term, parse_query, query_vector, rank};

use crate::common::fixture;

fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/fixtures/clip")
        .join(name)
}

fn pipeline(name: &str) -> ClipPipeline {
    ClipPipeline::from_dir(&model_dir(name), &Device::Cpu).unwrap()
}

fn copy(name: &str, to: &Path) {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::copy(fixture("images").join(name), to).unwrap();
}

#[derive(Default)]
struct Recorder {
    planned: Vec<(usize, usize)>,
    advanced: usize,
    skipped: Vec<Skipped>,
}

impl IndexObserver for Recorder {
    fn planned(&mut self, to_embed: usize, total: usize) {
        self.planned.push((to_embed, total));
    }
    fn advanced(&mut self, n: usize) {
        self.advanced += n;
    }
    fn skipped(&mut self, s: &Skipped) {
        self.skipped.push(s.clone());
    }
}

fn paths(index: &ImageIndex) -> Vec<&str> {
    index.entries.iter().map(|e| e.path.as_str()).collect()
}

/// Whether this process can read a file that has mode 000 (it can as root).
fn can_read(path: &Path) -> bool {
    std::fs::File::open(path).is_ok()
}

#[test]
fn incremental_updates_and_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    copy("rgb.png", &dir.join("a.png"));
    copy("baseline.jpg", &dir.join("b.jpg"));
    copy("rgba.webp", &dir.join("sub/c.webp"));
    copy("gray.png", &dir.join("sub/deeper/d.PNG"));
    // A directory named like an image is walked into, not read as one.
    copy("anim.gif", &dir.join("album.jpg/e.gif"));
    // Not images, or not ours to index.
    std::fs::write(dir.join("notes.txt"), "hello").unwrap();
    copy("rgb.png", &dir.join(".hidden.png"));
    copy("rgb.png", &dir.join(".cache/x.png"));
    // Bad files: corrupt, empty, a dangling link.
    std::fs::write(dir.join("corrupt.jpg"), b"\xff\xd8\xff\xe0 this is not a jpeg").unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    std::os::unix::fs::symlink(dir.join("nowhere.png"), dir.join("dangling.png")).unwrap();
    // A file without read permission: skipped, unless this process reads it anyway (root).
    copy("rgb.bmp", &dir.join("locked.bmp"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("locked.bmp"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let locked_readable = can_read(&dir.join("locked.bmp"));

    let p = pipeline("tiny");
    let mut rec = Recorder::default();
    let (index, report) = update(dir, &p, "tiny", &mut rec).unwrap();
    let mut want = vec!["a.png", "album.jpg/e.gif", "b.jpg", "sub/c.webp", "sub/deeper/d.PNG"];
    if locked_readable {
        want.insert(3, "locked.bmp");
    }
    assert_eq!(paths(&index), want);
    let skipped: Vec<String> = report
        .skipped
        .iter()
        .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut want_skipped = vec!["corrupt.jpg", "dangling.png", "empty.png"];
    if !locked_readable {
        want_skipped.push("locked.bmp");
    }
    let mut sorted = skipped.clone();
    sorted.sort();
    assert_eq!(sorted, want_skipped, "{:?}", report.skipped);
    assert_eq!(rec.skipped.len(), report.skipped.len());
    for s in &report.skipped {
        assert!(!s.reason.is_empty());
        if s.path.ends_with("locked.bmp") {
            assert!(s.reason.contains("ermission"), "{}", s.reason);
        }
    }
    assert_eq!(report.added, want.len());
    assert_eq!((report.updated, report.unchanged, report.removed), (0, 0, 0));
    // Found by the scan: the images, the corrupt and empty files, and the locked one;
    // the dangling link is reported by the scan itself.
    let found = want.len() + 2 + usize::from(!locked_readable);
    assert_eq!(rec.planned, vec![(found, found)]);
    assert_eq!(ImageIndex::load(&dir.join(INDEX_FILE)).unwrap(), index);
    // The stored embeddings are the files' embeddings.
    let files: Vec<PathBuf> = index.entries.iter().map(|e| dir.join(&e.path)).collect();
    for (i, r) in p.embed_files(&files).into_iter().enumerate() {
        let e = r.unwrap();
        assert!(e.iter().zip(index.embedding(i)).all(|(a, b)| (a - b).abs() < 1e-6));
    }

    // Nothing changed: nothing embedded.
    let mut rec = Recorder::default();
    let (again, report) = update(dir, &p, "tiny", &mut rec).unwrap();
    assert_eq!(again, index);
    assert_eq!((report.added, report.updated, report.unchanged), (0, 0, want.len()));
    assert_eq!(rec.planned[0].0, found - want.len(), "only the bad files are retried");

    // Change one file, remove one, add one.
    copy("gray.jpg", &dir.join("b.jpg"));
    std::fs::remove_file(dir.join("sub/c.webp")).unwrap();
    copy("exif6.png", &dir.join("new.png"));
    let (index3, report) = update(dir, &p, "tiny", &mut ()).unwrap();
    assert_eq!((report.added, report.updated, report.removed), (1, 1, 1));
    assert_eq!(report.unchanged, want.len() - 2);
    assert!(paths(&index3).contains(&"new.png") && !paths(&index3).contains(&"sub/c.webp"));
    let b = index3.entries.iter().position(|e| e.path == "b.jpg").unwrap();
    let b_old = index.entries.iter().position(|e| e.path == "b.jpg").unwrap();
    assert_ne!(
        index3.embedding(b),
        index.embedding(b_old),
        "the changed file was embedded again"
    );

    // Another model: everything is embedded again.
    let (index4, report) = update(dir, &pipeline("tiny-gelu"), "tiny-gelu", &mut ()).unwrap();
    assert!(
        report.rebuilt.as_deref().unwrap().contains("different model"),
        "{report:?}"
    );
    assert_eq!(report.added, index4.len());
    assert_eq!(index4.dim, 12);

    // A damaged index is rebuilt, never used.
    let path = dir.join(INDEX_FILE);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(ImageIndex::load(&path).unwrap_err().to_string().contains("damaged"));
    let (index5, report) = update(dir, &pipeline("tiny-gelu"), "tiny-gelu", &mut ()).unwrap();
    assert!(report.rebuilt.as_deref().unwrap().contains("damaged"), "{report:?}");
    assert_eq!(paths(&index5), paths(&index4));
    // No temporary files are left in the directory.
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
    std::fs::set_permissions(dir.join("locked.bmp"), std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn search_ranks_by_query_arithmetic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (i, name) in ["rgb.png", "gray.png", "cmyk.jpg", "anim.gif", "la.png"]
        .iter()
        .enumerate()
    {
        copy(name, &dir.join(format!("{i}-{name}")));
    }
    let p = pipeline("tiny");
    let (index, _) = update(dir, &p, "tiny", &mut ()).unwrap();
    assert_eq!(index.len(), 5);

    // An image as the query finds itself first, with a cosine of one.
    let query = dir.join("1-gray.png").display().to_string();
    let terms = parse_query(&[query]).unwrap();
    assert!(matches!(terms[0].term, Term::Image(_)));
    let hits = rank(&index, &query_vector(&p, &terms).unwrap(), 3);
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0].path, "1-gray.png");
    assert!((hits[0].score - 1.0).abs() < 1e-5, "{}", hits[0].score);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));

    // `a + 2:b - c` is the weighted sum of the normalised embeddings.
    let terms = parse_query(&[
        "a red square".into(),
        "+".into(),
        "2:a cat".into(),
        "-".into(),
        "noise".into(),
    ])
    .unwrap();
    let v = query_vector(&p, &terms).unwrap();
    let e = p
        .embed_texts(&["a red square".into(), "a cat".into(), "noise".into()])
        .unwrap()
        .embeddings;
    for (k, x) in v.iter().enumerate() {
        assert!((x - (e[0][k] + 2.0 * e[1][k] - e[2][k])).abs() < 1e-5);
    }
    let hits = rank(&index, &v, 10);
    assert_eq!(hits.len(), 5);
    // A query image that does not exist is an error naming it.
    let terms = parse_query(&["./no-such-image.jpg".into()]).unwrap();
    let err = query_vector(&p, &terms).unwrap_err().to_string();
    assert!(err.contains("no-such-image.jpg"), "{err}");
}
