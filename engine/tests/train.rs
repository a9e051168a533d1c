//! Training runs, datasets and the tokenizer on the committed fixture images
//! (`tests/fixtures/emoji`, eight Noto Emoji PNGs, see its LICENSE.md).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use jetformer_engine::text::{TextCodec, train_tokenizer};
use jetformer_engine::train::OptimizerConfig;
use jetformer_engine::train::data::{Dataset, MetadataRow, write_metadata};
use jetformer_engine::train::run::{
    NewCycle, Report, Run, RunConfig, TrainingData, latest_checkpoint,
};
use jetformer_engine::{JetFormer, JetFormerConfig};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/emoji")
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "jetformer-train-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary folder");
    dir
}

/// Returns the tiny config with a vocabulary sized for `tokenizer_vocab` tokens.
fn tiny_config(tokenizer_vocab: usize) -> JetFormerConfig {
    let mut config = JetFormerConfig::tiny();
    config.text.vocab_size = tokenizer_vocab + 4;
    config.text.bos_id = tokenizer_vocab;
    config.text.boi_id = tokenizer_vocab + 1;
    config.text.nolabel_id = tokenizer_vocab + 2;
    config.text.eos_id = tokenizer_vocab + 3;
    config.text.max_len = 8;
    config
}

struct Setup {
    config: JetFormerConfig,
    text: TextCodec,
    dataset: Dataset,
}

fn setup() -> Setup {
    let dataset = Dataset::load(&fixtures(), 8).expect("the fixtures load");
    let tokenizer = train_tokenizer(&dataset.caption_corpus(), 300).expect("tokenizer trains");
    let config = tiny_config(tokenizer.get_vocab_size(true));
    let text = TextCodec::new(tokenizer, config.text.clone()).expect("codec");
    Setup {
        config,
        text,
        dataset,
    }
}

fn settings(total_steps: usize) -> RunConfig {
    RunConfig {
        batch_size: 4,
        seed: 7,
        checkpoint_every: 3,
        keep_checkpoints: 10,
        eval_every: 0,
        log_every: 1,
        optimizer: OptimizerConfig {
            learning_rate: 3e-3,
            total_steps,
            ..OptimizerConfig::default()
        },
        ..RunConfig::default()
    }
}

fn start(setup: &Setup, model: JetFormer, total: usize, out: &Path) -> Run {
    start_with(setup, model, settings(total), out)
}

/// Starts a run on the fixture images with `settings`.
fn start_with(setup: &Setup, model: JetFormer, settings: RunConfig, out: &Path) -> Run {
    let data = TrainingData::new(&setup.dataset, &setup.text).expect("data");
    Run::start(
        model,
        settings,
        setup.text.clone(),
        data,
        None,
        vec!["red apple".into()],
        out,
        &Device::flex(),
    )
    .expect("run starts")
}

/// Collects every weight of a model, flattened in visiting order.
fn weights(model: &JetFormer) -> Vec<f32> {
    struct Collect(Vec<f32>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.extend(param.val().into_data().iter::<f32>());
        }
    }
    let mut collect = Collect(Vec::new());
    model.valid().visit(&mut collect);
    collect.0
}

#[test]
fn run_resumes_exactly_after_kill() {
    let setup = setup();
    let model = JetFormer::new(&setup.config, &Device::flex().autodiff());

    // The uninterrupted run.
    let straight_dir = tempdir("straight");
    let mut straight = start(&setup, model.clone(), 6, &straight_dir);
    let straight_losses: Vec<f64> = (0..6).map(|_| straight.step().loss.total).collect();

    // The same run, stopped after its checkpoint at step 3 and dropped as if killed.
    let killed_dir = tempdir("killed");
    let mut killed = start(&setup, model, 6, &killed_dir);
    for _ in 0..3 {
        killed.step();
    }
    killed.save_checkpoint().expect("checkpoint");
    killed.step(); // lost with the kill: not in any checkpoint
    drop(killed);
    assert!(latest_checkpoint(&killed_dir).expect("list").is_some());

    let data = TrainingData::new(&setup.dataset, &setup.text).expect("data");
    let mut resumed = Run::resume(
        &killed_dir,
        data,
        None,
        Vec::new(),
        &NewCycle::default(),
        &Device::flex(),
    )
    .expect("resumes");
    assert_eq!(resumed.trainer.step, 3);
    let resumed_losses: Vec<f64> = (0..3).map(|_| resumed.step().loss.total).collect();
    assert_eq!(
        resumed_losses,
        straight_losses[3..],
        "resumed steps differ from the uninterrupted run"
    );
    assert_eq!(
        weights(&resumed.trainer.model),
        weights(&straight.trainer.model)
    );
    assert_eq!(weights(&resumed.ema), weights(&straight.ema));
}

