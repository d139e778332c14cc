//! A CLIP checkpoint ready for use: the model, its tokenizer and its image preprocessing,
//! loaded together, with batched embedding of texts, images and image files, and the
//! similarity / probability table of `tessera match`.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;
use tessera_models::clip::Clip;
use tessera_models::clip_tokenizer::ClipTokenizer;
use tessera_models::loader::{ModelLocation, locate};

use crate::decode::{DecodeOptions, load_rgb};
use crate::preprocess::ClipPreprocessor;
use crate::{Error, Result};

/// Said wherever a CLIP model is missing: none ships with Tessera and none can be fetched
/// offline.
pub const NO_CLIP_WEIGHTS: &str = "no CLIP weights ship with Tessera and none can be fetched offline: pass --model \
     with a CLIP checkpoint directory in Hugging Face layout (config.json, model.safetensors, tokenizer.json or \
     vocab.json + merges.txt, optionally preprocessor_config.json) or a Hugging Face id such as \
     openai/clip-vit-base-patch32 (downloaded once when the hub is reachable, then read from its cache)";

/// Images per forward pass.
pub const BATCH: usize = 32;

/// Embeddings of a list of texts.
#[derive(Debug, Clone)]
pub struct TextEmbeddings {
    /// L2-normalised, one row per text.
    pub embeddings: Vec<Vec<f32>>,
    /// Indices of the texts cut to the model's context.
    pub truncated: Vec<usize>,
}

/// `tessera match`'s numbers: cosine similarities and, per image, the softmax over the
/// texts of the similarities times the model's logit scale.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchTable {
    pub similarity: Vec<Vec<f32>>,
    pub probs: Vec<Vec<f32>>,
}

/// A CLIP model with its tokenizer and preprocessing.
#[derive(Debug)]
pub struct ClipPipeline {
    pub model: Clip,
    pub tokenizer: ClipTokenizer,
    pub preprocessor: ClipPreprocessor,
    pub decode: DecodeOptions,
    /// The checkpoint directory.
    pub dir: PathBuf,
}

