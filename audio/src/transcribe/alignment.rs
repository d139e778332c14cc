//! Word timestamps from cross-attention, as openai/whisper's `timing.py` computes them: the
//! decoder re-reads a window's text while the alignment heads' attention over the audio
//! frames is recorded; the weights are normalised per head, median-filtered along time,
//! averaged, and dynamic time warping finds the monotonic path from text tokens to frames.
//! Tokens are grouped into words (subwords that start with a space or are punctuation
//! start a new word), punctuation is merged into its neighbour, and each word gets the
//! time where the path enters its first token and leaves its last.

use candle_core::Tensor;
use tessera_models::whisper::{AudioFeatures, Whisper};

use super::decoding::log_softmax;
use super::{Segment, Word};
use crate::{Error, HOP_LENGTH, Result, SAMPLE_RATE};

/// Encoder positions per second.
const TOKENS_PER_SECOND: f32 = 50.0;
const MEDIAN_FILTER_WIDTH: usize = 7;
const PREPEND_PUNCTUATION: &str = "\"'“¿([{-";
const APPEND_PUNCTUATION: &str = "\"'.。,，!！?？:：”)]}、";

/// A word and its timing within a window.
#[derive(Debug, Clone, PartialEq)]
struct Timing {
    word: String,
    tokens: Vec<u32>,
    start: f32,
    end: f32,
    probability: f32,
}

/// Median over a sliding window of `width` along each row, reflect-padded (scipy/openai).
fn median_filter(row: &[f32], width: usize) -> Vec<f32> {
    let pad = width / 2;
    let n = row.len();
    if n <= pad {
        return row.to_vec();
    }
    let at = |i: isize| -> f32 {
        let n = n as isize;
        let mut i = i;
        if i < 0 {
            i = -i;
        }
        if i >= n {
            i = 2 * (n - 1) - i;
        }
        row[i.clamp(0, n - 1) as usize]
    };
    let mut window = vec![0f32; width];
    (0..n)
        .map(|c| {
            for (k, w) in window.iter_mut().enumerate() {
                *w = at(c as isize + k as isize - pad as isize);
            }
            window.sort_by(f32::total_cmp);
            window[pad]
        })
        .collect()
}

/// Dynamic time warping of a cost matrix `[n][m]`: the monotonic path from (0, 0) to
/// (n-1, m-1) of least total cost, as (row, column) pairs.
pub(crate) fn dtw(cost: &[Vec<f32>]) -> Vec<(usize, usize)> {
    let n = cost.len();
    let m = cost.first().map_or(0, Vec::len);
    if n == 0 || m == 0 {
        return Vec::new();
    }
    let mut acc = vec![vec![f32::INFINITY; m + 1]; n + 1];
    let mut trace = vec![vec![-1i8; m + 1]; n + 1];
    acc[0][0] = 0.0;
    for j in 1..=m {
        for i in 1..=n {
            let (c0, c1, c2) = (acc[i - 1][j - 1], acc[i - 1][j], acc[i][j - 1]);
            let (c, t) = if c0 < c1 && c0 < c2 {
                (c0, 0)
            } else if c1 < c0 && c1 < c2 {
                (c1, 1)
            } else {
                (c2, 2)
            };
            acc[i][j] = cost[i - 1][j - 1] + c;
            trace[i][j] = t;
        }
    }
    for t in trace[0].iter_mut() {
        *t = 2;
    }
    for row in trace.iter_mut() {
        row[0] = 1;
    }
    let (mut i, mut j) = (n, m);
    let mut path = Vec::new();
    while i > 0 || j > 0 {
        path.push((i.wrapping_sub(1), j.wrapping_sub(1)));
        match trace[i][j] {
            0 => {
                i -= 1;
                j -= 1;
            }
            1 => i -= 1,
            _ => j -= 1,
        }
    }
    path.reverse();
    // The walk ends on the padding row/column (index -1): drop those steps.
    path.retain(|&(i, j)| i < n && j < m);
    path
}

/// Splits text tokens into words: `(word, tokens)`.
fn split_words(model: &Whisper, tokens: &[u32]) -> Result<Vec<(String, Vec<u32>)>> {
    let tok = model.tokenizer();
    let mut subwords: Vec<(String, Vec<u32>)> = Vec::new();
    let mut current = Vec::new();
    for &t in tokens {
        current.push(t);
        let decoded = tok.decode(&current, false).map_err(Error::Model)?;
        if !decoded.contains('\u{FFFD}') {
            subwords.push((decoded, std::mem::take(&mut current)));
        }
    }
    if !current.is_empty() {
        subwords.push((tok.decode(&current, false).map_err(Error::Model)?, current));
    }
    let mut words: Vec<(String, Vec<u32>)> = Vec::new();
    for (sub, toks) in subwords {
        let with_space = sub.starts_with(' ');
        let trimmed = sub.trim();
        let punctuation = !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_punctuation());
        match words.last_mut() {
            Some((w, wt)) if !with_space && !punctuation => {
                w.push_str(&sub);
                wt.extend(toks);
            }
            _ => words.push((sub, toks)),
        }
    }
    Ok(words)
}

