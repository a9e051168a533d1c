//! Headless `data`, `train`, `eval` and `export` commands.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use jetformer_engine::checkpoint::{
    Bundle, PRIORS_FILE, load_bundle, load_weights, weights_bytes, write_atomically,
};
use jetformer_engine::config::LossConfig;
use jetformer_engine::text::{TextCodec, train_tokenizer};
use jetformer_engine::train::OptimizerConfig;
use jetformer_engine::train::data::{Dataset, split_dir};
use jetformer_engine::train::emoji;
use jetformer_engine::train::eval::{DEQUANTIZATION_DRAWS, EvalOptions, evaluate};
use jetformer_engine::train::run::{
    CheckpointWeights, METRICS_FILE, NewCycle, Report, Run, RunConfig, TrainingData,
    export_checkpoint,
};
use jetformer_engine::{ComputeDevice, JetFormer, JetFormerConfig};
use serde_json::json;

/// Datasets that `jetformer data` builds.
#[derive(Subcommand, Debug)]
pub enum DataSource {
    /// Emoji in three art styles from the npm packages that
    /// scripts/fetch-emoji-packages.sh downloads.
    Emoji {
        /// Folder with the unpacked packages.
        #[arg(long)]
        packages: PathBuf,
        /// Output folder; `train/` and `test/` are written inside it.
        #[arg(long)]
        out: PathBuf,
        /// Side of the images in pixels.
        #[arg(long, default_value_t = 32)]
        size: u32,
    },
}

/// Arguments of `jetformer train`.
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset folder: metadata.jsonl and images, or `train/` and `test/` folders with them.
    #[arg(long)]
    data: PathBuf,
    /// Output folder for the model, checkpoints, metrics and samples.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its latest checkpoint (its settings are kept).
    #[arg(long)]
    resume: bool,
    /// Model size: `small` (32 x 32 images) or `tiny` (8 x 8, for tests) [default: small].
    #[arg(long)]
    preset: Option<String>,
    /// Start a new run from the weights, config and tokenizer of this model folder (for
    /// example `assets/model`) instead of a fresh preset: to fine-tune it on other images, or
    /// to grow it with --flow-depth and --soft-token-dim.
    #[arg(long, conflicts_with_all = ["resume", "preset", "vocab_size"])]
    init_from: Option<PathBuf>,
    /// Coupling layers of the flow (`small`: 4). With --init-from, a larger value appends
    /// couplings that start as the identity, so the model begins where it was.
    #[arg(long, conflicts_with = "resume")]
    flow_depth: Option<usize>,
    /// Values of each token that the decoder models; the rest are factored out (`small`: 8).
    /// With --init-from, a larger value hands the next factored-out values to the decoder,
    /// starting as the standard normal they had.
    #[arg(long, conflicts_with = "resume")]
    soft_token_dim: Option<usize>,
    /// Steps of the whole run (the cosine schedule ends here) [default: 10000]. With --resume,
    /// a different value extends the run: a new cycle of warmup, cosine decay and noise
    /// curriculum runs from the latest checkpoint to this step.
    #[arg(long)]
    steps: Option<usize>,
    /// Examples per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Peak learning rate [default: 3e-4]. With --resume, it applies to the new cycle.
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Seed of the weights, data order, caption draws and noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 250)]
    checkpoint_every: usize,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 3)]
    keep_checkpoints: usize,
    /// Steps between held-out evaluations with sample grids, plus one at the last step
    /// (0: never).
    #[arg(long, default_value_t = 500)]
    eval_every: usize,
    /// Tokenizer vocabulary size (byte-level BPE trained on the captions) [default: 1024].
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Prompt of the sample grids; repeat for several (default: the first held-out names).
    #[arg(long = "sample-prompt")]
    sample_prompts: Vec<String>,
    /// Stop after this many steps of this invocation (the run can be resumed later).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_steps: Option<u64>,
    /// RGB noise std at the start of the curriculum, on the 0..255 scale [default: 64]. With
    /// --resume, it applies to the new cycle that --steps starts.
    #[arg(long)]
    rgb_noise_start: Option<f64>,
    /// RGB noise std at the end of the curriculum [default: 3]. The reference uses 0 for
    /// class-conditional models. With --resume, it applies to the new cycle.
    #[arg(long)]
    rgb_noise_end: Option<f64>,
    /// Weight of the text loss (nats per token) against image bits/dim [default: 0.0025].
    /// With --resume, it applies to the new cycle.
    #[arg(long)]
    text_loss_weight: Option<f64>,
}

