//! One affine coupling layer of Jet (paper section 3), channel-wise or spatial.
//!
//! Both kinds are a fixed permutation followed by a split in halves: a channel coupling
//! permutes the `token_dim` values of every token and splits them; a spatial coupling permutes
//! the tokens so that the kept half of the grid comes first, splits, and then folds each half
//! (`num_tokens / 2` tokens of `token_dim`) into `num_tokens` rows of `token_dim / 2`, as the
//! reference does, so that one network shape serves both kinds.

use burn::module::{Module, Param, ParamId};
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::vit::CouplingNet;
use crate::config::{CouplingKind, SpatialMask};

/// `scale = SCALE_FACTOR * sigmoid(raw_scale)`, so a zero raw scale is the identity.
pub(super) const SCALE_FACTOR: f64 = 2.0;

/// An affine coupling: `x2' = (x2 + shift(x1)) * scale(x1)`.
#[derive(Module, Debug)]
pub struct Coupling {
    pub net: CouplingNet,
    /// Order applied before the split: position `i` takes input index `permutation[i]`.
    /// Frozen; stored so that a checkpoint carries it.
    pub permutation: Param<Tensor<1, Int>>,
    /// Inverse of `permutation`, applied after the merge.
    pub inverse_permutation: Param<Tensor<1, Int>>,
    #[module(skip)]
    pub kind: CouplingKind,
}

/// Sizes a coupling needs.
#[derive(Clone, Copy, Debug)]
pub struct CouplingShape {
    pub num_tokens: usize,
    pub token_dim: usize,
    pub width: usize,
    pub block_depth: usize,
    pub num_heads: usize,
}

impl Coupling {
    /// Builds a coupling with the given permutation (of channels or of tokens, by `kind`).
    pub fn new(
        kind: CouplingKind,
        permutation: &[usize],
        shape: CouplingShape,
        device: &Device,
    ) -> Self {
        let inverse = invert(permutation);
        let int_param = |values: &[usize]| {
            let values: Vec<i64> = values.iter().map(|&v| v as i64).collect();
            let len = values.len();
            let tensor = Tensor::<1, Int>::from_data(TensorData::new(values, [len]), device);
            Param::initialized(ParamId::new(), tensor)
        };
        Self {
            net: CouplingNet::new(
                shape.num_tokens,
                shape.token_dim / 2,
                shape.width,
                shape.block_depth,
                shape.num_heads,
                device,
            ),
            permutation: int_param(permutation),
            inverse_permutation: int_param(&inverse),
            kind,
        }
    }

    /// Applies the coupling. Returns the output and log|det| per example.
    ///
    /// # Shapes
    /// - `x`: `[batch, num_tokens, token_dim]`
    /// - outputs: `[batch, num_tokens, token_dim]` and `[batch]`
    pub fn forward(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<1>) {
        let (x1, x2) = self.split(x);
        let (shift, scale, log_det) = self.affine(x1.clone());
        let y2 = (x2 + shift) * scale;
        (self.merge(x1, y2), log_det)
    }

    /// Undoes [`forward`](Self::forward). Returns the input and -log|det| per example.
    ///
    /// # Shapes
    /// - `y`: `[batch, num_tokens, token_dim]`
    /// - outputs: `[batch, num_tokens, token_dim]` and `[batch]`
    pub fn inverse(&self, y: Tensor<3>) -> (Tensor<3>, Tensor<1>) {
        let (x1, y2) = self.split(y);
        let (shift, scale, log_det) = self.affine(x1.clone());
        let x2 = y2 / scale - shift;
        (self.merge(x1, x2), log_det.neg())
    }

    /// Returns `(shift, scale, log_det)` computed from the untouched half.
    fn affine(&self, x1: Tensor<3>) -> (Tensor<3>, Tensor<3>, Tensor<1>) {
        let [batch, _, _] = x1.dims();
        let (shift, raw_scale) = self.net.forward(x1);
        let scale = sigmoid(raw_scale.clone()) * SCALE_FACTOR;
        let log_det = (log_sigmoid(raw_scale) + SCALE_FACTOR.ln())
            .flatten::<2>(1, 2)
            .sum_dim(1)
            .reshape([batch]);
        (shift, scale, log_det)
    }

    /// # Shapes
    /// - `x`: `[batch, num_tokens, token_dim]`
    /// - outputs: `[batch, num_tokens / 2, token_dim]` folded or `[batch, num_tokens, token_dim / 2]`
    fn split(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>) {
        let [batch, num_tokens, token_dim] = x.dims();
        match self.kind {
            CouplingKind::Channels => {
                let permuted = x.select(2, self.permutation.val());
                let half = token_dim / 2;
                (
                    permuted.clone().narrow(2, 0, half),
                    permuted.narrow(2, half, half),
                )
            }
            CouplingKind::Spatial => {
                let permuted = x.select(1, self.permutation.val());
                let half = num_tokens / 2;
                // Each half: [batch, num_tokens / 2, token_dim] -> [batch, num_tokens, token_dim / 2].
                let fold = |t: Tensor<3>| t.reshape([batch, num_tokens, token_dim / 2]);
                (
                    fold(permuted.clone().narrow(1, 0, half)),
                    fold(permuted.narrow(1, half, half)),
                )
            }
        }
    }

    fn merge(&self, x1: Tensor<3>, x2: Tensor<3>) -> Tensor<3> {
        let [batch, num_tokens, half_dim] = x1.dims();
        match self.kind {
            CouplingKind::Channels => {
                Tensor::cat(vec![x1, x2], 2).select(2, self.inverse_permutation.val())
            }
            CouplingKind::Spatial => {
                // Unfold: [batch, num_tokens, token_dim / 2] -> [batch, num_tokens / 2, token_dim].
                let unfold = |t: Tensor<3>| t.reshape([batch, num_tokens / 2, half_dim * 2]);
                Tensor::cat(vec![unfold(x1), unfold(x2)], 1)
                    .select(1, self.inverse_permutation.val())
            }
        }
    }
}

/// Inverts a permutation: `inverse[permutation[i]] = i`.
pub fn invert(permutation: &[usize]) -> Vec<usize> {
    let mut inverse = vec![0; permutation.len()];
    for (i, &p) in permutation.iter().enumerate() {
        inverse[p] = i;
    }
    inverse
}

/// Token order of a spatial coupling: the kept tokens first, then the transformed ones.
///
/// `side` is the number of tokens per row of the square grid.
pub fn spatial_permutation(mask: SpatialMask, side: usize) -> Vec<usize> {
    let num_tokens = side * side;
    let first = |index: usize| {
        let (row, col) = (index / side, index % side);
        match mask {
            SpatialMask::Checkerboard | SpatialMask::CheckerboardInv => {
                (row + col).is_multiple_of(2)
            }
            SpatialMask::Vstripes | SpatialMask::VstripesInv => index.is_multiple_of(2),
            SpatialMask::Hstripes | SpatialMask::HstripesInv => row.is_multiple_of(2),
        }
    };
    let inverted = matches!(
        mask,
        SpatialMask::CheckerboardInv | SpatialMask::VstripesInv | SpatialMask::HstripesInv
    );
    let (mut kept, mut moved): (Vec<usize>, Vec<usize>) =
        (0..num_tokens).partition(|&i| first(i) != inverted);
    kept.append(&mut moved);
    kept
}
