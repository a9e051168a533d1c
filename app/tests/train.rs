//! `jetformer train`, `eval` and `data` end to end on the committed fixture images
//! (`tests/fixtures/emoji`): a run killed with SIGKILL resumes and ends with the same weights
//! as a run that was never interrupted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/emoji")
}

fn tempdir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("jetformer-cli-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary folder");
    dir
}

fn jetformer() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jetformer"));
    command.args(["--device", "cpu"]);
    command
}

fn train_args(out: &Path, steps: usize) -> Vec<String> {
    [
        "train",
        "--preset",
        "tiny",
        "--data",
        fixtures().to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
        "--steps",
        &steps.to_string(),
        "--batch-size",
        "4",
        "--checkpoint-every",
        "5",
        "--eval-every",
        "0",
        "--vocab-size",
        "300",
        "--seed",
        "5",
    ]
    .map(str::to_string)
    .to_vec()
}

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Reads the last logged training loss of every step in a run's metrics log.
/// Checks that a command failed with an error that contains `expected`.
fn assert_failed_with(output: &Output, expected: &str) {
    assert!(
        !output.status.success(),
        "succeeded: {}",
        output_text(output)
    );
    assert!(
        output_text(output).contains(expected),
        "{}",
        output_text(output)
    );
}

fn losses(out: &Path) -> BTreeMap<u64, f64> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics log");
    let mut losses = BTreeMap::new();
    for line in text.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if value["kind"] == "train" {
            let metrics = &value["metrics"];
            losses.insert(
                metrics["step"].as_u64().expect("step"),
                metrics["loss"]["total"].as_f64().expect("loss"),
            );
        }
    }
    losses
}

/// Counts the training rows of a run's metrics log.
fn train_rows(out: &Path) -> usize {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics log");
    text.lines()
        .filter(|line| line.contains("\"kind\":\"train\""))
        .count()
}

fn latest_checkpoint_step(out: &Path) -> Option<u64> {
    std::fs::read_dir(out.join("checkpoints"))
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().join("state.json").is_file())
        .filter_map(|entry| {
            entry
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()
        })
        .max()
}