impl TrainArgs {
    /// Returns `loss` with the settings given on the command line.
    fn loss_settings(&self, loss: &LossConfig) -> LossConfig {
        LossConfig {
            rgb_noise_start_u8: self.rgb_noise_start.unwrap_or(loss.rgb_noise_start_u8),
            rgb_noise_end_u8: self.rgb_noise_end.unwrap_or(loss.rgb_noise_end_u8),
            text_loss_weight: self.text_loss_weight.unwrap_or(loss.text_loss_weight),
            ..loss.clone()
        }
    }

    /// Returns `config` with the sizes given on the command line.
    fn sizes(&self, config: &JetFormerConfig) -> JetFormerConfig {
        let mut config = config.clone();
        config.flow.depth = self.flow_depth.unwrap_or(config.flow.depth);
        config.image.soft_token_dim = self.soft_token_dim.unwrap_or(config.image.soft_token_dim);
        config.loss = self.loss_settings(&config.loss);
        config
    }
}

/// Tokenizer vocabulary of a new run unless --vocab-size sets another.
const DEFAULT_VOCAB_SIZE: usize = 1024;

/// Training images over which the concept names' priors are averaged by default.
const PRIOR_IMAGES: usize = 64;

/// Arguments of `jetformer eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Dataset folder with `train/` and the evaluated split.
    #[arg(long)]
    data: PathBuf,
    /// Split to evaluate.
    #[arg(long, default_value = "test")]
    split: String,
    /// Held-out images used for caption ranking and captioning (default: all).
    #[arg(long)]
    limit: Option<usize>,
    /// Held-out concepts generated for prompt fidelity (default: all).
    #[arg(long)]
    prompt_limit: Option<usize>,
    /// Training images over which each name's prior is averaged for the calibrated ranking.
    #[arg(long, default_value_t = PRIOR_IMAGES)]
    prior_images: usize,
    /// Classifier-free guidance weight of the prompt fidelity generations [default: that of
    /// `generate`].
    #[arg(long)]
    guidance: Option<f64>,
    /// Scale temperature of the prompt fidelity generations [default: that of `generate`].
    #[arg(long)]
    temperature: Option<f64>,
    /// Images sampled per prompt fidelity prompt, 1 to 64; the one that makes the prompt most
    /// likely as its caption is kept [default: that of `generate`].
    #[arg(long, value_parser = crate::cli::candidates_in_range)]
    prompt_candidates: Option<usize>,
    /// Count of the calibrated ranking's best names ranked again by the image's likelihood
    /// given each name (0 skips that ranking).
    #[arg(long, default_value_t = EvalOptions::default().rerank)]
    rerank: usize,
    /// Weight of the image's likelihood against the calibrated score when the best names are
    /// re-ranked.
    #[arg(
        long,
        default_value_t = EvalOptions::default().image_weight,
        allow_negative_numbers = true
    )]
    image_weight: f64,
    /// Draws of dequantization noise per held-out image for the bits/dim over draws.
    #[arg(long, default_value_t = DEQUANTIZATION_DRAWS)]
    dequantization_draws: usize,
    /// JSON file for the results (default: eval-SPLIT.json in the model folder).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Weights that `export` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportWeights {
    /// The exponential moving average of the weights, which `train` writes as the model.
    Ema,
    /// The weights of the checkpoint's own step.
    Last,
    /// A weighted mean of both, with the EMA's share set by --ema-share.
    Mix,
}

/// Arguments of `jetformer export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run folder that `train` wrote (config.json, tokenizer.json, checkpoints/).
    pub run: PathBuf,
    /// Folder for the model; it may be the run folder itself.
    #[arg(long)]
    pub out: PathBuf,
    /// Weights of the checkpoint to write.
    #[arg(long, value_enum, default_value_t = ExportWeights::Ema)]
    pub weights: ExportWeights,
    /// Step of the checkpoint [default: the latest].
    #[arg(long)]
    pub step: Option<usize>,
    /// Share of the EMA in `--weights mix`, from 0 (the last weights) to 1 (the EMA).
    #[arg(long, required_if_eq("weights", "mix"), allow_negative_numbers = true)]
    pub ema_share: Option<f64>,
}

