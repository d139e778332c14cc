//! The languages the server knows: their tree-sitter grammars, their query files
//! (`lsp/queries/<name>.scm`), comment syntax, and the language ids and file extensions
//! that name them. Anything else is plain text: completions still work, without a tree.

use std::path::Path;

/// A language with a tree-sitter grammar, or plain text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Language {
    Rust,
    Python,
    JavaScript,
    TypeScript,
    Tsx,
    Go,
    Java,
    C,
    Cpp,
    PlainText,
}

pub const ALL_WITH_GRAMMAR: [Language; 9] = [
    Language::Rust,
    Language::Python,
    Language::JavaScript,
    Language::TypeScript,
    Language::Tsx,
    Language::Go,
    Language::Java,
    Language::C,
    Language::Cpp,
];

impl Language {
    /// From an LSP `languageId`, falling back to the file extension of `uri`.
    pub fn detect(language_id: &str, uri: &str) -> Language {
        match language_id {
            "rust" => Language::Rust,
            "python" => Language::Python,
            "javascript" | "javascriptreact" => Language::JavaScript,
            "typescript" => Language::TypeScript,
            "typescriptreact" => Language::Tsx,
            "go" => Language::Go,
            "java" => Language::Java,
            "c" => Language::C,
            "cpp" | "c++" => Language::Cpp,
            _ => Language::from_path(Path::new(uri)),
        }
    }

    /// From a file name's extension.
    pub fn from_path(path: &Path) -> Language {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "rs" => Language::Rust,
            "py" | "pyi" => Language::Python,
            "js" | "mjs" | "cjs" | "jsx" => Language::JavaScript,
            "ts" | "mts" | "cts" => Language::TypeScript,
            "tsx" => Language::Tsx,
            "go" => Language::Go,
            "java" => Language::Java,
            "c" | "h" => Language::C,
            "cc" | "cpp" | "cxx" | "hpp" | "hh" | "hxx" => Language::Cpp,
            _ => Language::PlainText,
        }
    }

    /// The name used in settings (`enabledLanguages`) and for the query file.
    pub fn name(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::Python => "python",
            Language::JavaScript => "javascript",
            Language::TypeScript => "typescript",
            Language::Tsx => "tsx",
            Language::Go => "go",
            Language::Java => "java",
            Language::C => "c",
            Language::Cpp => "cpp",
            Language::PlainText => "plaintext",
        }
    }

    pub fn grammar(self) -> Option<tree_sitter::Language> {
        Some(match self {
            Language::Rust => tree_sitter_rust::LANGUAGE.into(),
            Language::Python => tree_sitter_python::LANGUAGE.into(),
            Language::JavaScript => tree_sitter_javascript::LANGUAGE.into(),
            Language::TypeScript => tree_sitter_typescript::LANGUAGE_TYPESCRIPT.into(),
            Language::Tsx => tree_sitter_typescript::LANGUAGE_TSX.into(),
            Language::Go => tree_sitter_go::LANGUAGE.into(),
            Language::Java => tree_sitter_java::LANGUAGE.into(),
            Language::C => tree_sitter_c::LANGUAGE.into(),
            Language::Cpp => tree_sitter_cpp::LANGUAGE.into(),
            Language::PlainText => return None,
        })
    }

    /// The query file: `@definition.*` with `@name` (symbols), `@scope` (enclosing
    /// functions, classes, impls, modules) and `@import`.
    pub fn query_source(self) -> &'static str {
        match self {
            Language::Rust => include_str!("../queries/rust.scm"),
            Language::Python => include_str!("../queries/python.scm"),
            Language::JavaScript => include_str!("../queries/javascript.scm"),
            Language::TypeScript | Language::Tsx => include_str!("../queries/typescript.scm"),
            Language::Go => include_str!("../queries/go.scm"),
            Language::Java => include_str!("../queries/java.scm"),
            Language::C => include_str!("../queries/c.scm"),
            Language::Cpp => include_str!("../queries/cpp.scm"),
            Language::PlainText => "",
        }
    }

    /// The line comment that context snippets are written under.
    pub fn line_comment(self) -> &'static str {
        match self {
            Language::Python => "#",
            Language::PlainText => "#",
            _ => "//",
        }
    }

    /// Blocks are delimited by indentation rather than braces.
    pub fn indent_blocks(self) -> bool {
        self == Language::Python
    }
}
