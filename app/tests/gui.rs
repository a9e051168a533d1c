//! The desktop window driven through egui_kittest on a tiny model written by the test: no
//! display and no GPU needed, because the canvas falls back to egui drawing and the worker
//! runs on the CPU backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::tensor::Device;
use eframe::egui;
use eframe::egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use image::RgbImage;
use jetformer::gui::{JetformerApp, LaunchOptions, RendererChoice};
use jetformer::state::Settings;
use jetformer_engine::checkpoint::load_bundle;
use jetformer_engine::image::{DecodeLimits, load_rgb};
use jetformer_engine::infer::{self, CaptionOptions};
use jetformer_engine::{BackendChoice, JetFormerConfig};

mod common;
use common::{CAPTIONS, write_tiny_model};

/// Maximum wait for the worker. The tiny model responds in milliseconds.
const TIMEOUT: Duration = Duration::from_secs(120);

struct Fixture {
    dir: PathBuf,
    config: JetFormerConfig,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("jetformer-gui-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("model")).expect("create");
        let config = write_tiny_model(&dir.join("model"), 16);
        std::fs::write(dir.join("model/concepts.txt"), CAPTIONS.join("\n")).expect("concepts");
        RgbImage::from_pixel(40, 24, image::Rgb([200, 30, 30]))
            .save(dir.join("red.png"))
            .expect("png");
        std::fs::write(dir.join("notes.txt"), "not an image").expect("text");
        Self { dir, config }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A file dropped on the window, as winit reports one on the desktop.
#[derive(Debug)]
struct DroppedPath(PathBuf);

impl egui::DroppedFile for DroppedPath {
    fn path(&self) -> &Path {
        &self.0
    }

    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|error| error.to_string())
    }
}

type AppHarness = Harness<'static, Option<JetformerApp>>;

fn harness(model_dir: PathBuf) -> AppHarness {
    // An untrained model's captions are arbitrary bytes, often U+FFFD, which the test fonts
    // lack.
    Harness::builder()
        .with_size(egui::Vec2::new(1400.0, 900.0))
        .allow_missing_glyphs()
        .build_ui_state(
            move |ui, app: &mut Option<JetformerApp>| {
                let app = app.get_or_insert_with(|| {
                    let launch = LaunchOptions {
                        model_dir: Some(model_dir.clone()),
                        backend: BackendChoice::Cpu,
                        renderer: RendererChoice::Auto,
                    };
                    JetformerApp::new(ui.ctx(), Settings::default(), launch, false)
                        .expect("start the app")
                });
                app.show(ui);
            },
            None,
        )
}

fn app(harness: &AppHarness) -> &JetformerApp {
    harness.state().as_ref().expect("app started")
}