pub fn run_export(args: &ExportArgs, device: &ComputeDevice, json: bool) -> Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        bail!(
            "--out {} is a file; pass a folder for the model",
            args.out.display()
        );
    }
    let weights = match (args.weights, args.ema_share) {
        (ExportWeights::Mix, Some(ema_share)) => CheckpointWeights::Mix { ema_share },
        (ExportWeights::Ema, None) => CheckpointWeights::Ema,
        (ExportWeights::Last, None) => CheckpointWeights::Last,
        (weights, Some(ema_share)) => bail!(
            "--ema-share {ema_share} applies only to --weights mix, but --weights is {}; pass \
             --weights mix, or leave out --ema-share",
            weights_name(weights)
        ),
        (ExportWeights::Mix, None) => {
            bail!("--weights mix is missing --ema-share; pass a share from 0 to 1")
        }
    };
    let export = export_checkpoint(&args.run, args.step, weights, &args.out, &device.device)
        .with_context(|| {
            format!(
                "could not export {} to {}",
                args.run.display(),
                args.out.display()
            )
        })?;
    if json {
        println!(
            "{}",
            json!({
                "checkpoint": export.checkpoint,
                "step": export.step,
                "weights": weights_name(args.weights),
                "ema_share": args.ema_share,
                "out": args.out,
                "removed_priors": export.removed_priors,
            })
        );
    } else {
        println!(
            "wrote the {} weights of step {} ({}) to {}",
            match weights {
                CheckpointWeights::Ema => "EMA".to_string(),
                CheckpointWeights::Last => "last".to_string(),
                CheckpointWeights::Mix { ema_share } => format!("mixed (EMA share {ema_share})"),
            },
            export.step,
            export.checkpoint.display(),
            args.out.display()
        );
        if export.removed_priors {
            println!(
                "removed {} (computed with other weights); `eval --prior-images N` writes new \
                 ones",
                args.out.join(PRIORS_FILE).display()
            );
        }
    }
    Ok(())
}

/// Returns the name that `--weights` takes for `weights`.
fn weights_name(weights: ExportWeights) -> String {
    weights
        .to_possible_value()
        .map_or_else(String::new, |value| value.get_name().to_string())
}

pub fn run_data(source: DataSource, json: bool) -> Result<()> {
    let DataSource::Emoji {
        packages,
        out,
        size,
    } = source;
    if !(8..=256).contains(&size) {
        bail!("--size is {size}; use a side between 8 and 256 pixels");
    }
    let summary = emoji::build(&packages, &out, size)?;
    if json {
        println!(
            "{}",
            json!({
                "concepts": summary.concepts,
                "train_images": summary.train_images,
                "test_images": summary.test_images,
                "per_style": { "noto": summary.per_style[0], "twitter": summary.per_style[1],
                               "3d": summary.per_style[2] },
                "unreadable": summary.unreadable,
            })
        );
    } else {
        println!(
            "{} concepts, {} training and {} held-out images (noto {}, twitter {}, 3d {}; {} \
             unreadable) in {}",
            summary.concepts,
            summary.train_images,
            summary.test_images,
            summary.per_style[0],
            summary.per_style[1],
            summary.per_style[2],
            summary.unreadable,
            out.display()
        );
    }
    Ok(())
}

fn load_split(data: &Path, split: &str, size: usize) -> Result<Dataset> {
    let dir = split_dir(data, split)?;
    let dataset = Dataset::load(&dir, size)?;
    if dataset.skipped > 0 {
        eprintln!(
            "warning: {} rows of {} were skipped:",
            dataset.skipped,
            dir.display()
        );
        for reason in &dataset.reasons {
            eprintln!("  {reason}");
        }
    }
    Ok(dataset)
}

fn concept_names(datasets: &[&Dataset]) -> Vec<String> {
    let mut names: Vec<String> = datasets
        .iter()
        .flat_map(|dataset| dataset.examples.iter().map(|e| e.concept().to_string()))
        .collect();
    names.sort();
    names.dedup();
    names
}