#[test]
fn loss_and_rate_change_need_new_cycle() {
    let setup = setup();
    let model = JetFormer::new(&setup.config, &Device::flex().autodiff());
    let out = tempdir("new-cycle");
    let mut run = start(&setup, model, 4, &out);
    run.step();
    run.save_checkpoint().expect("checkpoint");
    drop(run);
    let data = || TrainingData::new(&setup.dataset, &setup.text).expect("data");
    let loss = jetformer_engine::config::LossConfig {
        rgb_noise_end_u8: 0.0,
        text_loss_weight: 0.05,
        ..setup.config.loss.clone()
    };

    let change = NewCycle {
        loss: Some(loss.clone()),
        ..NewCycle::default()
    };
    let rejected = Run::resume(&out, data(), None, Vec::new(), &change, &Device::flex());
    let message = rejected
        .err()
        .expect("a loss change without a new cycle is rejected")
        .to_string();
    assert!(message.contains("--steps"), "{message}");
    let saved = JetFormerConfig::load(&out.join("config.json")).expect("config");
    assert_eq!(
        saved.loss, setup.config.loss,
        "a rejected resume changed config.json"
    );

    let change = NewCycle {
        learning_rate: Some(1e-4),
        ..NewCycle::default()
    };
    let rejected = Run::resume(&out, data(), None, Vec::new(), &change, &Device::flex());
    let message = rejected
        .err()
        .expect("a learning rate change without a new cycle is rejected")
        .to_string();
    assert!(message.contains("learning rate"), "{message}");

    let change = NewCycle {
        steps: Some(8),
        loss: Some(loss.clone()),
        learning_rate: Some(1e-4),
    };
    let run_json = std::fs::read(out.join("run.json")).expect("run.json");
    let larger = Dataset::load(&fixtures(), 16).expect("the fixtures load at 16x16");
    let larger = TrainingData::new(&larger, &setup.text).expect("data");
    let rejected = Run::resume(&out, larger, None, Vec::new(), &change, &Device::flex());
    let message = rejected
        .err()
        .expect("images of another size are rejected")
        .to_string();
    assert!(message.contains("16x16"), "{message}");
    assert_eq!(
        std::fs::read(out.join("run.json")).expect("run.json"),
        run_json,
        "a rejected resume changed run.json"
    );

    let resumed = Run::resume(&out, data(), None, Vec::new(), &change, &Device::flex())
        .expect("a new cycle may change the loss settings and the learning rate");
    assert_eq!(resumed.trainer.model.config.loss, loss);
    assert_eq!(resumed.settings.optimizer.cycle_start, 1);
    assert_eq!(resumed.settings.optimizer.learning_rate, 1e-4);
    assert_eq!(resumed.trainer.config.learning_rate, 1e-4);
    let saved: RunConfig =
        jetformer_engine::checkpoint::read_json(&out.join("run.json")).expect("run.json");
    assert_eq!(
        saved.optimizer.learning_rate, 1e-4,
        "run.json keeps the old rate"
    );
    let saved = JetFormerConfig::load(&out.join("config.json")).expect("config");
    assert_eq!(
        saved.loss, loss,
        "config.json does not record the new loss settings"
    );
}

#[test]
fn run_lowers_loss_and_saves_model() {
    let setup = setup();
    let model = JetFormer::new(&setup.config, &Device::flex().autodiff());
    let out = tempdir("decrease");
    let settings = RunConfig {
        eval_every: 25,
        sample_prompts: vec!["red apple".into()],
        ..settings(60)
    };
    let data = || TrainingData::new(&setup.dataset, &setup.text).expect("data");
    let mut run = Run::start(
        model,
        settings,
        setup.text.clone(),
        data(),
        Some(data()),
        vec!["red apple".into()],
        &out,
        &Device::flex(),
    )
    .expect("run starts");
    let mut losses = Vec::new();
    let mut evaluations = Vec::new();
    let stop = AtomicBool::new(false);
    run.run(&stop, |report| match report {
        Report::Step(metrics) => losses.push(metrics.loss.total),
        Report::Evaluated {
            step,
            held_out_bits_per_dim,
            last_weights_bits_per_dim,
        } => evaluations.push((step, held_out_bits_per_dim, last_weights_bits_per_dim)),
        _ => {}
    })
    .expect("run finishes");
    assert_eq!(losses.len(), 60);
    // Held-out bits/dim under both the EMA and the last step's weights, which differ.
    let steps: Vec<usize> = evaluations.iter().map(|row| row.0).collect();
    assert_eq!(steps, [25, 50, 60]);
    for &(step, ema, last) in &evaluations {
        assert!(ema.is_finite(), "step {step}: {ema}");
        assert!(last.is_finite(), "step {step}: {last}");
        assert_ne!(ema, last, "step {step}");
    }
    let (_, ema, last) = evaluations[2];
    assert_eq!(run.held_out_bits_per_dim(), Some(ema));
    assert_eq!(run.last_weights_bits_per_dim(), Some(last));
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let logged = log
        .lines()
        .filter(|line| line.contains("held_out_bits_per_dim_last_weights"))
        .count();
    assert_eq!(logged, 3);
    let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = losses[50..].iter().sum::<f64>() / 10.0;
    assert!(
        last < first - 0.1,
        "loss went from {first:.3} to {last:.3} over 60 steps"
    );
    let bundle = jetformer_engine::checkpoint::load_bundle(&out, &Device::flex())
        .expect("the output folder holds a loadable model");
    assert_eq!(bundle.model.config, setup.config);
    assert!(out.join("metrics.jsonl").is_file());
    assert!(out.join("concepts.txt").is_file());
    // Sample grids at every 25th step and at the last step, which is not a multiple of 25.
    for step in [25, 50, 60] {
        let grid = out.join(format!("samples/step-{step:07}.png"));
        assert!(grid.is_file(), "{} is missing", grid.display());
    }
}

