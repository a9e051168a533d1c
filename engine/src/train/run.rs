//! A training run on a dataset folder: data order, caption draws, EMA, periodic held-out
//! bits/dim and sample grids, checkpoints and exact resumption.
//!
//! Every step is a pure function of the run's seed, the step number and the state saved in a
//! checkpoint: weights with their parameter ids, EMA weights and optimizer moments. So a run
//! that resumes from step N repeats the steps an uninterrupted run would have taken.
//!
//! Layout of the output folder:
//! - `config.json`, `model.safetensors` (EMA weights), `tokenizer.json`, `concepts.txt`: the
//!   model as the app and the command line load it, refreshed at every checkpoint
//! - `run.json`: the run's settings
//! - `checkpoints/step-NNNNNNN/`: `model.bpk`, `ema.bpk`, `optimizer.bpk`, `state.json`
//! - `metrics.jsonl`: one line per logged step and per evaluation
//! - `samples/step-NNNNNNN.png`: images generated from the sample prompts

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Bytes, Device, Int, Tensor, TensorData};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, read_json, write_atomically};
use crate::config::{JetFormerConfig, LossConfig};
use crate::error::{Error, Result};
use crate::image::{pixels_pm1_from_u8, save_png};
use crate::infer::{self, CancelToken, GenerateOptions};
use crate::loss::{LossSummary, StepNoise, TrainBatch};
use crate::model::JetFormer;
use crate::text::TextCodec;
use crate::train::data::Dataset;
use crate::train::ema::{ema_decay_at, update_ema};
use crate::train::{OptimizerConfig, Trainer};

/// File with the run's settings inside the output folder.
pub const RUN_FILE: &str = "run.json";
/// File with the captions of every known concept, one per line, for ranking.
pub const CONCEPTS_FILE: &str = "concepts.txt";
/// The metrics log.
pub const METRICS_FILE: &str = "metrics.jsonl";
const CHECKPOINTS_DIR: &str = "checkpoints";
const STATE_FILE: &str = "state.json";

/// Settings of a run, saved in `run.json` so that `--resume` continues the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    /// Examples per step. Default: 32.
    pub batch_size: usize,
    /// Seed of the data order, the caption draws and the noise. Default: 0.
    pub seed: u64,
    /// Steps between checkpoints. Default: 250.
    pub checkpoint_every: usize,
    /// Checkpoints kept on disk (the oldest are removed). Default: 3.
    pub keep_checkpoints: usize,
    /// Steps between held-out evaluations with sample grids. The last step of a run is
    /// evaluated too, and 0 turns evaluation off. Default: 500.
    pub eval_every: usize,
    /// Held-out images used by each evaluation (the first ones of the split). Default: 256.
    pub eval_images: usize,
    /// Steps between metric lines. Default: 10.
    pub log_every: usize,
    /// Largest EMA decay. Default: 0.999.
    pub ema_decay: f64,
    /// Prompts of the sample grids.
    pub sample_prompts: Vec<String>,
    /// Optimizer and schedule (its `total_steps` is the length of the run).
    pub optimizer: OptimizerConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            seed: 0,
            checkpoint_every: 250,
            keep_checkpoints: 3,
            eval_every: 500,
            eval_images: 256,
            log_every: 10,
            ema_decay: 0.999,
            sample_prompts: Vec::new(),
            optimizer: OptimizerConfig::default(),
        }
    }
}

impl RunConfig {
    /// Checks the settings, naming the one at fault.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, field: &str, problem: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::config(field, problem))
            }
        };
        check(self.batch_size > 0, "batch_size", "must be at least 1")?;
        check(
            self.checkpoint_every > 0,
            "checkpoint_every",
            "must be at least 1",
        )?;
        check(
            self.keep_checkpoints > 0,
            "keep_checkpoints",
            "must be at least 1",
        )?;
        check(self.log_every > 0, "log_every", "must be at least 1")?;
        check(
            (0.0..1.0).contains(&self.ema_decay),
            "ema_decay",
            "must be in [0, 1)",
        )?;
        check(
            self.optimizer.total_steps > 0,
            "steps",
            "must be at least 1",
        )?;
        check(
            self.optimizer.cycle_start < self.optimizer.total_steps,
            "cycle_start",
            "must be below the run's steps",
        )?;
        check(
            self.optimizer.learning_rate > 0.0 && self.optimizer.learning_rate.is_finite(),
            "learning_rate",
            "must be a positive number",
        )
    }
}

