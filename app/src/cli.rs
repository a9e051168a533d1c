//! Command-line interface: `generate`, `caption`, `rank`, `bpd`, `interpolate` over a trained
//! model; `data`, `train` and `eval` build datasets and models; `bench` times the model.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use jetformer_engine::checkpoint::{Bundle, CaptionPriors, PRIORS_FILE, load_bundle};
use jetformer_engine::image::{DecodeLimits, load_rgb};
use jetformer_engine::infer::{
    self, CancelToken, CaptionOptions, Event, GenerateOptions, Interpolation,
};
use jetformer_engine::{BackendChoice, ComputeDevice};
use serde_json::json;

/// JetFormer: text-to-image and image-to-text with one transformer and a normalizing flow.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// Model directory with config.json, model.safetensors and tokenizer.json.
    #[arg(long, global = true)]
    model: Option<PathBuf>,
    /// Compute backend: auto (a hardware GPU if there is one, else the CPU), gpu or cpu.
    #[arg(long, global = true, default_value = "auto")]
    device: BackendChoice,
    /// Window renderer: auto (wgpu, or OpenGL on a machine without a GPU, where Mesa's
    /// software rasterizer draws it faster), wgpu or glow. Used only by the window.
    #[arg(long, global = true, value_enum, default_value_t = jetformer::gui::RendererChoice::Auto)]
    renderer: jetformer::gui::RendererChoice,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate images from a text prompt.
    Generate {
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// Number of images; with more than one, files are numbered FILE-1.png, FILE-2.png, ...
        /// and an existing file of that name is replaced. One call samples at most 1,024
        /// images, count times candidates.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Seed of the draws (the same seed and count give the same images).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Multiplies every mixture scale [default: the engine's, 0.3].
        #[arg(long)]
        temperature: Option<f64>,
        /// Multiplies the mixture logits [default: 1].
        #[arg(long)]
        mixture_temperature: Option<f64>,
        /// Scale of the factored-out latent dims; 0 sets them to zero [default: 0].
        #[arg(long)]
        noise_factor: Option<f64>,
        /// Classifier-free guidance weight; 0 turns guidance off [default: 2].
        #[arg(long)]
        guidance: Option<f64>,
        /// Images sampled for each one written, 1 to 64; the one that makes the prompt most
        /// likely as its caption is kept, and its log-likelihood printed. 1 samples one image.
        #[arg(long, default_value_t = infer::CANDIDATES, value_parser = candidates_in_range)]
        candidates: usize,
        /// Output PNG file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Caption images.
    Caption {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Rank candidate captions of an image by log-probability.
    Rank {
        /// Image file.
        image: PathBuf,
        /// Text file with one candidate caption per line.
        #[arg(long)]
        captions: PathBuf,
        /// Number of captions to print (at least 1).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
        top: u16,
        /// Rank by plain likelihood even when the model's caption-priors.json covers every
        /// candidate (by default such a ranking subtracts each caption's prior).
        #[arg(long)]
        plain: bool,
        /// Count of the calibrated ranking's best captions scored again by the image's
        /// likelihood given each caption (0 skips it; a plain ranking is never re-ranked).
        #[arg(long, default_value_t = infer::RERANK_CANDIDATES)]
        rerank: usize,
    },
    /// Bits per dimension of images, unconditional or given a caption.
    Bpd {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Caption to condition on.
        #[arg(long)]
        caption: Option<String>,
        /// Draws of dequantization noise per image, combined into a tighter bound on the
        /// image's bits (each draw costs one more pass).
        #[arg(long, default_value_t = 1)]
        draws: usize,
    },
    /// Decode a strip of images between two images through latent space.
    Interpolate {
        /// First image file.
        first: PathBuf,
        /// Second image file.
        second: PathBuf,
        /// Images in the strip, both ends included.
        #[arg(long, default_value_t = 8)]
        steps: usize,
        /// Blend each token's latent on the sphere instead of linearly.
        #[arg(long)]
        spherical: bool,
        /// Output PNG file (one row of images).
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a dataset.
    Data {
        #[command(subcommand)]
        source: crate::training::DataSource,
    },
    /// Train a model on a dataset folder (images + metadata.jsonl).
    Train(crate::training::TrainArgs),
    /// Evaluate a model on a dataset split and write the results as JSON.
    Eval(crate::training::EvalArgs),
    /// Write a training checkpoint's weights as a model folder.
    Export(crate::training::ExportArgs),
    /// Time generation, captioning, bits/dim and the flow on this machine.
    Bench(crate::bench::BenchArgs),
}

/// Default model directory: the bundled model in the source tree.
pub fn default_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/model")
}

pub fn run(cli: Cli) -> Result<()> {
    if let Some(Command::Data { source }) = cli.command {
        return crate::training::run_data(source, cli.json);
    }
    let device = ComputeDevice::select(cli.device).context("could not open the compute device")?;
    // `main` opens the window when no command is given, so this only prints the backend.
    let Some(command) = cli.command else {
        println!("jetformer {}", env!("CARGO_PKG_VERSION"));
        println!("backend: {device}");
        return Ok(());
    };
    let command = match command {
        Command::Train(args) => return crate::training::run_train(args, &device),
        Command::Export(args) => return crate::training::run_export(&args, &device, cli.json),
        other => other,
    };
    let model_dir = cli.model.clone().unwrap_or_else(default_model_dir);
    let bundle = load_bundle(&model_dir, &device.device).with_context(|| {
        format!(
            "could not load the model in {}; pass --model DIR with config.json, \
             model.safetensors and tokenizer.json",
            model_dir.display()
        )
    })?;
    log::info!("model {} on {device}", model_dir.display());
    match command {
        Command::Generate {
            prompt,
            count,
            seed,
            temperature,
            mixture_temperature,
            noise_factor,
            guidance,
            candidates,
            out,
        } => {
            let defaults = GenerateOptions::default();
            let options = GenerateOptions {
                count,
                seed,
                scale_temperature: temperature.unwrap_or(defaults.scale_temperature),
                mixture_temperature: mixture_temperature.unwrap_or(defaults.mixture_temperature),
                noise_factor: noise_factor.unwrap_or(defaults.noise_factor),
                guidance: guidance.unwrap_or(defaults.guidance),
                candidates,
                preview_every: 0,
            };
            run_generate(&bundle, &prompt, &options, &out, cli.json)
        }
        Command::Caption { images } => run_caption(&bundle, &images, cli.json),
        Command::Rank {
            image,
            captions,
            top,
            plain,
            rerank,
        } => {
            let priors = if plain {
                None
            } else {
                CaptionPriors::load(&model_dir).with_context(|| {
                    format!(
                        "fix or delete {}, or pass --plain to rank without it",
                        model_dir.join(PRIORS_FILE).display()
                    )
                })?
            };
            run_rank(
                &bundle,
                &image,
                &captions,
                priors.as_ref(),
                usize::from(top),
                rerank,
                cli.json,
            )
        }
        Command::Bpd {
            images,
            caption,
            draws,
        } => run_bpd(&bundle, &images, caption.as_deref(), draws, cli.json),
        Command::Interpolate {
            first,
            second,
            steps,
            spherical,
            out,
        } => {
            let mode = if spherical {
                Interpolation::Spherical
            } else {
                Interpolation::Linear
            };
            run_interpolate(&bundle, &first, &second, steps, mode, &out)
        }
        Command::Eval(args) => crate::training::run_eval(&bundle, &model_dir, &args, cli.json),
        Command::Bench(args) => crate::bench::run_bench(&bundle, &args, &device, cli.json),
        Command::Data { .. } | Command::Train(_) | Command::Export(_) => Ok(()),
    }
}

/// Parses a count of candidates per image, 1 to [`infer::MAX_CANDIDATES`].
pub fn candidates_in_range(text: &str) -> std::result::Result<usize, String> {
    let range = format!("use a whole number from 1 to {}", infer::MAX_CANDIDATES);
    let value: usize = text
        .parse()
        .map_err(|_| format!("invalid count of candidates '{text}'; {range}"))?;
    if value == 0 || value > infer::MAX_CANDIDATES {
        return Err(format!("{value} candidates is out of range; {range}"));
    }
    Ok(value)
}

fn check_png_path(out: &Path) -> Result<()> {
    let is_png = out
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("png"));
    if !is_png {
        bail!("output {} must end in .png", out.display());
    }
    check_parent_dir(out)
}

