//! The `jetformer` command line end to end on a tiny model written by the test: every
//! command once, and a table of bad inputs that must fail with one clear sentence.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use image::RgbImage;

mod common;
use common::{CAPTIONS, write_tiny_model};

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("jetformer-cli-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("model")).expect("create");
        write_tiny_model(&dir.join("model"), 6);
        for (index, color) in [[200u8, 30, 30], [30, 30, 200]].iter().enumerate() {
            RgbImage::from_pixel(40, 24, image::Rgb(*color))
                .save(dir.join(format!("image{index}.png")))
                .expect("png");
        }
        std::fs::write(dir.join("captions.txt"), CAPTIONS.join("\n")).expect("captions");
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_jetformer"));
        command.args(["--device", "cpu"]);
        if !args.contains(&"--model") {
            command.arg("--model").arg(self.path("model"));
        }
        command.args(args).output().expect("run jetformer")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[test]
fn every_command_runs() {
    let fixture = Fixture::new("commands");
    let out = fixture.path("out.png");
    let generated = fixture.run(&[
        "generate",
        "--prompt",
        "red square",
        "--seed",
        "3",
        "--out",
        p(&out),
    ]);
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let first = std::fs::read(&out).expect("png written");
    let again = fixture.run(&[
        "generate",
        "--prompt",
        "red square",
        "--seed",
        "3",
        "--out",
        p(&out),
    ]);
    assert!(again.status.success());
    assert_eq!(
        std::fs::read(&out).expect("png"),
        first,
        "same seed, same bytes"
    );

    let many = fixture.run(&[
        "generate",
        "--prompt",
        "blue",
        "--count",
        "2",
        "--guidance",
        "2",
        "--out",
        p(&fixture.path("many.png")),
    ]);
    assert!(many.status.success(), "{}", text(&many.stderr));
    assert!(fixture.path("many-1.png").exists());
    assert!(fixture.path("many-2.png").exists());

    let best = fixture.run(&[
        "--json",
        "generate",
        "--prompt",
        "blue",
        "--candidates",
        "3",
        "--out",
        p(&fixture.path("best.png")),
    ]);
    assert!(best.status.success(), "{}", text(&best.stderr));
    let report: serde_json::Value = serde_json::from_slice(&best.stdout).expect("json");
    assert_eq!(report["candidates"], 3);
    let scores = report["prompt_log_likelihoods"].as_array().expect("scores");
    assert_eq!(scores.len(), 1);
    assert!(
        scores[0].as_f64().is_some_and(|score| score < 0.0),
        "{report}"
    );

    // A batch whose second file cannot be written leaves the first file as it was.
    std::fs::write(fixture.path("batch-1.png"), b"kept").expect("write");
    std::fs::create_dir(fixture.path("batch-2.png")).expect("mkdir");
    let blocked = fixture.run(&[
        "generate",
        "--prompt",
        "blue",
        "--count",
        "2",
        "--out",
        p(&fixture.path("batch.png")),
    ]);
    assert!(!blocked.status.success());
    assert!(
        text(&blocked.stderr).contains("exists and is not a file"),
        "{}",
        text(&blocked.stderr)
    );
    assert_eq!(
        std::fs::read(fixture.path("batch-1.png")).expect("read"),
        b"kept"
    );

    let image0 = fixture.path("image0.png");
    let image1 = fixture.path("image1.png");
    let caption = fixture.run(&["--json", "caption", p(&image0), p(&image1)]);
    assert!(caption.status.success(), "{}", text(&caption.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&caption.stdout).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(2));

    let rank = fixture.run(&[
        "--json",
        "rank",
        p(&image0),
        "--captions",
        p(&fixture.path("captions.txt")),
        "--top",
        "3",
    ]);
    assert!(rank.status.success(), "{}", text(&rank.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&rank.stdout).expect("json");
    assert_eq!(rows.as_array().map(Vec::len), Some(3));
    assert_eq!(
        rows[0]["calibrated"], false,
        "ranked without caption-priors.json"
    );

    // Priors beside the model calibrate the ranking: a caption with a very low prior wins.
    let priors = |entries: &[(&str, f64)]| {
        let priors: serde_json::Map<String, serde_json::Value> = entries
            .iter()
            .map(|(caption, prior)| (caption.to_string(), serde_json::json!(prior)))
            .collect();
        let json = serde_json::json!({ "images": 2, "priors": priors });
        std::fs::write(fixture.path("model/caption-priors.json"), json.to_string())
            .expect("write priors");
    };
    let rank_top = |extra: &[&str]| {
        let captions = fixture.path("captions.txt");
        let mut args = vec!["--json", "rank", p(&image0), "--captions", p(&captions)];
        args.extend_from_slice(extra);
        let output = fixture.run(&args);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        let top = &rows[0];
        (
            top["caption"].clone(),
            top["calibrated"].clone(),
            top["reranked"].clone(),
        )
    };
    let mut entries: Vec<(&str, f64)> = CAPTIONS.iter().map(|caption| (*caption, 0.0)).collect();
    entries[3].1 = -1000.0;
    priors(&entries);
    assert_eq!(
        rank_top(&[]),
        (CAPTIONS[3].into(), true.into(), true.into())
    );
    assert_eq!(
        rank_top(&["--rerank", "0"]),
        (CAPTIONS[3].into(), true.into(), false.into())
    );
    assert_eq!(rank_top(&["--plain"]).1, false);
    assert_eq!(
        rank_top(&["--plain"]).2,
        false,
        "a plain ranking was re-ranked"
    );
    priors(&entries[..3]);
    assert_eq!(
        rank_top(&[]).1,
        false,
        "a caption without a prior must leave it plain"
    );
    std::fs::remove_file(fixture.path("model/caption-priors.json")).expect("remove priors");

    let bpd = fixture.run(&["--json", "bpd", p(&image0), "--caption", "red square"]);
    assert!(bpd.status.success(), "{}", text(&bpd.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&bpd.stdout).expect("json");
    let bits = rows[0]["bits_per_dim"].as_f64().expect("number");
    assert!(bits.is_finite());
    assert!(bits > 0.0);
    let drawn = fixture.run(&[
        "--json",
        "bpd",
        p(&image0),
        "--caption",
        "red square",
        "--draws",
        "4",
    ]);
    assert!(drawn.status.success(), "{}", text(&drawn.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&drawn.stdout).expect("json");
    let drawn_bits = rows[0]["bits_per_dim"].as_f64().expect("number");
    assert!(drawn_bits.is_finite());
    assert_ne!(drawn_bits, bits, "more draws of noise change the estimate");

    let strip = fixture.path("strip.png");
    let interpolate = fixture.run(&[
        "interpolate",
        p(&image0),
        p(&image1),
        "--steps",
        "4",
        "--out",
        p(&strip),
    ]);
    assert!(
        interpolate.status.success(),
        "{}",
        text(&interpolate.stderr)
    );
    let strip = image::open(&strip).expect("strip");
    assert_eq!((strip.width(), strip.height()), (32, 8));

    let long = fixture.run(&[
        "generate",
        "--prompt",
        &"red square ".repeat(10),
        "--out",
        p(&fixture.path("long.png")),
    ]);
    assert!(long.status.success(), "{}", text(&long.stderr));
    assert!(text(&long.stderr).contains("tokens were dropped"));
}

#[test]
fn bad_inputs_fail_with_a_message() {
    let fixture = Fixture::new("errors");
    std::fs::write(fixture.path("notes.txt"), "not an image").expect("write");
    let good = std::fs::read(fixture.path("image0.png")).expect("read");
    std::fs::write(fixture.path("truncated.png"), &good[..good.len() / 2]).expect("write");
    RgbImage::new(17_000, 1)
        .save(fixture.path("wide.png"))
        .expect("png");
    let broken_model = fixture.path("broken");
    std::fs::create_dir_all(&broken_model).expect("dir");
    std::fs::copy(
        fixture.path("model/config.json"),
        broken_model.join("config.json"),
    )
    .expect("copy");
    std::fs::write(broken_model.join("model.safetensors"), b"garbage").expect("write");
    std::fs::copy(
        fixture.path("model/tokenizer.json"),
        broken_model.join("tokenizer.json"),
    )
    .expect("copy");
    let no_tokenizer = fixture.path("no-tokenizer");
    std::fs::create_dir_all(&no_tokenizer).expect("dir");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.path("model").join(file), no_tokenizer.join(file)).expect("copy");
    }

    let out = fixture.path("never.png");
    let missing = fixture.path("missing.png");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["caption".into(), p(&missing).into()], "missing.png"),
        (
            vec![
                "rank".into(),
                p(&fixture.path("image0.png")).into(),
                "--captions".into(),
                p(&fixture.path("captions.txt")).into(),
                "--top".into(),
                "0".into(),
            ],
            "--top",
        ),
        (vec!["bench".into(), "--runs".into(), "0".into()], "--runs"),
        (
            vec![
                "interpolate".into(),
                p(&fixture.path("image0.png")).into(),
                p(&fixture.path("image1.png")).into(),
                "--steps".into(),
                "100000".into(),
                "--out".into(),
                p(&out).into(),
            ],
            "use between 2 and 256",
        ),
        (
            vec![
                "--model".into(),
                p(&fixture.path("no-such-model")).into(),
                "caption".into(),
                p(&fixture.path("image0.png")).into(),
            ],
            "not found",
        ),
        (
            vec!["caption".into(), p(&fixture.path("notes.txt")).into()],
            "not an image",
        ),
        (
            vec!["caption".into(), p(&fixture.path("truncated.png")).into()],
            "could not decode",
        ),
        (
            vec!["bpd".into(), p(&fixture.path("wide.png")).into()],
            "decoding limits",
        ),
        (
            vec![
                "bpd".into(),
                p(&fixture.path("image0.png")).into(),
                "--draws".into(),
                "0".into(),
            ],
            "--draws is 0; use 1 or more",
        ),
        (
            vec![
                "generate".into(),
                "--prompt".into(),
                "".into(),
                "--out".into(),
                p(&out).into(),
            ],
            "empty",
        ),
        (
            vec![
                "generate".into(),
                "--prompt".into(),
                "   ".into(),
                "--out".into(),
                p(&out).into(),
            ],
            "empty",
        ),
        (
            vec![
                "generate".into(),
                "--prompt".into(),
                "red\u{7}".into(),
                "--out".into(),
                p(&out).into(),
            ],
            "control character",
        ),
        (
            vec![
                "generate".into(),
                "--prompt".into(),
                "red".into(),
                "--out".into(),
                p(&fixture.path("x.jpg")).into(),
            ],
            ".png",
        ),
        (
            vec![
                "generate".into(),
                "--prompt".into(),
                "red".into(),
                "--temperature".into(),
                "0".into(),
                "--out".into(),
                p(&out).into(),
            ],
            "temperature",
        ),
        (
            vec![
                "generate".into(),
                "--prompt".into(),
                "red".into(),
                "--count".into(),
                "100000".into(),
                "--out".into(),
                p(&out).into(),
            ],
            "is 800000 samples, more than the 1024 samples one call takes",
        ),
        (
            vec![
                "generate".into(),
                "--prompt".into(),
                "red".into(),
                "--candidates".into(),
                "0".into(),
                "--out".into(),
                p(&out).into(),
            ],
            "0 candidates is out of range; use a whole number from 1 to 64",
        ),
        (
            vec![
                "--model".into(),
                p(&fixture.path("nowhere")).into(),
                "caption".into(),
                p(&fixture.path("image0.png")).into(),
            ],
            "nowhere",
        ),
        (
            vec![
                "--model".into(),
                p(&broken_model).into(),
                "caption".into(),
                p(&fixture.path("image0.png")).into(),
            ],
            "model.safetensors",
        ),
        (
            vec![
                "--model".into(),
                p(&no_tokenizer).into(),
                "caption".into(),
                p(&fixture.path("image0.png")).into(),
            ],
            "tokenizer",
        ),
        (
            vec![
                "rank".into(),
                p(&fixture.path("image0.png")).into(),
                "--captions".into(),
                p(&missing).into(),
            ],
            "missing.png",
        ),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = fixture.run(&args);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected '{expected}' in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
    assert!(!out.exists(), "a failed command left an output file");
}
