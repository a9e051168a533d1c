//! Evaluation of a trained model on a held-out split: image bits/dim, caption ranking against
//! the names of all concepts, and the category of generated captions. Prompt fidelity checks
//! whether an image generated from a concept's name lies nearest to training images of that
//! concept in flow-latent space.

use std::collections::BTreeMap;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::infer::{self, CancelToken, CaptionOptions, GenerateOptions};
use crate::model::JetFormer;
use crate::text::TextCodec;
use crate::train::data::{Dataset, Example};

/// Settings of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalOptions {
    /// Held-out images scored by caption ranking and captioning; `None` for all.
    pub limit: Option<usize>,
    /// Held-out concepts generated for prompt fidelity; `None` for all.
    pub prompt_limit: Option<usize>,
    /// Images per batch.
    pub batch_size: usize,
    /// Seed of dequantization noise and of generation.
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            limit: None,
            prompt_limit: None,
            batch_size: 32,
            seed: 0,
        }
    }
}

/// Results of an evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Held-out images whose bits/dim were measured.
    pub images: usize,
    /// Mean image bits per dimension given the image's name.
    pub bits_per_dim: f64,
    /// Mean image bits per dimension without a caption (NOLABEL prefix).
    pub unconditional_bits_per_dim: f64,
    /// Held-out images ranked against all concept names.
    pub ranked_images: usize,
    /// Candidate captions (distinct concept names of both splits).
    pub candidates: usize,
    /// Fraction of ranked images whose own name scores highest.
    pub caption_top1: f64,
    /// Fraction of ranked images whose own name is among the five best.
    pub caption_top5: f64,
    /// Fraction of ranked images whose generated caption names a concept of their category.
    pub caption_category_accuracy: f64,
    /// Held-out concepts generated from their names.
    pub prompts: usize,
    /// Fraction of prompts whose nearest training image is of the prompted concept.
    pub prompt_top1: f64,
    /// Fraction of prompts with the prompted concept among the five nearest training images.
    pub prompt_top5: f64,
}