/// Checks that the folder an output file goes into exists, before any work is done.
pub fn check_parent_dir(out: &Path) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        if parent.exists() {
            bail!(
                "{} is not a folder; choose an output path inside a folder",
                parent.display()
            );
        }
        bail!(
            "the folder {} does not exist; create it first",
            parent.display()
        );
    }
    Ok(())
}

/// Encodes a PNG in memory, then writes it atomically.
pub fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    Ok(jetformer_engine::image::save_png(image, path)?)
}

fn numbered(out: &Path, index: usize, count: usize) -> PathBuf {
    if count == 1 {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}-{}.png", index + 1))
}

fn run_generate(
    bundle: &Bundle,
    prompt: &str,
    options: &GenerateOptions,
    out: &Path,
    json: bool,
) -> Result<()> {
    check_png_path(out)?;
    options.validate()?;
    // Every file of a batch is checked before sampling, so that a bad path cannot leave the
    // batch half written.
    for index in 0..options.count {
        let path = numbered(out, index, options.count);
        if path.exists() && !path.is_file() {
            bail!(
                "{} exists and is not a file; remove it or choose another --out",
                path.display()
            );
        }
    }
    let encoded = bundle.text.encode(prompt)?;
    if encoded.truncated_tokens > 0 {
        let dropped = match encoded.truncated_tokens {
            1 => "1 token was".to_string(),
            count => format!("{count} tokens were"),
        };
        eprintln!(
            "warning: the prompt is longer than the model's {} tokens; {dropped} dropped",
            bundle.text.config().max_len
        );
    }
    let progress = ProgressBar::new(bundle.model.config.num_tokens() as u64);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} tokens, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let scored_images = infer::generate_scored(
        &bundle.model,
        &encoded.ids,
        options,
        &CancelToken::new(),
        |event| {
            if let Event::Sampled { tokens_done } = event {
                progress.set_position(tokens_done as u64);
            }
        },
    )?
    .context("generation was cancelled")?;
    progress.finish_and_clear();
    let mut written = Vec::new();
    for (index, (image, _)) in scored_images.iter().enumerate() {
        let path = numbered(out, index, scored_images.len());
        save_png(image, &path)?;
        written.push(path.display().to_string());
    }
    let scores: Vec<Option<f64>> = scored_images.iter().map(|(_, score)| *score).collect();
    if json {
        println!(
            "{}",
            json!({
                "prompt": prompt,
                "files": written,
                "truncated_tokens": encoded.truncated_tokens,
                "candidates": options.candidates,
                "prompt_log_likelihoods": scores,
            })
        );
    } else {
        for (path, score) in written.iter().zip(scores) {
            match score {
                Some(score) => println!(
                    "{path}  (best of {}; log p(prompt | image) = {score:.2} nats)",
                    options.candidates
                ),
                None => println!("{path}"),
            }
        }
    }
    Ok(())
}