/// Settings that `--resume` may change, each only with a new cycle ([`Run::resume`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewCycle {
    /// Step at which the run ends; another value than the run's starts a new cycle.
    pub steps: Option<usize>,
    /// Loss settings of the new cycle: noise curriculum and text loss weight.
    pub loss: Option<LossConfig>,
    /// Peak learning rate of the new cycle.
    pub learning_rate: Option<f64>,
}

/// Progress reports of a run.
#[derive(Clone, Debug)]
pub enum Report {
    /// The run starts (or resumes) at `step`.
    Started {
        /// First step to run.
        step: usize,
        /// Last step of the run.
        total: usize,
        /// Training examples.
        examples: usize,
    },
    /// A step finished.
    Step(StepMetrics),
    /// A held-out evaluation finished.
    Evaluated {
        /// Steps done.
        step: usize,
        /// Mean image bits per dimension of the held-out images under the EMA weights, given
        /// their captions.
        held_out_bits_per_dim: f64,
        /// Mean image bits per dimension of the same images, with the same noise, under the
        /// weights of the last step.
        last_weights_bits_per_dim: f64,
    },
    /// A sample grid was written.
    Samples {
        /// The PNG file.
        path: PathBuf,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Steps done.
        step: usize,
        /// Its folder.
        path: PathBuf,
    },
}

/// Metrics of one step.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Steps done, this one included.
    pub step: usize,
    /// Loss parts before the update.
    pub loss: LossSummary,
    /// Learning rate of the update.
    pub learning_rate: f64,
    /// Training images per second over the last step.
    pub images_per_second: f64,
    /// Steps of this process skipped because their loss or gradient norm was not finite.
    #[serde(default)]
    pub skipped_steps: usize,
}

/// Position of the run at a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunState {
    step: usize,
}

/// A dataset prepared for training: pixels and the token ids of every caption variant.
pub struct TrainingData {
    size: usize,
    pixels: Vec<Vec<u8>>,
    captions: Vec<Vec<Vec<usize>>>,
}

impl TrainingData {
    /// Tokenizes every caption variant; examples without a usable caption are dropped.
    pub fn new(dataset: &Dataset, text: &TextCodec) -> Result<Self> {
        let mut pixels = Vec::with_capacity(dataset.len());
        let mut captions = Vec::with_capacity(dataset.len());
        for example in &dataset.examples {
            let ids: Vec<Vec<usize>> = example
                .all_captions()
                .into_iter()
                .filter_map(|caption| text.encode(caption).ok().map(|encoded| encoded.ids))
                .collect();
            if !ids.is_empty() {
                pixels.push(example.pixels.clone());
                captions.push(ids);
            }
        }
        if pixels.is_empty() {
            return Err(Error::Input(
                "no example has a caption the tokenizer can encode".into(),
            ));
        }
        Ok(Self {
            size: dataset.size,
            pixels,
            captions,
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.pixels.len()
    }

    /// Returns whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Examples of `step`: positions `step * batch .. (step + 1) * batch` of the sequence of
    /// epochs, each epoch a permutation drawn from the seed and the epoch number.
    pub fn batch_indices(&self, seed: u64, step: usize, batch: usize) -> Vec<usize> {
        let n = self.len();
        let mut indices = Vec::with_capacity(batch);
        let mut epoch_cached = usize::MAX;
        let mut order: Vec<usize> = Vec::new();
        for position in step * batch..(step + 1) * batch {
            let epoch = position / n;
            if epoch != epoch_cached {
                order = (0..n).collect();
                order.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch as u64, 1)));
                epoch_cached = epoch;
            }
            indices.push(order[position % n]);
        }
        indices
    }

    /// Assembles the batch of `step`, with one caption variant drawn per example.
    pub fn batch(
        &self,
        config: &JetFormerConfig,
        seed: u64,
        step: usize,
        batch: usize,
        device: &Device,
    ) -> TrainBatch {
        let indices = self.batch_indices(seed, step, batch);
        let mut rng = StdRng::seed_from_u64(mix(seed, step as u64, 2));
        let choices: Vec<&[usize]> = indices
            .iter()
            .map(|&index| {
                let variants = &self.captions[index];
                variants[rng.random_range(0..variants.len())].as_slice()
            })
            .collect();
        self.assemble(config, &indices, &choices, device)
    }

    /// A batch of the given examples with their main captions.
    pub fn batch_of(
        &self,
        config: &JetFormerConfig,
        indices: &[usize],
        device: &Device,
    ) -> TrainBatch {
        let choices: Vec<&[usize]> = indices
            .iter()
            .map(|&index| self.captions[index][0].as_slice())
            .collect();
        self.assemble(config, indices, &choices, device)
    }

    fn assemble(
        &self,
        config: &JetFormerConfig,
        indices: &[usize],
        captions: &[&[usize]],
        device: &Device,
    ) -> TrainBatch {
        let batch = indices.len();
        let text_len = config.text.max_len;
        let mut pixels = Vec::with_capacity(batch * self.size * self.size * 3);
        let mut ids = Vec::with_capacity(batch * text_len);
        for (&index, caption) in indices.iter().zip(captions) {
            pixels.extend_from_slice(&self.pixels[index]);
            let mut padded: Vec<i64> = caption.iter().map(|&id| id as i64).collect();
            padded.resize(text_len, config.text.eos_id as i64);
            ids.extend(padded);
        }
        TrainBatch {
            pixels_pm1: pixels_pm1_from_u8(&pixels, batch, self.size, device),
            text: Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, text_len]), device),
            text_mask: Tensor::ones([batch, text_len], device),
        }
    }
}

