//! The status bar: model name, compute backend and the last error.

use eframe::egui;

use crate::worker::ModelInfo;

/// State of model loading.
pub enum ModelState {
    /// The worker is loading the model in this directory.
    Loading(std::path::PathBuf),
    /// A model is loaded.
    Ready(ModelInfo),
    /// No model is loaded; `message` gives the reason and the fix.
    Missing { message: String },
}

/// Draws the status bar. Returns true when the user dismissed the error.
pub fn show(ui: &mut egui::Ui, model: &ModelState, last_error: Option<&str>) -> bool {
    let mut dismissed = false;
    ui.horizontal(|ui| {
        match model {
            ModelState::Loading(dir) => {
                ui.spinner();
                ui.label(format!("loading {}", dir.display()));
            }
            ModelState::Ready(info) => {
                ui.label(format!("model: {}", info.name))
                    .on_hover_text(info.dir.display().to_string());
                ui.separator();
                ui.label(format!("backend: {}", info.backend));
            }
            ModelState::Missing { .. } => {
                ui.colored_label(ui.visuals().warn_fg_color, "no model loaded");
            }
        }
        if let Some(error) = last_error {
            ui.separator();
            let color = ui.visuals().error_fg_color;
            ui.add(egui::Label::new(egui::RichText::new(error).color(color)).truncate())
                .on_hover_text(error);
            if ui.small_button("Dismiss").clicked() {
                dismissed = true;
            }
        }
    });
    dismissed
}
