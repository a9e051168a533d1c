//! Activations written for speed on the CPU backend.

use burn::tensor::Tensor;

/// `sqrt(2 / pi)`, the constant of the tanh approximation of GELU.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

/// GELU with the tanh approximation, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
///
/// Computed as the identical `x / (1 + exp(-2 sqrt(2/pi) (x + 0.044715 x^3)))`, because one
/// `exp` costs less than the `tanh` inside burn 0.22's `gelu_approximate`: on `flex`, 2 cores,
/// a [32, 81, 1024] input took 14 ms here against 91 ms for `gelu_approximate`.
pub fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let cubic = x.clone() * x.clone() * x.clone();
    let inner = (cubic * 0.044_715 + x.clone()) * (-2.0 * SQRT_2_OVER_PI);
    x / (inner.exp() + 1.0)
}

#[cfg(test)]
mod tests {
    use burn::tensor::activation::gelu_approximate;
    use burn::tensor::{Device, Distribution};

    use super::*;

    #[test]
    fn gelu_tanh_matches_burn() {
        let device = Device::flex();
        let x = Tensor::<2>::random([64, 64], Distribution::Normal(0.0, 4.0), &device);
        let ours: Vec<f32> = gelu_tanh(x.clone()).into_data().iter::<f32>().collect();
        let burns: Vec<f32> = gelu_approximate(x).into_data().iter::<f32>().collect();
        let error = ours
            .iter()
            .zip(&burns)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(error < 1e-5, "max difference {error}");
    }
}