/// Mixes a seed with a counter and a stream number into a new seed (SplitMix64 finalizer).
fn mix(seed: u64, counter: u64, stream: u64) -> u64 {
    let mut z = seed
        .wrapping_add(counter.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED69));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A run in progress: trainer, EMA weights, data and output folder.
pub struct Run {
    /// Model, optimizer and step.
    pub trainer: Trainer,
    /// Averaged weights on the plain device.
    pub ema: JetFormer,
    /// The run's settings.
    pub settings: RunConfig,
    text: TextCodec,
    train: TrainingData,
    held_out: Option<TrainingData>,
    concepts: Vec<String>,
    out: PathBuf,
    device: Device,
}

impl Run {
    /// Starts a run from `model`, whose parameters live on the autodiff version of `device`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        model: JetFormer,
        settings: RunConfig,
        text: TextCodec,
        train: TrainingData,
        held_out: Option<TrainingData>,
        concepts: Vec<String>,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        settings.validate()?;
        model.config.validate()?;
        let ema = model.valid();
        let trainer = Trainer::new(model, settings.optimizer.clone());
        let run = Self {
            trainer,
            ema,
            settings,
            text,
            train,
            held_out,
            concepts,
            out: out.to_path_buf(),
            device: device.clone(),
        };
        std::fs::create_dir_all(out).map_err(|source| Error::Io {
            action: "could not create",
            path: out.to_path_buf(),
            source,
        })?;
        write_settings(out, &run.settings)?;
        // Weights appear with the first checkpoint; config and tokenizer let it resume.
        run.ema.config.save(&out.join(checkpoint::CONFIG_FILE))?;
        run.text.save(&out.join(checkpoint::TOKENIZER_FILE))?;
        Ok(run)
    }

    /// Resumes the run saved in `out` from its latest checkpoint. With `cycle.steps` other
    /// than the run's own, the run is extended (or shortened) to end there: a new cycle of
    /// warmup, cosine decay and noise curriculum starts at the checkpoint, and `run.json`
    /// records it. A new cycle may also change the loss settings and the peak learning rate,
    /// and `config.json` and `run.json` record them. A change without a new cycle is
    /// rejected, because the resumed run would then no longer repeat an uninterrupted one.
    pub fn resume(
        out: &Path,
        train: TrainingData,
        held_out: Option<TrainingData>,
        concepts: Vec<String>,
        cycle: &NewCycle,
        device: &Device,
    ) -> Result<Self> {
        let mut settings: RunConfig = read_json(&out.join(RUN_FILE))?;
        settings.validate()?;
        let config_path = out.join(checkpoint::CONFIG_FILE);
        let mut config = JetFormerConfig::load(&config_path)?;
        let steps = cycle.steps;
        let new_cycle = steps.is_some_and(|steps| steps != settings.optimizer.total_steps);
        let no_new_cycle = |what: String| {
            Error::Input(format!(
                "{what} can only change with a new cycle; pass --steps above the run's {} steps",
                settings.optimizer.total_steps
            ))
        };
        if let Some(loss) = cycle.loss.clone().filter(|loss| *loss != config.loss) {
            if !new_cycle {
                return Err(no_new_cycle(format!(
                    "the loss settings of {}",
                    config_path.display()
                )));
            }
            config.loss = loss;
            config.validate()?;
        }
        let learning_rate = cycle
            .learning_rate
            .filter(|&rate| rate != settings.optimizer.learning_rate);
        if let Some(rate) = learning_rate {
            if !new_cycle {
                return Err(no_new_cycle(format!(
                    "the learning rate ({} in the run, {rate} requested)",
                    settings.optimizer.learning_rate
                )));
            }
            settings.optimizer.learning_rate = rate;
            settings.validate()?;
        }
        if let Some(data) = std::iter::once(&train)
            .chain(held_out.as_ref())
            .find(|data| data.size != config.image.size)
        {
            return Err(Error::Input(format!(
                "the images were loaded at {0}x{0}, but the run in {1} trains on {2}x{2}; load \
                 them at the run's size",
                data.size,
                out.display(),
                config.image.size
            )));
        }
        let text = TextCodec::load(&out.join(checkpoint::TOKENIZER_FILE), config.text.clone())?;
        let Some(latest) = latest_checkpoint(out)? else {
            return Err(Error::Input(format!(
                "{} has no complete checkpoint to resume from; start without --resume",
                out.join(CHECKPOINTS_DIR).display()
            )));
        };
        let state: RunState = read_json(&latest.join(STATE_FILE))?;
        if let Some(steps) = steps.filter(|&steps| steps != settings.optimizer.total_steps) {
            if steps <= state.step {
                return Err(Error::Input(format!(
                    "--steps is {steps}, but the latest checkpoint is at step {}; pass more steps \
                     than that to extend the run",
                    state.step
                )));
            }
            settings.optimizer.cycle_start = state.step;
            settings.optimizer.total_steps = steps;
        }
        let mut model = JetFormer::new(&config, &device.clone().autodiff());
        load_burnpack(&mut model, &latest.join("model.bpk"))?;
        let mut ema = JetFormer::new(&config, device);
        load_burnpack(&mut ema, &latest.join("ema.bpk"))?;
        let optimizer_path = latest.join("optimizer.bpk");
        let bytes = read_bytes(&optimizer_path)?;
        let record =
            OptimizerRecord::from_bytes(Bytes::from_bytes_vec(bytes)).map_err(|error| {
                Error::Checkpoint {
                    path: optimizer_path.clone(),
                    problem: format!("not a readable optimizer state ({error})"),
                }
            })?;
        let mut trainer = Trainer::new(model, settings.optimizer.clone());
        trainer.optimizer = trainer.optimizer.load_record(record);
        trainer.step = state.step;
        // The run folder changes only once everything has loaded.
        if new_cycle {
            write_settings(out, &settings)?;
            config.save(&config_path)?;
        }
        drop_metrics_after(out, state.step)?;
        Ok(Self {
            trainer,
            ema,
            settings,
            text,
            train,
            held_out,
            concepts,
            out: out.to_path_buf(),
            device: device.clone(),
        })
    }

    /// Runs until the last step or until `stop` is set, then writes a checkpoint.
    pub fn run(&mut self, stop: &AtomicBool, mut report: impl FnMut(Report)) -> Result<()> {
        let total = self.settings.optimizer.total_steps;
        report(Report::Started {
            step: self.trainer.step,
            total,
            examples: self.train.len(),
        });
        let mut last_saved = self.trainer.step;
        while self.trainer.step < total && !stop.load(Ordering::Relaxed) {
            let metrics = self.step();
            let step = metrics.step;
            if step.is_multiple_of(self.settings.log_every) || step == total {
                self.log(&serde_json::json!({ "kind": "train", "metrics": metrics }))?;
            }
            report(Report::Step(metrics));
            let evaluation_due = step.is_multiple_of(self.settings.eval_every) || step == total;
            if self.settings.eval_every > 0 && evaluation_due {
                self.evaluate_and_sample(&mut report)?;
            }
            if step.is_multiple_of(self.settings.checkpoint_every) {
                let path = self.save_checkpoint()?;
                last_saved = step;
                report(Report::Checkpoint { step, path });
            }
        }
        if last_saved != self.trainer.step {
            let path = self.save_checkpoint()?;
            report(Report::Checkpoint {
                step: self.trainer.step,
                path,
            });
        }
        Ok(())
    }

    /// Takes one step and updates the EMA weights.
    pub fn step(&mut self) -> StepMetrics {
        let started = Instant::now();
        let step = self.trainer.step;
        let config = self.trainer.model.config.clone();
        let autodiff = self.device.clone().autodiff();
        let batch_size = self.settings.batch_size;
        let batch = self
            .train
            .batch(&config, self.settings.seed, step, batch_size, &autodiff);
        let mut rng = StdRng::seed_from_u64(mix(self.settings.seed, step as u64, 3));
        let noise = StepNoise::training(
            &config,
            batch_size,
            self.trainer.progress(),
            &mut rng,
            &autodiff,
        );
        let learning_rate = self.settings.optimizer.learning_rate_at(step);
        let loss = self.trainer.train_step(&batch, &noise);
        let decay = ema_decay_at(self.settings.ema_decay, step);
        self.ema = update_ema(self.ema.clone(), &self.trainer.model, decay);
        StepMetrics {
            step: self.trainer.step,
            loss,
            learning_rate,
            images_per_second: batch_size as f64 / started.elapsed().as_secs_f64().max(1e-9),
            skipped_steps: self.trainer.skipped_steps,
        }
    }

    /// Mean image bits/dim of the first held-out images under the EMA weights, given their
    /// main captions; `None` without a held-out split.
    pub fn held_out_bits_per_dim(&self) -> Option<f64> {
        self.held_out_bits_of(&self.ema)
    }

    /// Returns [`Self::held_out_bits_per_dim`] under the weights of the last step, with the
    /// same noise. The EMA lags these weights, by more after a new cycle's warmup.
    pub fn last_weights_bits_per_dim(&self) -> Option<f64> {
        self.held_out_bits_of(&self.trainer.model.valid())
    }

    fn held_out_bits_of(&self, model: &JetFormer) -> Option<f64> {
        let held_out = self.held_out.as_ref()?;
        let config = &model.config;
        let count = held_out.len().min(self.settings.eval_images.max(1));
        let mut rng = StdRng::seed_from_u64(mix(self.settings.seed, 0, 4));
        let mut total = 0.0;
        for chunk in (0..count)
            .collect::<Vec<_>>()
            .chunks(self.settings.batch_size)
        {
            let batch = held_out.batch_of(config, chunk, &self.device);
            let noise = StepNoise::evaluation(config, chunk.len(), true, &mut rng, &self.device);
            let summary = model.loss(&batch, &noise).summary();
            total += summary.image_bits_per_dim * chunk.len() as f64;
        }
        Some(total / count as f64)
    }

    fn evaluate_and_sample(&mut self, report: &mut impl FnMut(Report)) -> Result<()> {
        let step = self.trainer.step;
        if let (Some(bits), Some(last_bits)) = (
            self.held_out_bits_per_dim(),
            self.last_weights_bits_per_dim(),
        ) {
            self.log(&serde_json::json!({
                "kind": "eval", "step": step, "held_out_bits_per_dim": bits,
                "held_out_bits_per_dim_last_weights": last_bits
            }))?;
            report(Report::Evaluated {
                step,
                held_out_bits_per_dim: bits,
                last_weights_bits_per_dim: last_bits,
            });
        }
        if !self.settings.sample_prompts.is_empty() {
            let path = self.out.join("samples").join(format!("step-{step:07}.png"));
            self.write_samples(&path)?;
            report(Report::Samples { path });
        }
        Ok(())
    }

    /// Generates four images per sample prompt with the EMA weights and writes them as a grid
    /// (one row per prompt). Each image is a single sample, not the best of several, so the
    /// grid shows what the weights draw by themselves.
    pub fn write_samples(&self, path: &Path) -> Result<()> {
        let per_prompt = 4;
        let mut rows = Vec::new();
        for (index, prompt) in self.settings.sample_prompts.iter().enumerate() {
            let ids = self.text.encode(prompt)?.ids;
            let options = GenerateOptions {
                count: per_prompt,
                seed: index as u64,
                candidates: 1,
                ..GenerateOptions::default()
            };
            let images = infer::generate(&self.ema, &ids, &options, &CancelToken::new(), |_| {})?
                .unwrap_or_default();
            rows.push(images);
        }
        let grid = image_grid(&rows, self.ema.config.image.size as u32);
        if let Some(parent) = path.parent() {
            create_dir(parent)?;
        }
        save_png(&grid, path)
    }

    /// Writes a checkpoint and refreshes the model files in the output folder.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let step = self.trainer.step;
        let dir = self.out.join(CHECKPOINTS_DIR);
        let final_dir = dir.join(format!("step-{step:07}"));
        let partial = dir.join(format!(".step-{step:07}.partial"));
        if partial.exists() {
            remove_dir(&partial)?;
        }
        create_dir(&partial)?;
        write_atomically(
            &partial.join("model.bpk"),
            &burnpack_bytes(&self.trainer.model)?,
        )?;
        write_atomically(&partial.join("ema.bpk"), &burnpack_bytes(&self.ema)?)?;
        let optimizer = self
            .trainer
            .optimizer
            .to_record()
            .into_bytes()
            .map_err(|error| Error::Input(format!("could not serialize the optimizer: {error}")))?;
        write_atomically(&partial.join("optimizer.bpk"), &optimizer)?;
        let state = serde_json::to_string(&RunState { step }).map_err(|source| Error::Json {
            path: partial.join(STATE_FILE),
            source,
        })?;
        write_atomically(&partial.join(STATE_FILE), state.as_bytes())?;
        if final_dir.exists() {
            remove_dir(&final_dir)?;
        }
        std::fs::rename(&partial, &final_dir).map_err(|source| Error::Io {
            action: "could not rename",
            path: partial.clone(),
            source,
        })?;

        checkpoint::save_bundle(&self.ema, &self.text, &self.out)?;
        let concepts = self.concepts.join("\n") + "\n";
        write_atomically(&self.out.join(CONCEPTS_FILE), concepts.as_bytes())?;
        self.prune_checkpoints()?;
        Ok(final_dir)
    }

    /// Writes the log priors of the run's concept names, averaged over `images` training
    /// images spread through the data, beside the model ([`checkpoint::PRIORS_FILE`]), so
    /// that the window and `rank` can calibrate caption ranking.
    pub fn save_caption_priors(&self, images: usize) -> Result<()> {
        let names: Vec<&String> = self
            .concepts
            .iter()
            .filter(|name| self.text.encode(name).is_ok())
            .collect();
        let ids = names
            .iter()
            .map(|name| Ok(self.text.encode(name)?.ids))
            .collect::<Result<Vec<_>>>()?;
        let side = self.train.size as u32;
        let step = (self.train.pixels.len() / images.max(1)).max(1);
        let reference: Vec<RgbImage> = self
            .train
            .pixels
            .iter()
            .step_by(step)
            .take(images)
            .filter_map(|pixels| RgbImage::from_raw(side, side, pixels.clone()))
            .collect();
        let priors = infer::caption_priors(&self.ema, &reference, &ids, 128)?;
        checkpoint::CaptionPriors {
            images: reference.len(),
            priors: names.into_iter().cloned().zip(priors).collect(),
        }
        .save(&self.out)
    }

    fn prune_checkpoints(&self) -> Result<()> {
        let mut steps = checkpoint_dirs(&self.out)?;
        steps.sort();
        let excess = steps.len().saturating_sub(self.settings.keep_checkpoints);
        for (_, path) in steps.into_iter().take(excess) {
            remove_dir(&path)?;
        }
        Ok(())
    }

    fn log(&self, value: &serde_json::Value) -> Result<()> {
        use std::io::Write;
        let path = self.out.join(METRICS_FILE);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| Error::Io {
                action: "could not open",
                path: path.clone(),
                source,
            })?;
        writeln!(file, "{value}").map_err(|source| Error::Io {
            action: "could not write",
            path,
            source,
        })
    }

    /// Returns the output folder.
    pub fn out(&self) -> &Path {
        &self.out
    }
}

