//! The stack of couplings: `forward` maps patch tokens to latents with log|det|, `inverse`
//! maps latents back exactly (up to floating point).
//!
//! NOTE: the reference patchifies inside Jet; JetFormer runs it with patch size 1 on the
//! already patchified grid, which is what this module does: it works on tokens only.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::coupling::{Coupling, CouplingShape, spatial_permutation};
use super::cpu::{self, Direction};
use crate::config::{CouplingKind, JetFormerConfig};

/// The Jet flow.
#[derive(Module, Debug)]
pub struct Jet {
    pub couplings: Vec<Coupling>,
}

impl Jet {
    /// Builds a fresh flow: every coupling is the identity (zero-initialised output layers), and
    /// channel permutations are drawn from `flow.permutation_seed`.
    pub fn new(config: &JetFormerConfig, device: &Device) -> Self {
        let flow = &config.flow;
        let shape = CouplingShape {
            num_tokens: config.num_tokens(),
            token_dim: config.token_dim(),
            width: flow.width,
            block_depth: flow.block_depth,
            num_heads: flow.num_heads,
        };
        let mut rng = StdRng::seed_from_u64(flow.permutation_seed);
        let mut spatial_index = 0;
        let mut previous_channels: Option<Vec<usize>> = None;
        let couplings = (0..flow.depth)
            .map(|layer| {
                let kind = flow.kinds[layer % flow.kinds.len()];
                let permutation = match kind {
                    // NOTE: the reference draws every permutation independently, which leaves
                    // each value untouched by all couplings with probability 2^-depth (a few
                    // of 48 values at depth 4). Here every second channel coupling reuses the
                    // previous permutation with its halves swapped, so each pair of couplings
                    // transforms every value once.
                    CouplingKind::Channels => match previous_channels.take() {
                        Some(previous) => {
                            let half = shape.token_dim / 2;
                            [&previous[half..], &previous[..half]].concat()
                        }
                        None => {
                            let mut order: Vec<usize> = (0..shape.token_dim).collect();
                            order.shuffle(&mut rng);
                            previous_channels = Some(order.clone());
                            order
                        }
                    },
                    CouplingKind::Spatial => {
                        let mask = flow.spatial_masks[spatial_index % flow.spatial_masks.len()];
                        spatial_index += 1;
                        spatial_permutation(mask, config.grid_side())
                    }
                };
                Coupling::new(kind, &permutation, shape, device)
            })
            .collect();
        Self { couplings }
    }

    /// Encodes tokens to latents. On the plain CPU backend this runs the kernels of
    /// [`cpu`](super::cpu); elsewhere (autodiff, wgpu) it runs burn tensor ops.
    ///
    /// # Shapes
    /// - `x`: `[batch, num_tokens, token_dim]`
    /// - outputs: latents `[batch, num_tokens, token_dim]`, log|det| `[batch]`
    pub fn forward(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<1>) {
        if cpu::runs_on(&x.device()) {
            return cpu::run(self, x, Direction::Forward);
        }
        self.forward_with_tensor_ops(x)
    }

    /// Decodes latents to tokens, running the couplings backwards; on the plain CPU backend
    /// through the kernels of [`cpu`](super::cpu).
    ///
    /// # Shapes
    /// - `z`: `[batch, num_tokens, token_dim]`
    /// - outputs: tokens `[batch, num_tokens, token_dim]`, -log|det| `[batch]`
    pub fn inverse(&self, z: Tensor<3>) -> (Tensor<3>, Tensor<1>) {
        if cpu::runs_on(&z.device()) {
            return cpu::run(self, z, Direction::Inverse);
        }
        self.inverse_with_tensor_ops(z)
    }

    /// [`forward`](Self::forward) through burn tensor ops on any device.
    pub fn forward_with_tensor_ops(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<1>) {
        let [batch, _, _] = x.dims();
        let mut log_det = Tensor::zeros([batch], &x.device());
        let mut z = x;
        for coupling in &self.couplings {
            let (next, layer_log_det) = coupling.forward(z);
            z = next;
            log_det = log_det + layer_log_det;
        }
        (z, log_det)
    }

    /// [`inverse`](Self::inverse) through burn tensor ops on any device.
    pub fn inverse_with_tensor_ops(&self, z: Tensor<3>) -> (Tensor<3>, Tensor<1>) {
        let [batch, _, _] = z.dims();
        let mut log_det = Tensor::zeros([batch], &z.device());
        let mut x = z;
        for coupling in self.couplings.iter().rev() {
            let (next, layer_log_det) = coupling.inverse(x);
            x = next;
            log_det = log_det + layer_log_det;
        }
        (x, log_det)
    }
}