/// Steps frames until `done` holds, failing after [`TIMEOUT`].
fn step_until(harness: &mut AppHarness, what: &str, done: impl Fn(&JetformerApp) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        harness.step();
        if harness.state().as_ref().is_some_and(&done) {
            // One more frame draws what the last event changed.
            harness.step();
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn drop_file(harness: &mut AppHarness, path: PathBuf) {
    harness
        .input_mut()
        .dropped_files
        .push(Arc::new(DroppedPath(path)));
}

#[test]
fn generate_shows_progress_and_gallery() {
    let fixture = Fixture::new("generate");
    let mut harness = harness(fixture.path("model"));
    step_until(&mut harness, "the model", JetformerApp::model_ready);

    let prompt = harness.get_by_role_and_label(Role::TextInput, "Prompt");
    prompt.focus();
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    harness
        .get_by_role_and_label(Role::TextInput, "Prompt")
        .type_text("blue circle");
    harness.step();
    assert_eq!(app(&harness).settings().prompt, "blue circle");

    harness
        .get_by_role_and_label(Role::Button, "Generate")
        .click();
    step_until(&mut harness, "the gallery entry", |app| {
        app.gallery_len() == 1
    });
    assert!(!app(&harness).is_generating());
    assert_eq!(app(&harness).last_error(), None);

    let tokens = fixture.config.num_tokens();
    let progress = format!("{tokens} / {tokens} tokens");
    assert!(
        harness
            .query_all_by_label_contains(&progress)
            .next()
            .is_some(),
        "no progress label with '{progress}'"
    );
    assert!(harness.query_all_by_label_contains("done").next().is_some());
    let entries = harness.query_all_by_label_contains("blue circle").count();
    assert!(entries >= 2, "the gallery shows no entry for the prompt");
    assert!(harness.query_by_label("generated image").is_some());

    // Enter in the prompt box generates again, here the best of 3 candidates: the gallery
    // gains one image, not three.
    harness
        .get_by_role_and_label(Role::Slider, "Best of")
        .set_value_accesskit(3.0);
    harness.step();
    assert_eq!(app(&harness).settings().candidates, 3);
    harness
        .get_by_role_and_label(Role::TextInput, "Prompt")
        .focus();
    harness.key_press(egui::Key::Enter);
    step_until(&mut harness, "the second entry", |app| {
        !app.is_generating() && app.gallery_len() >= 2
    });
    assert_eq!(app(&harness).gallery_len(), 2);
    assert_eq!(app(&harness).last_error(), None);
}

#[test]
fn dropped_image_is_captioned_and_ranked() {
    let fixture = Fixture::new("drop");
    let mut harness = harness(fixture.path("model"));
    step_until(&mut harness, "the model", JetformerApp::model_ready);

    drop_file(&mut harness, fixture.path("red.png"));
    harness.step();
    step_until(&mut harness, "the caption", |app| {
        !app.understanding_pending()
    });
    assert_eq!(app(&harness).last_error(), None);

    // The window must show what the engine computes for the same image.
    let bundle = load_bundle(&fixture.path("model"), &Device::flex()).expect("load");
    let size = fixture.config.image.size as u32;
    let view = load_rgb(&fixture.path("red.png"), size, DecodeLimits::default()).expect("image");
    let ids = infer::caption(
        &bundle.model,
        std::slice::from_ref(&view),
        &CaptionOptions::default(),
    )
    .expect("caption");
    let caption = bundle.text.decode(&ids[0]);
    let bits = infer::bits_per_dim(&bundle.model, &[view], None, 0).expect("bpd")[0];
    let caption_label = format!("Caption: {caption}");
    assert!(
        harness.query_by_label(&caption_label).is_some(),
        "no label '{caption_label}'"
    );
    let bits_label = format!("Bits per dimension: {bits:.3}");
    assert!(
        harness.query_by_label(&bits_label).is_some(),
        "no label '{bits_label}'"
    );
    let ranked = harness.query_all_by_label_contains("% ").count();
    assert_eq!(ranked, CAPTIONS.len(), "every concept is ranked");
}

#[test]
fn bad_drops_show_errors() {
    let fixture = Fixture::new("bad-drops");
    let good = std::fs::read(fixture.path("red.png")).expect("read");
    std::fs::write(fixture.path("truncated.png"), &good[..good.len() / 2]).expect("write");
    let mut harness = harness(fixture.path("model"));
    step_until(&mut harness, "the model", JetformerApp::model_ready);

    let cases = [
        ("notes.txt", "not an image"),
        ("truncated.png", "could not decode"),
        ("model", "is a folder"),
        ("missing.png", "missing.png"),
    ];
    for (name, expected) in cases {
        drop_file(&mut harness, fixture.path(name));
        harness.step();
        step_until(&mut harness, name, |app| !app.understanding_pending());
        let error = app(&harness).last_error().unwrap_or_default().to_string();
        assert!(
            error.contains(expected),
            "{name}: expected '{expected}' in '{error}'"
        );
        assert!(
            harness
                .query_all_by_label_contains(expected)
                .next()
                .is_some(),
            "{name}: the window shows no '{expected}'"
        );
    }
    // The worker survives the errors.
    drop_file(&mut harness, fixture.path("red.png"));
    harness.step();
    step_until(&mut harness, "the caption", |app| {
        !app.understanding_pending()
    });
    assert!(
        harness
            .query_all_by_label_contains("Caption: ")
            .next()
            .is_some()
    );
}

#[test]
fn slider_changes_the_setting() {
    let fixture = Fixture::new("slider");
    let mut harness = harness(fixture.path("model"));
    harness.step();
    let before = app(&harness).settings().temperature;
    harness
        .get_by_role_and_label(Role::Slider, "Temperature")
        .set_value_accesskit(0.8);
    harness.step();
    let after = app(&harness).settings().temperature;
    assert_ne!(after, before);
    assert!((after - 0.8).abs() < 1e-9, "temperature is {after}");

    harness
        .get_by_role_and_label(Role::Slider, "Guidance")
        .set_value_accesskit(3.0);
    harness.step();
    assert!((app(&harness).settings().guidance - 3.0).abs() < 1e-9);
}

#[test]
fn missing_model_shows_a_message() {
    let fixture = Fixture::new("missing");
    let mut harness = harness(fixture.path("nowhere"));
    step_until(&mut harness, "the model state", JetformerApp::model_settled);
    harness.step();
    assert!(!app(&harness).model_ready());
    assert!(
        harness
            .query_all_by_label_contains("no model loaded")
            .next()
            .is_some()
    );
    assert!(
        harness
            .query_all_by_label_contains("nowhere")
            .next()
            .is_some()
    );

    // Generating without a model reports it instead of failing silently.
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    harness.step();
    let error = app(&harness).last_error().unwrap_or_default().to_string();
    assert!(error.contains("no model loaded"), "{error}");
}

#[test]
fn broken_model_reports_the_file() {
    let fixture = Fixture::new("broken");
    let broken = fixture.path("broken");
    std::fs::create_dir_all(&broken).expect("dir");
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture.path("model").join(file), broken.join(file)).expect("copy");
    }
    std::fs::write(broken.join("model.safetensors"), b"garbage").expect("write");
    let mut harness = harness(broken);
    step_until(&mut harness, "the model state", JetformerApp::model_settled);
    assert!(!app(&harness).model_ready());
    let error = app(&harness).last_error().unwrap_or_default().to_string();
    assert!(error.contains("not a readable safetensors file"), "{error}");
    assert!(
        harness
            .query_all_by_label_contains("no model loaded")
            .next()
            .is_some()
    );
}

