//! Image to text and back: captions, caption scores, bits per dimension and interpolation.

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{decode, download, encode, model_device};
use crate::error::{Error, Result};
use crate::image::pixels_pm1_from_u8;
use crate::loss::{StepNoise, TrainBatch, split_latents};
use crate::model::JetFormer;

/// Settings of captioning.
#[derive(Clone, Debug, PartialEq)]
pub struct CaptionOptions {
    /// Softmax temperature; 0 picks the most likely token (greedy). Default: 0.
    pub temperature: f64,
    /// Seed of the draws when `temperature` is positive. Default: 0.
    pub seed: u64,
}

impl Default for CaptionOptions {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            seed: 0,
        }
    }
}

/// Captions images: prefill `[BOI, z_1..z_N, BOS]` and decode text tokens until EOS or the
/// model's text length. Returns the token ids of each caption, without EOS.
pub fn caption(
    model: &JetFormer,
    images: &[RgbImage],
    options: &CaptionOptions,
) -> Result<Vec<Vec<usize>>> {
    if !options.temperature.is_finite() || options.temperature < 0.0 {
        return Err(Error::Input(format!(
            "caption temperature is {}; use a number >= 0",
            options.temperature
        )));
    }
    let config = &model.config;
    let batch = images.len();
    if batch == 0 {
        return Ok(Vec::new());
    }
    let (soft_tokens, _) = split_latents(config, encode(model, images)?);
    let [_, num_tokens, _] = soft_tokens.dims();
    let device = model_device(model);
    let prefix = Tensor::cat(
        vec![
            model.special_token(config.text.boi_id, batch),
            model.embed_image(soft_tokens),
            model.special_token(config.text.bos_id, batch),
        ],
        1,
    );
    let (hidden, mut cache) = model.prefill(prefix, Tensor::ones([batch, num_tokens + 2], &device));
    let mut last = hidden.narrow(1, num_tokens + 1, 1);
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut captions = vec![Vec::new(); batch];
    let mut finished = vec![false; batch];
    let not_generated = [
        config.text.bos_id,
        config.text.boi_id,
        config.text.nolabel_id,
    ];
    for step in 0..config.text.max_len {
        let logits = download(model.text_head.forward(last));
        let vocab = logits.len() / batch;
        let mut next = Vec::with_capacity(batch);
        for (example, row) in logits.chunks(vocab).enumerate() {
            let token = pick_token(row, &not_generated, options.temperature, &mut rng);
            if !finished[example] {
                if token == config.text.eos_id {
                    finished[example] = true;
                } else {
                    captions[example].push(token);
                }
            }
            next.push(token as i64);
        }
        if finished.iter().all(|&f| f) || step + 1 == config.text.max_len {
            break;
        }
        let ids = Tensor::<2, Int>::from_data(TensorData::new(next, [batch, 1]), &device);
        last = model.extend(model.embed_text(ids), &mut cache);
    }
    Ok(captions)
}

