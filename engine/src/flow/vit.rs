//! The coupling network of Jet: a small pre-LayerNorm ViT encoder that reads the untouched
//! half of the tokens and predicts a shift and a log-scale for the other half.
//!
//! Shapes: `batch`, `num_tokens`, `half_dim` (values per token it reads and writes),
//! `width` (its embedding width).

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

use crate::activation::gelu_tanh;
use burn::tensor::{Device, Tensor};

/// Epsilon of every layer norm in the coupling networks.
pub(super) const LAYER_NORM_EPSILON: f64 = 1e-6;

/// Multi-head self-attention over all tokens (no mask).
#[derive(Module, Debug)]
pub struct SelfAttention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub output: Linear,
    #[module(skip)]
    pub num_heads: usize,
}

impl SelfAttention {
    pub fn new(width: usize, num_heads: usize, device: &Device) -> Self {
        let dense = || LinearConfig::new(width, width).init(device);
        Self {
            query: dense(),
            key: dense(),
            value: dense(),
            output: dense(),
            num_heads,
        }
    }

    /// # Shapes
    /// - `x`: `[batch, num_tokens, width]`
    /// - output: `[batch, num_tokens, width]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, num_tokens, width] = x.dims();
        let head_dim = width / self.num_heads;
        let split = |t: Tensor<3>| {
            t.reshape([batch, num_tokens, self.num_heads, head_dim])
                // [batch, heads, num_tokens, head_dim]
                .swap_dims(1, 2)
        };
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x));

        // softmax(q k^T / sqrt(head_dim)) v, fused where the backend has a kernel for it.
        let mixed = attention(q, k, v, None, None, AttentionModuleOptions::default())
            // [batch, num_tokens, heads, head_dim]
            .swap_dims(1, 2)
            .reshape([batch, num_tokens, width]);
        self.output.forward(mixed)
    }
}

/// One pre-LayerNorm encoder block: attention and a GELU MLP of width `4 * width`.
#[derive(Module, Debug)]
pub struct VitBlock {
    pub attention_norm: LayerNorm,
    pub attention: SelfAttention,
    pub mlp_norm: LayerNorm,
    pub mlp_in: Linear,
    pub mlp_out: Linear,
}

impl VitBlock {
    pub fn new(width: usize, num_heads: usize, device: &Device) -> Self {
        let norm = || {
            LayerNormConfig::new(width)
                .with_epsilon(LAYER_NORM_EPSILON)
                .init(device)
        };
        Self {
            attention_norm: norm(),
            attention: SelfAttention::new(width, num_heads, device),
            mlp_norm: norm(),
            mlp_in: LinearConfig::new(width, 4 * width).init(device),
            mlp_out: LinearConfig::new(4 * width, width).init(device),
        }
    }

    /// # Shapes
    /// - `x`, output: `[batch, num_tokens, width]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attention.forward(self.attention_norm.forward(x));
        let hidden = gelu_tanh(self.mlp_in.forward(self.mlp_norm.forward(x.clone())));
        x + self.mlp_out.forward(hidden)
    }
}

/// Dense in, learned position embedding, ViT blocks, final LayerNorm, and a zero-initialised
/// Dense out, so that a fresh coupling is the identity.
#[derive(Module, Debug)]
pub struct CouplingNet {
    pub input: Linear,
    pub position: Param<Tensor<3>>,
    pub blocks: Vec<VitBlock>,
    pub final_norm: LayerNorm,
    pub output: Linear,
}

impl CouplingNet {
    /// Builds a network reading `half_dim` values per token and writing `2 * half_dim`.
    pub fn new(
        num_tokens: usize,
        half_dim: usize,
        width: usize,
        depth: usize,
        num_heads: usize,
        device: &Device,
    ) -> Self {
        let position = Initializer::Normal {
            mean: 0.0,
            std: 1.0 / (width as f64).sqrt(),
        }
        .init([1, num_tokens, width], device);
        Self {
            input: LinearConfig::new(half_dim, width).init(device),
            position,
            blocks: (0..depth)
                .map(|_| VitBlock::new(width, num_heads, device))
                .collect(),
            final_norm: LayerNormConfig::new(width)
                .with_epsilon(LAYER_NORM_EPSILON)
                .init(device),
            output: LinearConfig::new(width, 2 * half_dim)
                .with_initializer(Initializer::Zeros)
                .init(device),
        }
    }

    /// Returns `(shift, raw_scale)`.
    ///
    /// # Shapes
    /// - `x`: `[batch, num_tokens, half_dim]`
    /// - outputs: `[batch, num_tokens, half_dim]` each
    pub fn forward(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let [_, _, half_dim] = x.dims();
        let mut h = self.input.forward(x) + self.position.val();
        for block in &self.blocks {
            h = block.forward(h);
        }
        let out = self.output.forward(self.final_norm.forward(h));
        let mut halves = out.split(half_dim, 2).into_iter();
        let shift = halves.next().expect("split gives two halves");
        let raw_scale = halves.next().expect("split gives two halves");
        (shift, raw_scale)
    }
}