impl ClipPipeline {
    /// Loads `--model`: a checkpoint directory or a Hugging Face id (see
    /// [`tessera_models::loader::locate`]).
    pub fn load(spec: &str, device: &Device) -> Result<Self> {
        let location = locate(spec).map_err(|e| match e {
            tessera_models::Error::ModelNotFound(msg) => {
                tessera_models::Error::ModelNotFound(format!("{msg}; {NO_CLIP_WEIGHTS}"))
            }
            other => other,
        })?;
        match location {
            ModelLocation::Checkpoint(dir) => Self::from_dir(&dir, device),
            ModelLocation::Gguf(path) => Err(Error::InvalidInput(format!(
                "{}: a CLIP model is a checkpoint directory, not a single file; {NO_CLIP_WEIGHTS}",
                path.display()
            ))),
        }
    }

    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        let model = Clip::from_dir(dir, device)?;
        let tokenizer = ClipTokenizer::from_dir(dir, model.config().max_position_embeddings)?;
        if tokenizer.vocab_size() > model.config().vocab_size {
            return Err(Error::format(
                dir,
                format!(
                    "the tokenizer has {} tokens but the model only {}",
                    tokenizer.vocab_size(),
                    model.config().vocab_size
                ),
            ));
        }
        let preprocessor = ClipPreprocessor::from_dir(dir, model.config().image_size as u32)?;
        let size = model.config().image_size;
        match preprocessor.output_size() {
            Some((h, w)) if (h as usize, w as usize) == (size, size) => {}
            other => {
                let got = other.map_or_else(
                    || "vary in size (no centre crop)".to_owned(),
                    |(h, w)| format!("come out {w}x{h}"),
                );
                return Err(Error::format(
                    dir.join("preprocessor_config.json"),
                    format!("images {got} but the model takes {size}x{size}"),
                ));
            }
        }
        Ok(ClipPipeline {
            model,
            tokenizer,
            preprocessor,
            decode: DecodeOptions::default(),
            dir: dir.to_path_buf(),
        })
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.model.config().projection_dim
    }

    /// Normalised text embeddings. Empty (or all-whitespace) texts are refused; texts over
    /// the context are cut, and their indices reported.
    pub fn embed_texts(&self, texts: &[String]) -> Result<TextEmbeddings> {
        if texts.is_empty() {
            return Err(Error::InvalidInput("no texts given".into()));
        }
        let mut ids = Vec::with_capacity(texts.len());
        let mut truncated = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            if text.trim().is_empty() {
                return Err(Error::InvalidInput(format!("text {} is empty", i + 1)));
            }
            let enc = self.tokenizer.encode(text)?;
            if enc.truncated {
                truncated.push(i);
            }
            ids.push(enc.ids);
        }
        let mut embeddings = Vec::with_capacity(texts.len());
        for chunk in ids.chunks(BATCH) {
            let e = self.model.text_embeddings(chunk, self.tokenizer.eot_id())?;
            embeddings.extend(e.to_vec2::<f32>()?);
        }
        Ok(TextEmbeddings { embeddings, truncated })
    }

    /// Model inputs `[n, 3, size, size]` for decoded images.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor> {
        self.preprocessor.batch(images, self.model.device())
    }

    /// Normalised embeddings of decoded images.
    pub fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(BATCH) {
            let px = self.pixel_values(chunk)?;
            out.extend(self.model.image_embeddings(&px)?.to_vec2::<f32>()?);
        }
        Ok(out)
    }

    /// Normalised embeddings of image files, each its own result: a file that cannot be
    /// read or decoded does not stop the others. Files are decoded and preprocessed in
    /// parallel, then embedded in batches.
    pub fn embed_files(&self, paths: &[PathBuf]) -> Vec<Result<Vec<f32>>> {
        let mut out: Vec<Result<Vec<f32>>> = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(BATCH) {
            let prepared: Vec<Result<Vec<f32>>> = chunk
                .par_iter()
                .map(|p| {
                    let img = load_rgb(p, &self.decode)?;
                    Ok(self.preprocessor.pixel_values(&img))
                })
                .collect();
            let mut results: Vec<Result<Vec<f32>>> = Vec::with_capacity(chunk.len());
            let mut slots = Vec::new();
            let mut pixels = Vec::new();
            for (i, r) in prepared.into_iter().enumerate() {
                match r {
                    Ok(v) => {
                        slots.push(i);
                        pixels.extend(v);
                        results.push(Ok(Vec::new()));
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            if !slots.is_empty() {
                let size = self.model.config().image_size;
                let embedded = Tensor::from_vec(pixels, (slots.len(), 3, size, size), self.model.device())
                    .map_err(Error::from)
                    .and_then(|px| Ok(self.model.image_embeddings(&px)?.to_vec2::<f32>()?));
                match embedded {
                    Ok(rows) => {
                        for (&i, row) in slots.iter().zip(rows) {
                            results[i] = Ok(row);
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for &i in &slots {
                            results[i] = Err(Error::InvalidInput(format!(
                                "{}: embedding failed: {msg}",
                                chunk[i].display()
                            )));
                        }
                    }
                }
            }
            out.extend(results);
        }
        out
    }

    /// Similarities and per-image probabilities over the texts.
    pub fn match_table(&self, image_embeds: &[Vec<f32>], text_embeds: &[Vec<f32>]) -> MatchTable {
        match_table(image_embeds, text_embeds, self.model.logit_scale())
    }
}

/// Cosine similarities of normalised embeddings, and per row the softmax of
/// `logit_scale × similarity` (CLIP's zero-shot probabilities).
pub fn match_table(image_embeds: &[Vec<f32>], text_embeds: &[Vec<f32>], logit_scale: f32) -> MatchTable {
    let similarity: Vec<Vec<f32>> = image_embeds
        .iter()
        .map(|i| text_embeds.iter().map(|t| dot(i, t)).collect())
        .collect();
    let probs = similarity
        .iter()
        .map(|row| {
            let logits: Vec<f32> = row.iter().map(|s| s * logit_scale).collect();
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            exps.iter().map(|e| e / sum).collect()
        })
        .collect();
    MatchTable { similarity, probs }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_of_unit_vectors() {
        let images = vec![vec![1.0, 0.0], vec![0.6, 0.8]];
        let texts = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let t = match_table(&images, &texts, 100.0);
        assert_eq!(t.similarity, vec![vec![1.0, 0.0], vec![0.6, 0.8]]);
        assert!((t.probs[0][0] - 1.0).abs() < 1e-6);
        let e = (20.0f32).exp();
        assert!((t.probs[1][1] - e / (1.0 + e)).abs() < 1e-6);
        for row in &t.probs {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}
