//! The JetFormer training objective: a suffix-only NLL per example. Image bits per dimension
//! account for all `token_dim` values of every token: the mixture head models the soft tokens,
//! a standard normal prior the factored dims, and the flow's log-det the change of variables.
//! Text NLL is weighted against it.

use std::f64::consts::{LN_2, PI};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand::rngs::StdRng;

use crate::config::JetFormerConfig;
use crate::head::Gmm;
use crate::image::{add_rgb_noise, dequantize, patchify, rgb_noise_std_u8};
use crate::model::{JetFormer, SequenceInputs, blend};

/// A batch of captioned images.
#[derive(Clone, Debug)]
pub struct TrainBatch {
    /// `[batch, size, size, 3]` on the 8-bit grid in [-1, 1] (no dequantization yet).
    pub pixels_pm1: Tensor<4>,
    /// `[batch, text_len]`, padded with EOS.
    pub text: Tensor<2, Int>,
    /// `[batch, text_len]`: 1 for tokens that may be attended.
    pub text_mask: Tensor<2>,
}

/// Every random draw of one training step, so that a step is a pure function of its batch,
/// its noise and the weights (and a resumed run repeats it exactly).
#[derive(Clone, Debug)]
pub struct StepNoise {
    /// `[batch]`: 1 where the text comes first.
    pub text_first: Tensor<1>,
    /// `[batch]`: 1 where the text prefix is replaced by NOLABEL.
    pub drop_prefix: Tensor<1>,
    /// `[batch]`: RGB noise std on the 0..255 scale, 0 for image-first examples.
    pub rgb_noise_std_u8: Tensor<1>,
    /// `[batch, size, size, 3]` standard normal draws for the RGB noise.
    pub rgb_noise: Tensor<4>,
    /// `[batch, size, size, 3]` draws from U[0, 1) for dequantization.
    pub dequantization: Tensor<4>,
    /// `[batch, num_tokens, soft_token_dim]` teacher-forcing noise, already scaled by each
    /// example's std (0 for image-first examples).
    pub teacher_forcing: Tensor<3>,
}

impl StepNoise {
    /// Draws the noise of a training step at `progress` in [0, 1] of the run.
    pub fn training(
        config: &JetFormerConfig,
        batch: usize,
        progress: f64,
        rng: &mut StdRng,
        device: &Device,
    ) -> Self {
        let loss = &config.loss;
        let text_first: Vec<f32> = (0..batch)
            .map(|_| f32::from(rng.random_bool(loss.text_first_prob)))
            .collect();
        let drop_prefix: Vec<f32> = text_first
            .iter()
            .map(|&first| first * f32::from(rng.random_bool(loss.prefix_dropout)))
            .collect();
        let sigma = rgb_noise_std_u8(progress, loss.rgb_noise_start_u8, loss.rgb_noise_end_u8);
        let rgb_std: Vec<f32> = text_first
            .iter()
            .map(|&first| first * sigma as f32)
            .collect();
        let tf_std: Vec<f32> = text_first
            .iter()
            .map(|&first| first * rng.random_range(0.0..=loss.teacher_forcing_noise) as f32)
            .collect();
        let mut draws = Draws { rng, device };
        let size = config.image.size;
        let num_tokens = config.num_tokens();
        let k = config.image.soft_token_dim;
        let teacher_forcing = draws.normal([batch, num_tokens, k])
            * Tensor::<1>::from_floats(tf_std.as_slice(), device).reshape([batch, 1, 1]);
        Self {
            text_first: Tensor::from_floats(text_first.as_slice(), device),
            drop_prefix: Tensor::from_floats(drop_prefix.as_slice(), device),
            rgb_noise_std_u8: Tensor::from_floats(rgb_std.as_slice(), device),
            rgb_noise: draws.normal([batch, size, size, 3]),
            dequantization: draws.uniform([batch, size, size, 3]),
            teacher_forcing,
        }
    }

