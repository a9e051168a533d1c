//! Evaluation of a trained model on a held-out split: image bits/dim, caption ranking against
//! the names of all concepts, and the category of generated captions. Prompt fidelity checks
//! whether an image generated from a concept's name lies nearest to training images of that
//! concept in flow-latent space.

use std::collections::BTreeMap;

use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::checkpoint::CaptionPriors;
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
    /// Training images over which each name's prior is averaged for calibrated ranking.
    pub prior_images: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// Seed of dequantization noise and of generation.
    pub seed: u64,
    /// Classifier-free guidance weight of the prompt fidelity generations.
    pub guidance: f64,
    /// Scale temperature of the prompt fidelity generations.
    pub scale_temperature: f64,
    /// Count of the calibrated ranking's best names that are ranked again by the image's
    /// likelihood given each name. With 0 that ranking is skipped.
    #[serde(default)]
    pub rerank: usize,
    /// Weight of the image side when the best names are re-ranked, [`infer::rerank_captions`].
    /// Options saved before the field existed read as 1, the equal weights they ran with.
    #[serde(default = "unit_weight")]
    pub image_weight: f64,
    /// Draws of dequantization noise per held-out image for the bits/dim over draws,
    /// [`infer::bits_over_draws`].
    #[serde(default = "one_draw")]
    pub dequantization_draws: usize,
    /// Images sampled per prompt fidelity prompt, of which the one that makes the prompt most
    /// likely as its caption is kept, [`GenerateOptions::candidates`]. Options saved before
    /// the field existed read as 1, a single image per prompt.
    #[serde(default = "one_candidate")]
    pub prompt_candidates: usize,
}

fn one_candidate() -> usize {
    1
}

fn one_draw() -> usize {
    1
}

fn unit_weight() -> f64 {
    1.0
}

/// Dequantization draws per held-out image of an evaluation by default. On the bundled model,
/// 8 draws took the held-out bits/dim given the name from 3.110 (one draw) to 3.103.
pub const DEQUANTIZATION_DRAWS: usize = 8;

