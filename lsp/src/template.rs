//! Prompt templates per model family. The family is picked from the special tokens the
//! model's tokenizer has (or named in the settings); each renders the file's prefix and
//! suffix and the context snippets in the layout the family was trained on. Families with
//! repo-level tokens get snippets as files of the repository; the others get them as
//! comments under a path header, at the top of the prefix.

use crate::language::Language;

/// A piece of context from another place: a file window, or symbol signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// Path shown to the model (workspace-relative when possible).
    pub path: String,
    pub text: String,
}

/// What a template renders.
#[derive(Debug, Clone, Copy)]
pub struct PromptParts<'a> {
    pub repo: &'a str,
    pub path: &'a str,
    pub language: Language,
    pub snippets: &'a [Snippet],
    pub prefix: &'a str,
    pub suffix: &'a str,
}

/// A model family's fill-in-the-middle layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Qwen2.5-Coder: `<|fim_prefix|>…<|fim_suffix|>…<|fim_middle|>`, snippets as
    /// comments. The default for Qwen models: on our line-completion set the repo-level
    /// layout below lowered Qwen2.5-Coder-0.5B-Instruct's edit similarity (docs/BENCHMARKS.md).
    QwenCoder,
    /// Qwen2.5-Coder's repo-level layout: `<|repo_name|>`, one `<|file_sep|>` per snippet,
    /// then the file's FIM.
    QwenCoderRepo,
    /// StarCoder2: `<fim_prefix>…`, repo-level `<repo_name>` and `<file_sep>`.
    StarCoder2,
    /// StarCoder/SantaCoder: `<fim_prefix>…<fim_suffix>…<fim_middle>`, `<filename>`.
    StarCoder,
    /// CodeLlama: `<PRE> … <SUF>… <MID>`.
    CodeLlama,
    /// DeepSeek-Coder: `<｜fim▁begin｜>…<｜fim▁hole｜>…<｜fim▁end｜>`.
    DeepSeekCoder,
    /// Codestral: `[SUFFIX]…[PREFIX]…`.
    Codestral,
    /// No infilling tokens: the prefix alone, snippets as comments.
    Plain,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::QwenCoder,
        Family::QwenCoderRepo,
        Family::StarCoder2,
        Family::StarCoder,
        Family::CodeLlama,
        Family::DeepSeekCoder,
        Family::Codestral,
        Family::Plain,
    ];

    /// The family whose special tokens the tokenizer has.
    pub fn detect(has_token: impl Fn(&str) -> bool) -> Family {
        if has_token("<|fim_prefix|>") && has_token("<|fim_middle|>") {
            Family::QwenCoder
        } else if has_token("<fim_prefix>") && has_token("<file_sep>") {
            Family::StarCoder2
        } else if has_token("<fim_prefix>") {
            Family::StarCoder
        } else if has_token("▁<PRE>") || has_token("<PRE>") {
            Family::CodeLlama
        } else if has_token("<｜fim▁begin｜>") {
            Family::DeepSeekCoder
        } else if has_token("[SUFFIX]") && has_token("[PREFIX]") {
            Family::Codestral
        } else {
            Family::Plain
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::QwenCoder => "qwen",
            Family::QwenCoderRepo => "qwen-repo",
            Family::StarCoder2 => "starcoder2",
            Family::StarCoder => "starcoder",
            Family::CodeLlama => "codellama",
            Family::DeepSeekCoder => "deepseek",
            Family::Codestral => "codestral",
            Family::Plain => "plain",
        }
    }

    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether the model sees the text after the cursor.
    pub fn uses_suffix(self) -> bool {
        self != Family::Plain
    }

    /// Special tokens that end a fill: the model emits them when the middle is done.
    pub fn stop_tokens(self) -> &'static [&'static str] {
        match self {
            Family::QwenCoder | Family::QwenCoderRepo => &[
                "<|endoftext|>",
                "<|file_sep|>",
                "<|fim_prefix|>",
                "<|fim_suffix|>",
                "<|fim_middle|>",
                "<|fim_pad|>",
                "<|repo_name|>",
                "<|im_end|>",
            ],
            Family::StarCoder2 | Family::StarCoder => &[
                "<|endoftext|>",
                "<file_sep>",
                "<fim_prefix>",
                "<fim_suffix>",
                "<fim_middle>",
                "<fim_pad>",
            ],
            Family::CodeLlama => &["<EOT>", "▁<EOT>"],
            Family::DeepSeekCoder => &[
                "<｜end▁of▁sentence｜>",
                "<｜fim▁begin｜>",
                "<｜fim▁hole｜>",
                "<｜fim▁end｜>",
            ],
            Family::Codestral => &["[PREFIX]", "[SUFFIX]", "[MIDDLE]"],
            Family::Plain => &[],
        }
    }

    /// The prompt for `parts`.
    pub fn render(self, parts: &PromptParts<'_>) -> String {
        let PromptParts {
            repo,
            path,
            language,
            snippets,
            prefix,
            suffix,
        } = *parts;
        match self {
            Family::QwenCoder => {
                let head = commented_snippets(language, snippets, path);
                format!("<|fim_prefix|>{head}{prefix}<|fim_suffix|>{suffix}<|fim_middle|>")
            }
            Family::QwenCoderRepo => {
                let mut s = format!("<|repo_name|>{repo}\n");
                for snip in snippets {
                    s.push_str(&format!("<|file_sep|>{}\n{}\n", snip.path, snip.text.trim_end()));
                }
                s.push_str(&format!(
                    "<|file_sep|>{path}\n<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>"
                ));
                s
            }
            Family::StarCoder2 => {
                let mut s = format!("<repo_name>{repo}");
                for snip in snippets {
                    s.push_str(&format!("<file_sep>{}\n{}\n", snip.path, snip.text.trim_end()));
                }
                s.push_str(&format!(
                    "<file_sep>{path}\n<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>"
                ));
                s
            }
            Family::StarCoder => {
                let head = commented_snippets(language, snippets, path);
                format!("<fim_prefix>{head}{prefix}<fim_suffix>{suffix}<fim_middle>")
            }
            Family::CodeLlama => {
                let head = commented_snippets(language, snippets, path);
                format!("<PRE> {head}{prefix} <SUF>{suffix} <MID>")
            }
            Family::DeepSeekCoder => {
                let head = commented_snippets(language, snippets, path);
                format!("<｜fim▁begin｜>{head}{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>")
            }
            Family::Codestral => {
                let head = commented_snippets(language, snippets, path);
                format!("[SUFFIX]{suffix}[PREFIX]{head}{prefix}")
            }
            Family::Plain => {
                let head = commented_snippets(language, snippets, path);
                format!("{head}{prefix}")
            }
        }
    }
}

