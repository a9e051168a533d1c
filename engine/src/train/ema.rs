//! Exponential moving average of the weights, used for sampling and evaluation.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::model::JetFormer;

/// Moves every weight of `average` towards the matching weight of `current` (an autodiff or
/// plain model of the same config): `average = decay * average + (1 - decay) * current`.
pub fn update_ema(average: JetFormer, current: &JetFormer, decay: f64) -> JetFormer {
    let mut collect = Collect { values: Vec::new() };
    current.valid().visit(&mut collect);
    let mut values = collect.values.into_iter();
    average.map(&mut Blend {
        values: &mut values,
        decay,
    })
}

/// Decay at `step`, warmed up as `(1 + step) / (10 + step)` so early averages are not
/// dominated by the random initialization.
pub fn ema_decay_at(decay: f64, step: usize) -> f64 {
    let step = step as f64;
    decay.min((1.0 + step) / (10.0 + step))
}

struct Collect {
    values: Vec<Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.values.push(param.val().flatten::<1>(0, D - 1));
    }
}

struct Blend<'a, I: Iterator<Item = Tensor<1>>> {
    values: &'a mut I,
    decay: f64,
}

impl<I: Iterator<Item = Tensor<1>>> ModuleMapper for Blend<'_, I> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(current) = self.values.next() else {
            return param;
        };
        let decay = self.decay;
        param.map(|average| {
            let shape = average.shape();
            average * decay + current.reshape(shape) * (1.0 - decay)
        })
    }
}