impl Default for EvalOptions {
    fn default() -> Self {
        let sampling = GenerateOptions::default();
        Self {
            limit: None,
            prompt_limit: None,
            prior_images: 64,
            batch_size: 32,
            seed: 0,
            guidance: sampling.guidance,
            scale_temperature: sampling.scale_temperature,
            rerank: infer::RERANK_CANDIDATES,
            image_weight: infer::IMAGE_SCORE_WEIGHT,
            dequantization_draws: DEQUANTIZATION_DRAWS,
            prompt_candidates: sampling.candidates,
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
    /// Dequantization draws per image of the two values below (`None` in reports written
    /// before they were measured).
    #[serde(default)]
    pub dequantization_draws: Option<usize>,
    /// Mean image bits per dimension given the name, each image's draws combined by
    /// [`infer::bits_over_draws`]: a tighter bound on the discrete image's bits than one draw.
    #[serde(default)]
    pub bits_per_dim_over_draws: Option<f64>,
    /// The same without a caption.
    #[serde(default)]
    pub unconditional_bits_per_dim_over_draws: Option<f64>,
    /// Held-out images ranked against all concept names.
    pub ranked_images: usize,
    /// Candidate captions (distinct concept names of both splits).
    pub candidates: usize,
    /// Fraction of ranked images whose own name scores highest.
    pub caption_top1: f64,
    /// Fraction of ranked images whose own name is among the five best.
    pub caption_top5: f64,
    /// Training images that estimate each name's prior for calibrated ranking.
    #[serde(default)]
    pub prior_images: usize,
    /// Top-1 accuracy when names are ranked by `log p(name | image) - log p(name)`, with
    /// `p(name)` the mean of `p(name | image)` over training images. This removes the bias
    /// of plain likelihood towards short and frequent names.
    #[serde(default)]
    pub calibrated_top1: f64,
    /// Top-5 accuracy of the calibrated ranking.
    #[serde(default)]
    pub calibrated_top5: f64,
    /// Best names of the calibrated ranking ranked again with the image's likelihood given
    /// each name, [`infer::rerank_captions`] (0: not measured).
    #[serde(default)]
    pub reranked_candidates: usize,
    /// Weight of the image side when the best names were re-ranked (`None` in reports written
    /// before it was recorded, which weighted both sides equally).
    #[serde(default)]
    pub image_weight: Option<f64>,
    /// Top-1 accuracy when those names are ranked by `log p(image | name)` alone, the
    /// image's likelihood with the name as its prefix.
    #[serde(default)]
    pub reranked_top1: f64,
    /// Top-5 accuracy when those names are ranked by `log p(image | name)` alone.
    #[serde(default)]
    pub reranked_top5: f64,
    /// Top-1 accuracy after [`infer::rerank_captions`], which orders those names by the sum
    /// of their calibrated score and `log p(image | name) - log p(image)`. Both estimate how
    /// much the name and the image tell about each other, one from each order of the
    /// sequence.
    #[serde(default)]
    pub combined_top1: f64,
    /// Top-5 accuracy of that ranking.
    #[serde(default)]
    pub combined_top5: f64,
    /// The names' priors used by the calibrated ranking, to be saved beside the model
    /// ([`crate::checkpoint::PRIORS_FILE`]). Not part of the report's JSON.
    #[serde(skip)]
    pub priors: CaptionPriors,
    /// Fraction of ranked images whose generated caption names a concept of their category.
    pub caption_category_accuracy: f64,
    /// Held-out concepts generated from their names.
    pub prompts: usize,
    /// Guidance weight of those generations, or `None` in reports written before it was
    /// recorded.
    #[serde(default)]
    pub prompt_guidance: Option<f64>,
    /// Scale temperature of those generations.
    #[serde(default)]
    pub prompt_temperature: Option<f64>,
    /// Images sampled per prompt, of which the one the model captions closest to the prompt
    /// was kept. Reports written before it was recorded read `None`: one image per prompt.
    #[serde(default)]
    pub prompt_candidates: Option<usize>,
    /// Fraction of prompts whose nearest training image is of the prompted concept.
    pub prompt_top1: f64,
    /// Fraction of prompts with the prompted concept among the five nearest training images.
    pub prompt_top5: f64,
    /// Top-1 prompt fidelity with distances over the soft-token values only (the first
    /// `soft_token_dim` of each token, which the decoder generates). The full latent also
    /// contains the factored-out values. A generated image has them at noise factor times
    /// N(0, 1), 0 here, and a training image has its own fine detail there, so full distances
    /// favour training images with little detail whatever the prompt.
    #[serde(default)]
    pub prompt_soft_top1: f64,
    /// Top-5 prompt fidelity over the soft-token values.
    #[serde(default)]
    pub prompt_soft_top5: f64,
    /// Fraction of held-out images whose nearest training image is of their concept: the
    /// prompt fidelity search run on the held-out image instead of a generated one. A
    /// held-out concept is in training only in other art styles, so this is the score of a
    /// generator that drew each held-out image exactly.
    #[serde(default)]
    pub held_out_top1: f64,
    /// Fraction of held-out images with their concept among the five nearest training images.
    #[serde(default)]
    pub held_out_top5: f64,
    /// Fraction of held-out images whose nearest training image over the soft-token values
    /// is of their concept.
    #[serde(default)]
    pub held_out_soft_top1: f64,
    /// Fraction of held-out images with their concept among the five nearest training images
    /// over the soft-token values.
    #[serde(default)]
    pub held_out_soft_top5: f64,
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
    // Checks the prompt fidelity settings before the slow parts run.
    let sampling = GenerateOptions {
        guidance: options.guidance,
        scale_temperature: options.scale_temperature,
        candidates: options.prompt_candidates,
        ..GenerateOptions::default()
    };
    sampling.validate()?;
    infer::check_image_weight(options.image_weight)?;
    let batch_size = options.batch_size.max(1);
    let images_of = |examples: &[&Example]| -> Vec<RgbImage> {
        examples
            .iter()
            .filter_map(|example| {
                RgbImage::from_raw(size as u32, size as u32, example.pixels.clone())
            })
            .collect()
    };

    // Bits per dimension of every held-out image: the first draw and all draws combined.
    let dims = size * size * 3;
    let draws = options.dequantization_draws;
    let all: Vec<&Example> = test.examples.iter().collect();
    let mut conditional = [0.0; 2];
    let mut unconditional = [0.0; 2];
    let add = |sums: &mut [f64; 2], row: &[f64]| {
        sums[0] += row[0];
        sums[1] += infer::bits_over_draws(row, dims);
    };
    for (done, chunk) in all.chunks(batch_size).enumerate() {
        progress("bits/dim", done * batch_size, all.len());
        let images = images_of(chunk);
        for (example, image) in chunk.iter().zip(&images) {
            let ids = text.encode(&example.row.text)?.ids;
            let rows = infer::bits_per_dim_per_draw(
                model,
                std::slice::from_ref(image),
                Some(&ids),
                options.seed,
                draws,
            )?;
            add(&mut conditional, &rows[0]);
        }
        for row in infer::bits_per_dim_per_draw(model, &images, None, options.seed, draws)? {
            add(&mut unconditional, &row);
        }
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

    // Each name's prior: log of its mean likelihood over a spread of training images.
    let reference_step = (train.examples.len() / options.prior_images.max(1)).max(1);
    let reference: Vec<&Example> = train
        .examples
        .iter()
        .step_by(reference_step)
        .take(options.prior_images)
        .collect();
    let mut reference_scores = Vec::with_capacity(reference.len());
    for (index, example) in reference.iter().enumerate() {
        progress("name priors", index, reference.len());
        let image = images_of(std::slice::from_ref(example)).remove(0);
        reference_scores.push(infer::score_captions(model, &image, &name_ids, 128)?);
    }
    let priors = infer::log_mean_likelihoods(&reference_scores, names.len());

    // Caption ranking and generated-caption categories.
    let ranked: Vec<&Example> = all
        .iter()
        .copied()
        .take(options.limit.unwrap_or(usize::MAX))
        .collect();
    let mut top1 = 0usize;
    let mut top5 = 0usize;
    let mut calibrated_top1 = 0usize;
    let mut calibrated_top5 = 0usize;
    let mut reranked_top1 = 0usize;
    let mut reranked_top5 = 0usize;
    let mut combined_top1 = 0usize;
    let mut combined_top5 = 0usize;
    let mut category_hits = 0usize;
    for (index, example) in ranked.iter().enumerate() {
        progress("caption ranking", index, ranked.len());
        let image = images_of(std::slice::from_ref(example)).remove(0);
        let scores = infer::score_captions(model, &image, &name_ids, 128)?;
        let own = names
            .iter()
            .position(|name| name.as_str() == example.concept())
            .unwrap_or(0);
        let rank = rank_of(&scores, own);
        top1 += usize::from(rank == 0);
        top5 += usize::from(rank < 5);
        let calibrated: Vec<f64> = scores.iter().zip(&priors).map(|(s, p)| s - p).collect();
        let rank = rank_of(&calibrated, own);
        calibrated_top1 += usize::from(rank == 0);
        calibrated_top5 += usize::from(rank < 5);
        if options.rerank > 0 {
            let reranking = infer::rerank_captions(
                model,
                &image,
                &name_ids,
                &calibrated,
                options.rerank,
                options.image_weight,
                options.seed,
            )?;
            let image_rank = match reranking.candidates.iter().position(|&i| i == own) {
                Some(own) => rank_of(&reranking.image_scores, own),
                None => rank,
            };
            let combined_rank = reranking
                .order
                .iter()
                .position(|&i| i == own)
                .unwrap_or(rank);
            reranked_top1 += usize::from(image_rank == 0);
            reranked_top5 += usize::from(image_rank < 5);
            combined_top1 += usize::from(combined_rank == 0);
            combined_top5 += usize::from(combined_rank < 5);
        }

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
    let retrieval = Retrieval {
        train,
        latents: &train_latents,
        token_dim: model.config.token_dim(),
        soft_dim: model.config.image.soft_token_dim,
    };
    let mut held_out_hits = RetrievalHits::default();
    for (done, chunk) in all.chunks(batch_size).enumerate() {
        progress("held-out retrieval", done * batch_size, all.len());
        for (example, latent) in chunk.iter().zip(latent_rows(model, &images_of(chunk))?) {
            retrieval.score(&latent, example.concept(), &mut held_out_hits);
        }
    }

    let mut prompts: Vec<&str> = test.examples.iter().map(Example::concept).collect();
    prompts.sort_unstable();
    prompts.dedup();
    prompts.truncate(options.prompt_limit.unwrap_or(usize::MAX));
    let mut prompt_hits = RetrievalHits::default();
    for (index, prompt) in prompts.iter().enumerate() {
        progress("prompt fidelity", index, prompts.len());
        let ids = text.encode(prompt)?.ids;
        let generate = GenerateOptions {
            seed: options.seed.wrapping_add(index as u64),
            ..sampling.clone()
        };
        let Some(images) = infer::generate(model, &ids, &generate, &CancelToken::new(), |_| {})?
        else {
            continue;
        };
        let latent = latent_rows(model, &images)?.remove(0);
        retrieval.score(&latent, prompt, &mut prompt_hits);
    }
    let prompt_count = prompts.len().max(1) as f64;

    Ok(EvalReport {
        images: all.len(),
        bits_per_dim: conditional[0] / count,
        unconditional_bits_per_dim: unconditional[0] / count,
        dequantization_draws: Some(draws),
        bits_per_dim_over_draws: Some(conditional[1] / count),
        unconditional_bits_per_dim_over_draws: Some(unconditional[1] / count),
        ranked_images: ranked.len(),
        candidates: names.len(),
        caption_top1: top1 as f64 / ranked_count,
        caption_top5: top5 as f64 / ranked_count,
        prior_images: reference.len(),
        calibrated_top1: calibrated_top1 as f64 / ranked_count,
        calibrated_top5: calibrated_top5 as f64 / ranked_count,
        reranked_candidates: options.rerank.min(names.len()),
        image_weight: Some(options.image_weight),
        reranked_top1: reranked_top1 as f64 / ranked_count,
        reranked_top5: reranked_top5 as f64 / ranked_count,
        combined_top1: combined_top1 as f64 / ranked_count,
        combined_top5: combined_top5 as f64 / ranked_count,
        priors: CaptionPriors {
            images: reference.len(),
            priors: names
                .iter()
                .map(|name| name.to_string())
                .zip(priors)
                .collect(),
        },
        caption_category_accuracy: category_hits as f64 / ranked_count,
        prompts: prompts.len(),
        prompt_guidance: Some(options.guidance),
        prompt_temperature: Some(options.scale_temperature),
        prompt_candidates: Some(options.prompt_candidates),
        prompt_top1: prompt_hits.top1 as f64 / prompt_count,
        prompt_top5: prompt_hits.top5 as f64 / prompt_count,
        prompt_soft_top1: prompt_hits.soft_top1 as f64 / prompt_count,
        prompt_soft_top5: prompt_hits.soft_top5 as f64 / prompt_count,
        held_out_top1: held_out_hits.top1 as f64 / count,
        held_out_top5: held_out_hits.top5 as f64 / count,
        held_out_soft_top1: held_out_hits.soft_top1 as f64 / count,
        held_out_soft_top5: held_out_hits.soft_top5 as f64 / count,
    })
}

/// Returns how many candidates score above candidate `own`: 0 when it ranks first.
fn rank_of(scores: &[f64], own: usize) -> usize {
    scores.iter().filter(|&&score| score > scores[own]).count()
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

/// Nearest-neighbour search over the training images' latents, over the full latent and
/// over the soft-token values of each token.
struct Retrieval<'a> {
    train: &'a Dataset,
    latents: &'a [Vec<f32>],
    token_dim: usize,
    soft_dim: usize,
}

/// Counts of searches whose concept was nearest (top-1) or among the five nearest (top-5).
#[derive(Default)]
struct RetrievalHits {
    top1: usize,
    top5: usize,
    soft_top1: usize,
    soft_top5: usize,
}

impl Retrieval<'_> {
    /// Finds the training images nearest to `latent` and counts in `hits` whether `concept`
    /// is the nearest one's concept or among the five nearest.
    fn score(&self, latent: &[f32], concept: &str, hits: &mut RetrievalHits) {
        let full = nearest_concepts(self.train, self.latents, |row| {
            squared_distance(latent, row, self.token_dim, self.token_dim)
        });
        hits.top1 += usize::from(full.first() == Some(&concept));
        hits.top5 += usize::from(full.contains(&concept));

        let soft = nearest_concepts(self.train, self.latents, |row| {
            squared_distance(latent, row, self.token_dim, self.soft_dim)
        });
        hits.soft_top1 += usize::from(soft.first() == Some(&concept));
        hits.soft_top5 += usize::from(soft.contains(&concept));
    }
}

/// Returns the concepts of the five training images whose latent rows are nearest by `distance`.
fn nearest_concepts<'a>(
    train: &'a Dataset,
    latents: &[Vec<f32>],
    distance: impl Fn(&[f32]) -> f64,
) -> Vec<&'a str> {
    let mut distances: Vec<(f64, usize)> = latents
        .iter()
        .enumerate()
        .map(|(i, row)| (distance(row), i))
        .collect();
    distances.sort_by(|a, b| a.0.total_cmp(&b.0));
    distances
        .iter()
        .take(5)
        .map(|&(_, i)| train.examples[i].concept())
        .collect()
}

/// Returns the squared distance between two latents of `token_dim` values per token, over
/// the first `leading` values of each token.
fn squared_distance(a: &[f32], b: &[f32], token_dim: usize, leading: usize) -> f64 {
    a.chunks(token_dim)
        .zip(b.chunks(token_dim))
        .flat_map(|(x, y)| x[..leading].iter().zip(&y[..leading]))
        .map(|(x, y)| f64::from(x - y).powi(2))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_keeps_first_token_values() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [0.0; 6];
        assert_eq!(squared_distance(&a, &b, 3, 1), 17.0);
        assert_eq!(squared_distance(&a, &b, 3, 3), 91.0);
        assert_eq!(squared_distance(&a, &b, 2, 1), 35.0);
    }

