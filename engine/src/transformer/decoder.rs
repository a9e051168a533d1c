//! The decoder stack with its full causal pass and cached `prefill` / `extend`.
//!
//! Positions are the cumulative sum of the input mask minus one, and masked (padding) keys are
//! never attended, in the full pass and in the cache alike. Unlike the reference, which
//! right-aligns the prefill, this cache keeps padding in place and masks it: the two agree.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor};

use super::attention::LayerCache;
use super::block::Block;
use super::cache::KvCache;
use super::norm::RmsNorm;
use super::rope::Rotary;
use crate::config::DecoderConfig;

/// Added to the attention score of a key that may not be attended.
const MASKED_SCORE: f64 = -1e9;

/// The Gemma-style decoder: blocks and a final RMSNorm.
#[derive(Module, Debug)]
pub struct Decoder {
    pub blocks: Vec<Block>,
    pub final_norm: RmsNorm,
    #[module(skip)]
    pub head_dim: usize,
    #[module(skip)]
    pub rope_max_wavelength: f64,
}

impl Decoder {
    pub fn new(config: &DecoderConfig, device: &Device) -> Self {
        Self {
            blocks: (0..config.depth)
                .map(|_| Block::new(config, device))
                .collect(),
            final_norm: RmsNorm::new(config.width, config.norm_eps, device),
            head_dim: config.head_dim,
            rope_max_wavelength: config.rope_max_wavelength,
        }
    }

    /// Runs the full causal pass.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq_len, width]` embedded inputs
    /// - `input_mask`: `[batch, seq_len]`, 1 for real tokens and 0 for padding
    /// - output: `[batch, seq_len, width]` after the final norm
    pub fn forward(&self, x: Tensor<3>, input_mask: Tensor<2>) -> Tensor<3> {
        let (rotary, bias) = self.prefix_inputs(&input_mask);
        let mut h = x;
        for block in &self.blocks {
            h = block.forward(h, &rotary, bias.clone(), None);
        }
        self.final_norm.forward(h)
    }

    /// Runs the prefix and returns its outputs and a cache to [`extend`](Self::extend).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq_len, width]`, `input_mask`: `[batch, seq_len]`
    /// - output: `[batch, seq_len, width]`
    pub fn prefill(&self, x: Tensor<3>, input_mask: Tensor<2>) -> (Tensor<3>, KvCache) {
        let (rotary, bias) = self.prefix_inputs(&input_mask);
        let mut layers: Vec<Option<LayerCache>> = vec![None; self.blocks.len()];
        let mut h = x;
        for (block, slot) in self.blocks.iter().zip(layers.iter_mut()) {
            h = block.forward(h, &rotary, bias.clone(), Some(slot));
        }
        let [batch, _] = input_mask.dims();
        let next_position = input_mask.clone().int().sum_dim(1).reshape([batch, 1]);
        let cache = KvCache {
            layers,
            key_valid: input_mask,
            next_position,
        };
        (self.final_norm.forward(h), cache)
    }

    /// Appends `tokens` embedded tokens per example to the cache and returns their outputs.
    /// Each new token attends to the valid cached positions and to the new tokens before it.
    ///
    /// # Shapes
    /// - `x`: `[batch, tokens, width]`, with `batch` equal to the cache's
    /// - output: `[batch, tokens, width]`
    pub fn extend(&self, x: Tensor<3>, cache: &mut KvCache) -> Tensor<3> {
        let [batch, tokens, _] = x.dims();
        let device = x.device();
        let offsets = Tensor::<1, Int>::arange(0..tokens as i64, &device).reshape([1, tokens]);
        let rotary = Rotary::new(
            cache.next_position.clone() + offsets,
            self.head_dim,
            self.rope_max_wavelength,
        );
        let cached = cache.key_valid.clone();
        let [_, cached_len] = cached.dims();
        cache.key_valid = Tensor::cat(
            vec![cached.clone(), Tensor::ones([batch, tokens], &device)],
            1,
        );
        let allowed = if tokens == 1 {
            cache
                .key_valid
                .clone()
                .reshape([batch, 1, 1, cached_len + 1])
        } else {
            let causal: Tensor<2> = Tensor::ones([tokens, tokens], &device).tril(0);
            Tensor::cat(
                vec![
                    cached
                        .reshape([batch, 1, 1, cached_len])
                        .repeat_dim(2, tokens),
                    causal.reshape([1, 1, tokens, tokens]).repeat_dim(0, batch),
                ],
                3,
            )
        };
        let bias = masked_bias(allowed);
        let mut h = x;
        for (block, slot) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            h = block.forward(h, &rotary, bias.clone(), Some(slot));
        }
        cache.next_position = cache.next_position.clone() + tokens as i64;
        self.final_norm.forward(h)
    }

    fn prefix_inputs(&self, input_mask: &Tensor<2>) -> (Rotary, Tensor<4>) {
        let [batch, seq_len] = input_mask.dims();
        let device = input_mask.device();
        let positions: Tensor<2, Int> = input_mask.clone().int().cumsum(1) - 1;
        let rotary = Rotary::new(positions, self.head_dim, self.rope_max_wavelength);
        let causal: Tensor<2> = Tensor::ones([seq_len, seq_len], &device).tril(0);
        let allowed = causal.reshape([1, 1, seq_len, seq_len])
            * input_mask.clone().reshape([batch, 1, 1, seq_len]);
        (rotary, masked_bias(allowed))
    }
}

/// 0 where `allowed` is 1, [`MASKED_SCORE`] where it is 0.
fn masked_bias(allowed: Tensor<4>) -> Tensor<4> {
    (allowed - 1.0) * -MASKED_SCORE
}
