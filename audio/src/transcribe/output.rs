//! Transcript writers: plain text, SubRip (srt), WebVTT, tab-separated values and JSON, in
//! the layouts openai/whisper's `utils.py` writes.

use std::fmt::Write as _;
use std::str::FromStr;

use super::Transcript;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Txt,
    Srt,
    Vtt,
    Tsv,
    Json,
}

impl Format {
    pub const ALL: [Format; 5] = [Format::Txt, Format::Srt, Format::Vtt, Format::Tsv, Format::Json];

    /// File extension (without the dot).
    pub fn extension(self) -> &'static str {
        match self {
            Format::Txt => "txt",
            Format::Srt => "srt",
            Format::Vtt => "vtt",
            Format::Tsv => "tsv",
            Format::Json => "json",
        }
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.extension().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown output format {s:?} (txt, srt, vtt, tsv, json)"))
    }
}

/// `HH:MM:SS.mmm`, hours omitted when zero unless `always_hours` (openai's
/// `format_timestamp`).
pub fn format_timestamp(seconds: f32, always_hours: bool, decimal_marker: char) -> String {
    let total_ms = (f64::from(seconds.max(0.0)) * 1000.0).round() as u64;
    let (h, rest) = (total_ms / 3_600_000, total_ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, ms) = (rest / 1000, rest % 1000);
    if always_hours || h > 0 {
        format!("{h:02}:{m:02}:{s:02}{decimal_marker}{ms:03}")
    } else {
        format!("{m:02}:{s:02}{decimal_marker}{ms:03}")
    }
}

/// Subtitle text may not contain the cue separator `-->`.
fn cue_text(text: &str) -> String {
    text.trim().replace("-->", "->")
}

/// Renders the transcript in `format`.
pub fn render(transcript: &Transcript, format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::Txt => {
            for s in &transcript.segments {
                out.push_str(s.text.trim());
                out.push('\n');
            }
        }
        Format::Vtt => {
            out.push_str("WEBVTT\n\n");
            for s in &transcript.segments {
                let _ = write!(
                    out,
                    "{} --> {}\n{}\n\n",
                    format_timestamp(s.start, false, '.'),
                    format_timestamp(s.end, false, '.'),
                    cue_text(&s.text)
                );
            }
        }
        Format::Srt => {
            for (i, s) in transcript.segments.iter().enumerate() {
                let _ = write!(
                    out,
                    "{}\n{} --> {}\n{}\n\n",
                    i + 1,
                    format_timestamp(s.start, true, ','),
                    format_timestamp(s.end, true, ','),
                    cue_text(&s.text)
                );
            }
        }
        Format::Tsv => {
            out.push_str("start\tend\ttext\n");
            for s in &transcript.segments {
                let _ = writeln!(
                    out,
                    "{}\t{}\t{}",
                    (s.start * 1000.0).round() as i64,
                    (s.end * 1000.0).round() as i64,
                    s.text.trim().replace('\t', " ")
                );
            }
        }
        Format::Json => {
            out = serde_json::to_string(transcript).expect("a transcript serialises");
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcribe::Segment;

    fn transcript() -> Transcript {
        let seg = |id, start, end, text: &str| Segment {
            id,
            seek: 0,
            start,
            end,
            text: text.into(),
            tokens: vec![1, 2],
            temperature: 0.0,
            avg_logprob: -0.25,
            compression_ratio: 1.5,
            no_speech_prob: 0.01,
            words: None,
        };
        Transcript {
            text: " Hello there. Bye --> now".into(),
            language: "en".into(),
            duration: 3725.5,
            segments: vec![
                seg(0, 0.0, 2.5, " Hello there."),
                seg(1, 3723.0, 3725.48, " Bye --> now"),
            ],
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(format_timestamp(0.0, false, '.'), "00:00.000");
        assert_eq!(format_timestamp(11.0, true, ','), "00:00:11,000");
        assert_eq!(format_timestamp(3725.48, false, '.'), "01:02:05.480");
        assert_eq!(format_timestamp(-1.0, false, '.'), "00:00.000");
    }

    #[test]
    fn formats() {
        let t = transcript();
        expect_test::expect![[r#"
            Hello there.
            Bye --> now
        "#]]
        .assert_eq(&render(&t, Format::Txt));
        expect_test::expect![[r#"
            WEBVTT

            00:00.000 --> 00:02.500
            Hello there.

            01:02:03.000 --> 01:02:05.480
            Bye -> now

        "#]]
        .assert_eq(&render(&t, Format::Vtt));
        expect_test::expect![[r#"
            1
            00:00:00,000 --> 00:00:02,500
            Hello there.

            2
            01:02:03,000 --> 01:02:05,480
            Bye -> now

        "#]]
        .assert_eq(&render(&t, Format::Srt));
        expect_test::expect![[r#"
            start	end	text
            0	2500	Hello there.
            3723000	3725480	Bye --> now
        "#]]
        .assert_eq(&render(&t, Format::Tsv));
        let json: serde_json::Value = serde_json::from_str(&render(&t, Format::Json)).unwrap();
        assert_eq!(json["language"], "en");
        assert_eq!(json["segments"][1]["end"].as_f64().unwrap() as f32, 3725.48);
        assert_eq!(json["segments"][0]["avg_logprob"], -0.25);
        assert!(json["segments"][0].get("words").is_none());
        for key in ["text", "language", "duration", "segments"] {
            assert!(json.get(key).is_some(), "{key}");
        }
        for key in [
            "id",
            "start",
            "end",
            "text",
            "avg_logprob",
            "no_speech_prob",
            "compression_ratio",
            "temperature",
        ] {
            assert!(json["segments"][0].get(key).is_some(), "{key}");
        }
        assert_eq!("SRT".parse::<Format>().unwrap(), Format::Srt);
        assert!("doc".parse::<Format>().is_err());
    }
}
