//! RMSNorm in Gemma's parameterisation: `x / rms(x) * (1 + weight)`, weight initialised to 0.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

/// Root-mean-square normalisation over the last dim.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    pub epsilon: f64,
}

impl RmsNorm {
    pub fn new(width: usize, epsilon: f64, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::zeros([width], device)),
            epsilon,
        }
    }

    /// # Shapes
    /// - `x`, output: `[..., width]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let inverse_rms = (x.clone().square().mean_dim(D - 1) + self.epsilon)
            .sqrt()
            .recip();
        let gain = self.weight.val().add_scalar(1.0).unsqueeze::<D>();
        x * inverse_rms * gain
    }
}