pub fn run_train(args: TrainArgs, device: &ComputeDevice) -> Result<()> {
    if args.out.exists() && !args.out.is_dir() {
        bail!(
            "--out {} is a file; pass a folder for the model and its checkpoints",
            args.out.display()
        );
    }
    // With --init-from, the model on the plain device, grown to the requested sizes.
    let initial = args
        .init_from
        .as_ref()
        .map(|dir| -> Result<Bundle> {
            let bundle = load_bundle(dir, &device.device)
                .with_context(|| format!("--init-from {} is not a model folder", dir.display()))?;
            let config = args.sizes(&bundle.model.config);
            // The seed draws the hidden weights of any new coupling.
            device.device.seed(args.seed);
            let model = bundle.model.grown(&config)?;
            Ok(Bundle {
                model,
                text: bundle.text,
            })
        })
        .transpose()?;
    let resumed = args
        .resume
        .then(|| {
            JetFormerConfig::load(&args.out.join("config.json"))
                .context("--resume needs a run started in --out")
        })
        .transpose()?;
    // The images are loaded at the size of the model that trains on them.
    let preset = match (&initial, &resumed) {
        (Some(bundle), _) => bundle.model.config.clone(),
        (None, Some(config)) => config.clone(),
        (None, None) => JetFormerConfig::preset(args.preset.as_deref().unwrap_or("small"))?,
    };
    let size = preset.image.size;
    let train = load_split(&args.data, "train", size)?;
    let test = split_dir(&args.data, "test")
        .ok()
        .map(|dir| Dataset::load(&dir, size))
        .transpose()?;
    let mut datasets = vec![&train];
    datasets.extend(test.as_ref());
    let concepts = concept_names(&datasets);

    let mut run = if let Some(config) = resumed {
        let loss = args.loss_settings(&config.loss);
        let text = TextCodec::load(&args.out.join("tokenizer.json"), config.text.clone())?;
        let train_data = TrainingData::new(&train, &text)?;
        let held_out = test
            .as_ref()
            .map(|test| TrainingData::new(test, &text))
            .transpose()?;
        let cycle = NewCycle {
            steps: args.steps,
            loss: Some(loss),
            learning_rate: args.learning_rate,
        };
        Run::resume(
            &args.out,
            train_data,
            held_out,
            concepts,
            &cycle,
            &device.device,
        )?
    } else {
        if args.out.join("run.json").exists() {
            bail!(
                "{} already contains a run; pass --resume to continue it or choose another --out",
                args.out.display()
            );
        }
        let init_path = args.init_from.clone().unwrap_or_default();
        let (mut config, text, initial_weights) = match initial {
            Some(Bundle { model, text }) => (
                model.config.clone(),
                text,
                Some(weights_bytes(&model, &init_path)?),
            ),
            None => {
                let tokenizer = train_tokenizer(
                    &train.caption_corpus(),
                    args.vocab_size.unwrap_or(DEFAULT_VOCAB_SIZE),
                )?;
                let vocab = tokenizer.get_vocab_size(true);
                // The text ids follow the tokenizer: its vocabulary, then BOS, BOI, NOLABEL,
                // EOS.
                let mut config = args.sizes(&preset);
                config.text.vocab_size = vocab + 4;
                config.text.bos_id = vocab;
                config.text.boi_id = vocab + 1;
                config.text.nolabel_id = vocab + 2;
                config.text.eos_id = vocab + 3;
                let text = TextCodec::new(tokenizer, config.text.clone())?;
                (config, text, None)
            }
        };
        config.name = args
            .out
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| config.name.clone());
        let train_data = TrainingData::new(&train, &text)?;
        let held_out = test
            .as_ref()
            .map(|test| TrainingData::new(test, &text))
            .transpose()?;
        let sample_prompts = if args.sample_prompts.is_empty() {
            let source = test.as_ref().unwrap_or(&train);
            concept_names(&[source])
                .into_iter()
                .step_by(37)
                .take(8)
                .collect()
        } else {
            args.sample_prompts.clone()
        };
        let defaults = OptimizerConfig::default();
        let settings = RunConfig {
            batch_size: args.batch_size,
            seed: args.seed,
            checkpoint_every: args.checkpoint_every,
            keep_checkpoints: args.keep_checkpoints,
            eval_every: args.eval_every,
            sample_prompts,
            optimizer: OptimizerConfig {
                learning_rate: args.learning_rate.unwrap_or(defaults.learning_rate),
                total_steps: args.steps.unwrap_or(defaults.total_steps),
                ..defaults
            },
            ..RunConfig::default()
        };
        device.device.seed(args.seed);
        let mut model = JetFormer::new(&config, &device.device.clone().autodiff());
        if let Some(bytes) = initial_weights {
            load_weights(&mut model, bytes, &init_path)?;
        }
        Run::start(
            model,
            settings,
            text,
            train_data,
            held_out,
            concepts,
            &args.out,
            &device.device,
        )?
    };

    let stop = Arc::new(AtomicBool::new(false));
    let handler_stop = Arc::clone(&stop);
    ctrlc::set_handler(move || {
        if handler_stop.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C ends at once; the last checkpoint stays intact.
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step and writing a checkpoint (Ctrl-C again to quit)");
    })
    .context("could not install the Ctrl-C handler")?;

    let limit = args
        .max_steps
        .map(|steps| run.trainer.step.saturating_add(steps as usize));
    let bar = ProgressBar::new(run.settings.optimizer.total_steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let out = args.out.clone();
    let mut held_out_bits = f64::NAN;
    let mut last_weights_bits = f64::NAN;
    let mut evaluated_step = None;
    let mut smoothed_rate = 0.0;
    run.run(&stop, |report| match report {
        Report::Started {
            step,
            total,
            examples,
        } => {
            bar.set_position(step as u64);
            bar.println(format!(
                "training {examples} examples from step {step} to {total} on {device}"
            ));
        }
        Report::Step(metrics) => {
            smoothed_rate = if smoothed_rate == 0.0 {
                metrics.images_per_second
            } else {
                0.9 * smoothed_rate + 0.1 * metrics.images_per_second
            };
            bar.set_position(metrics.step as u64);
            let held_out = if held_out_bits.is_finite() {
                format!("  held-out {held_out_bits:.3} (last weights {last_weights_bits:.3})")
            } else {
                String::new()
            };
            bar.set_message(format!(
                "{smoothed_rate:.1} img/s  image {:.3} bits/dim  text {:.3} nats{held_out}",
                metrics.loss.image_bits_per_dim, metrics.loss.text_nats_per_token,
            ));
            if limit.is_some_and(|limit| metrics.step >= limit) {
                stop.store(true, Ordering::SeqCst);
            }
        }
        Report::Evaluated {
            step,
            held_out_bits_per_dim,
            last_weights_bits_per_dim,
        } => {
            held_out_bits = held_out_bits_per_dim;
            last_weights_bits = last_weights_bits_per_dim;
            evaluated_step = Some(step);
            bar.println(format!(
                "held-out bits/dim at step {step}: {held_out_bits:.4} with the EMA weights, \
                 {last_weights_bits:.4} with the last weights"
            ));
        }
        Report::Samples { path } => bar.println(format!("samples: {}", path.display())),
        Report::Checkpoint { step, path } => {
            if let Err(error) =
                crate::plot::plot_metrics(&out.join(METRICS_FILE), &out.join("curves.png"))
            {
                bar.println(format!("warning: could not plot the metrics: {error:#}"));
            }
            bar.println(format!("checkpoint at step {step}: {}", path.display()));
        }
    })?;
    bar.finish_and_clear();
    if run.trainer.step == run.settings.optimizer.total_steps {
        run.save_caption_priors(PRIOR_IMAGES)?;
    }
    println!(
        "model written to {} (step {})",
        args.out.display(),
        run.trainer.step
    );
    // The progress bar and its lines are hidden when the output is not a terminal.
    if let Some(step) = evaluated_step {
        println!(
            "held-out bits/dim at step {step}: {held_out_bits:.4} with the EMA weights, \
             {last_weights_bits:.4} with the last weights (`export --weights last` writes those)"
        );
    }
    Ok(())
}