    /// Evaluation draws: the given order, dequantization only (no curriculum noise, no
    /// teacher-forcing noise, no prefix dropout).
    pub fn evaluation(
        config: &JetFormerConfig,
        batch: usize,
        text_first: bool,
        rng: &mut StdRng,
        device: &Device,
    ) -> Self {
        let size = config.image.size;
        let order = if text_first { 1.0 } else { 0.0 };
        let mut draws = Draws { rng, device };
        Self {
            text_first: Tensor::full([batch], order, device),
            drop_prefix: Tensor::zeros([batch], device),
            rgb_noise_std_u8: Tensor::zeros([batch], device),
            rgb_noise: Tensor::zeros([batch, size, size, 3], device),
            dequantization: draws.uniform([batch, size, size, 3]),
            teacher_forcing: Tensor::zeros(
                [batch, config.num_tokens(), config.image.soft_token_dim],
                device,
            ),
        }
    }
}

/// Host-side random tensors from a seeded generator.
struct Draws<'a> {
    rng: &'a mut StdRng,
    device: &'a Device,
}

impl Draws<'_> {
    fn normal<const D: usize>(&mut self, shape: [usize; D]) -> Tensor<D> {
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| self.rng.sample::<f32, _>(rand_distr::StandardNormal))
            .collect();
        Tensor::from_data(TensorData::new(values, shape), self.device)
    }

    fn uniform<const D: usize>(&mut self, shape: [usize; D]) -> Tensor<D> {
        let count = shape.iter().product();
        let values: Vec<f32> = (0..count).map(|_| self.rng.random::<f32>()).collect();
        Tensor::from_data(TensorData::new(values, shape), self.device)
    }
}

/// Loss and its parts, per example where they are per example.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// `[1]`: the mean over the batch of each example's suffix loss.
    pub total: Tensor<1>,
    /// `[batch]`: image bits per dimension (the suffix loss of text-first examples).
    pub image_bits_per_dim: Tensor<1>,
    /// `[batch]`: text NLL in nats per token (the suffix loss of image-first examples).
    pub text_nats_per_token: Tensor<1>,
    /// `[batch]`: flow log|det| per subpixel, in nats.
    pub log_det_per_dim: Tensor<1>,
    /// `[batch]`: 1 where the text came first.
    pub text_first: Tensor<1>,
}

/// [`LossOutput`] read back as numbers, averaged where each part applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossSummary {
    /// The training loss.
    pub total: f64,
    /// Mean image bits per dimension over text-first examples (NaN if there were none).
    pub image_bits_per_dim: f64,
    /// Mean text nats per token over image-first examples (NaN if there were none).
    pub text_nats_per_token: f64,
    /// Mean flow log-det per subpixel in nats, over all examples.
    pub log_det_per_dim: f64,
}

impl LossOutput {
    /// Reads the parts back from the device.
    pub fn summary(&self) -> LossSummary {
        let read = |t: &Tensor<1>| -> Vec<f64> { t.clone().into_data().iter::<f64>().collect() };
        let first = read(&self.text_first);
        let bits = read(&self.image_bits_per_dim);
        let nats = read(&self.text_nats_per_token);
        let log_det = read(&self.log_det_per_dim);
        let mean_where = |values: &[f64], keep: &dyn Fn(f64) -> bool| {
            let kept: Vec<f64> = values
                .iter()
                .zip(&first)
                .filter(|(_, f)| keep(**f))
                .map(|(v, _)| *v)
                .collect();
            if kept.is_empty() {
                f64::NAN
            } else {
                kept.iter().sum::<f64>() / kept.len() as f64
            }
        };
        LossSummary {
            total: read(&self.total)[0],
            image_bits_per_dim: mean_where(&bits, &|f| f > 0.5),
            text_nats_per_token: mean_where(&nats, &|f| f < 0.5),
            log_det_per_dim: log_det.iter().sum::<f64>() / log_det.len().max(1) as f64,
        }
    }
}

