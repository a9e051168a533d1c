//! Everything a user does with a trained model: text to image with streamed previews,
//! captions, caption scores, bits per dimension, and interpolation through latent space.

pub mod generate;
pub mod sample;
pub mod understand;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use crate::error::{Error, Result};
use crate::image::{patchify, pixels_pm1_from_u8, pixels_u8_from_pm1, unpatchify};
use crate::model::JetFormer;

pub use generate::{
    CANDIDATES, GenerateOptions, MAX_CANDIDATES, MAX_SAMPLES, generate, generate_scored,
};
pub use understand::{
    CaptionOptions, IMAGE_SCORE_WEIGHT, Interpolation, RERANK_CANDIDATES, Reranking, best_captions,
    best_first, bits_over_draws, bits_per_dim, bits_per_dim_given_captions, bits_per_dim_per_draw,
    caption, caption_priors, check_image_weight, image_log_ratios, interpolate,
    log_mean_likelihoods, rerank_captions, score_captions, top_probabilities,
};

/// A flag shared with a running call; setting it stops the call within one token.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// Creates a token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Returns whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Progress of a streaming call.
#[derive(Clone, Debug)]
pub enum Event {
    /// Sampling began: `count` images of `num_tokens` soft tokens each.
    Started { count: usize, num_tokens: usize },
    /// Soft token `tokens_done` of every image was sampled. Sent after each token and cheap,
    /// unlike a preview, which decodes the images.
    Sampled { tokens_done: usize },
    /// Images decoded from the first `tokens_done` soft tokens; the others are zero.
    Preview {
        tokens_done: usize,
        images: Vec<RgbImage>,
    },
    /// The final images.
    Finished { images: Vec<RgbImage> },
    /// The call stopped because its cancel token was set.
    Cancelled,
}

/// The device the model's weights live on.
pub(crate) fn model_device(model: &JetFormer) -> Device {
    model.image_head.weight.val().device()
}

/// Encodes images to full flow latents, without dequantization noise.
///
/// # Shapes
/// - output: `[images, num_tokens, token_dim]`
pub fn encode(model: &JetFormer, images: &[RgbImage]) -> Result<Tensor<3>> {
    let size = model.config.image.size;
    let mut pixels = Vec::with_capacity(images.len() * size * size * 3);
    for image in images {
        if image.width() as usize != size || image.height() as usize != size {
            return Err(Error::Input(format!(
                "image is {}x{}, the model takes {size}x{size}; prepare it with image::prepare_rgb",
                image.width(),
                image.height()
            )));
        }
        pixels.extend_from_slice(image.as_raw());
    }
    let pixels_pm1 = pixels_pm1_from_u8(&pixels, images.len(), size, &model_device(model));
    let (latents, _) = model
        .flow
        .forward(patchify(pixels_pm1, model.config.image.patch_size));
    Ok(latents)
}

/// Decodes full flow latents to images: flow inverse, unpatchify, clip, quantize.
///
/// # Shapes
/// - `latents`: `[images, num_tokens, token_dim]`
pub fn decode(model: &JetFormer, latents: Tensor<3>) -> Vec<RgbImage> {
    let [count, _, _] = latents.dims();
    let size = model.config.image.size;
    let (tokens, _) = model.flow.inverse(latents);
    let bytes = pixels_u8_from_pm1(unpatchify(tokens, model.config.image.patch_size));
    bytes
        .chunks(size * size * 3)
        .take(count)
        .map(|chunk| {
            RgbImage::from_raw(size as u32, size as u32, chunk.to_vec())
                .expect("chunk has size*size*3 bytes")
        })
        .collect()
}

/// Uploads host values as a tensor of the given shape.
pub(crate) fn upload<const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    device: &Device,
) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Reads a tensor back as `f32` values.
pub(crate) fn download<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().iter::<f32>().collect()
}
