//! The image head's density: a mixture of `num_mixtures` diagonal Gaussians over the
//! `soft_token_dim` values of a soft token.
//!
//! The head output per position is laid out as in the reference: `num_mixtures` mixture
//! logits, then for each component its `soft_token_dim` means followed by its
//! `soft_token_dim` raw scales.

use std::f64::consts::PI;

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

/// Mixture parameters for a batch of positions.
#[derive(Clone, Debug)]
pub struct Gmm {
    /// `[batch, seq_len, num_mixtures]`, already multiplied by the mixture temperature.
    pub mixture_logits: Tensor<3>,
    /// `[batch, seq_len, num_mixtures, soft_token_dim]`
    pub means: Tensor<4>,
    /// `[batch, seq_len, num_mixtures, soft_token_dim]`, floored and multiplied by the scale
    /// temperature.
    pub scales: Tensor<4>,
}

/// `(x + sqrt(x^2 + 4)) / 2`: a smooth map onto the positive numbers, 1 at 0.
pub fn square_plus<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    (x.clone() + (x.square() + 4.0).sqrt()) / 2.0
}

impl Gmm {
    /// Splits raw head outputs into mixture parameters.
    ///
    /// `scale_temperature` multiplies every scale; `mixture_temperature` multiplies the
    /// mixture logits (as the reference's `temperature_probs`).
    ///
    /// # Shapes
    /// - `head_output`: `[batch, seq_len, num_mixtures * (1 + 2 * soft_token_dim)]`
    pub fn from_head_output(
        head_output: Tensor<3>,
        num_mixtures: usize,
        scale_floor: f64,
        scale_temperature: f64,
        mixture_temperature: f64,
    ) -> Self {
        let [batch, seq_len, outputs] = head_output.dims();
        let soft_token_dim = (outputs - num_mixtures) / (2 * num_mixtures);
        let mixture_logits = head_output.clone().narrow(2, 0, num_mixtures) * mixture_temperature;
        let components = head_output
            .narrow(2, num_mixtures, outputs - num_mixtures)
            .reshape([batch, seq_len, num_mixtures, 2 * soft_token_dim]);
        let means = components.clone().narrow(3, 0, soft_token_dim);
        let raw_scales = components.narrow(3, soft_token_dim, soft_token_dim);
        let scales = square_plus(raw_scales).clamp_min(scale_floor) * scale_temperature;
        Self {
            mixture_logits,
            means,
            scales,
        }
    }

    /// `log p(z) = logsumexp_j(log pi_j + sum_c log N(z_c; mu_jc, s_jc))`, in nats.
    ///
    /// # Shapes
    /// - `z`: `[batch, seq_len, soft_token_dim]`
    /// - output: `[batch, seq_len]`
    pub fn log_prob(&self, z: Tensor<3>) -> Tensor<2> {
        let [batch, seq_len, soft_token_dim] = z.dims();
        // [batch, seq_len, 1, soft_token_dim] against every component.
        let z = z.unsqueeze_dim::<4>(2);
        let standardized = (z - self.means.clone()) / self.scales.clone();
        let per_value = standardized.square() * -0.5 - self.scales.clone().log();
        let component_log_prob = per_value.sum_dim(3).squeeze_dim::<3>(3)
            - 0.5 * (2.0 * PI).ln() * soft_token_dim as f64;
        let joint = log_softmax(self.mixture_logits.clone(), 2) + component_log_prob;
        log_sum_exp(joint).reshape([batch, seq_len])
    }
}

/// Stable log-sum-exp over the last dim, which is kept with size 1.
pub fn log_sum_exp(x: Tensor<3>) -> Tensor<3> {
    let max = x.clone().max_dim(2).detach();
    (x - max.clone()).exp().sum_dim(2).log() + max
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;

    #[test]
    fn one_component_is_the_gaussian_formula() {
        let device = Device::flex();
        // One position, one component, two values: mean (0.5, -1), raw scale (0, 1.5).
        let raw = vec![0.3f32, 0.5, -1.0, 0.0, 1.5];
        let head = Tensor::<3>::from_data(TensorData::new(raw, [1, 1, 5]), &device);
        let gmm = Gmm::from_head_output(head, 1, 1e-6, 1.0, 1.0);
        let z = Tensor::<3>::from_data(TensorData::new(vec![1.0f32, 0.25], [1, 1, 2]), &device);
        let got: f32 = gmm.log_prob(z).into_scalar();

        let scale = |raw: f64| (raw + (raw * raw + 4.0).sqrt()) / 2.0;
        let gaussian = |x: f64, mean: f64, s: f64| {
            -0.5 * ((x - mean) / s).powi(2) - s.ln() - 0.5 * (2.0 * PI).ln()
        };
        let expected = gaussian(1.0, 0.5, scale(0.0)) + gaussian(0.25, -1.0, scale(1.5));
        assert!((got as f64 - expected).abs() < 1e-4, "{got} vs {expected}");
    }

    #[test]
    fn log_prob_is_finite_far_from_the_means() {
        let device = Device::flex();
        let head = Tensor::<3>::random(
            [2, 3, 4 * (1 + 2 * 5)],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            &device,
        );
        let gmm = Gmm::from_head_output(head, 4, 1e-6, 1.0, 1.0);
        for value in [1e3f32, -1e3] {
            let z = Tensor::<3>::full([2, 3, 5], value, &device);
            let log_prob: Vec<f32> = gmm.log_prob(z).into_data().iter::<f32>().collect();
            assert!(log_prob.iter().all(|v| v.is_finite()), "{log_prob:?}");
        }
    }
}