/// Picks a token from logits, never one of `excluded`: the argmax at temperature 0, else a
/// draw from the softmax of `logits / temperature`.
fn pick_token(logits: &[f32], excluded: &[usize], temperature: f64, rng: &mut StdRng) -> usize {
    let allowed = |index: &usize| !excluded.contains(index);
    if temperature == 0.0 {
        return (0..logits.len())
            .filter(allowed)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap_or(0);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = (0..logits.len())
        .map(|i| {
            if allowed(&i) {
                (f64::from(logits[i] - max) / temperature).exp()
            } else {
                0.0
            }
        })
        .collect();
    let mut target = rng.random::<f64>() * weights.iter().sum::<f64>();
    for (index, weight) in weights.iter().enumerate() {
        target -= weight;
        if target < 0.0 && *weight > 0.0 {
            return index;
        }
    }
    (0..logits.len()).rev().find(allowed).unwrap_or(0)
}

/// Scores candidate captions of one image: `log p(caption, EOS | image)` in nats, the
/// probability that the model writes exactly this caption. Candidates run in batches of
/// `batch_size` on one cached prefix `[BOI, z_1..z_N, BOS]`, shortest first, so that each
/// batch only runs to its longest caption.
///
/// The EOS padding after the first EOS is left out of the score: the model predicts it with
/// a probability close to 1, and leaving it out makes long candidate lists several times
/// faster to score.
pub fn score_captions(
    model: &JetFormer,
    image: &RgbImage,
    captions: &[Vec<usize>],
    batch_size: usize,
) -> Result<Vec<f64>> {
    let config = &model.config;
    let device = model_device(model);
    for caption in captions {
        pad_caption(model, caption)?;
    }
    let (soft_tokens, _) = split_latents(config, encode(model, std::slice::from_ref(image))?);
    let [_, num_tokens, _] = soft_tokens.dims();
    let prefix = Tensor::cat(
        vec![
            model.special_token(config.text.boi_id, 1),
            model.embed_image(soft_tokens),
            model.special_token(config.text.bos_id, 1),
        ],
        1,
    );
    let (hidden, prefix_cache) = model.prefill(prefix, Tensor::ones([1, num_tokens + 2], &device));
    let first_logits = model.text_head.forward(hidden.narrow(1, num_tokens + 1, 1));

    let mut order: Vec<usize> = (0..captions.len()).collect();
    order.sort_by_key(|&index| captions[index].len());
    let mut scores = vec![0.0; captions.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch = chunk.len();
        // Targets: the caption, then EOS, padded with EOS to the longest in the batch.
        let targets_len = chunk
            .iter()
            .map(|&index| captions[index].len() + 1)
            .max()
            .unwrap_or(1)
            .min(config.text.max_len);
        let mut targets = Vec::with_capacity(batch * targets_len);
        let mut weights = Vec::with_capacity(batch * targets_len);
        for &index in chunk {
            let caption = &captions[index];
            for position in 0..targets_len {
                targets.push(caption.get(position).copied().unwrap_or(config.text.eos_id) as i64);
                weights.push(if position <= caption.len() {
                    1.0f32
                } else {
                    0.0
                });
            }
        }
        let targets =
            Tensor::<2, Int>::from_data(TensorData::new(targets, [batch, targets_len]), &device);
        let weights =
            Tensor::<2>::from_data(TensorData::new(weights, [batch, targets_len]), &device);
        let mut logits = first_logits.clone().repeat_dim(0, batch);
        if targets_len > 1 {
            let mut cache = prefix_cache.repeat(batch);
            let inputs = model.embed_text(targets.clone().narrow(1, 0, targets_len - 1));
            let hidden = model.extend(inputs, &mut cache);
            logits = Tensor::cat(vec![logits, model.text_head.forward(hidden)], 1);
        }
        let log_probs = log_softmax(logits, 2)
            .gather(2, targets.reshape([batch, targets_len, 1]))
            .reshape([batch, targets_len]);
        let totals = download((log_probs * weights).sum_dim(1).reshape([batch]));
        for (&index, total) in chunk.iter().zip(totals) {
            scores[index] = f64::from(total);
        }
    }
    Ok(scores)
}

/// Estimates each caption's log prior under the model in nats,
/// `log p(caption) = log mean_i p(caption | image_i)` over `images`. Subtracting it from
/// [`score_captions`] ranks captions by how much more likely an image makes them (pointwise
/// mutual information), which removes plain likelihood's preference for short and frequent
/// captions.
pub fn caption_priors(
    model: &JetFormer,
    images: &[RgbImage],
    captions: &[Vec<usize>],
    batch_size: usize,
) -> Result<Vec<f64>> {
    let scores = images
        .iter()
        .map(|image| score_captions(model, image, captions, batch_size))
        .collect::<Result<Vec<_>>>()?;
    Ok(log_mean_likelihoods(&scores, captions.len()))
}

/// Returns, for each of `captions` columns, the log of the mean of `exp(score)` over the rows
/// of `scores` (one row of log-likelihoods per image). With no rows every value is 0.
pub fn log_mean_likelihoods(scores: &[Vec<f64>], captions: usize) -> Vec<f64> {
    (0..captions)
        .map(|caption| {
            let column: Vec<f64> = scores.iter().map(|row| row[caption]).collect();
            log_mean_exp(&column).unwrap_or(0.0)
        })
        .collect()
}

/// Returns `log mean exp(values)`, shifted by the largest value so that the exponentials
/// neither overflow nor underflow, or `None` when no value is finite.
fn log_mean_exp(values: &[f64]) -> Option<f64> {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return None;
    }
    let sum: f64 = values.iter().map(|value| (value - max).exp()).sum();
    Some(max + (sum / values.len() as f64).ln())
}

