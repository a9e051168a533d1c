//! The prompt panel: prompt box, Generate / Cancel, image count, candidates per image,
//! sampling sliders and seed.

use eframe::egui::{self, Key};

use crate::state::{MAX_COUNT, MAX_WINDOW_CANDIDATES, Settings};

/// Requests from the prompt panel to the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptAction {
    /// Start a generation with the current settings.
    Generate,
    /// Stop the running generation.
    Cancel,
}

/// Draws the panel. `running` turns Generate into Cancel; `can_generate` is false while no
/// model is loaded.
pub fn show(
    ui: &mut egui::Ui,
    settings: &mut Settings,
    running: bool,
    can_generate: bool,
) -> Option<PromptAction> {
    let mut action = None;
    ui.heading("Text to image");
    let label = ui.label("Prompt");
    let prompt = ui
        .add(
            egui::TextEdit::singleline(&mut settings.prompt)
                .hint_text("describe an image")
                .desired_width(f32::INFINITY),
        )
        .labelled_by(label.id);
    if prompt.lost_focus() && ui.input(|input| input.key_pressed(Key::Enter)) && !running {
        action = Some(PromptAction::Generate);
    }

    ui.horizontal(|ui| {
        if running {
            if ui
                .button("Cancel")
                .on_hover_text("Stop sampling (Esc)")
                .clicked()
            {
                action = Some(PromptAction::Cancel);
            }
        } else {
            let button = ui
                .add_enabled(can_generate, egui::Button::new("Generate"))
                .on_hover_text("Sample images for the prompt (Enter or Ctrl+Enter)")
                .on_disabled_hover_text("Load a model first (Model menu)");
            if button.clicked() {
                action = Some(PromptAction::Generate);
            }
        }
        ui.add(egui::Slider::new(&mut settings.count, 1..=MAX_COUNT).text("images"));
    });
    ui.add(egui::Slider::new(&mut settings.candidates, 1..=MAX_WINDOW_CANDIDATES).text("Best of"))
        .on_hover_text(
            "Samples this many images for each one shown and keeps the one the model itself \
         captions closest to the prompt",
        );

    ui.separator();
    sliders(ui, settings);
    ui.separator();
    seed_row(ui, settings);
    action
}

fn sliders(ui: &mut egui::Ui, settings: &mut Settings) {
    ui.add(
        egui::Slider::new(&mut settings.temperature, 0.05..=2.0)
            .text("Temperature")
            .fixed_decimals(2),
    )
    .on_hover_text("Multiplies every mixture scale: lower gives smoother, less varied images");
    ui.add(
        egui::Slider::new(&mut settings.mixture_temperature, 0.05..=2.0)
            .text("Mixture temperature")
            .fixed_decimals(2),
    )
    .on_hover_text("Multiplies the mixture logits: lower favours the most likely component");
    ui.add(
        egui::Slider::new(&mut settings.noise_factor, 0.0..=2.0)
            .text("Noise factor")
            .fixed_decimals(2),
    )
    .on_hover_text("Scale of the factored-out latent dims; 0 sets them to zero");
    ui.add(
        egui::Slider::new(&mut settings.guidance, 0.0..=10.0)
            .text("Guidance")
            .fixed_decimals(1),
    )
    .on_hover_text("Classifier-free guidance weight; 0 turns guidance off");
}

fn seed_row(ui: &mut egui::Ui, settings: &mut Settings) {
    ui.horizontal(|ui| {
        let label = ui.label("Seed");
        ui.add_enabled(
            !settings.random_seed,
            egui::DragValue::new(&mut settings.seed).speed(1.0),
        )
        .labelled_by(label.id)
        .on_hover_text("The same seed and settings give the same images");
        ui.checkbox(&mut settings.random_seed, "random")
            .on_hover_text("Draw a new seed for every generation");
    });
}
