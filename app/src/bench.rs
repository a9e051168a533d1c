//! `jetformer bench`: times the loaded model on this machine, the numbers BENCHMARKS.md
//! records.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use image::RgbImage;
use jetformer_engine::ComputeDevice;
use jetformer_engine::checkpoint::Bundle;
use jetformer_engine::infer::{self, CancelToken, CaptionOptions, Event, GenerateOptions};
use serde_json::json;

/// Arguments of `jetformer bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Timed repetitions of each measurement (after one warm-up; at least 1).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// Prompt of the generation timings.
    #[arg(long, default_value = "red apple")]
    prompt: String,
    /// Guidance weight of the guided timing.
    #[arg(long, default_value_t = 2.0)]
    guidance: f64,
    /// Candidates of the best-of timing (guided), each sampled and scored, 1 to 64.
    #[arg(long, default_value_t = 8, value_parser = crate::cli::candidates_in_range)]
    candidates: usize,
}

/// Median of `runs` timings of `work`, after one untimed warm-up.
fn median_time(runs: usize, mut work: impl FnMut() -> Result<Duration>) -> Result<f64> {
    work()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        times.push(work()?.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn timed(work: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let started = Instant::now();
    work()?;
    Ok(started.elapsed())
}

pub fn run_bench(
    bundle: &Bundle,
    args: &BenchArgs,
    device: &ComputeDevice,
    json: bool,
) -> Result<()> {
    let model = &bundle.model;
    let prompt = bundle.text.encode(&args.prompt)?.ids;
    let cancel = CancelToken::new();
    let generate_with = |guidance: f64, candidates: usize| -> Result<Duration> {
        let options = GenerateOptions {
            guidance,
            candidates,
            ..GenerateOptions::default()
        };
        timed(|| {
            infer::generate(model, &prompt, &options, &cancel, |_| {})?
                .context("generation was cancelled")?;
            Ok(())
        })
    };
    let unguided = median_time(usize::from(args.runs), || generate_with(0.0, 1))?;
    let guided = median_time(usize::from(args.runs), || generate_with(args.guidance, 1))?;
    let best_of = median_time(usize::from(args.runs), || {
        generate_with(args.guidance, args.candidates)
    })?;
    let first_preview = median_time(usize::from(args.runs), || {
        let options = GenerateOptions {
            preview_every: 1,
            candidates: 1,
            ..GenerateOptions::default()
        };
        let started = Instant::now();
        let mut first = None;
        infer::generate(model, &prompt, &options, &cancel, |event| {
            if matches!(event, Event::Preview { .. }) && first.is_none() {
                first = Some(started.elapsed());
            }
        })?;
        first.context("no preview was emitted")
    })?;

    // A generated image replaces a photo in the understanding timings.
    let image: RgbImage =
        infer::generate(model, &prompt, &GenerateOptions::default(), &cancel, |_| {})?
            .context("generation was cancelled")?
            .remove(0);
    let caption = median_time(usize::from(args.runs), || {
        timed(|| {
            infer::caption(
                model,
                std::slice::from_ref(&image),
                &CaptionOptions::default(),
            )?;
            Ok(())
        })
    })?;
    let batch: Vec<RgbImage> = vec![image.clone(); 32];
    let bits = median_time(usize::from(args.runs), || {
        timed(|| {
            infer::bits_per_dim(model, &batch, None, 0)?;
            Ok(())
        })
    })?;
    let flow = median_time(usize::from(args.runs), || {
        timed(|| {
            let latents = infer::encode(model, &batch)?;
            infer::decode(model, latents);
            Ok(())
        })
    })?;

    let value = json!({
        "device": device.to_string(),
        "model": model.config.name,
        "runs": args.runs,
        "seconds_per_image": unguided,
        "seconds_per_image_guided": guided,
        "candidates": args.candidates,
        "seconds_per_image_best_of": best_of,
        "seconds_to_first_preview": first_preview,
        "seconds_per_caption": caption,
        "bits_per_dim_images_per_second": 32.0 / bits,
        "flow_encode_decode_32_seconds": flow,
    });
    if json {
        println!("{value}");
    } else {
        println!("device                        {device}");
        println!("model                         {}", model.config.name);
        println!("median of {} runs", args.runs);
        println!("one image, unguided           {:.4} s", unguided);
        println!(
            "one image, guidance {:<4}      {:.4} s",
            args.guidance, guided
        );
        println!(
            "one image, best of {:<4}       {:.4} s",
            args.candidates, best_of
        );
        println!("first preview                 {:.4} s", first_preview);
        println!("one caption                   {:.4} s", caption);
        println!("bits/dim                      {:.1} images/s", 32.0 / bits);
        println!("flow encode + decode, 32      {:.4} s", flow);
    }
    Ok(())
}