fn pad_caption(model: &JetFormer, caption: &[usize]) -> Result<Vec<usize>> {
    let text = &model.config.text;
    if caption.len() > text.max_len {
        return Err(Error::Input(format!(
            "a caption has {} tokens and the model reads at most {}; shorten it",
            caption.len(),
            text.max_len
        )));
    }
    if let Some(&id) = caption.iter().find(|&&id| id >= text.vocab_size) {
        return Err(Error::Input(format!(
            "token id {id} is outside the vocabulary of {}",
            text.vocab_size
        )));
    }
    let mut ids = caption.to_vec();
    ids.resize(text.max_len, text.eos_id);
    Ok(ids)
}

/// Bits per dimension of each image, given a caption or unconditionally (NOLABEL prefix).
/// Dequantization noise comes from `seed`, so the value is repeatable.
pub fn bits_per_dim(
    model: &JetFormer,
    images: &[RgbImage],
    caption: Option<&[usize]>,
    seed: u64,
) -> Result<Vec<f64>> {
    let config = &model.config;
    let batch = images.len();
    if batch == 0 {
        return Ok(Vec::new());
    }
    let device = model_device(model);
    let pixels = image_pixels(model, images)?;
    let ids = pad_caption(model, caption.unwrap_or(&[]))?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut noise = StepNoise::evaluation(config, batch, true, &mut rng, &device);
    if caption.is_none() {
        noise.drop_prefix = Tensor::ones([batch], &device);
    }
    Ok(image_bits(model, pixels, vec![ids; batch], &noise))
}

/// Bits per dimension of each image under `draws` draws of dequantization noise: one row
/// per image, one value per draw. Draw `k` comes from `seed + k`, so the first value is that
/// of [`bits_per_dim`] with the same seed. [`bits_over_draws`] combines a row.
pub fn bits_per_dim_per_draw(
    model: &JetFormer,
    images: &[RgbImage],
    caption: Option<&[usize]>,
    seed: u64,
    draws: usize,
) -> Result<Vec<Vec<f64>>> {
    if draws == 0 {
        return Err(Error::Input(
            "the count of dequantization draws is 0; use 1 or more".to_string(),
        ));
    }
    let mut rows = vec![Vec::with_capacity(draws); images.len()];
    for draw in 0..draws {
        let bits = bits_per_dim(model, images, caption, seed.wrapping_add(draw as u64))?;
        for (row, bits) in rows.iter_mut().zip(bits) {
            row.push(bits);
        }
    }
    Ok(rows)
}

/// Combines one image's bits per dimension under several draws of dequantization noise `u`
/// into `-log2 mean_k p(x + u_k) / dims`, with `dims` the image's values. Each `p(x + u_k)`
/// is an unbiased estimate of the probability of the discrete image, the integral of the
/// density over its cell. So the log of their mean bounds it more tightly than the mean of
/// their logs: the importance-weighted bound, with the uniform noise as proposal. On average
/// the bound does not rise with more draws, and for one draw it is that draw's value.
pub fn bits_over_draws(bits: &[f64], dims: usize) -> f64 {
    let scale = dims as f64 * std::f64::consts::LN_2;
    let log_densities: Vec<f64> = bits.iter().map(|bits| -bits * scale).collect();
    log_mean_exp(&log_densities).map_or(f64::NAN, |log_mean| -log_mean / scale)
}

/// Checks a weight of the image side of [`rerank_captions`]: finite and not negative.
pub fn check_image_weight(weight: f64) -> Result<()> {
    if weight.is_finite() && weight >= 0.0 {
        return Ok(());
    }
    Err(Error::Input(format!(
        "the image score weight is {weight}; use a number of 0 or more"
    )))
}

/// Computes the bits per dimension of one image given each of `captions` (text first). All
/// captions share one draw of dequantization noise, so the values differ only by caption.
/// The lowest value marks the caption under which the image is most likely, the generative
/// counterpart of [`score_captions`].
pub fn bits_per_dim_given_captions(
    model: &JetFormer,
    image: &RgbImage,
    captions: &[Vec<usize>],
    seed: u64,
) -> Result<Vec<f64>> {
    bits_given_captions(model, image, captions, false, seed)
}

