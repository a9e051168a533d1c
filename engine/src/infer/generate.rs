//! Text to image: prefill `[BOS, text, BOI]`, then sample the soft tokens one by one with the
//! key/value cache, feeding each sample back through the image embedding.

use burn::tensor::{Int, Tensor, TensorData};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;

use super::sample::{MixtureRow, sample_guided, sample_unguided};
use super::understand::score_captions;
use super::{CancelToken, Event, decode, download, model_device, upload};
use crate::error::{Error, Result};
use crate::model::JetFormer;

/// Settings of one generation call.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Images to sample from the prompt. Default: 1.
    pub count: usize,
    /// Seed of every random draw; the same seed gives the same images. Default: 0.
    pub seed: u64,
    /// Multiplies every mixture scale. Default: 0.3.
    pub scale_temperature: f64,
    /// Multiplies the mixture logits. Default: 1.
    pub mixture_temperature: f64,
    /// Scale of the factored-out latent dims, drawn from N(0, 1); 0 sets them to zero.
    /// Default: 0.
    pub noise_factor: f64,
    /// Classifier-free guidance weight; 0 turns guidance off. Default: 2.
    pub guidance: f64,
    /// Images sampled for each one returned, of which the one that makes the prompt most
    /// likely as its caption is kept, 1 to [`MAX_CANDIDATES`]. Default: [`CANDIDATES`].
    pub candidates: usize,
    /// Emit a preview every this many tokens; 0 emits none. Default: 0.
    pub preview_every: usize,
}

/// Largest number of candidates sampled for each returned image.
pub const MAX_CANDIDATES: usize = 64;

/// Largest number of images one call samples, requested images times candidates. Their
/// key/value caches and mixtures stay in memory together until the last token.
pub const MAX_SAMPLES: usize = 1024;

/// Candidates sampled for each returned image by default. On the bundled emoji model, the
/// prompted concept was among the five training images nearest to the kept image for 6.2%,
/// 10.8% and 14.3% of the 566 held-out concepts with 1, 8 and 32 candidates. Eight took
/// 0.33 s per image on two CPU cores, against 0.05 s for one guided image.
pub const CANDIDATES: usize = 8;

/// The defaults favour clean images from small models over variety. On the bundled emoji
/// model, temperature 0.3 gave cleaner shapes than 0.5 or 0.7, and guidance 2 to 6 gave
/// prompt fidelity within the noise of the draws, so guidance stays at 2. The JetFormer
/// paper uses a temperature near 1 and guidance 2 to 9 for large models.
impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            count: 1,
            seed: 0,
            scale_temperature: 0.3,
            mixture_temperature: 1.0,
            noise_factor: 0.0,
            guidance: 2.0,
            candidates: CANDIDATES,
            preview_every: 0,
        }
    }
}

impl GenerateOptions {
    /// Checks every setting, naming the one at fault.
    pub fn validate(&self) -> Result<()> {
        if self.count == 0 {
            return Err(Error::Input(
                "count is 0; request at least one image".into(),
            ));
        }
        if self.candidates == 0 || self.candidates > MAX_CANDIDATES {
            return Err(Error::Input(format!(
                "candidates is {}; use 1 to {MAX_CANDIDATES}",
                self.candidates
            )));
        }
        if self.count.saturating_mul(self.candidates) > MAX_SAMPLES {
            let samples = self
                .count
                .checked_mul(self.candidates)
                .map_or("beyond the range of numbers".to_string(), |samples| {
                    format!("{samples} samples")
                });
            return Err(Error::Input(format!(
                "count {} times candidates {} is {samples}, more than the {MAX_SAMPLES} \
                 samples one call takes; request fewer images or candidates",
                self.count, self.candidates
            )));
        }
        let positive = [
            ("temperature", self.scale_temperature),
            ("mixture temperature", self.mixture_temperature),
        ];
        for (name, value) in positive {
            if !value.is_finite() || value <= 0.0 {
                return Err(Error::Input(format!(
                    "{name} is {value}; use a positive number"
                )));
            }
        }
        let non_negative = [
            ("noise factor", self.noise_factor),
            ("guidance", self.guidance),
        ];
        for (name, value) in non_negative {
            if !value.is_finite() || value < 0.0 {
                return Err(Error::Input(format!(
                    "{name} is {value}; use a number >= 0"
                )));
            }
        }
        Ok(())
    }
}