/// Step folders in `out/checkpoints` that hold a complete checkpoint.
/// Drops the rows of the metrics log that come after `step`: a run stopped between
/// checkpoints logged steps that the resumed run takes again.
fn drop_metrics_after(out: &Path, step: usize) -> Result<()> {
    let path = out.join(METRICS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                action: "could not read",
                path,
                source,
            });
        }
    };
    let row_step = |line: &str| -> Option<u64> {
        let row: serde_json::Value = serde_json::from_str(line).ok()?;
        let step = row
            .get("step")
            .or_else(|| row.get("metrics")?.get("step"))?;
        step.as_u64()
    };
    let remaining: Vec<&str> = text
        .lines()
        .filter(|line| row_step(line).is_none_or(|row| row <= step as u64))
        .collect();
    if remaining.len() == text.lines().count() {
        return Ok(());
    }
    let mut remaining = remaining.join("\n");
    remaining.push('\n');
    write_atomically(&path, remaining.as_bytes())
}

/// Writes `run.json` atomically.
fn write_settings(out: &Path, settings: &RunConfig) -> Result<()> {
    let path = out.join(RUN_FILE);
    let json = serde_json::to_string_pretty(settings).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    write_atomically(&path, json.as_bytes())
}

fn checkpoint_dirs(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let dir = out.join(CHECKPOINTS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io {
        action: "could not list",
        path: dir.clone(),
        source,
    })?;
    Ok(entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.join(STATE_FILE).is_file())
        .filter_map(|path| {
            let name = path.file_name()?.to_str()?;
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, path))
        })
        .collect())
}

