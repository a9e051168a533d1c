//! The product end to end on the bundled model in `assets/model`, through the command line
//! with its default `--model`: generation is repeatable, captions and ranks come from the
//! model's concepts, and training images score better than held-out noise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/model")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/emoji")
        .join(name)
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("jetformer-bundled-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary folder");
    dir
}

fn jetformer(args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_jetformer"))
        .args(["--device", "cpu"])
        .args(args)
        .output()
        .expect("run jetformer");
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

#[test]
fn bundled_model_is_complete() {
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "concepts.txt",
    ] {
        assert!(
            assets().join(file).is_file(),
            "assets/model/{file} is missing"
        );
    }
}

#[test]
fn bundled_generation_is_repeatable() {
    let dir = tempdir("generate");
    let run = |name: &str, seed: &str| {
        let out = dir.join(name);
        let out_text = out.to_str().expect("utf-8 path");
        jetformer(&[
            "generate",
            "--prompt",
            "red apple",
            "--seed",
            seed,
            "--guidance",
            "1",
            "--out",
            out_text,
        ]);
        std::fs::read(out).expect("PNG written")
    };
    let first = run("a.png", "4");
    let again = run("b.png", "4");
    let other = run("c.png", "5");
    assert_eq!(first, again, "the same seed gave different PNG bytes");
    assert_ne!(first, other, "different seeds gave the same PNG");
    let image = image::load_from_memory(&first).expect("a PNG");
    assert_eq!(image.width(), 32);
    assert_eq!(image.height(), 32);
}

#[test]
fn bundled_model_captions_and_ranks() {
    let concepts = std::fs::read_to_string(assets().join("concepts.txt")).expect("concepts");
    let concepts: Vec<&str> = concepts.lines().collect();
    let apple = fixture("red-apple.png");
    let apple = apple.to_str().expect("utf-8 path");

    let captions = json(&jetformer(&["--json", "caption", apple]));
    let caption = captions[0]["caption"].as_str().expect("a caption");
    assert!(!caption.trim().is_empty(), "empty caption");

    let concepts_path = assets().join("concepts.txt");
    let ranked = json(&jetformer(&[
        "--json",
        "rank",
        apple,
        "--captions",
        concepts_path.to_str().expect("utf-8 path"),
        "--top",
        "5",
    ]));
    let ranked = ranked.as_array().expect("a list");
    assert_eq!(ranked.len(), 5);
    let mut previous = f64::INFINITY;
    for row in ranked {
        let name = row["caption"].as_str().expect("caption");
        assert!(concepts.contains(&name), "{name} is not a concept");
        let probability = row["probability"].as_f64().expect("probability");
        assert!(probability <= previous, "ranking is not sorted");
        assert_eq!(
            row["calibrated"], true,
            "the bundled caption-priors.json was not used"
        );
        assert_eq!(row["reranked"], true, "the best names were not re-ranked");
        previous = probability;
    }
    assert_eq!(ranked[0]["caption"], "red apple", "{ranked:?}");
}

#[test]
fn bundled_model_prefers_emoji_to_noise() {
    let dir = tempdir("noise");
    let noise = dir.join("noise.png");
    let mut state = 12345u32;
    let image = image::RgbImage::from_fn(32, 32, |_, _| {
        let mut channel = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        image::Rgb([channel(), channel(), channel()])
    });
    image.save(&noise).expect("write noise");
    let apple = fixture("red-apple.png");
    let bits = json(&jetformer(&[
        "--json",
        "bpd",
        apple.to_str().expect("utf-8 path"),
        noise.to_str().expect("utf-8 path"),
    ]));
    let apple_bits = bits[0]["bits_per_dim"].as_f64().expect("bits/dim");
    let noise_bits = bits[1]["bits_per_dim"].as_f64().expect("bits/dim");
    assert!(
        apple_bits + 1.0 < noise_bits,
        "an emoji scores {apple_bits:.3} bits/dim and uniform noise {noise_bits:.3}"
    );
}