/// Samples images for a tokenized prompt, emitting events as it goes.
///
/// Returns `Ok(None)` when cancelled. Previews decode the tokens sampled so far with zeros for
/// the rest, and with the same factored-dim noise as the final image, so they converge to it:
/// the last preview (after all tokens) equals the final image. With more than one candidate,
/// see [`generate_scored`].
pub fn generate(
    model: &JetFormer,
    prompt: &[usize],
    options: &GenerateOptions,
    cancel: &CancelToken,
    on_event: impl FnMut(Event),
) -> Result<Option<Vec<RgbImage>>> {
    let scored = generate_scored(model, prompt, options, cancel, on_event)?;
    Ok(scored.map(|scored| scored.into_iter().map(|(image, _)| image).collect()))
}

/// Runs [`generate`] and returns each image with its score when candidates were ranked.
///
/// With `options.candidates` above 1, the call samples that many images for each of the
/// `options.count` requested. From each group it keeps the image that makes the prompt most
/// likely as its caption, `log p(prompt, EOS | image)` in nats ([`score_captions`]). The
/// prompt's own prior is the same for every candidate, so this is also the order of the
/// pointwise mutual information `log p(image | prompt) - log p(image)`: the kept image is
/// the most specific to the prompt, not the most likely one.
///
/// `Started` and the previews cover every candidate, and `Finished` only the kept images.
/// An empty prompt gives nothing to rank by, so it samples no extra candidates and its
/// images have no score.
pub fn generate_scored(
    model: &JetFormer,
    prompt: &[usize],
    options: &GenerateOptions,
    cancel: &CancelToken,
    mut on_event: impl FnMut(Event),
) -> Result<Option<Vec<(RgbImage, Option<f64>)>>> {
    options.validate()?;
    let group = if prompt.is_empty() {
        1
    } else {
        options.candidates
    };
    let total = options.count * group;
    let Some(images) = sample(model, prompt, options, total, cancel, &mut on_event)? else {
        return Ok(None);
    };
    let scored_images: Vec<(RgbImage, Option<f64>)> = if group == 1 {
        images.into_iter().map(|image| (image, None)).collect()
    } else {
        // The decoded 8-bit images are scored, as a saved file would be, not the sampled
        // latents, so each candidate runs through the flow once more.
        let caption = [prompt.to_vec()];
        let mut scored_images = Vec::with_capacity(options.count);
        for candidates in images.chunks(group) {
            let mut best: Option<(&RgbImage, f64)> = None;
            for image in candidates {
                if cancel.is_cancelled() {
                    on_event(Event::Cancelled);
                    return Ok(None);
                }
                let score = score_captions(model, image, &caption, 1)?[0];
                if best.is_none_or(|(_, best_score)| score > best_score) {
                    best = Some((image, score));
                }
            }
            scored_images.extend(best.map(|(image, score)| (image.clone(), Some(score))));
        }
        scored_images
    };
    on_event(Event::Finished {
        images: scored_images
            .iter()
            .map(|(image, _)| image.clone())
            .collect(),
    });
    Ok(Some(scored_images))
}

