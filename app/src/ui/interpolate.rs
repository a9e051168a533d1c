//! The interpolation panel: two images picked from the gallery or the drop zone, a slider
//! through latent space with a live decode, and an "Export strip" button.

use eframe::egui::{self, ColorImage, TextureHandle, TextureOptions};
use image::RgbImage;

/// Side of the decoded blend in points.
const PREVIEW: f32 = 160.0;

/// Requests from the interpolation panel to the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterpolateAction {
    /// Decode a strip between the two images and save it.
    ExportStrip,
}

/// An image that can be an end of the interpolation.
pub struct Source {
    /// Gallery entry or dropped image id.
    pub id: u64,
    /// Name shown in the pickers.
    pub title: String,
}

/// Picked images, the slider and the latest decoded blend.
#[derive(Default)]
pub struct Interpolation {
    /// The image at t = 0.
    pub first: Option<u64>,
    /// The image at t = 1.
    pub second: Option<u64>,
    /// Position of the slider, 0 to 1.
    pub t: f32,
    /// Request id and `(pair, t)` of the decode the worker is running, if any.
    in_flight: Option<(u64, [u64; 2], f32)>,
    /// The pair and t of the shown blend, and its texture.
    shown: Option<([u64; 2], f32, TextureHandle)>,
}

impl Interpolation {
    /// Returns the pair and slider position to decode next, if the shown blend is stale and
    /// no decode is running.
    pub fn next_request(&self) -> Option<([u64; 2], f32)> {
        let pair = [self.first?, self.second?];
        if self.in_flight.is_some() {
            return None;
        }
        match &self.shown {
            Some((shown_pair, shown_t, _)) if *shown_pair == pair && *shown_t == self.t => None,
            _ => Some((pair, self.t)),
        }
    }

    /// Returns the slider position of the blend on show.
    pub fn shown_t(&self) -> Option<f32> {
        self.shown.as_ref().map(|(_, t, _)| *t)
    }

    /// Records that request `id` has the worker decode `pair` at `t`.
    pub fn mark_sent(&mut self, id: u64, pair: [u64; 2], t: f32) {
        self.in_flight = Some((id, pair, t));
    }

    /// Shows the blend decoded for request `id`.
    pub fn finish(&mut self, ctx: &egui::Context, id: u64, image: &RgbImage) {
        let Some((expected, pair, t)) = self.in_flight else {
            return;
        };
        if expected != id {
            return;
        }
        self.in_flight = None;
        let pixels = ColorImage::from_rgb(
            [image.width() as usize, image.height() as usize],
            image.as_raw(),
        );
        let texture = match self.shown.take() {
            Some((_, _, mut texture)) => {
                texture.set(pixels, TextureOptions::NEAREST);
                texture
            }
            None => ctx.load_texture("interpolation", pixels, TextureOptions::NEAREST),
        };
        self.shown = Some((pair, t, texture));
    }

    /// Forgets request `id` after it failed, and the pair too, so the failure does not repeat.
    pub fn fail(&mut self, id: u64) {
        if self
            .in_flight
            .is_some_and(|(expected, _, _)| expected == id)
        {
            self.in_flight = None;
            self.second = None;
        }
    }

    /// Draws the panel. `strip_steps` is the number of images in an exported strip.
    pub fn show(
        &mut self,
        ui: &mut egui::Ui,
        sources: &[Source],
        strip_steps: &mut usize,
        enabled: bool,
    ) -> Option<InterpolateAction> {
        let mut action = None;
        if sources.len() < 2 {
            ui.weak("Generate or drop two images to blend them through latent space.");
            return None;
        }
        picker(ui, "From (t = 0)", &mut self.first, sources);
        picker(ui, "To (t = 1)", &mut self.second, sources);
        ui.add_enabled(
            self.first.is_some() && self.second.is_some(),
            egui::Slider::new(&mut self.t, 0.0..=1.0).text("Blend (t)"),
        )
        .on_hover_text("Linear blend of the two images' flow latents, decoded live");
        if let Some((_, t, texture)) = &self.shown {
            let size = egui::Vec2::splat(PREVIEW);
            ui.add(egui::Image::new((texture.id(), size)))
                .on_hover_text(format!("Decoded at t = {t:.2}"));
        }
        ui.horizontal(|ui| {
            ui.add(egui::Slider::new(strip_steps, 2..=32).text("images in strip"));
            let ready = enabled && self.first.is_some() && self.second.is_some();
            if ui
                .add_enabled(ready, egui::Button::new("Export strip…"))
                .on_hover_text("Decode evenly spaced blends and save them as one PNG")
                .clicked()
            {
                action = Some(InterpolateAction::ExportStrip);
            }
        });
        action
    }
}

fn picker(ui: &mut egui::Ui, label: &str, selected: &mut Option<u64>, sources: &[Source]) {
    let current = selected
        .and_then(|id| sources.iter().find(|source| source.id == id))
        .map_or("pick an image", |source| source.title.as_str());
    egui::ComboBox::from_label(label)
        .selected_text(current)
        .width(200.0)
        .show_ui(ui, |ui| {
            for source in sources {
                ui.selectable_value(selected, Some(source.id), &source.title);
            }
        });
}
