//! One optimisation step: loss, backward, global-norm gradient clipping, AdamW with a cosine
//! schedule and linear warmup (paper section 7); datasets, EMA and whole runs in submodules.

pub mod data;
pub mod ema;
pub mod emoji;
pub mod eval;
pub mod run;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::loss::{LossSummary, StepNoise, TrainBatch};
use crate::model::JetFormer;

/// Optimizer and schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimizerConfig {
    /// Peak learning rate. Default: 3e-4.
    pub learning_rate: f64,
    /// Fraction of the run spent warming up linearly from 0. Default: 0.1.
    pub warmup_fraction: f64,
    /// Steps of the whole run; the cosine decays to 0 at this step. Default: 10000.
    pub total_steps: usize,
    /// Step at which the current cycle of warmup, cosine decay and noise curriculum began.
    /// Default: 0; a run extended with `--resume --steps` starts a new cycle at its checkpoint.
    pub cycle_start: usize,
    /// Adam beta 1. Default: 0.9.
    pub beta1: f32,
    /// Adam beta 2. Default: 0.95, as the reference.
    pub beta2: f32,
    /// Decoupled weight decay. Default: 1e-4.
    pub weight_decay: f32,
    /// Largest global L2 norm of the gradient. Default: 1.
    pub clip_norm: f64,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            learning_rate: 3e-4,
            warmup_fraction: 0.1,
            total_steps: 10_000,
            cycle_start: 0,
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 1e-4,
            clip_norm: 1.0,
        }
    }
}

impl OptimizerConfig {
    /// Steps of the current cycle (from `cycle_start` to `total_steps`).
    fn cycle_steps(&self) -> usize {
        self.total_steps.saturating_sub(self.cycle_start).max(1)
    }

    /// Position of `step` in the current cycle, in [0, 1]; drives the noise curriculum.
    pub fn progress_at(&self, step: usize) -> f64 {
        let done = step.saturating_sub(self.cycle_start) as f64;
        (done / self.cycle_steps() as f64).min(1.0)
    }

    /// Learning rate at `step`: linear warmup, then cosine decay to 0, both over the current
    /// cycle.
    pub fn learning_rate_at(&self, step: usize) -> f64 {
        let total = self.cycle_steps() as f64;
        let warmup = (self.warmup_fraction * total).max(1.0);
        let step = step.saturating_sub(self.cycle_start) as f64;
        if step < warmup {
            return self.learning_rate * (step + 1.0) / warmup;
        }
        let progress = ((step - warmup) / (total - warmup).max(1.0)).clamp(0.0, 1.0);
        self.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// A model on an autodiff device with its optimizer state and step count.
pub struct Trainer {
    /// The model being trained (parameters on an autodiff device).
    pub model: JetFormer,
    /// AdamW state.
    pub optimizer: ModuleOptimizer,
    /// Steps taken so far.
    pub step: usize,
    /// Optimizer settings.
    pub config: OptimizerConfig,
    /// Steps of this process whose loss or gradient norm was not finite, so their update was
    /// skipped.
    pub skipped_steps: usize,
}

impl Trainer {
    /// Wraps a model whose parameters live on an autodiff device.
    pub fn new(model: JetFormer, config: OptimizerConfig) -> Self {
        let optimizer = AdamWConfig::new()
            .with_beta_1(config.beta1)
            .with_beta_2(config.beta2)
            .with_weight_decay(config.weight_decay)
            .with_epsilon(1e-8)
            .init();
        Self {
            model,
            optimizer,
            step: 0,
            config,
            skipped_steps: 0,
        }
    }

    /// Training progress in [0, 1], which drives the noise curriculum.
    pub fn progress(&self) -> f64 {
        self.config.progress_at(self.step)
    }

    /// Runs one step: forward, backward, clip, update. Returns the loss parts before the update.
    ///
    /// A step whose loss or gradient norm is not finite changes no weight and no optimizer
    /// state, so one bad batch cannot turn every weight into NaN. It still counts as a step,
    /// which keeps the schedule and the data order.
    pub fn train_step(&mut self, batch: &TrainBatch, noise: &StepNoise) -> LossSummary {
        let output = self.model.loss(batch, noise);
        let summary = output.summary();
        let mut norm = f64::NAN;
        let mut non_finite = Vec::new();
        if summary.total.is_finite() {
            let mut grads = GradientsParams::from_grads(output.total.backward(), &self.model);
            norm = clip_global_norm(&self.model, &mut grads, self.config.clip_norm);
            if norm.is_finite() {
                let learning_rate = self.config.learning_rate_at(self.step);
                let model = self.model.clone();
                self.model = self.optimizer.step(learning_rate, model, grads);
            } else {
                non_finite = non_finite_gradients(&self.model, &grads);
            }
        }
        if !norm.is_finite() {
            self.skipped_steps += 1;
            log::warn!(
                "step {} skipped: loss {}, image bits/dim {}, text nats/token {}, \
                 log-det/dim {}, gradient norm {}; not finite in: {}",
                self.step + 1,
                summary.total,
                summary.image_bits_per_dim,
                summary.text_nats_per_token,
                summary.log_det_per_dim,
                norm,
                if non_finite.is_empty() {
                    "the loss".to_string()
                } else {
                    format!(
                        "the gradients of {} parameters, first {}",
                        non_finite.len(),
                        non_finite[..non_finite.len().min(5)].join(", ")
                    )
                }
            );
        }
        self.step += 1;
        summary
    }
}

/// Scales every gradient by `min(1, max_norm / ||g||)`, with `||g||` the L2 norm over all
/// parameters together, and returns `||g||` (0 without gradients).
///
/// The squares are summed after dividing by the largest magnitude. A gradient above about
/// 1e19, whose square overflows f32, is then clipped instead of giving an infinite norm.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut largest = LargestMagnitude { grads, max: None };
    model.visit(&mut largest);
    let Some(max) = largest.max else {
        return 0.0;
    };
    let unit = max.clamp_min(f32::MIN_POSITIVE);
    let mut squares = SquaredNorm {
        grads,
        unit: unit.clone(),
        total: None,
    };
    model.visit(&mut squares);
    let Some(total) = squares.total else {
        return 0.0;
    };
    let norm = total.sqrt() * unit;
    let scale = norm.clone().clamp_min(max_norm).recip() * max_norm;
    model.visit(&mut Rescale { grads, scale });
    norm.into_data().iter::<f64>().next().unwrap_or(f64::NAN)
}

/// Returns the paths of the parameters whose gradient contains an infinity or a NaN.
fn non_finite_gradients<M: Module>(model: &M, grads: &GradientsParams) -> Vec<String> {
    let mut finder = NonFinite {
        grads,
        path: Vec::new(),
        found: Vec::new(),
    };
    model.visit(&mut finder);
    finder.found
}

struct NonFinite<'a> {
    grads: &'a GradientsParams,
    path: Vec<String>,
    found: Vec<String>,
}