/// Image bits per dimension from the flow's outputs and the head's mixture:
/// `(NLL_ar + NLL_normal - log|det|) / (n ln 2) + log2(127.5)`, n = subpixels per image.
///
/// # Shapes
/// - `soft_tokens`: `[batch, num_tokens, soft_token_dim]` (the head's targets)
/// - `factored`: `[batch, num_tokens, token_dim - soft_token_dim]`, or `None` when the
///   config factors out no dims
/// - `log_det`: `[batch]`
/// - output: `[batch]`
pub fn image_bits_per_dim(
    config: &JetFormerConfig,
    gmm: &Gmm,
    soft_tokens: Tensor<3>,
    factored: Option<Tensor<3>>,
    log_det: Tensor<1>,
) -> Tensor<1> {
    let [batch, _, _] = soft_tokens.dims();
    let nll_ar = gmm.log_prob(soft_tokens).sum_dim(1).reshape([batch]).neg();
    let nll_prior = match factored {
        Some(values) => {
            let count = values.shape().num_elements() / batch;
            values
                .square()
                .flatten::<2>(1, 2)
                .sum_dim(1)
                .reshape([batch])
                * 0.5
                + 0.5 * (2.0 * PI).ln() * count as f64
        }
        None => Tensor::zeros([batch], &log_det.device()),
    };
    let subpixels = config.num_subpixels() as f64;
    (nll_ar + nll_prior - log_det) / (subpixels * LN_2) + 127.5f64.log2()
}

/// Splits latents into the soft tokens the decoder models and the factored dims.
///
/// # Shapes
/// - `latents`: `[batch, num_tokens, token_dim]`
/// - outputs: `[batch, num_tokens, soft_token_dim]` and the rest (`None` if empty)
pub fn split_latents(
    config: &JetFormerConfig,
    latents: Tensor<3>,
) -> (Tensor<3>, Option<Tensor<3>>) {
    let k = config.image.soft_token_dim;
    let factored = config.factored_dims();
    let soft = latents.clone().narrow(2, 0, k);
    let rest = (factored > 0).then(|| latents.narrow(2, k, factored));
    (soft, rest)
}

/// Text NLL per example in nats per token, averaged over attended positions.
///
/// # Shapes
/// - `text_logits`: `[batch, text_len, vocab]`, `text`, `text_mask`: `[batch, text_len]`
/// - output: `[batch]`
pub fn text_nats_per_token(
    text_logits: Tensor<3>,
    text: Tensor<2, Int>,
    text_mask: Tensor<2>,
) -> Tensor<1> {
    let [batch, text_len] = text.dims();
    let log_probs = log_softmax(text_logits, 2)
        .gather(2, text.reshape([batch, text_len, 1]))
        .reshape([batch, text_len]);
    let count = text_mask.clone().sum_dim(1).reshape([batch]).clamp_min(1.0);
    (log_probs * text_mask).sum_dim(1).reshape([batch]).neg() / count
}

impl JetFormer {
    /// Computes the training loss of a batch under the given draws.
    pub fn loss(&self, batch: &TrainBatch, noise: &StepNoise) -> LossOutput {
        let config = &self.config;

        // Image path: curriculum noise, dequantization, patchify, flow.
        let pixels = add_rgb_noise(
            batch.pixels_pm1.clone(),
            noise.rgb_noise_std_u8.clone(),
            noise.rgb_noise.clone(),
        );
        let pixels = dequantize(pixels, noise.dequantization.clone());
        let (latents, log_det) = self.flow.forward(patchify(pixels, config.image.patch_size));

        // The flow learns only from examples whose image is the suffix.
        let latents = blend(noise.text_first.clone(), latents.clone(), latents.detach());
        let (soft_tokens, factored) = split_latents(config, latents);
        let soft_tokens = soft_tokens + noise.teacher_forcing.clone();

        let outputs = self.forward_sequence(&SequenceInputs {
            text: batch.text.clone(),
            text_mask: batch.text_mask.clone(),
            soft_tokens: soft_tokens.clone(),
            text_first: noise.text_first.clone(),
            drop_prefix: noise.drop_prefix.clone(),
        });
        let gmm = self.gmm(outputs.image_head, 1.0, 1.0);
        let bits = image_bits_per_dim(config, &gmm, soft_tokens, factored, log_det.clone());
        let nats = text_nats_per_token(
            outputs.text_logits,
            batch.text.clone(),
            batch.text_mask.clone(),
        );

        let first = noise.text_first.clone();
        let per_example = bits.clone() * first.clone()
            + nats.clone() * (first.clone().neg() + 1.0) * config.loss.text_loss_weight;
        LossOutput {
            total: per_example.mean(),
            image_bits_per_dim: bits,
            text_nats_per_token: nats,
            log_det_per_dim: log_det / config.num_subpixels() as f64,
            text_first: first,
        }
    }
}