/// Returns the folder of the latest complete checkpoint in `out`, if any.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    Ok(checkpoint_dirs(out)?
        .into_iter()
        .max_by_key(|(step, _)| *step)
        .map(|(_, path)| path))
}

/// Weights of a checkpoint that [`export_checkpoint`] can write as the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CheckpointWeights {
    /// The exponential moving average, which `train` writes as the run's model.
    Ema,
    /// The weights of the checkpoint's step itself.
    Last,
    /// A mix of both: each weight is `ema_share * EMA + (1 - ema_share) * last`.
    Mix {
        /// Share of the EMA, from 0 (the last weights) to 1 (the EMA).
        ema_share: f64,
    },
}

impl CheckpointWeights {
    /// Reads these weights from the checkpoint folder `dir`.
    fn load(self, config: &JetFormerConfig, dir: &Path, device: &Device) -> Result<JetFormer> {
        let read = |file: &str| -> Result<JetFormer> {
            let mut model = JetFormer::new(config, device);
            load_burnpack(&mut model, &dir.join(file))?;
            Ok(model)
        };
        match self {
            Self::Ema => read("ema.bpk"),
            Self::Last => read("model.bpk"),
            // One EMA update with decay `ema_share` computes exactly this mix.
            Self::Mix { ema_share } => {
                Ok(update_ema(read("ema.bpk")?, &read("model.bpk")?, ema_share))
            }
        }
    }
}