/// Computes `log p(image | caption) - log p(image)` in nats for each of `captions`, where
/// `log p(image)` is the unconditional likelihood (NOLABEL prefix). All rows share one draw
/// of dequantization noise, the draw of [`bits_per_dim`] with the same seed. It is the
/// image's side of the pointwise mutual information that calibrated caption scores measure
/// from the text side.
pub fn image_log_ratios(
    model: &JetFormer,
    image: &RgbImage,
    captions: &[Vec<usize>],
    seed: u64,
) -> Result<Vec<f64>> {
    if captions.is_empty() {
        return Ok(Vec::new());
    }
    let mut bits = bits_given_captions(model, image, captions, true, seed)?;
    let unconditional = bits.pop().unwrap_or_default();
    let size = model.config.image.size;
    let nats_per_bit_per_dim = (size * size * 3) as f64 * std::f64::consts::LN_2;
    Ok(bits
        .iter()
        .map(|bits| (unconditional - bits) * nats_per_bit_per_dim)
        .collect())
}

/// Largest number of images in one interpolation strip.
pub const MAX_INTERPOLATION_STEPS: usize = 256;

/// Number of best captions that the window, `rank` and `eval` re-rank by default. The
/// step-15,000 bundled model ranks 1,906 names for each of its 566 held-out images. With
/// [`IMAGE_SCORE_WEIGHT`], re-ranking the best 10, 20, 30 or 40 put the true name among the
/// best 5 for 46.8%, 50.0%, 50.9% or 51.4% of them (the calibrated ranking alone: 38.3%).
pub const RERANK_CANDIDATES: usize = 40;

/// A caption ranking after [`rerank_captions`].
#[derive(Clone, Debug, PartialEq)]
pub struct Reranking {
    /// Indices of the re-ranked captions, best first by the scores given.
    pub candidates: Vec<usize>,
    /// [`image_log_ratios`] of the candidates, in the order of `candidates`.
    pub image_scores: Vec<f64>,
    /// Every caption's index, best first: the candidates ordered by their score plus the
    /// weighted image score, then the other captions by their score.
    pub order: Vec<usize>,
    /// Each caption's probability, indexed like the captions: a softmax over the scores
    /// given, except that the candidates share their total by a softmax over the weighted
    /// mean of their two scores.
    pub probabilities: Vec<f64>,
}

impl Reranking {
    /// Returns the first `top` captions of [`Self::order`] with their probabilities.
    pub fn top(&self, top: usize) -> Vec<(usize, f64)> {
        self.order
            .iter()
            .take(top)
            .map(|&index| (index, self.probabilities[index]))
            .collect()
    }
}

/// Weight of the image side, [`image_log_ratios`], against the calibrated caption score when
/// the window, `rank` and `eval` re-rank names ([`rerank_captions`]). Both sides estimate
/// the pointwise mutual information of name and image, but the image side is a difference of
/// two likelihoods over thousands of values and varies far more, so it counts an eighth. The
/// step-15,000 bundled model re-ranked the best 40 of 1,906 names for its 566 held-out
/// images. A weight of 1 put the true name among the best 5 for 46.3% of them and 0.125 for
/// 51.4%, and every weight from 0.1 to 0.25 gave 50% or more. The weight was chosen on
/// those images, but each half of them, searched over 11 weights from 0 to 1, picks 0.125
/// too, so the result holds on the half that did not choose it.
pub const IMAGE_SCORE_WEIGHT: f64 = 0.125;

/// Re-ranks the `count` best of `captions` by `scores`, calibrated caption scores in nats
/// (`log p(caption | image)` minus the caption's prior, an estimate of the pointwise mutual
/// information of caption and image). The candidates are ordered again by their score plus
/// `image_weight` times the estimate from the image side, [`image_log_ratios`], and stay
/// ahead of the other captions. The image side spans thousands of dimensions, so its
/// estimate varies far more than the text side's, and mixing the two scales over all
/// captions would let names the text side ranked low overtake. The flow and the transformer
/// run once per candidate, which is why only the best few are re-ranked.
pub fn rerank_captions(
    model: &JetFormer,
    image: &RgbImage,
    captions: &[Vec<usize>],
    scores: &[f64],
    count: usize,
    image_weight: f64,
    seed: u64,
) -> Result<Reranking> {
    if scores.len() != captions.len() {
        return Err(Error::Input(format!(
            "{} scores were given for {} captions; pass one score per caption",
            scores.len(),
            captions.len()
        )));
    }
    check_image_weight(image_weight)?;
    let mut order = best_first(scores);
    let count = count.min(order.len());
    let candidates = order[..count].to_vec();
    let candidate_ids: Vec<Vec<usize>> = candidates.iter().map(|&i| captions[i].clone()).collect();
    let image_scores = image_log_ratios(model, image, &candidate_ids, seed)?;

    // The weighted mean of the two estimates: it orders the candidates as the weighted sum
    // does and stays on the scale of a log-likelihood ratio for their probabilities.
    let means: Vec<f64> = candidates
        .iter()
        .zip(&image_scores)
        .map(|(&index, image_score)| {
            (scores[index] + image_weight * image_score) / (1.0 + image_weight)
        })
        .collect();
    let by_mean = best_first(&means);
    for (slot, &position) in order.iter_mut().zip(&by_mean) {
        *slot = candidates[position];
    }

    let mut probabilities = softmax(scores);
    let candidates_total: f64 = candidates.iter().map(|&index| probabilities[index]).sum();
    for (&index, share) in candidates.iter().zip(softmax(&means)) {
        probabilities[index] = candidates_total * share;
    }
    Ok(Reranking {
        candidates,
        image_scores,
        order,
        probabilities,
    })
}