/// Evaluates `model` on `test`, with `train` as the reference set of prompt fidelity.
pub fn evaluate(
    model: &JetFormer,
    text: &TextCodec,
    train: &Dataset,
    test: &Dataset,
    options: &EvalOptions,
    mut progress: impl FnMut(&str, usize, usize),
) -> Result<EvalReport> {
    let size = model.config.image.size;
    if train.size != size || test.size != size {
        return Err(Error::Input(format!(
            "the datasets were loaded at {} and {} pixels, the model takes {size}",
            train.size, test.size
        )));
    }
    let batch_size = options.batch_size.max(1);
    let images_of = |examples: &[&Example]| -> Vec<RgbImage> {
        examples
            .iter()
            .filter_map(|example| {
                RgbImage::from_raw(size as u32, size as u32, example.pixels.clone())
            })
            .collect()
    };

    // Bits per dimension of every held-out image.
    let all: Vec<&Example> = test.examples.iter().collect();
    let mut conditional = 0.0;
    let mut unconditional = 0.0;
    for (done, chunk) in all.chunks(batch_size).enumerate() {
        progress("bits/dim", done * batch_size, all.len());
        let images = images_of(chunk);
        for (example, image) in chunk.iter().zip(&images) {
            let ids = text.encode(&example.row.text)?.ids;
            conditional +=
                infer::bits_per_dim(model, std::slice::from_ref(image), Some(&ids), options.seed)?
                    [0];
        }
        unconditional += infer::bits_per_dim(model, &images, None, options.seed)?
            .iter()
            .sum::<f64>();
    }
    let count = all.len().max(1) as f64;

    // Candidate names and their categories.
    let mut categories: BTreeMap<String, String> = BTreeMap::new();
    for example in train.examples.iter().chain(&test.examples) {
        let category = example.row.category.clone().unwrap_or_default();
        categories
            .entry(example.concept().to_string())
            .or_insert(category);
    }
    let names: Vec<&String> = categories.keys().collect();
    let name_ids = names
        .iter()
        .map(|name| Ok(text.encode(name)?.ids))
        .collect::<Result<Vec<_>>>()?;

    // Caption ranking and generated-caption categories.
    let ranked: Vec<&Example> = all
        .iter()
        .copied()
        .take(options.limit.unwrap_or(usize::MAX))
        .collect();
    let mut top1 = 0usize;
    let mut top5 = 0usize;
    let mut category_hits = 0usize;
    for (index, example) in ranked.iter().enumerate() {
        progress("caption ranking", index, ranked.len());
        let image = images_of(std::slice::from_ref(example)).remove(0);
        let scores = infer::score_captions(model, &image, &name_ids, 128)?;
        let own = scores[names
            .iter()
            .position(|name| name.as_str() == example.concept())
            .unwrap_or(0)];
        let better = scores.iter().filter(|&&score| score > own).count();
        top1 += usize::from(better == 0);
        top5 += usize::from(better < 5);

        let caption = infer::caption(
            model,
            std::slice::from_ref(&image),
            &CaptionOptions::default(),
        )?;
        let generated = text.decode(&caption[0]);
        let truth = example.row.category.as_deref().unwrap_or_default();
        if named_category(&generated, &categories).is_some_and(|category| category == truth) {
            category_hits += 1;
        }
    }
    let ranked_count = ranked.len().max(1) as f64;

    // Prompt fidelity against the training images' latents.
    let train_images = images_of(&train.examples.iter().collect::<Vec<_>>());
    let mut train_latents = Vec::with_capacity(train_images.len());
    for (done, chunk) in train_images.chunks(batch_size).enumerate() {
        progress(
            "encoding training images",
            done * batch_size,
            train_images.len(),
        );
        train_latents.extend(latent_rows(model, chunk)?);
    }
    let mut prompts: Vec<&str> = test.examples.iter().map(Example::concept).collect();
    prompts.sort_unstable();
    prompts.dedup();
    prompts.truncate(options.prompt_limit.unwrap_or(usize::MAX));
    let mut prompt_top1 = 0usize;
    let mut prompt_top5 = 0usize;
    for (index, prompt) in prompts.iter().enumerate() {
        progress("prompt fidelity", index, prompts.len());
        let ids = text.encode(prompt)?.ids;
        let generate = GenerateOptions {
            seed: options.seed.wrapping_add(index as u64),
            ..GenerateOptions::default()
        };
        let Some(images) = infer::generate(model, &ids, &generate, &CancelToken::new(), |_| {})?
        else {
            continue;
        };
        let latent = latent_rows(model, &images)?.remove(0);
        let mut distances: Vec<(f64, usize)> = train_latents
            .iter()
            .enumerate()
            .map(|(i, row)| (squared_distance(&latent, row), i))
            .collect();
        distances.sort_by(|a, b| a.0.total_cmp(&b.0));
        let nearest: Vec<&str> = distances
            .iter()
            .take(5)
            .map(|&(_, i)| train.examples[i].concept())
            .collect();
        prompt_top1 += usize::from(nearest.first() == Some(prompt));
        prompt_top5 += usize::from(nearest.contains(prompt));
    }
    let prompt_count = prompts.len().max(1) as f64;

    Ok(EvalReport {
        images: all.len(),
        bits_per_dim: conditional / count,
        unconditional_bits_per_dim: unconditional / count,
        ranked_images: ranked.len(),
        candidates: names.len(),
        caption_top1: top1 as f64 / ranked_count,
        caption_top5: top5 as f64 / ranked_count,
        caption_category_accuracy: category_hits as f64 / ranked_count,
        prompts: prompts.len(),
        prompt_top1: prompt_top1 as f64 / prompt_count,
        prompt_top5: prompt_top5 as f64 / prompt_count,
    })
}

/// Returns the category of the concept a generated caption names: the concept equal to the
/// caption, or else the longest concept name the caption contains.
fn named_category<'a>(caption: &str, categories: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let caption = caption.trim().to_lowercase();
    if let Some(category) = categories.get(&caption) {
        return Some(category);
    }
    categories
        .iter()
        .filter(|(name, _)| caption.contains(name.as_str()))
        .max_by_key(|(name, _)| name.len())
        .map(|(_, category)| category.as_str())
}

fn latent_rows(model: &JetFormer, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
    let latents = infer::encode(model, images)?;
    let [count, tokens, dim] = latents.dims();
    let values: Vec<f32> = latents.into_data().iter::<f32>().collect();
    Ok(values
        .chunks(tokens * dim)
        .take(count)
        .map(<[f32]>::to_vec)
        .collect())
}

fn squared_distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_captions_map_to_the_longest_named_concept() {
        let categories: BTreeMap<String, String> = [
            ("cat", "animals & nature"),
            ("cat face", "smileys & emotion"),
            ("pizza", "food & drink"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(
            named_category("a noto emoji of cat face", &categories),
            Some("smileys & emotion")
        );
        assert_eq!(named_category("Pizza", &categories), Some("food & drink"));
        assert_eq!(named_category("rocket", &categories), None);
    }
}