fn merge_punctuation(alignment: &mut [Timing]) {
    if alignment.len() < 2 {
        return;
    }
    // Opening marks join the following word.
    let mut j = alignment.len() - 1;
    for i in (0..alignment.len() - 1).rev() {
        let prev = alignment[i].word.clone();
        if prev.starts_with(' ') && !prev.trim().is_empty() && PREPEND_PUNCTUATION.contains(prev.trim()) {
            let prev_tokens = std::mem::take(&mut alignment[i].tokens);
            alignment[i].word.clear();
            let following = &mut alignment[j];
            following.word = prev + &following.word;
            following.tokens = prev_tokens.into_iter().chain(following.tokens.drain(..)).collect();
        } else {
            j = i;
        }
    }
    // Closing marks join the preceding word.
    let mut i = 0;
    for j in 1..alignment.len() {
        let following = alignment[j].word.clone();
        if !alignment[i].word.ends_with(' ') && !following.is_empty() && APPEND_PUNCTUATION.contains(following.as_str())
        {
            let tokens = std::mem::take(&mut alignment[j].tokens);
            alignment[j].word.clear();
            alignment[i].word.push_str(&following);
            alignment[i].tokens.extend(tokens);
        } else {
            i = j;
        }
    }
}

/// Word timings of `text_tokens` within a window of `num_frames` mel frames.
fn find_alignment(
    model: &Whisper,
    features: &AudioFeatures,
    sot_sequence: &[u32],
    text_tokens: &[u32],
    num_frames: usize,
) -> Result<Vec<Timing>> {
    if text_tokens.is_empty() {
        return Ok(Vec::new());
    }
    let s = model.special();
    let sot_len = sot_sequence.len();
    let mut tokens = sot_sequence.to_vec();
    tokens.push(s.no_timestamps);
    tokens.extend(text_tokens);
    tokens.push(s.eot);
    let weights = model
        .cross_attention_logits(features, 0, &tokens)
        .map_err(Error::Model)?;
    let (heads, n_tokens, frames) = weights.dims3().map_err(|e| Error::Model(e.into()))?;
    let frames_used = (num_frames / 2).clamp(1, frames);
    let w: Vec<Vec<Vec<f32>>> = weights.to_vec3::<f32>().map_err(|e| Error::Model(e.into()))?;
    // Token probabilities for the word probabilities: the logits after each prefix.
    let logits = {
        let mut decoder = model.decoder(features, &[0]).map_err(Error::Model)?;
        let rows = |t: Tensor| t.to_vec2::<f32>().map_err(|e| Error::Model(e.into()));
        let mut all = rows(decoder.step(&[&tokens[..=sot_len]]).map_err(Error::Model)?)?;
        for &t in &text_tokens[..text_tokens.len() - 1] {
            all.extend(rows(decoder.step(&[&[t]]).map_err(Error::Model)?)?);
        }
        all
    };
    let probs: Vec<f32> = text_tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let row = &logits[i];
            let lp = log_softmax(&row[..(s.eot as usize).min(row.len())]);
            lp.get(t as usize).map_or(0.0, |l| l.exp())
        })
        .collect();

    // Per head: softmax over the frames of the actual audio, z-normalise over tokens,
    // median-filter over time; then average the heads.
    let mut matrix = vec![vec![0f32; frames_used]; n_tokens];
    for head in &w {
        let mut rows: Vec<Vec<f32>> = head
            .iter()
            .map(|row| log_softmax(&row[..frames_used]).into_iter().map(f32::exp).collect())
            .collect();
        for f in 0..frames_used {
            let n = rows.len() as f32;
            let mean = rows.iter().map(|r| r[f]).sum::<f32>() / n;
            let var = rows.iter().map(|r| (r[f] - mean).powi(2)).sum::<f32>() / n;
            let std = var.sqrt().max(1e-10);
            for r in rows.iter_mut() {
                r[f] = (r[f] - mean) / std;
            }
        }
        for (t, r) in rows.iter().enumerate() {
            for (f, v) in median_filter(r, MEDIAN_FILTER_WIDTH).into_iter().enumerate() {
                matrix[t][f] += v / heads as f32;
            }
        }
    }
    // Rows from the no-timestamps token to the last text token (each predicts the next).
    let cost: Vec<Vec<f32>> = matrix[sot_len..n_tokens - 1]
        .iter()
        .map(|r| r.iter().map(|v| -v).collect())
        .collect();
    let path = dtw(&cost);
    // The frame where the path first reaches each text row.
    let mut jump_times = Vec::new();
    let mut last_row = usize::MAX;
    for &(i, j) in &path {
        if i != last_row {
            jump_times.push(j as f32 / TOKENS_PER_SECOND);
            last_row = i;
        }
    }
    let words = split_words(model, text_tokens)?;
    let mut out = Vec::with_capacity(words.len());
    let mut boundary = 0;
    for (word, toks) in words {
        let end_boundary = boundary + toks.len();
        let start = jump_times.get(boundary).copied().unwrap_or(0.0);
        let end = jump_times.get(end_boundary).copied().unwrap_or(start);
        let probability = probs[boundary..end_boundary].iter().sum::<f32>() / toks.len().max(1) as f32;
        out.push(Timing {
            word,
            tokens: toks,
            start,
            end,
            probability,
        });
        boundary = end_boundary;
    }
    Ok(out)
}