/// Returns the `top` best of `captions` with their probabilities, and the count of captions
/// re-ranked. The list is ordered by `scores` alone when `rerank` is 0, or else after
/// [`rerank_captions`] of the `rerank` best. The window and `rank` show this list.
pub fn best_captions(
    model: &JetFormer,
    image: &RgbImage,
    captions: &[Vec<usize>],
    scores: &[f64],
    rerank: usize,
    top: usize,
) -> Result<(Vec<(usize, f64)>, usize)> {
    if rerank == 0 {
        return Ok((top_probabilities(scores, top), 0));
    }
    let reranking = rerank_captions(
        model,
        image,
        captions,
        scores,
        rerank,
        IMAGE_SCORE_WEIGHT,
        0,
    )?;
    Ok((reranking.top(top), reranking.candidates.len()))
}

/// Returns the softmax of `scores`; all zeros when no score is finite.
fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return vec![0.0; scores.len()];
    }
    let exps: Vec<f64> = scores.iter().map(|score| (score - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|value| value / total).collect()
}

/// Returns the `top` best of `scores` (log-likelihoods in nats), best first, each with its
/// probability under a softmax over all of `scores`. Empty when no score is finite.
pub fn top_probabilities(scores: &[f64], top: usize) -> Vec<(usize, f64)> {
    if !scores.iter().any(|score| score.is_finite()) {
        return Vec::new();
    }
    let probabilities = softmax(scores);
    best_first(scores)
        .into_iter()
        .take(top)
        .map(|index| (index, probabilities[index]))
        .collect()
}

