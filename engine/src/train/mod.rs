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
        let mut applied = false;
        if summary.total.is_finite() {
            let mut grads = GradientsParams::from_grads(output.total.backward(), &self.model);
            let norm = clip_global_norm(&self.model, &mut grads, self.config.clip_norm);
            if norm.is_finite() {
                let learning_rate = self.config.learning_rate_at(self.step);
                let model = self.model.clone();
                self.model = self.optimizer.step(learning_rate, model, grads);
                applied = true;
            }
        }
        if !applied {
            self.skipped_steps += 1;
            log::warn!(
                "step {} skipped: its loss or gradient norm is not finite",
                self.step + 1
            );
        }
        self.step += 1;
        summary
    }
}

/// Scales every gradient by `min(1, max_norm / ||g||)`, with `||g||` the L2 norm over all
/// parameters together, and returns `||g||` (0 without gradients).
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f64) -> f64 {
    let mut squares = SquaredNorm { grads, total: None };
    model.visit(&mut squares);
    let Some(total) = squares.total else {
        return 0.0;
    };
    let norm = total.sqrt();
    let scale = norm.clone().clamp_min(max_norm).recip() * max_norm;
    model.visit(&mut Rescale { grads, scale });
    norm.into_data().iter::<f64>().next().unwrap_or(f64::NAN)
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let square = grad.square().sum();
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
