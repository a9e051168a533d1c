//! Rotary position embeddings in Gemma's layout: the first and second halves of each head
//! form the (real, imaginary) pairs.

use burn::tensor::{Int, Tensor};

/// Sines and cosines for a set of positions, shared by every layer.
#[derive(Clone, Debug)]
pub struct Rotary {
    /// `[batch, 1, seq_len, head_dim / 2]`
    sin: Tensor<4>,
    /// `[batch, 1, seq_len, head_dim / 2]`
    cos: Tensor<4>,
}

impl Rotary {
    /// # Shapes
    /// - `positions`: `[batch, seq_len]`
    pub fn new(positions: Tensor<2, Int>, head_dim: usize, max_wavelength: f64) -> Self {
        let [batch, seq_len] = positions.dims();
        let device = positions.device();
        let half = head_dim / 2;
        let inverse_timescales: Vec<f32> = (0..half)
            .map(|i| max_wavelength.powf(-2.0 * i as f64 / head_dim as f64) as f32)
            .collect();
        let inverse_timescales =
            Tensor::<1>::from_floats(inverse_timescales.as_slice(), &device).reshape([1, 1, half]);
        let angles = positions.float().reshape([batch, seq_len, 1]) * inverse_timescales;
        // [batch, 1, seq_len, half], broadcast over heads.
        let angles = angles.unsqueeze_dim::<4>(1);
        Self {
            sin: angles.clone().sin(),
            cos: angles.cos(),
        }
    }

    /// # Shapes
    /// - `x`, output: `[batch, heads, seq_len, head_dim]`
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, _, head_dim] = x.dims();
        let half = head_dim / 2;
        let first = x.clone().narrow(3, 0, half);
        let second = x.narrow(3, half, half);
        let rotated_first = first.clone() * self.cos.clone() - second.clone() * self.sin.clone();
        let rotated_second = second * self.cos.clone() + first * self.sin.clone();
        Tensor::cat(vec![rotated_first, rotated_second], 3)
    }
}