/// Returns the indices of `scores`, highest score first; ties keep their order.
pub fn best_first(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// Rows of one image that [`bits_given_captions`] runs through the flow and the transformer
/// at a time.
const BITS_BATCH: usize = 16;

/// Computes the bits per dimension of one image given each caption, plus one row for the
/// unconditional likelihood when `unconditional` is set. All rows share one dequantization
/// draw, so the values differ only by caption.
fn bits_given_captions(
    model: &JetFormer,
    image: &RgbImage,
    captions: &[Vec<usize>],
    unconditional: bool,
    seed: u64,
) -> Result<Vec<f64>> {
    let mut rows: Vec<Option<&[usize]>> = captions.iter().map(|c| Some(c.as_slice())).collect();
    if unconditional {
        rows.push(None);
    }
    let mut bits = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(BITS_BATCH) {
        bits.extend(bits_of_rows(model, image, chunk, seed)?);
    }
    Ok(bits)
}

/// Computes the bits per dimension of one image given each row's caption, or the NOLABEL
/// prefix for `None`, in one batch. Every batch takes the first image's draw from `seed`,
/// which is the same for any batch size.
fn bits_of_rows(
    model: &JetFormer,
    image: &RgbImage,
    rows: &[Option<&[usize]>],
    seed: u64,
) -> Result<Vec<f64>> {
    let batch = rows.len();
    let device = model_device(model);
    // NOTE: the flow encodes the same image once per row. Encoding it once and sharing the
    // latents would save that work, but the loss takes pixels.
    let pixels = image_pixels(model, std::slice::from_ref(image))?.repeat(batch);
    let ids = rows
        .iter()
        .map(|row| pad_caption(model, row.unwrap_or(&[])))
        .collect::<Result<Vec<_>>>()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut noise = StepNoise::evaluation(&model.config, batch, true, &mut rng, &device);
    noise.dequantization = noise.dequantization.narrow(0, 0, 1).repeat_dim(0, batch);
    let drop: Vec<f32> = rows
        .iter()
        .map(|row| if row.is_none() { 1.0 } else { 0.0 })
        .collect();
    noise.drop_prefix = Tensor::from_data(TensorData::new(drop, [batch]), &device);
    Ok(image_bits(model, pixels, ids, &noise))
}

/// Collects the raw RGB bytes of `images` after checking each against the model's image size.
fn image_pixels(model: &JetFormer, images: &[RgbImage]) -> Result<Vec<u8>> {
    let size = model.config.image.size;
    let mut pixels = Vec::with_capacity(images.len() * size * size * 3);
    for image in images {
        if image.dimensions() != (size as u32, size as u32) {
            return Err(Error::Input(format!(
                "an image is {}x{}, but the model takes {size}x{size} RGB; resize it first",
                image.width(),
                image.height()
            )));
        }
        pixels.extend_from_slice(image.as_raw());
    }
    Ok(pixels)
}

/// Runs the loss on images (`pixels`, one row of `ids` each, padded to the text length) and
/// returns each image's bits per dimension.
fn image_bits(
    model: &JetFormer,
    pixels: Vec<u8>,
    ids: Vec<Vec<usize>>,
    noise: &StepNoise,
) -> Vec<f64> {
    let config = &model.config;
    let device = model_device(model);
    let batch = ids.len();
    let ids: Vec<i64> = ids.iter().flatten().map(|&id| id as i64).collect();
    let text_batch = TrainBatch {
        pixels_pm1: pixels_pm1_from_u8(&pixels, batch, config.image.size, &device),
        text: Tensor::from_data(TensorData::new(ids, [batch, config.text.max_len]), &device),
        text_mask: Tensor::ones([batch, config.text.max_len], &device),
    };
    let output = model.loss(&text_batch, noise);
    download(output.image_bits_per_dim)
        .into_iter()
        .map(f64::from)
        .collect()
}

/// How two latents are blended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interpolation {
    /// `(1 - t) a + t b`.
    Linear,
    /// Spherical interpolation of each token's latent vector.
    Spherical,
}

/// Encodes two images and decodes `steps` blends of their latents, from `t = 0` (the first
/// image) to `t = 1` (the second).
pub fn interpolate(
    model: &JetFormer,
    first: &RgbImage,
    second: &RgbImage,
    steps: usize,
    mode: Interpolation,
) -> Result<Vec<RgbImage>> {
    if !(2..=MAX_INTERPOLATION_STEPS).contains(&steps) {
        return Err(Error::Input(format!(
            "steps is {steps}; use between 2 and {MAX_INTERPOLATION_STEPS}"
        )));
    }
    let latents = encode(model, &[first.clone(), second.clone()])?;
    let [_, num_tokens, token_dim] = latents.dims();
    let values = download(latents);
    let per_image = num_tokens * token_dim;
    let (a, b) = values.split_at(per_image);
    let mut blended = Vec::with_capacity(steps * per_image);
    for step in 0..steps {
        let t = step as f64 / (steps - 1) as f64;
        for token in 0..num_tokens {
            let range = token * token_dim..(token + 1) * token_dim;
            blended.extend(blend_vectors(&a[range.clone()], &b[range], t, mode));
        }
    }
    let device = model_device(model);
    let tensor = Tensor::from_data(
        TensorData::new(blended, [steps, num_tokens, token_dim]),
        &device,
    );
    Ok(decode(model, tensor))
}

fn blend_vectors(a: &[f32], b: &[f32], t: f64, mode: Interpolation) -> Vec<f32> {
    let linear = || {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| ((1.0 - t) * f64::from(x) + t * f64::from(y)) as f32)
            .collect()
    };
    if mode == Interpolation::Linear {
        return linear();
    }
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let (norm_a, norm_b) = (norm(a), norm(b));
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| f64::from(x) * f64::from(y))
        .sum();
    let cosine = (dot / (norm_a * norm_b).max(1e-12)).clamp(-1.0, 1.0);
    let angle = cosine.acos();
    if angle.sin().abs() < 1e-6 {
        return linear();
    }
    let weight_a = ((1.0 - t) * angle).sin() / angle.sin();
    let weight_b = (t * angle).sin() / angle.sin();
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (weight_a * f64::from(x) + weight_b * f64::from(y)) as f32)
        .collect()
}