fn load_images(bundle: &Bundle, paths: &[PathBuf]) -> Result<Vec<RgbImage>> {
    let size = bundle.model.config.image.size as u32;
    paths
        .iter()
        .map(|path| Ok(load_rgb(path, size, DecodeLimits::default())?))
        .collect()
}

fn run_caption(bundle: &Bundle, paths: &[PathBuf], json: bool) -> Result<()> {
    let images = load_images(bundle, paths)?;
    let captions = infer::caption(&bundle.model, &images, &CaptionOptions::default())?;
    let texts: Vec<String> = captions.iter().map(|ids| bundle.text.decode(ids)).collect();
    if json {
        let rows: Vec<_> = paths
            .iter()
            .zip(&texts)
            .map(|(path, text)| json!({ "image": path.display().to_string(), "caption": text }))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for (path, text) in paths.iter().zip(&texts) {
            println!("{}\t{text}", path.display());
        }
    }
    Ok(())
}

fn run_rank(
    bundle: &Bundle,
    path: &Path,
    captions_file: &Path,
    priors: Option<&CaptionPriors>,
    top: usize,
    rerank: usize,
    json: bool,
) -> Result<()> {
    let text = std::fs::read_to_string(captions_file)
        .with_context(|| format!("could not read {}", captions_file.display()))?;
    let candidates: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if candidates.is_empty() {
        bail!(
            "{} has no captions; write one per line",
            captions_file.display()
        );
    }
    let encoded = candidates
        .iter()
        .map(|caption| bundle.text.encode(caption))
        .collect::<Result<Vec<_>, _>>()?;
    let cut = encoded.iter().filter(|e| e.truncated_tokens > 0).count();
    if cut > 0 {
        eprintln!(
            "warning: captions longer than the model's {} tokens were cut to that length ({cut} \
             of {})",
            bundle.text.config().max_len,
            candidates.len()
        );
    }
    let ids: Vec<Vec<usize>> = encoded.into_iter().map(|e| e.ids).collect();
    let image = load_images(bundle, &[path.to_path_buf()])?.remove(0);
    let scores = infer::score_captions(&bundle.model, &image, &ids, 64)?;
    // Calibrated scores order the captions and give the probabilities; log-prob stays plain.
    let calibrated = priors.and_then(|priors| priors.calibrate(&candidates, &scores));
    if calibrated.is_none() && priors.is_some() {
        eprintln!(
            "note: {PRIORS_FILE} has no prior for some of these captions, so they are ranked \
             by plain log-prob and not re-ranked"
        );
    }
    let top = top.max(1);
    let (best, reranked) = match &calibrated {
        Some(calibrated) => {
            infer::best_captions(&bundle.model, &image, &ids, calibrated, rerank, top)?
        }
        None => (infer::top_probabilities(&scores, top), 0),
    };
    let ranked: Vec<(&str, f64, f64)> = best
        .into_iter()
        .map(|(i, probability)| (candidates[i], scores[i], probability))
        .collect();
    if json {
        let rows: Vec<_> = ranked
            .iter()
            .map(|(caption, log_prob, probability)| {
                json!({
                    "caption": caption,
                    "log_prob": log_prob,
                    "probability": probability,
                    "calibrated": calibrated.is_some(),
                    "reranked": reranked > 0,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        if reranked > 0 {
            println!(
                "ranked by log-prob minus each caption's prior ({PRIORS_FILE}), the best \
                 {reranked} scored again by the image's likelihood given each"
            );
        } else if calibrated.is_some() {
            println!("ranked by log-prob minus each caption's prior ({PRIORS_FILE})");
        }
        println!("probability\tlog-prob\tcaption");
        for (caption, log_prob, probability) in ranked {
            println!("{probability:.3}\t{log_prob:.2}\t{caption}");
        }
    }
    Ok(())
}

fn run_bpd(
    bundle: &Bundle,
    paths: &[PathBuf],
    caption: Option<&str>,
    draws: usize,
    json: bool,
) -> Result<()> {
    if draws == 0 {
        bail!("--draws is 0; use 1 or more draws of dequantization noise");
    }
    let images = load_images(bundle, paths)?;
    let caption_ids = caption.map(|text| bundle.text.encode(text)).transpose()?;
    let size = bundle.model.config.image.size;
    let bits: Vec<f64> = infer::bits_per_dim_per_draw(
        &bundle.model,
        &images,
        caption_ids.as_ref().map(|e| e.ids.as_slice()),
        0,
        draws,
    )?
    .iter()
    .map(|row| infer::bits_over_draws(row, size * size * 3))
    .collect();
    if json {
        let rows: Vec<_> = paths
            .iter()
            .zip(&bits)
            .map(
                |(path, bits)| json!({ "image": path.display().to_string(), "bits_per_dim": bits }),
            )
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for (path, bits) in paths.iter().zip(&bits) {
            println!("{}\t{bits:.4}", path.display());
        }
    }
    Ok(())
}

fn run_interpolate(
    bundle: &Bundle,
    first: &Path,
    second: &Path,
    steps: usize,
    mode: Interpolation,
    out: &Path,
) -> Result<()> {
    check_png_path(out)?;
    let images = load_images(bundle, &[first.to_path_buf(), second.to_path_buf()])?;
    let strip = infer::interpolate(&bundle.model, &images[0], &images[1], steps, mode)?;
    let size = bundle.model.config.image.size as u32;
    let mut canvas = RgbImage::new(size * strip.len() as u32, size);
    for (index, image) in strip.iter().enumerate() {
        image::imageops::replace(&mut canvas, image, i64::from(size) * index as i64, 0);
    }
    save_png(&canvas, out)?;
    println!("{}", out.display());
    Ok(())
}