    #[test]
    fn priors_are_log_mean_likelihoods() {
        let scores = vec![vec![-1.0, -3.0], vec![-2.0, -3.0]];
        let priors = infer::log_mean_likelihoods(&scores, 2);
        let expected = ((-1.0f64).exp() + (-2.0f64).exp()).ln() - 2.0f64.ln();
        assert!((priors[0] - expected).abs() < 1e-12, "{priors:?}");
        assert!((priors[1] + 3.0).abs() < 1e-12, "{priors:?}");
        assert_eq!(infer::log_mean_likelihoods(&[], 2), vec![0.0, 0.0]);
        // A short name that every image favours drops below a name this image favours.
        let image = [-2.0, -2.5];
        let frequent = infer::log_mean_likelihoods(&[vec![-1.0, -6.0], vec![-1.5, -6.5]], 2);
        let calibrated: Vec<f64> = image.iter().zip(&frequent).map(|(s, p)| s - p).collect();
        assert_eq!(rank_of(&image, 1), 1);
        assert_eq!(rank_of(&calibrated, 1), 0);
    }

    #[test]
    fn combined_draws_average_densities() {
        // One dimension: densities 2^-1 and 2^-3 average to 0.3125.
        let combined = infer::bits_over_draws(&[1.0, 3.0], 1);
        assert!((combined + 0.3125f64.log2()).abs() < 1e-12, "{combined}");
        assert_eq!(infer::bits_over_draws(&[2.5], 3072), 2.5);
        // Thousands of dimensions would underflow `2^(-bits * dims)` without the shift.
        let combined = infer::bits_over_draws(&[3.0, 3.0, 3.0], 3072);
        assert!((combined - 3.0).abs() < 1e-12, "{combined}");
        let combined = infer::bits_over_draws(&[3.1, 3.0], 3072);
        assert!((combined - (3.0 + 1.0 / 3072.0)).abs() < 1e-6, "{combined}");
    }

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
