//! Recent completion results. A request is answered from here when its document text
//! before the cursor extends a cached request's by characters that a cached completion
//! starts with (the user typing along a shown suggestion), and the text after the cursor
//! is unchanged: the answer is the rest of that completion, at no model cost.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

/// A cached completion: its text and the bytes after the cursor it replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedItem {
    pub text: String,
    pub replace_len: usize,
    pub score: f32,
}

struct Entry {
    uri: String,
    /// Cursor offset and a hash of the text before it.
    offset: usize,
    prefix_hash: u64,
    /// The text after the cursor, up to a bound.
    suffix: String,
    items: Vec<CachedItem>,
}

/// Bytes of the suffix compared.
const SUFFIX_BYTES: usize = 2048;
/// How far ahead of a cached cursor the user may have typed.
const MAX_TYPED: usize = 256;

fn hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn suffix_key(text: &str, offset: usize) -> String {
    let mut end = (offset + SUFFIX_BYTES).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[offset..end].to_owned()
}

/// A bounded LRU of recent results.
pub struct ResultCache {
    entries: VecDeque<Entry>,
    capacity: usize,
}

impl ResultCache {
    pub fn new(capacity: usize) -> Self {
        ResultCache {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn insert(&mut self, uri: &str, text: &str, offset: usize, items: Vec<CachedItem>) {
        if items.is_empty() {
            return;
        }
        let prefix_hash = hash(&text[..offset]);
        self.entries
            .retain(|e| !(e.uri == uri && e.offset == offset && e.prefix_hash == prefix_hash));
        self.entries.push_front(Entry {
            uri: uri.to_owned(),
            offset,
            prefix_hash,
            suffix: suffix_key(text, offset),
            items,
        });
        self.entries.truncate(self.capacity);
    }

    /// Completions still valid for the cursor at `offset` of `text`.
    pub fn lookup(&mut self, uri: &str, text: &str, offset: usize) -> Option<Vec<CachedItem>> {
        let suffix = suffix_key(text, offset);
        let found = self.entries.iter().position(|e| {
            e.uri == uri
                && e.offset <= offset
                && offset - e.offset <= MAX_TYPED
                && text.is_char_boundary(e.offset)
                && e.suffix == suffix
                && hash(&text[..e.offset]) == e.prefix_hash
        })?;
        let typed = &text[self.entries[found].offset..offset];
        let items: Vec<CachedItem> = self.entries[found]
            .items
            .iter()
            .filter(|it| it.text.len() > typed.len() && it.text.starts_with(typed))
            .map(|it| CachedItem {
                text: it.text[typed.len()..].to_owned(),
                replace_len: it.replace_len,
                score: it.score,
            })
            .filter(|it| !it.text.trim().is_empty())
            .collect();
        if items.is_empty() {
            return None;
        }
        let entry = self.entries.remove(found)?;
        self.entries.push_front(entry);
        Some(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(text: &str) -> CachedItem {
        CachedItem {
            text: text.into(),
            replace_len: 0,
            score: 0.0,
        }
    }

    #[test]
    fn typing_along_a_completion_is_answered_from_the_cache() {
        let mut cache = ResultCache::new(4);
        let doc = "def f(n):\n    return \n";
        let at = doc.find("return ").unwrap() + 7;
        cache.insert("a.py", doc, at, vec![item("n % 2 == 0"), item("n & 1 == 0")]);
        let typed = "def f(n):\n    return n %\n";
        let got = cache.lookup("a.py", typed, at + 3).unwrap();
        assert_eq!(got, vec![item(" 2 == 0")]);
        // The same place answers too.
        assert_eq!(cache.lookup("a.py", doc, at).unwrap().len(), 2);
        // Typing something else, changing the suffix or the text above: no answer.
        assert!(cache.lookup("a.py", "def f(n):\n    return x\n", at + 1).is_none());
        assert!(cache.lookup("a.py", "def f(n):\n    return \n# x\n", at).is_none());
        assert!(cache.lookup("a.py", "def g(n):\n    return \n", at).is_none());
        assert!(cache.lookup("b.py", doc, at).is_none());
        // Typed all of it: nothing left to offer.
        let all = "def f(n):\n    return n % 2 == 0\n";
        assert!(cache.lookup("a.py", all, at + 10).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = ResultCache::new(2);
        for i in 0..5 {
            let doc = format!("x{i}");
            cache.insert("a", &doc, 2, vec![item("y")]);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.lookup("a", "x4", 2).is_some());
        assert!(cache.lookup("a", "x0", 2).is_none());
    }
}