#[test]
fn data_order_covers_each_epoch() {
    let setup = setup();
    let data = TrainingData::new(&setup.dataset, &setup.text).expect("data");
    let n = data.len();
    assert_eq!(n, 8);
    let mut epoch: Vec<usize> = (0..2)
        .flat_map(|step| data.batch_indices(3, step, 4))
        .collect();
    epoch.sort_unstable();
    assert_eq!(epoch, (0..n).collect::<Vec<_>>());
    assert_ne!(data.batch_indices(3, 0, 8), data.batch_indices(3, 1, 8));
    assert_eq!(data.batch_indices(3, 5, 4), data.batch_indices(3, 5, 4));
}

#[test]
fn dataset_skips_bad_rows() {
    let dir = tempdir("bad-rows");
    let fixture = fixtures().join("red-apple.png");
    std::fs::copy(&fixture, dir.join("good.png")).expect("copy");
    std::fs::write(dir.join("text.png"), b"this is not an image").expect("write");
    std::fs::write(
        dir.join("truncated.png"),
        &std::fs::read(&fixture).expect("read")[..60],
    )
    .expect("write");
    let outside = tempdir("outside");
    std::fs::copy(&fixture, outside.join("secret.png")).expect("copy");
    let row = |file: &str, text: &str| MetadataRow {
        file_name: file.into(),
        text: text.into(),
        ..MetadataRow::default()
    };
    let rows = vec![
        row("good.png", "red apple"),
        row("missing.png", "missing file"),
        row("text.png", "a text file"),
        row("truncated.png", "truncated"),
        row("good.png", "   "),
        row("../outside/secret.png", "parent folder"),
        row(
            outside.join("secret.png").to_str().expect("utf-8 path"),
            "absolute path",
        ),
        row("", "no file name"),
    ];
    write_metadata(&dir, &rows).expect("write metadata");
    let mut text = std::fs::read_to_string(dir.join("metadata.jsonl")).expect("read");
    text.push_str("{not json\n\n");
    std::fs::write(dir.join("metadata.jsonl"), text).expect("write");

    let dataset = Dataset::load(&dir, 8).expect("loads the good row");
    assert_eq!(dataset.len(), 1);
    assert_eq!(dataset.examples[0].row.text, "red apple");
    assert_eq!(dataset.skipped, 8);
    assert_eq!(dataset.reasons.len(), 5);
    let reasons = dataset.reasons.join("\n");
    for expected in [
        "line 2",
        "missing.png",
        "line 3",
        "text.png",
        "line 5",
        "empty",
    ] {
        assert!(reasons.contains(expected), "{expected} not in:\n{reasons}");
    }

    // A folder with no usable row is an error that names the fields a row needs.
    write_metadata(&dir, &rows[1..]).expect("write metadata");
    let error = Dataset::load(&dir, 8)
        .expect_err("nothing usable")
        .to_string();
    assert!(error.contains("no usable rows"), "{error}");
    assert!(error.contains("file_name"), "{error}");
}

#[test]
fn tokenizer_round_trips_captions() {
    let setup = setup();
    for caption in setup.dataset.caption_corpus() {
        let encoded = setup.text.encode(&caption).expect("encodes");
        if encoded.truncated_tokens == 0 {
            assert_eq!(setup.text.decode(&encoded.ids), caption.to_lowercase());
        }
    }
    let path = tempdir("tokenizer").join("tokenizer.json");
    setup.text.save(&path).expect("saves");
    let loaded = TextCodec::load(&path, setup.config.text.clone()).expect("loads");
    assert_eq!(
        loaded.encode("a noto emoji of pizza").expect("encodes"),
        setup.text.encode("a noto emoji of pizza").expect("encodes")
    );
}