/// Snippets as comments, each under a `Path:` header, then the current file's path.
fn commented_snippets(language: Language, snippets: &[Snippet], path: &str) -> String {
    let c = language.line_comment();
    let mut s = String::new();
    for snip in snippets {
        s.push_str(&format!("{c} Path: {}\n", snip.path));
        for line in snip.text.trim_end().lines() {
            if line.is_empty() {
                s.push_str(&format!("{c}\n"));
            } else {
                s.push_str(&format!("{c} {line}\n"));
            }
        }
        s.push('\n');
    }
    if !snippets.is_empty() {
        s.push_str(&format!("{c} Path: {path}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn parts<'a>(snippets: &'a [Snippet]) -> PromptParts<'a> {
        PromptParts {
            repo: "demo",
            path: "src/lib.rs",
            language: Language::Rust,
            snippets,
            prefix: "fn add(a: i32, b: i32) -> i32 {\n    ",
            suffix: "\n}\n",
        }
    }

    #[test]
    fn every_family_renders_prefix_suffix_and_snippets() {
        let snippets = [Snippet {
            path: "src/math.rs".into(),
            text: "/// Sum.\npub fn sum(xs: &[i32]) -> i32".into(),
        }];
        let rendered: Vec<String> = Family::ALL
            .iter()
            // `|` marks the end: a prompt ending in whitespace would be lost in the snapshot.
            .map(|f| format!("== {}\n{}|", f.name(), f.render(&parts(&snippets))))
            .collect();
        expect![[r#"
            == qwen
            <|fim_prefix|>// Path: src/math.rs
            // /// Sum.
            // pub fn sum(xs: &[i32]) -> i32

            // Path: src/lib.rs
            fn add(a: i32, b: i32) -> i32 {
                <|fim_suffix|>
            }
            <|fim_middle|>|
            == qwen-repo
            <|repo_name|>demo
            <|file_sep|>src/math.rs
            /// Sum.
            pub fn sum(xs: &[i32]) -> i32
            <|file_sep|>src/lib.rs
            <|fim_prefix|>fn add(a: i32, b: i32) -> i32 {
                <|fim_suffix|>
            }
            <|fim_middle|>|
            == starcoder2
            <repo_name>demo<file_sep>src/math.rs
            /// Sum.
            pub fn sum(xs: &[i32]) -> i32
            <file_sep>src/lib.rs
            <fim_prefix>fn add(a: i32, b: i32) -> i32 {
                <fim_suffix>
            }
            <fim_middle>|
            == starcoder
            <fim_prefix>// Path: src/math.rs
            // /// Sum.
            // pub fn sum(xs: &[i32]) -> i32

            // Path: src/lib.rs
            fn add(a: i32, b: i32) -> i32 {
                <fim_suffix>
            }
            <fim_middle>|
            == codellama
            <PRE> // Path: src/math.rs
            // /// Sum.
            // pub fn sum(xs: &[i32]) -> i32

            // Path: src/lib.rs
            fn add(a: i32, b: i32) -> i32 {
                 <SUF>
            }
             <MID>|
            == deepseek
            <｜fim▁begin｜>// Path: src/math.rs
            // /// Sum.
            // pub fn sum(xs: &[i32]) -> i32

            // Path: src/lib.rs
            fn add(a: i32, b: i32) -> i32 {
                <｜fim▁hole｜>
            }
            <｜fim▁end｜>|
            == codestral
            [SUFFIX]
            }
            [PREFIX]// Path: src/math.rs
            // /// Sum.
            // pub fn sum(xs: &[i32]) -> i32

            // Path: src/lib.rs
            fn add(a: i32, b: i32) -> i32 {
                |
            == plain
            // Path: src/math.rs
            // /// Sum.
            // pub fn sum(xs: &[i32]) -> i32

            // Path: src/lib.rs
            fn add(a: i32, b: i32) -> i32 {
                |"#]]
        .assert_eq(&rendered.join("\n"));
    }

    #[test]
    fn families_are_detected_from_special_tokens() {
        let qwen = ["<|fim_prefix|>", "<|fim_middle|>", "<|repo_name|>"];
        assert_eq!(Family::detect(|t| qwen.contains(&t)), Family::QwenCoder);
        let sc2 = ["<fim_prefix>", "<file_sep>"];
        assert_eq!(Family::detect(|t| sc2.contains(&t)), Family::StarCoder2);
        assert_eq!(Family::detect(|t| t == "<fim_prefix>"), Family::StarCoder);
        assert_eq!(Family::detect(|t| t == "▁<PRE>"), Family::CodeLlama);
        assert_eq!(Family::detect(|t| t == "<｜fim▁begin｜>"), Family::DeepSeekCoder);
        assert_eq!(
            Family::detect(|t| t == "[SUFFIX]" || t == "[PREFIX]"),
            Family::Codestral
        );
        assert_eq!(Family::detect(|_| false), Family::Plain);
        for f in Family::ALL {
            assert_eq!(Family::from_name(f.name()), Some(f));
        }
    }
}