/// A model folder written by [`export_checkpoint`].
#[derive(Clone, Debug, PartialEq)]
pub struct Export {
    /// The checkpoint folder the weights came from.
    pub checkpoint: PathBuf,
    /// The checkpoint's step.
    pub step: usize,
    /// Whether a `caption-priors.json` of other weights was removed from the output folder.
    pub removed_priors: bool,
}

/// Writes the `weights` of the run's checkpoint at `step` (the latest when `None`) as a model
/// folder in `out`: weights, config, tokenizer and concept names.
///
/// Caption priors belong to the weights they were averaged with, so a `caption-priors.json`
/// in `out` is removed unless the weights there hold the same tensors. `eval --prior-images
/// N` writes new ones.
pub fn export_checkpoint(
    run: &Path,
    step: Option<usize>,
    weights: CheckpointWeights,
    out: &Path,
    device: &Device,
) -> Result<Export> {
    if let CheckpointWeights::Mix { ema_share } = weights
        && !(0.0..=1.0).contains(&ema_share)
    {
        return Err(Error::Input(format!(
            "invalid EMA share {ema_share}: it is outside 0 to 1; pass 0 for the last weights, \
             1 for the EMA or a share between them"
        )));
    }
    if !run.is_dir() {
        return Err(Error::Input(format!(
            "the run folder {} was not found; pass a folder that `train` wrote",
            run.display()
        )));
    }
    // A model folder beside another run's checkpoints would no longer match them, so that
    // run could neither resume nor be exported again.
    let same_folder = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if out.join(CHECKPOINTS_DIR).is_dir() && !same_folder(run, out) {
        return Err(Error::Input(format!(
            "{} contains the checkpoints of another run, which a different model beside them \
             would break; pass a new folder or the run folder itself",
            out.display()
        )));
    }
    let config = JetFormerConfig::load(&run.join(checkpoint::CONFIG_FILE))?;
    let mut checkpoints = checkpoint_dirs(run)?;
    checkpoints.sort();
    let steps: Vec<String> = checkpoints
        .iter()
        .map(|(step, _)| step.to_string())
        .collect();
    let chosen = match step {
        Some(step) => checkpoints.iter().find(|(found, _)| *found == step),
        None => checkpoints.last(),
    };
    let Some((step, dir)) = chosen.cloned() else {
        let folder = run.join(CHECKPOINTS_DIR);
        return Err(Error::Input(match step {
            None => format!(
                "{} has no complete checkpoint; export a folder that `train` wrote",
                folder.display()
            ),
            Some(step) if steps.is_empty() => format!(
                "{} has no complete checkpoint at step {step}, nor any other; export a \
                 folder that `train` wrote",
                folder.display()
            ),
            Some(step) => format!(
                "{} has no complete checkpoint at step {step}; its steps are {}, so pass one \
                 of them to --step",
                folder.display(),
                steps.join(", ")
            ),
        }));
    };
    let model = weights.load(&config, &dir, device).map_err(|error| {
        let current = step.to_string();
        let others: Vec<&str> = steps
            .iter()
            .map(String::as_str)
            .filter(|other| *other != current)
            .collect();
        if others.is_empty() {
            error
        } else {
            Error::Input(format!(
                "{error}; another checkpoint may still be readable: pass --step with one of {}",
                others.join(", ")
            ))
        }
    })?;
    let text = TextCodec::load(&run.join(checkpoint::TOKENIZER_FILE), config.text.clone())?;
    let concepts_path = run.join(CONCEPTS_FILE);
    let concepts = concepts_path
        .exists()
        .then(|| read_bytes(&concepts_path))
        .transpose()?;

    create_dir(out)?;
    let weights_path = out.join(checkpoint::WEIGHTS_FILE);
    let bytes = checkpoint::weights_bytes(&model, &weights_path)?;
    let unchanged =
        std::fs::read(&weights_path).is_ok_and(|old| checkpoint::same_tensors(&old, &bytes));
    // The priors go first, so that a failure below never leaves them beside other weights.
    let priors_path = out.join(checkpoint::PRIORS_FILE);
    let removed_priors = !unchanged && priors_path.exists();
    if removed_priors {
        std::fs::remove_file(&priors_path).map_err(|source| Error::Io {
            action: "could not remove",
            path: priors_path.clone(),
            source,
        })?;
    }
    write_atomically(&weights_path, &bytes)?;
    config.save(&out.join(checkpoint::CONFIG_FILE))?;
    text.save(&out.join(checkpoint::TOKENIZER_FILE))?;
    if let Some(concepts) = concepts {
        write_atomically(&out.join(CONCEPTS_FILE), &concepts)?;
    }
    Ok(Export {
        checkpoint: dir,
        step,
        removed_priors,
    })
}