#[test]
fn train_resumes_after_sigkill() {
    let steps = 400;
    let straight = tempdir("straight");
    let output = jetformer()
        .args(train_args(&straight, steps))
        .output()
        .expect("run jetformer");
    assert!(output.status.success(), "{}", output_text(&output));

    let killed = tempdir("killed");
    let mut child = jetformer()
        .args(train_args(&killed, steps))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start jetformer");
    let started = Instant::now();
    while latest_checkpoint_step(&killed).is_none_or(|step| step < 10) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let saved = latest_checkpoint_step(&killed).expect("a checkpoint survived");
    assert!(
        saved < steps as u64,
        "the run finished before it was killed; raise `steps`"
    );

    let output = jetformer()
        .args(train_args(&killed, steps))
        .arg("--resume")
        .output()
        .expect("resume jetformer");
    assert!(output.status.success(), "{}", output_text(&output));

    let straight_losses = losses(&straight);
    let resumed_losses = losses(&killed);
    // Losses are logged every 10 steps, once each: the rows logged after the checkpoint by the
    // killed run were dropped on resume.
    assert_eq!(straight_losses.len(), steps / 10);
    assert_eq!(train_rows(&killed), steps / 10);
    let compared: Vec<u64> = straight_losses
        .range(saved + 1..)
        .map(|(&s, _)| s)
        .collect();
    assert!(!compared.is_empty());
    for step in compared {
        assert_eq!(
            resumed_losses.get(&step),
            straight_losses.get(&step),
            "step {step} differs after resuming from step {saved}"
        );
    }
    assert!(
        weights(&straight) == weights(&killed),
        "final weights differ"
    );
    assert!(straight.join("curves.png").is_file());
    assert!(straight.join("concepts.txt").is_file());

    // The trained model captions and evaluates from the command line.
    let data = tempdir("split");
    for split in ["train", "test"] {
        copy_dir(&fixtures(), &data.join(split));
    }
    let output = jetformer()
        .arg("--model")
        .arg(&straight)
        .args(["--json", "eval", "--data"])
        .arg(&data)
        .args(["--limit", "3", "--prompt-limit", "2"])
        .args(["--guidance", "1.5", "--temperature", "0.4"])
        .args(["--dequantization-draws", "3"])
        .output()
        .expect("run eval");
    assert!(output.status.success(), "{}", output_text(&output));
    let value: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("eval prints JSON");
    let report = &value["report"];
    assert_eq!(report["images"], 8);
    assert_eq!(report["ranked_images"], 3);
    assert_eq!(report["candidates"], 8);
    assert_eq!(report["prompts"], 2);
    assert_eq!(report["prompt_guidance"], 1.5);
    assert_eq!(report["prompt_temperature"], 0.4);
    let bits = report["bits_per_dim"].as_f64().expect("bits/dim");
    assert!(bits.is_finite(), "bits/dim {bits}");
    assert!(bits > 0.0, "bits/dim {bits}");
    assert_eq!(report["dequantization_draws"], 3);
    for field in [
        "bits_per_dim_over_draws",
        "unconditional_bits_per_dim_over_draws",
    ] {
        let drawn = report[field].as_f64().expect(field);
        assert!(drawn.is_finite(), "{field} {drawn}");
        assert!(drawn > 0.0, "{field} {drawn}");
    }
    assert!(straight.join("eval-test.json").is_file());
    let output = jetformer()
        .arg("--model")
        .arg(&straight)
        .args(["eval", "--data"])
        .arg(&data)
        .args(["--temperature", "0"])
        .output()
        .expect("run eval");
    assert_failed_with(&output, "temperature is 0; use a positive number");
    for (flag, value, message) in [
        (
            "--dequantization-draws",
            "0",
            "--dequantization-draws is 0; use 1 or more",
        ),
        (
            "--image-weight",
            "-0.5",
            "--image-weight is -0.5; use a number of 0 or more",
        ),
    ] {
        let output = jetformer()
            .arg("--model")
            .arg(&straight)
            .args(["eval", "--data"])
            .arg(&data)
            .args([flag, value])
            .output()
            .expect("run eval");
        assert!(!output.status.success(), "{flag} {value} was accepted");
        assert!(
            output_text(&output).contains(message),
            "{}",
            output_text(&output)
        );
    }

    // An output folder that does not exist fails before any work, leaving the priors alone.
    let priors = std::fs::read(straight.join("caption-priors.json")).expect("priors");
    let missing = data.join("missing").join("eval.json");
    let output = jetformer()
        .arg("--model")
        .arg(&straight)
        .args(["eval", "--prior-images", "1", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&missing)
        .output()
        .expect("run eval");
    assert_failed_with(&output, "does not exist; create it first");
    assert_eq!(
        std::fs::read(straight.join("caption-priors.json")).expect("priors"),
        priors
    );

    // `export` writes a checkpoint's weights as a model folder. The EMA weights are the run's
    // model, so its caption priors stay; other weights remove them.
    let export_with = |out: &Path, options: &[&str]| {
        jetformer()
            .args(["--json", "export"])
            .arg(&straight)
            .arg("--out")
            .arg(out)
            .args(options)
            .output()
            .expect("run export")
    };
    let export = |weights: &str, out: &Path, step: Option<usize>| {
        let step = step.map(|step| step.to_string());
        let mut options = vec!["--weights", weights];
        if let Some(step) = &step {
            options.extend(["--step", step.as_str()]);
        }
        export_with(out, &options)
    };
    let output = export("ema", &straight, None);
    assert!(output.status.success(), "{}", output_text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["step"], steps);
    assert_eq!(report["removed_priors"], false);
    assert!(straight.join("caption-priors.json").is_file());

    let exported = tempdir("export");
    let output = export("last", &exported, None);
    assert!(output.status.success(), "{}", output_text(&output));
    for file in ["config.json", "tokenizer.json", "concepts.txt"] {
        assert_eq!(
            std::fs::read(exported.join(file)).expect("exported file"),
            std::fs::read(straight.join(file)).expect("run file"),
            "{file}"
        );
    }
    assert_ne!(weights(&exported).1, weights(&straight).1);
    let bits = jetformer()
        .args(["--json", "--model"])
        .arg(&exported)
        .arg("bpd")
        .arg(fixtures().join("red-apple.png"))
        .output()
        .expect("run bpd");
    assert!(bits.status.success(), "{}", output_text(&bits));

    let output = export("last", &straight, None);
    assert!(output.status.success(), "{}", output_text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["removed_priors"], true);
    assert!(!straight.join("caption-priors.json").exists());
    assert_eq!(weights(&straight).1, weights(&exported).1);

    let output = export("ema", &exported, Some(steps + 1));
    assert_failed_with(
        &output,
        &format!("no complete checkpoint at step {}", steps + 1),
    );

    // A mix averages each weight of the EMA and of the last step, weighted by --ema-share.
    let averaged = tempdir("export-ema");
    let output = export("ema", &averaged, None);
    assert!(output.status.success(), "{}", output_text(&output));
    let mixed = tempdir("export-mix");
    let export_mix = |share: Option<&str>, weights: &str| {
        let mut options = vec!["--weights", weights];
        if let Some(share) = share {
            options.extend(["--ema-share", share]);
        }
        export_with(&mixed, &options)
    };
    let output = export_mix(Some("0.25"), "mix");
    assert!(output.status.success(), "{}", output_text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(report["weights"], "mix");
    assert_eq!(report["ema_share"], 0.25);
    let floats = |dir: &Path| -> (serde_json::Value, Vec<f32>) {
        let (header, data) = weights(dir);
        let values = data
            .chunks_exact(4)
            .map(|bytes| f32::from_le_bytes(bytes.try_into().expect("4 bytes")))
            .collect();
        (header, values)
    };
    let (ema_header, ema) = floats(&averaged);
    let (last_header, last) = floats(&exported);
    let (mix_header, mix) = floats(&mixed);
    assert_eq!(mix_header, ema_header);
    assert_eq!(mix_header, last_header);
    assert!(ema.iter().zip(&last).any(|(a, b)| a != b));
    for ((mix, ema), last) in mix.iter().zip(&ema).zip(&last) {
        let expected = 0.25 * ema + 0.75 * last;
        assert!(
            (mix - expected).abs() <= 1e-6 * (1.0 + expected.abs()),
            "{mix} against {expected}"
        );
    }
    assert_failed_with(&export_mix(Some("1.5"), "mix"), "outside 0 to 1");
    assert_failed_with(&export_mix(Some("-0.5"), "mix"), "outside 0 to 1");
    assert_failed_with(&export_mix(Some("0.5"), "last"), "pass --weights mix");
    assert_failed_with(&export_mix(None, "mix"), "--ema-share");

    // Another run's folder is rejected and left as it was.
    let config = std::fs::read(killed.join("config.json")).expect("config");
    let output = export("last", &killed, None);
    assert_failed_with(&output, "contains the checkpoints of another run");
    assert_eq!(
        std::fs::read(killed.join("config.json")).expect("config"),
        config
    );

    // A finished run is extended by a new cycle, and cannot be shortened below its checkpoint.
    let run_settings = || -> serde_json::Value {
        let text = std::fs::read_to_string(straight.join("run.json")).expect("run.json");
        serde_json::from_str(&text).expect("run.json is JSON")
    };
    let output = jetformer()
        .args(train_args(&straight, steps / 2))
        .arg("--resume")
        .output()
        .expect("run jetformer");
    assert_failed_with(&output, &format!("latest checkpoint is at step {steps}"));
    assert_eq!(run_settings()["optimizer"]["total_steps"], steps);
    // Without --preset, the resumed run loads the images at its own size.
    let mut args = train_args(&straight, steps + 20);
    let preset = args
        .iter()
        .position(|arg| arg == "--preset")
        .expect("--preset");
    args.drain(preset..preset + 2);
    let output = jetformer()
        .args(&args)
        .args(["--resume", "--learning-rate", "0.001"])
        .output()
        .expect("extend the run");
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(run_settings()["optimizer"]["learning_rate"], 0.001);
    assert_eq!(run_settings()["optimizer"]["cycle_start"], steps);
    assert_eq!(run_settings()["optimizer"]["total_steps"], steps + 20);
    let extended = losses(&straight);
    assert!(extended.contains_key(&(steps as u64 + 20)));
    assert_eq!(latest_checkpoint_step(&straight), Some(steps as u64 + 20));
}

/// Reads the tensor table and data of `model.safetensors` without its metadata, whose key
/// order varies between processes.
fn weights(dir: &Path) -> (serde_json::Value, Vec<u8>) {
    let bytes = std::fs::read(dir.join("model.safetensors")).expect("weights");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let mut header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + header_len]).expect("JSON header");
    header
        .as_object_mut()
        .expect("header object")
        .remove("__metadata__");
    (header, bytes[8 + header_len..].to_vec())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Returns the bits/dim of one fixture image under the model in `dir`, with no caption.
fn fixture_bits(dir: &Path) -> f64 {
    let image = fixtures().join("red-heart.png");
    let output = jetformer()
        .args([
            "--json",
            "--model",
            dir.to_str().expect("utf-8 path"),
            "bpd",
        ])
        .arg(&image)
        .output()
        .expect("run jetformer");
    assert!(output.status.success(), "{}", output_text(&output));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    rows[0]["bits_per_dim"].as_f64().expect("bits/dim")
}

/// `train --init-from` starts a new run from a model and can grow it: after one step at a
/// negligible learning rate, the grown model scores an image as the model it grew from.
#[test]
fn train_init_from_grows_a_model() {
    let base = tempdir("init-base");
    let output = jetformer()
        .args(train_args(&base, 5))
        .output()
        .expect("run jetformer");
    assert!(output.status.success(), "{}", output_text(&output));

    // Runs `train --init-from base` into `out` with `sizes` and a one-step schedule.
    let init_from = |out: &Path, sizes: &[&str]| {
        jetformer()
            .args(["train", "--init-from", base.to_str().expect("utf-8 path")])
            .args(["--data", fixtures().to_str().expect("utf-8 path")])
            .args(["--out", out.to_str().expect("utf-8 path")])
            .args(sizes)
            .args([
                "--steps",
                "1",
                "--learning-rate",
                "1e-12",
                "--batch-size",
                "4",
            ])
            .args(["--eval-every", "0"])
            .output()
            .expect("run jetformer")
    };

    let grown = tempdir("init-grown");
    let _ = std::fs::remove_dir_all(&grown);
    let output = init_from(&grown, &["--flow-depth", "4", "--soft-token-dim", "6"]);
    assert!(output.status.success(), "{}", output_text(&output));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(grown.join("config.json")).expect("config"))
            .expect("JSON");
    assert_eq!(config["flow"]["depth"], 4);
    assert_eq!(config["image"]["soft_token_dim"], 6);
    assert_eq!(
        std::fs::read(base.join("tokenizer.json")).expect("tokenizer"),
        std::fs::read(grown.join("tokenizer.json")).expect("tokenizer")
    );
    let (before, after) = (fixture_bits(&base), fixture_bits(&grown));
    assert!((before - after).abs() < 1e-3, "{before} vs {after}");

    // Shrinking is rejected with the field and the smallest valid value.
    let output = init_from(&tempdir("init-shrunk"), &["--flow-depth", "1"]);
    let text = output_text(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("flow.depth"), "{text}");
    assert!(text.contains("pass 2 or more"), "{text}");
}