/// Samples `count` images for a tokenized prompt, the candidates of [`generate_scored`].
fn sample(
    model: &JetFormer,
    prompt: &[usize],
    options: &GenerateOptions,
    count: usize,
    cancel: &CancelToken,
    mut on_event: impl FnMut(Event),
) -> Result<Option<Vec<RgbImage>>> {
    let config = &model.config;
    let text_ids = padded_prompt(model, prompt)?;
    let device = model_device(model);
    let guided = options.guidance > 0.0;
    let rows = if guided { 2 * count } else { count };
    let (text_len, num_tokens) = (config.text.max_len, config.num_tokens());
    let (soft_dim, factored_dim) = (config.image.soft_token_dim, config.factored_dims());

    // Prefix rows: the prompt for each image, then NOLABEL rows for guidance.
    let mut ids: Vec<i64> = Vec::with_capacity(rows * text_len);
    for row in 0..rows {
        if row < count {
            ids.extend(text_ids.iter().map(|&id| id as i64));
        } else {
            ids.extend(std::iter::repeat_n(config.text.nolabel_id as i64, text_len));
        }
    }
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [rows, text_len]), &device);
    let prefix = Tensor::cat(
        vec![
            model.special_token(config.text.bos_id, rows),
            model.embed_text(ids),
            model.special_token(config.text.boi_id, rows),
        ],
        1,
    );
    on_event(Event::Started { count, num_tokens });
    let (hidden, mut cache) = model.prefill(prefix, Tensor::ones([rows, text_len + 2], &device));
    let mut last = hidden.narrow(1, text_len + 1, 1);

    let mut rng = StdRng::seed_from_u64(options.seed);
    let factored: Vec<f32> = (0..count * num_tokens * factored_dim)
        .map(|_| (options.noise_factor * rng.sample::<f64, _>(StandardNormal)) as f32)
        .collect();
    let mut soft = vec![0f32; count * num_tokens * soft_dim];
    let latents = |soft: &[f32]| {
        let soft = upload(soft.to_vec(), [count, num_tokens, soft_dim], &device);
        if factored_dim == 0 {
            return soft;
        }
        let rest = upload(factored.clone(), [count, num_tokens, factored_dim], &device);
        Tensor::cat(vec![soft, rest], 2)
    };

    for position in 0..num_tokens {
        if cancel.is_cancelled() {
            on_event(Event::Cancelled);
            return Ok(None);
        }
        let mixtures = read_mixtures(model, last, options);
        let mut sampled = Vec::with_capacity(rows * soft_dim);
        for example in 0..count {
            let token = if guided {
                sample_guided(
                    &mixtures[example],
                    &mixtures[count + example],
                    options.guidance,
                    &mut rng,
                )
            } else {
                sample_unguided(&mixtures[example], &mut rng)
            };
            let offset = (example * num_tokens + position) * soft_dim;
            soft[offset..offset + soft_dim].copy_from_slice(&token);
            sampled.extend(token);
        }
        if guided {
            // The unconditional rows continue from the same samples.
            sampled.extend_from_within(..);
        }
        let next = upload(sampled, [rows, 1, soft_dim], &device);
        last = model.extend(model.embed_image(next), &mut cache);

        let done = position + 1;
        on_event(Event::Sampled { tokens_done: done });
        if options.preview_every > 0 && (done % options.preview_every == 0 || done == num_tokens) {
            on_event(Event::Preview {
                tokens_done: done,
                images: decode(model, latents(&soft)),
            });
        }
    }
    Ok(Some(decode(model, latents(&soft))))
}

/// Pads a prompt with EOS to the model's text length, checking every id.
fn padded_prompt(model: &JetFormer, prompt: &[usize]) -> Result<Vec<usize>> {
    let text = &model.config.text;
    if prompt.len() > text.max_len {
        return Err(Error::Input(format!(
            "the prompt has {} tokens and the model reads at most {}; shorten it",
            prompt.len(),
            text.max_len
        )));
    }
    if let Some(&id) = prompt.iter().find(|&&id| id >= text.vocab_size) {
        return Err(Error::Input(format!(
            "token id {id} is outside the vocabulary of {}",
            text.vocab_size
        )));
    }
    let mut ids = prompt.to_vec();
    ids.resize(text.max_len, text.eos_id);
    Ok(ids)
}

/// Reads the mixture of the next soft token of every row back to the host.
fn read_mixtures(model: &JetFormer, last: Tensor<3>, options: &GenerateOptions) -> Vec<MixtureRow> {
    let [rows, _, _] = last.dims();
    let gmm = model.gmm(
        model.image_head.forward(last),
        options.scale_temperature,
        options.mixture_temperature,
    );
    let logits = download(gmm.mixture_logits);
    let means = download(gmm.means);
    let scales = download(gmm.scales);
    let per_logits = logits.len() / rows;
    let per_means = means.len() / rows;
    (0..rows)
        .map(|row| MixtureRow {
            logits: logits[row * per_logits..(row + 1) * per_logits].to_vec(),
            means: means[row * per_means..(row + 1) * per_means].to_vec(),
            scales: scales[row * per_means..(row + 1) * per_means].to_vec(),
        })
        .collect()
}