fn burnpack_bytes(model: &JetFormer) -> Result<Vec<u8>> {
    let mut store = BurnpackStore::from_bytes(None);
    let failed =
        |error: String| Error::Input(format!("could not serialize the training weights: {error}"));
    model
        .save_into(&mut store)
        .map_err(|error| failed(error.to_string()))?;
    let bytes = store
        .get_bytes()
        .map_err(|error| failed(error.to_string()))?;
    Ok(bytes.to_vec())
}

fn load_burnpack(model: &mut JetFormer, path: &Path) -> Result<()> {
    let bytes = read_bytes(path)?;
    let mut store = BurnpackStore::from_bytes(Some(Bytes::from_bytes_vec(bytes)));
    let failed = |problem: String| Error::Checkpoint {
        path: path.to_path_buf(),
        problem,
    };
    let result = model
        .load_from(&mut store)
        .map_err(|error| failed(format!("not a readable training checkpoint ({error})")))?;
    if let Some(error) = result.errors.first() {
        return Err(failed(error.to_string()));
    }
    if let Some((name, _)) = result.missing.first() {
        return Err(failed(format!("tensor '{name}' is missing")));
    }
    Ok(())
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        action: "could not read",
        path: path.to_path_buf(),
        source,
    })
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|source| Error::Io {
        action: "could not create",
        path: path.to_path_buf(),
        source,
    })
}

