//! Ranking an index for a query, with rclip's query arithmetic.
//!
//! A query is terms joined by `+` and `-` (separate arguments, or ` + ` / ` - ` inside
//! one): `horse + stripes`, `apple - fruit`, `./city.jpg + night`. A term is a text, or an
//! image when it is a path (starts with `/`, `./`, `../` or `~/`, or names an existing
//! file with an image extension). A term may carry a weight, `2:golden retriever`. As in
//! rclip, the query vector is the weighted sum of the normalised embeddings of the
//! positive terms minus that of the negative ones, not normalised again, and an image's
//! score is its dot product with that vector (for one text term: the cosine similarity).

use std::path::{Path, PathBuf};

use crate::decode::{has_image_extension, load_rgb};
use crate::index::ImageIndex;
use crate::pipeline::{ClipPipeline, dot};
use crate::{Error, Result};

/// What a term stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Text(String),
    Image(PathBuf),
}

/// One term of a query with its signed weight.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryTerm {
    pub weight: f32,
    pub term: Term,
}

/// rclip's multiplier prefix: `2:`, `0.5:`, `.5:`, `2.:`.
fn split_weight(term: &str) -> (f32, &str) {
    if let Some((w, rest)) = term.split_once(':')
        && !rest.is_empty()
        && !w.is_empty()
        && w.chars().all(|c| c.is_ascii_digit() || c == '.')
        && w.chars().filter(|&c| c == '.').count() <= 1
        && w != "."
        && let Ok(v) = w.parse::<f32>()
    {
        return (v, rest);
    }
    (1.0, term)
}

fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}

fn classify(text: &str) -> Term {
    let looks_like_path = ["/", "./", "../", "~/"].iter().any(|p| text.starts_with(p));
    let path = text.strip_prefix("file://").unwrap_or(text);
    if looks_like_path
        || text.starts_with("file://")
        || (has_image_extension(Path::new(text)) && Path::new(text).is_file())
    {
        Term::Image(expand_home(path))
    } else {
        Term::Text(text.to_owned())
    }
}

/// Parses query arguments into weighted terms.
pub fn parse_query(args: &[String]) -> Result<Vec<QueryTerm>> {
    // Split arguments that hold " + " / " - " themselves, keeping the operators as tokens.
    let mut tokens: Vec<String> = Vec::new();
    for arg in args {
        let mut rest = arg.as_str();
        loop {
            let next = [" + ", " - "]
                .iter()
                .filter_map(|op| rest.find(op).map(|i| (i, *op)))
                .min();
            match next {
                Some((i, op)) => {
                    tokens.push(rest[..i].to_owned());
                    tokens.push(op.trim().to_owned());
                    rest = &rest[i + op.len()..];
                }
                None => {
                    tokens.push(rest.to_owned());
                    break;
                }
            }
        }
    }
    let mut terms = Vec::new();
    let mut sign = 1.0f32;
    let mut words: Vec<String> = Vec::new();
    let flush = |words: &mut Vec<String>, sign: f32, terms: &mut Vec<QueryTerm>| -> Result<()> {
        let text = words.join(" ");
        words.clear();
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::InvalidInput(
                "the query has an empty term (an operator without a term after it?)".into(),
            ));
        }
        let (w, rest) = split_weight(text);
        terms.push(QueryTerm {
            weight: sign * w,
            term: classify(rest.trim()),
        });
        Ok(())
    };
    for tok in tokens {
        match tok.as_str() {
            "+" | "-" => {
                if !words.is_empty() || !terms.is_empty() {
                    flush(&mut words, sign, &mut terms)?;
                } else if tok == "+" {
                    // A leading "+" adds nothing.
                } else {
                    // A leading "-": the first term is subtracted.
                }
                sign = if tok == "+" { 1.0 } else { -1.0 };
            }
            t if t.trim().is_empty() => {}
            t => words.push(t.to_owned()),
        }
    }
    flush(&mut words, sign, &mut terms)?;
    Ok(terms)
}