/// Fills `words` of a window's segments, and moves their bounds to the words'.
pub(crate) fn add_word_timestamps(
    model: &Whisper,
    features: &AudioFeatures,
    sot_sequence: &[u32],
    segments: &mut [Segment],
    num_frames: usize,
    window_end: f32,
    last_speech_timestamp: f32,
) -> Result<()> {
    let Some(first) = segments.first() else {
        return Ok(());
    };
    let eot = model.special().eot;
    let per_segment: Vec<Vec<u32>> = segments
        .iter()
        .map(|s| s.tokens.iter().copied().filter(|&t| t < eot).collect())
        .collect();
    let text_tokens: Vec<u32> = per_segment.concat();
    let mut alignment = find_alignment(model, features, sot_sequence, &text_tokens, num_frames)?;
    let mut durations: Vec<f32> = alignment.iter().map(|t| t.end - t.start).filter(|&d| d > 0.0).collect();
    durations.sort_by(f32::total_cmp);
    let median = durations.get(durations.len() / 2).copied().unwrap_or(0.0).min(0.7);
    let max_duration = median * 2.0;
    if !durations.is_empty() {
        // Long words at sentence ends are usually a pause swallowed by the mark.
        let sentence_end = ".。!！?？";
        for i in 1..alignment.len() {
            if alignment[i].end - alignment[i].start > max_duration {
                if sentence_end.contains(alignment[i].word.as_str()) {
                    alignment[i].end = alignment[i].start + max_duration;
                } else if sentence_end.contains(alignment[i - 1].word.as_str()) {
                    alignment[i].start = alignment[i].end - max_duration;
                }
            }
        }
    }
    merge_punctuation(&mut alignment);
    let time_offset = (first.seek * HOP_LENGTH) as f32 / SAMPLE_RATE as f32;
    let round2 = |x: f32| (x * 100.0).round() / 100.0;
    let mut index = 0;
    let mut last_speech_timestamp = last_speech_timestamp;
    for (segment, tokens) in segments.iter_mut().zip(&per_segment) {
        let mut saved = 0;
        let mut words = Vec::new();
        while index < alignment.len() && saved < tokens.len() {
            let t = &alignment[index];
            if !t.word.is_empty() {
                words.push(Word {
                    word: t.word.clone(),
                    start: round2(time_offset + t.start),
                    end: round2((time_offset + t.end).min(window_end)),
                    probability: t.probability,
                });
            }
            saved += t.tokens.len();
            index += 1;
        }
        if !words.is_empty() {
            fit_segment_boundaries(segment, &mut words, median, max_duration, last_speech_timestamp);
            last_speech_timestamp = segment.end;
        }
        segment.words = Some(words);
    }
    Ok(())
}