#[test]
fn train_commands_reject_bad_input() {
    let dir = tempdir("bad");
    let existing = tempdir("existing-run");
    std::fs::write(existing.join("run.json"), "{}").expect("write");
    let fixtures = fixtures();
    let fixtures = fixtures.to_str().expect("utf-8 path");
    let d = dir.to_str().expect("utf-8 path");
    let not_a_folder = dir.join("model.png");
    std::fs::write(&not_a_folder, b"not a folder").expect("write");
    let not_a_folder = not_a_folder.to_str().expect("utf-8 path").to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["data", "emoji", "--packages", d, "--out", d],
            "fetch-emoji-packages.sh",
        ),
        (
            vec!["train", "--data", d, "--out", d, "--preset", "tiny"],
            "metadata.jsonl",
        ),
        (
            vec![
                "train",
                "--data",
                fixtures,
                "--out",
                existing.to_str().expect("utf-8 path"),
                "--preset",
                "tiny",
            ],
            "--resume",
        ),
        (
            vec![
                "train", "--data", fixtures, "--out", d, "--resume", "--preset", "tiny",
            ],
            "--resume",
        ),
        (
            vec!["train", "--data", fixtures, "--out", d, "--preset", "huge"],
            "presets",
        ),
        (
            vec![
                "train", "--data", fixtures, "--out", d, "--preset", "tiny", "--steps", "0",
            ],
            "steps",
        ),
        (
            vec![
                "train",
                "--data",
                fixtures,
                "--out",
                d,
                "--preset",
                "tiny",
                "--max-steps",
                "0",
            ],
            "--max-steps",
        ),
        (
            vec!["train", "--data", fixtures, "--out", &not_a_folder],
            "is a file",
        ),
    ];
    for (args, expected) in cases {
        let output = jetformer().args(&args).output().expect("run jetformer");
        let text = output_text(&output);
        assert!(!output.status.success(), "{args:?} succeeded: {text}");
        assert!(
            text.contains(expected),
            "{args:?}: `{expected}` not in {text}"
        );
        assert!(!text.contains("panicked"), "{args:?} panicked: {text}");
    }
}