/// The query vector of weighted terms: texts and images are each embedded in one batch.
pub fn query_vector(pipeline: &ClipPipeline, terms: &[QueryTerm]) -> Result<Vec<f32>> {
    let mut v = vec![0f32; pipeline.dim()];
    let texts: Vec<(f32, String)> = terms
        .iter()
        .filter_map(|t| match &t.term {
            Term::Text(s) => Some((t.weight, s.clone())),
            Term::Image(_) => None,
        })
        .collect();
    if !texts.is_empty() {
        let strings: Vec<String> = texts.iter().map(|(_, s)| s.clone()).collect();
        let emb = pipeline.embed_texts(&strings)?;
        if !emb.truncated.is_empty() {
            tracing::warn!(
                "a query text is longer than the model's {} tokens and was cut",
                pipeline.tokenizer.context_length()
            );
        }
        for ((w, _), e) in texts.iter().zip(&emb.embeddings) {
            v.iter_mut().zip(e).for_each(|(a, b)| *a += w * b);
        }
    }
    let images: Vec<(f32, &PathBuf)> = terms
        .iter()
        .filter_map(|t| match &t.term {
            Term::Image(p) => Some((t.weight, p)),
            Term::Text(_) => None,
        })
        .collect();
    if !images.is_empty() {
        let decoded = images
            .iter()
            .map(|(_, p)| load_rgb(p, &pipeline.decode))
            .collect::<Result<Vec<_>>>()?;
        for ((w, _), e) in images.iter().zip(pipeline.embed_images(&decoded)?) {
            v.iter_mut().zip(&e).for_each(|(a, b)| *a += w * b);
        }
    }
    Ok(v)
}

/// One ranked image.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub score: f32,
    /// Relative to the indexed directory.
    pub path: String,
}

/// The `top` best images of the index for a query vector, best first (ties by path).
pub fn rank(index: &ImageIndex, query: &[f32], top: usize) -> Vec<Hit> {
    let mut hits: Vec<Hit> = (0..index.len())
        .map(|i| Hit {
            score: dot(index.embedding(i), query),
            path: index.entries[i].path.clone(),
        })
        .collect();
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.path.cmp(&b.path)));
    hits.truncate(top);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn text(w: f32, t: &str) -> QueryTerm {
        QueryTerm {
            weight: w,
            term: Term::Text(t.into()),
        }
    }

    #[test]
    fn rclip_query_forms() {
        assert_eq!(
            parse_query(&s(&["horse", "+", "stripes"])).unwrap(),
            vec![text(1.0, "horse"), text(1.0, "stripes")]
        );
        assert_eq!(
            parse_query(&s(&["apple - fruit"])).unwrap(),
            vec![text(1.0, "apple"), text(-1.0, "fruit")]
        );
        assert_eq!(
            parse_query(&s(&["red", "car", "-", "2:snow"])).unwrap(),
            vec![text(1.0, "red car"), text(-2.0, "snow")]
        );
        assert_eq!(
            parse_query(&s(&["./racing car.jpg", "-", "2:sports car", "+", ".5:snow"])).unwrap(),
            vec![
                QueryTerm {
                    weight: 1.0,
                    term: Term::Image("./racing car.jpg".into())
                },
                text(-2.0, "sports car"),
                text(0.5, "snow"),
            ]
        );
        assert_eq!(parse_query(&s(&["-", "cat"])).unwrap(), vec![text(-1.0, "cat")]);
        // A colon that is not a weight stays text; a hyphenated word is one word.
        assert_eq!(
            parse_query(&s(&["note: x-ray"])).unwrap(),
            vec![text(1.0, "note: x-ray")]
        );
    }

    #[test]
    fn empty_terms_are_errors() {
        assert!(parse_query(&s(&[])).is_err());
        assert!(parse_query(&s(&["cat", "+"])).is_err());
        assert!(parse_query(&s(&["  "])).is_err());
        assert!(parse_query(&s(&["cat", "+", "+", "dog"])).is_err());
    }

    #[test]
    fn ranking_orders_by_score_then_path() {
        let idx = ImageIndex {
            model: "m".into(),
            fingerprint: "f".into(),
            dim: 2,
            entries: ["b", "a", "c"]
                .iter()
                .map(|p| crate::index::EntryMeta {
                    path: p.to_string(),
                    size: 0,
                    mtime_ns: 0,
                })
                .collect(),
            embeddings: vec![1.0, 0.0, 1.0, 0.0, 0.0, 1.0],
        };
        let hits = rank(&idx, &[1.0, 0.5], 2);
        assert_eq!(hits.iter().map(|h| h.path.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
    }
}