/// openai's corrections at a segment's edges (`timing.py`): after a pause, the alignment
/// tends to stretch the first word back over the silence, so a first word (or first two)
/// longer than the median allows is cut to its likely length; then the segment and its
/// first and last words agree on their times, the segment's own timestamps winning where a
/// word runs more than half a second past them.
fn fit_segment_boundaries(
    segment: &mut Segment,
    words: &mut [Word],
    median: f32,
    max_duration: f32,
    last_speech_timestamp: f32,
) {
    let n = words.len();
    if words[0].end - last_speech_timestamp > median * 4.0
        && (words[0].end - words[0].start > max_duration
            || (n > 1 && words[1].end - words[0].start > max_duration * 2.0))
    {
        if n > 1 && words[1].end - words[1].start > max_duration {
            let boundary = (words[1].end / 2.0).max(words[1].end - max_duration);
            words[0].end = boundary;
            words[1].start = boundary;
        }
        words[0].start = (words[0].end - max_duration).max(0.0);
    }
    if segment.start < words[0].end && segment.start - 0.5 > words[0].start {
        words[0].start = (words[0].end - median).min(segment.start).max(0.0);
    } else {
        segment.start = words[0].start;
    }
    let last = &mut words[n - 1];
    if segment.end > last.start && segment.end + 0.5 < last.end {
        last.end = (last.start + median).max(segment.end);
    } else {
        segment.end = last.end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtw_follows_the_cheap_diagonal() {
        let cost = vec![
            vec![0.0, 1.0, 1.0, 1.0],
            vec![1.0, 0.0, 0.0, 1.0],
            vec![1.0, 1.0, 1.0, 0.0],
        ];
        assert_eq!(dtw(&cost), vec![(0, 0), (1, 1), (1, 2), (2, 3)]);
    }

    #[test]
    fn median_filter_reflects_at_the_edges() {
        assert_eq!(
            median_filter(&[1.0, 9.0, 2.0, 8.0, 3.0], 3),
            vec![9.0, 2.0, 8.0, 3.0, 8.0]
        );
        assert_eq!(median_filter(&[5.0], 7), vec![5.0]);
    }

    #[test]
    fn punctuation_joins_its_word() {
        let t = |w: &str, tok: u32| Timing {
            word: w.into(),
            tokens: vec![tok],
            start: 0.0,
            end: 0.0,
            probability: 1.0,
        };
        let mut a = vec![t(" \"", 1), t("Hi", 2), t(",", 3), t(" you", 4), t(".", 5)];
        merge_punctuation(&mut a);
        let words: Vec<&str> = a.iter().map(|t| t.word.as_str()).collect();
        assert_eq!(words, ["", " \"Hi,", "", " you.", ""]);
        assert_eq!(a[1].tokens, vec![1, 2, 3]);
    }

    fn word(w: &str, start: f32, end: f32) -> Word {
        Word {
            word: w.into(),
            start,
            end,
            probability: 1.0,
        }
    }

    fn segment(start: f32, end: f32) -> Segment {
        Segment {
            id: 0,
            seek: 0,
            start,
            end,
            text: String::new(),
            tokens: vec![],
            temperature: 0.0,
            avg_logprob: 0.0,
            compression_ratio: 1.0,
            no_speech_prob: 0.0,
            words: None,
        }
    }

    #[test]
    fn a_first_word_stretched_over_a_pause_is_cut_to_a_likely_length() {
        // The window starts at 24.2 s in silence; speech starts at 27 s, but the alignment
        // gave the first word everything from the window start (openai's case for the
        // hack). Median word 0.3 s, so at most 0.6 s.
        let mut seg = segment(24.2, 30.0);
        let mut words = vec![
            word(" And", 24.2, 27.3),
            word(" so", 27.3, 27.5),
            word(" on", 27.5, 30.0),
        ];
        fit_segment_boundaries(&mut seg, &mut words, 0.3, 0.6, 21.0);
        assert!((words[0].start - 26.7).abs() < 1e-4, "{:?}", words[0]);
        assert_eq!(seg.start, words[0].start, "the segment starts with its first word");
        assert_eq!(seg.end, 30.0);
    }

    #[test]
    fn words_right_after_speech_and_segment_timestamps_that_disagree() {
        // No pause before: a long first word is kept; the segment takes its time.
        let mut seg = segment(10.0, 12.0);
        let mut words = vec![word(" Well", 10.0, 11.0), word(" yes", 11.0, 12.0)];
        fit_segment_boundaries(&mut seg, &mut words, 0.3, 0.6, 9.9);
        assert_eq!((words[0].start, seg.start), (10.0, 10.0));
        // A first word starting more than 0.5 s before its segment's timestamp (and ending
        // after it) is pulled to the segment's start; a last word running more than 0.5 s
        // past the segment's end is cut back to it.
        let mut seg = segment(5.0, 8.0);
        let mut words = vec![word(" a", 4.0, 5.2), word(" b", 7.0, 9.0)];
        fit_segment_boundaries(&mut seg, &mut words, 0.3, 0.6, 4.5);
        assert!((words[0].start - 4.9).abs() < 1e-5, "min(end - median, segment start)");
        assert_eq!((seg.start, seg.end), (5.0, 8.0));
        assert_eq!(words[1].end, 8.0);
    }
}