impl ModuleVisitor for NonFinite<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.grads.get::<D>(param.id) else {
            return;
        };
        let dims = grad.dims();
        let largest = grad.abs().max().into_data().iter::<f64>().next();
        if !largest.is_some_and(f64::is_finite) {
            self.found.push(format!("{} {dims:?}", self.path.join(".")));
        }
    }
}

struct LargestMagnitude<'a> {
    grads: &'a GradientsParams,
    max: Option<Tensor<1>>,
}

impl ModuleVisitor for LargestMagnitude<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let max = grad.abs().max();
            self.max = Some(match self.max.take() {
                Some(seen) => seen.max_pair(max),
                None => max,
            });
        }
    }
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    unit: Tensor<1>,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let unit = self.unit.clone().reshape([1; D]);
            let square = (grad / unit).square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + square,
                None => square,
            });
        }
    }
}

struct Rescale<'a> {
    grads: &'a mut GradientsParams,
    scale: Tensor<1>,
}

impl ModuleVisitor for Rescale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.remove::<D>(param.id) {
            let scale = self.scale.clone().reshape([1; D]);
            self.grads.register::<D>(param.id, grad * scale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[derive(Module, Debug)]
    struct TwoWeights {
        small: Param<Tensor<1>>,
        large: Param<Tensor<1>>,
    }

    /// Clips the gradients (3 size, 0) and (4 size) of two parameters, and returns their norm
    /// and the clipped values.
    fn clipped(size: f32) -> (f64, Vec<f32>) {
        let device = burn::tensor::Device::flex().autodiff();
        let weights = TwoWeights {
            small: Param::from_tensor(Tensor::from_data(TensorData::from([1.0f32, 2.0]), &device)),
            large: Param::from_tensor(Tensor::from_data(TensorData::from([0.5f32]), &device)),
        };
        let coefficients =
            |values: [f32; 2]| Tensor::<1>::from_data(TensorData::from(values), &device);
        let loss = (weights.small.val() * coefficients([3.0 * size, 0.0])).sum()
            + weights.large.val() * (4.0 * size);
        let mut grads = GradientsParams::from_grads(loss.backward(), &weights);
        let norm = clip_global_norm(&weights, &mut grads, 1.0);
        let mut values: Vec<f32> = grads
            .get::<1>(weights.small.id)
            .expect("small has a gradient")
            .into_data()
            .iter::<f32>()
            .collect();
        values.extend(
            grads
                .get::<1>(weights.large.id)
                .expect("large has a gradient")
                .into_data()
                .iter::<f32>(),
        );
        (norm, values)
    }

    #[test]
    fn clipping_handles_overflowing_squares() {
        for size in [1.0f32, 1e-3, 1e25] {
            let (norm, values) = clipped(size);
            let expected = 5.0 * f64::from(size);
            assert!(
                (norm / expected - 1.0).abs() < 1e-5,
                "size {size}: norm {norm}"
            );
            let want = if expected > 1.0 {
                [0.6, 0.0, 0.8]
            } else {
                [3.0 * size, 0.0, 4.0 * size]
            };
            for (value, want) in values.iter().zip(want) {
                assert!(
                    (value - want).abs() <= 1e-5 * want.abs().max(1e-3),
                    "size {size}: {values:?}"
                );
            }
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let config = OptimizerConfig {
            total_steps: 100,
            ..OptimizerConfig::default()
        };
        assert!(config.learning_rate_at(0) < config.learning_rate_at(5));
        assert!((config.learning_rate_at(10) - config.learning_rate).abs() < 1e-12);
        assert!(config.learning_rate_at(99) < 1e-5);
    }

    #[test]
    fn schedule_cycle_restarts_at_its_start() {
        let first = OptimizerConfig {
            total_steps: 100,
            ..OptimizerConfig::default()
        };
        let second = OptimizerConfig {
            total_steps: 300,
            cycle_start: 100,
            ..first.clone()
        };
        for step in [0, 7, 50, 99] {
            let same_point = 100 + 2 * step;
            assert!((first.progress_at(step) - second.progress_at(same_point)).abs() < 1e-12);
        }
        assert!((second.learning_rate_at(100) - second.learning_rate / 20.0).abs() < 1e-12);
        assert!((second.learning_rate_at(119) - second.learning_rate).abs() < 1e-12);
        assert_eq!(second.progress_at(100), 0.0);
        assert_eq!(second.progress_at(300), 1.0);
    }
}
