//! Integration tests of the language server crate.