#[test]
fn interpolation_blends_and_exports_strip() {
    let fixture = Fixture::new("strip");
    let mut harness = harness(fixture.path("model"));
    step_until(&mut harness, "the model", JetformerApp::model_ready);
    harness
        .state_mut()
        .as_mut()
        .expect("app started")
        .use_typed_paths();
    for entries in 1..=2 {
        harness
            .get_by_role_and_label(Role::Button, "Generate")
            .click();
        step_until(&mut harness, "a gallery entry", |app| {
            app.gallery_len() == entries
        });
    }

    // Pick the older image as t = 0 and the newer one as t = 1.
    for (picker, newer) in [("From (t = 0)", false), ("To (t = 1)", true)] {
        harness
            .get_by_role_and_label(Role::ComboBox, picker)
            .click();
        harness.step();
        let option = picker_option(&harness, newer);
        let listed = "the option is listed";
        harness
            .query_all_by_role_and_label(Role::Button, &option)
            .next()
            .expect(listed)
            .hover();
        harness.step();
        harness
            .query_all_by_role_and_label(Role::Button, &option)
            .next()
            .expect(listed)
            .click();
        harness.step();
        harness.step();
        let chosen = harness.get_by_role_and_label(Role::ComboBox, picker);
        assert_eq!(chosen.value().as_deref(), Some(option.as_str()));
    }
    step_until(&mut harness, "the blend at t = 0", |app| {
        app.interpolation_shown() == Some(0.0)
    });
    harness
        .get_by_role_and_label(Role::Slider, "Blend (t)")
        .set_value_accesskit(0.5);
    step_until(&mut harness, "the blend at t = 0.5", |app| {
        app.interpolation_shown() == Some(0.5)
    });

    harness
        .get_by_role_and_label(Role::Button, "Export strip…")
        .click();
    let deadline = Instant::now() + TIMEOUT;
    while harness
        .query_by_role_and_label(Role::TextInput, "Path")
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the path field"
        );
        harness.step();
        std::thread::sleep(Duration::from_millis(5));
    }
    let path = fixture.path("strip.png");
    harness
        .get_by_role_and_label(Role::TextInput, "Path")
        .type_text(path.to_str().expect("utf-8 path"));
    harness.step();
    harness.get_by_role_and_label(Role::Button, "OK").click();
    step_until(&mut harness, "the strip file", |_| path.is_file());
    assert_eq!(app(&harness).last_error(), None);

    let settings = app(&harness).settings();
    let (steps, scale) = (settings.strip_steps as u32, settings.save_scale);
    let side = fixture.config.image.size as u32;
    let strip = image::open(&path).expect("the strip is a PNG").to_rgb8();
    assert_eq!(strip.dimensions(), (steps * side * scale, side * scale));
    // The ends of the strip are the two picked images, up to the flow's round-trip error.
    for (tile, index) in [(0, 0), (steps - 1, 1)] {
        let expected = app(&harness).gallery_image(index).expect("gallery image");
        let mut worst = 0u8;
        for (x, y, pixel) in expected.enumerate_pixels() {
            let shown = strip.get_pixel((tile * side + x) * scale, y * scale);
            for (a, b) in pixel.0.iter().zip(shown.0) {
                worst = worst.max(a.abs_diff(b));
            }
        }
        assert!(worst <= 2, "tile {tile} differs from its image by {worst}");
    }
}

/// Returns the label of the oldest or the newest gallery image in an open image picker
/// (labels are "#id prompt").
fn picker_option(harness: &AppHarness, newest: bool) -> String {
    let mut options: Vec<(u64, String)> = harness
        .query_all_by_role(Role::Button)
        .filter_map(|node| node.accesskit_node().label())
        .filter_map(|label| {
            let id = label.strip_prefix('#')?.split(' ').next()?.parse().ok()?;
            Some((id, label))
        })
        .collect();
    options.sort();
    let picked = if newest {
        options.last()
    } else {
        options.first()
    };
    picked.expect("the picker lists the gallery").1.clone()
}