fn remove_dir(path: &Path) -> Result<()> {
    std::fs::remove_dir_all(path).map_err(|source| Error::Io {
        action: "could not remove",
        path: path.to_path_buf(),
        source,
    })
}

/// Lays out rows of equally sized images with a one-pixel white gap.
pub fn image_grid(rows: &[Vec<RgbImage>], size: u32) -> RgbImage {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0).max(1) as u32;
    let gap = 1;
    let width = columns * (size + gap) + gap;
    let height = rows.len().max(1) as u32 * (size + gap) + gap;
    let mut grid = RgbImage::from_pixel(width, height, image::Rgb([255, 255, 255]));
    for (row, images) in rows.iter().enumerate() {
        for (column, tile) in images.iter().enumerate() {
            let x = gap + column as u32 * (size + gap);
            let y = gap + row as u32 * (size + gap);
            image::imageops::replace(&mut grid, tile, i64::from(x), i64::from(y));
        }
    }
    grid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_drops_metrics_after_checkpoint() {
        let dir = std::env::temp_dir().join(format!("jetformer-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create");
        let rows = [
            r#"{"kind":"train","metrics":{"step":10}}"#,
            r#"{"kind":"eval","step":10,"held_out_bits_per_dim":7.0}"#,
            r#"{"kind":"train","metrics":{"step":20}}"#,
            "not json",
            r#"{"kind":"train","metrics":{"step":30}}"#,
            r#"{"kind":"eval","step":30,"held_out_bits_per_dim":6.0}"#,
        ];
        let path = dir.join(METRICS_FILE);
        std::fs::write(&path, rows.join("\n") + "\n").expect("write");

        drop_metrics_after(&dir, 20).expect("drop");
        let kept = std::fs::read_to_string(&path).expect("read");
        assert_eq!(kept, rows[..4].join("\n") + "\n");

        drop_metrics_after(&dir, 20).expect("drop again");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), kept);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
