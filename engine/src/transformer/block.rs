//! One decoder block: pre-norm attention and pre-norm GeGLU MLP, each with dropout and a
//! residual connection.

use crate::activation::gelu_tanh;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::attention::{Attention, LayerCache};
use super::norm::RmsNorm;
use super::rope::Rotary;
use crate::config::DecoderConfig;

/// GeGLU: `down(gelu_tanh(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct GeGlu {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl GeGlu {
    pub fn new(width: usize, hidden: usize, device: &Device) -> Self {
        let dense = |d_in, d_out| LinearConfig::new(d_in, d_out).with_bias(false).init(device);
        Self {
            gate: dense(width, hidden),
            up: dense(width, hidden),
            down: dense(hidden, width),
        }
    }

    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gated = gelu_tanh(self.gate.forward(x.clone())) * self.up.forward(x);
        self.down.forward(gated)
    }
}

/// A decoder block.
#[derive(Module, Debug)]
pub struct Block {
    pub attention_norm: RmsNorm,
    pub attention: Attention,
    pub mlp_norm: RmsNorm,
    pub mlp: GeGlu,
    pub dropout: Dropout,
}

impl Block {
    pub fn new(config: &DecoderConfig, device: &Device) -> Self {
        Self {
            attention_norm: RmsNorm::new(config.width, config.norm_eps, device),
            attention: Attention::new(
                config.width,
                config.num_heads,
                config.num_kv_heads,
                config.head_dim,
                device,
            ),
            mlp_norm: RmsNorm::new(config.width, config.norm_eps, device),
            mlp: GeGlu::new(config.width, config.mlp_dim, device),
            dropout: DropoutConfig::new(config.dropout).init(),
        }
    }

    /// # Shapes
    /// - `x`, output: `[batch, seq_len, width]`
    /// - `bias`: `[batch, 1, seq_len, total_len]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rotary: &Rotary,
        bias: Tensor<4>,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let attended =
            self.attention
                .forward(self.attention_norm.forward(x.clone()), rotary, bias, cache);
        let x = x + self.dropout.forward(attended);
        let transformed = self.mlp.forward(self.mlp_norm.forward(x.clone()));
        x + self.dropout.forward(transformed)
    }
}