pub fn run_eval(bundle: &Bundle, model_dir: &Path, args: &EvalArgs, json: bool) -> Result<()> {
    if args.dequantization_draws == 0 {
        bail!("--dequantization-draws is 0; use 1 or more draws of dequantization noise");
    }
    if !(args.image_weight.is_finite() && args.image_weight >= 0.0) {
        bail!(
            "--image-weight is {}; use a number of 0 or more",
            args.image_weight
        );
    }
    let size = bundle.model.config.image.size;
    let train = load_split(&args.data, "train", size)?;
    let test = load_split(&args.data, &args.split, size)?;
    let defaults = EvalOptions::default();
    let options = EvalOptions {
        limit: args.limit,
        prompt_limit: args.prompt_limit,
        prior_images: args.prior_images,
        guidance: args.guidance.unwrap_or(defaults.guidance),
        scale_temperature: args.temperature.unwrap_or(defaults.scale_temperature),
        rerank: args.rerank,
        image_weight: args.image_weight,
        dequantization_draws: args.dequantization_draws,
        prompt_candidates: args.prompt_candidates.unwrap_or(defaults.prompt_candidates),
        ..defaults
    };
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template("{msg:24} {bar:30} {pos}/{len} [{elapsed_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| model_dir.join(format!("eval-{}.json", args.split)));
    crate::cli::check_parent_dir(&out)?;
    let started = std::time::Instant::now();
    let report = evaluate(
        &bundle.model,
        &bundle.text,
        &train,
        &test,
        &options,
        |stage, done, total| {
            bar.set_message(stage.to_string());
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    )?;
    bar.finish_and_clear();
    let value = json!({
        "split": args.split,
        "seconds": started.elapsed().as_secs_f64(),
        "report": report,
    });
    let text = serde_json::to_string_pretty(&value)?;
    write_atomically(&out, text.as_bytes())?;
    // The priors replace the model's own only once the report is written.
    if report.priors.images > 0 && !report.priors.priors.is_empty() {
        report.priors.save(model_dir)?;
        eprintln!(
            "wrote {} with name priors from {} training images",
            model_dir.join(PRIORS_FILE).display(),
            report.priors.images
        );
    }
    if json {
        println!("{value}");
    } else {
        println!("held-out images           {}", report.images);
        println!("bits/dim (given name)     {:.4}", report.bits_per_dim);
        println!(
            "bits/dim (no caption)     {:.4}",
            report.unconditional_bits_per_dim
        );
        if let (Some(draws), Some(given), Some(no_caption)) = (
            report.dequantization_draws,
            report.bits_per_dim_over_draws,
            report.unconditional_bits_per_dim_over_draws,
        ) {
            println!(
                "  over {draws} draws of noise   {given:.4} given name, \
                 {no_caption:.4} with no caption"
            );
        }
        if report.ranked_images == 0 {
            println!("caption ranking           not measured (--limit 0)");
        } else {
            println!(
                "caption ranking           {}  ({} images, {} candidates)",
                top_rates(report.caption_top1, report.caption_top5),
                report.ranked_images,
                report.candidates
            );
            println!(
                "calibrated ranking        {}  (name priors from {} training images)",
                top_rates(report.calibrated_top1, report.calibrated_top5),
                report.prior_images
            );
            if report.reranked_candidates > 0 {
                println!(
                    "re-ranked ranking         {}  (best {} names scored by the image's \
                     likelihood too, weight {}; by that likelihood alone: {})",
                    top_rates(report.combined_top1, report.combined_top5),
                    report.reranked_candidates,
                    options.image_weight,
                    top_rates(report.reranked_top1, report.reranked_top5)
                );
            }
            println!(
                "caption category          {:.1}%",
                100.0 * report.caption_category_accuracy
            );
        }
        if report.prompts == 0 {
            println!("prompt fidelity           not measured (--prompt-limit 0)");
        } else {
            println!(
                "prompt fidelity           {}  ({} prompts, guidance {}, temperature {}, \
                 best of {})",
                top_rates(report.prompt_top1, report.prompt_top5),
                report.prompts,
                options.guidance,
                options.scale_temperature,
                options.prompt_candidates
            );
            println!(
                "  over soft tokens only    {}",
                top_rates(report.prompt_soft_top1, report.prompt_soft_top5)
            );
        }
        println!(
            "held-out images retrieved {}  (soft tokens only: {:.1}%, {:.1}%)",
            top_rates(report.held_out_top1, report.held_out_top5),
            100.0 * report.held_out_soft_top1,
            100.0 * report.held_out_soft_top5
        );
        println!("written to {}", out.display());
    }
    Ok(())
}

/// Formats top-1 and top-5 rates (fractions) as eval's summary prints them.
fn top_rates(top1: f64, top5: f64) -> String {
    format!("top-1 {:.1}%  top-5 {:.1}%", 100.0 * top1, 100.0 * top5)
}
