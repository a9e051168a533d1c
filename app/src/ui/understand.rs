//! The drop zone: images dropped or opened, each with the model's view of it, its caption,
//! the best candidate captions with probabilities, and its bits per dimension.

use std::path::PathBuf;

use eframe::egui::{self, Color32, ColorImage, TextureHandle, TextureOptions};

use crate::worker::Understanding;

/// Side of the model-view thumbnail in points.
const THUMBNAIL: f32 = 96.0;

/// Progress of an image being understood.
pub enum CardState {
    /// The worker is decoding and captioning it.
    Pending,
    /// The worker finished.
    Done {
        result: Understanding,
        texture: TextureHandle,
    },
    /// Decoding or captioning failed.
    Failed(String),
}

/// One dropped or opened image.
pub struct Card {
    /// Identifier, unique among gallery entries and dropped images.
    pub id: u64,
    /// The file.
    pub path: PathBuf,
    /// Progress or result.
    pub state: CardState,
}

impl Card {
    /// Returns the file name for lists.
    pub fn title(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        )
    }
}

/// Requests from the drop zone to the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnderstandAction {
    /// Show the Open dialog.
    Open,
    /// Remove card `id`.
    Remove(u64),
}

/// Every dropped image, newest first.
#[derive(Default)]
pub struct Understand {
    cards: Vec<Card>,
}

impl Understand {
    /// Adds a card for `path` in `state`.
    pub fn add(&mut self, id: u64, path: PathBuf, state: CardState) {
        self.cards.insert(0, Card { id, path, state });
    }

    /// Stores the worker's result for card `id`.
    pub fn finish(&mut self, ctx: &egui::Context, id: u64, result: Understanding) {
        let Some(card) = self.cards.iter_mut().find(|card| card.id == id) else {
            return;
        };
        let view = &result.model_view;
        let pixels = ColorImage::from_rgb(
            [view.width() as usize, view.height() as usize],
            view.as_raw(),
        );
        let texture = ctx.load_texture(format!("dropped-{id}"), pixels, TextureOptions::NEAREST);
        card.state = CardState::Done { result, texture };
    }

    /// Marks card `id` as failed with `message`.
    pub fn fail(&mut self, id: u64, message: String) {
        if let Some(card) = self.cards.iter_mut().find(|card| card.id == id) {
            card.state = CardState::Failed(message);
        }
    }

    /// Returns every card, newest first.
    pub fn cards(&self) -> &[Card] {
        &self.cards
    }

    /// Draws the drop zone and the cards. `ranking_note` explains missing candidate captions.
    pub fn show(
        &mut self,
        ui: &mut egui::Ui,
        ranking_note: Option<&str>,
        files_hovered: bool,
    ) -> Option<UnderstandAction> {
        let mut action = None;
        let stroke = if files_hovered {
            ui.visuals().selection.stroke
        } else {
            ui.visuals().widgets.noninteractive.bg_stroke
        };
        egui::Frame::group(ui.style())
            .stroke(stroke)
            .show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.vertical_centered(|ui| {
                    if files_hovered {
                        ui.strong("Release to caption these images");
                    } else {
                        ui.label("Drop images here to caption them");
                    }
                    if ui
                        .button("Open images…")
                        .on_hover_text("Pick image files (Ctrl+O)")
                        .clicked()
                    {
                        action = Some(UnderstandAction::Open);
                    }
                    ui.weak("On Wayland, drag and drop may not reach the window: use Open.");
                });
            });
        if let Some(note) = ranking_note {
            ui.weak(note);
        }
        for card in &self.cards {
            ui.separator();
            if let Some(clicked) = show_card(ui, card) {
                action = Some(clicked);
            }
        }
        if let Some(UnderstandAction::Remove(id)) = action {
            self.cards.retain(|card| card.id != id);
        }
        action
    }
}

fn show_card(ui: &mut egui::Ui, card: &Card) -> Option<UnderstandAction> {
    let mut action = None;
    ui.horizontal(|ui| {
        ui.strong(card.title());
        if ui.small_button("Remove").clicked() {
            action = Some(UnderstandAction::Remove(card.id));
        }
    });
    match &card.state {
        CardState::Pending => {
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label("Captioning…");
            });
        }
        CardState::Failed(message) => {
            ui.colored_label(ui.visuals().error_fg_color, message);
        }
        CardState::Done { result, texture } => {
            ui.horizontal_top(|ui| {
                let size = egui::Vec2::splat(THUMBNAIL);
                ui.add(egui::Image::new((texture.id(), size)))
                    .on_hover_text("The image as the model sees it");
                ui.vertical(|ui| {
                    ui.label(format!("Caption: {}", result.caption));
                    ui.label(format!("Bits per dimension: {:.3}", result.bits_per_dim));
                    if !result.ranking.is_empty() {
                        let heading = ui.weak("Best matching names");
                        if result.reranked > 0 {
                            heading.on_hover_text(format!(
                                "Ranked by how much more likely the image makes each name than \
                                 it is on average (each name's prior is in caption-priors.json); \
                                 the best {} are also scored by how much more likely each name \
                                 makes the image",
                                result.reranked
                            ));
                        } else if result.calibrated {
                            heading.on_hover_text(
                                "Ranked by how much more likely the image makes each name than \
                                 it is on average (each name's prior is in caption-priors.json)",
                            );
                        } else {
                            heading.on_hover_text(
                                "Ranked by the likelihood of each name given the image; short \
                                 names are favoured. Run `jetformer eval` to write \
                                 caption-priors.json, which calibrates the ranking",
                            );
                        }
                    }
                    for (caption, probability) in &result.ranking {
                        ranking_row(ui, caption, *probability);
                    }
                });
            });
        }
    }
    action
}

fn ranking_row(ui: &mut egui::Ui, caption: &str, probability: f64) {
    ui.horizontal(|ui| {
        let bar = egui::ProgressBar::new(probability as f32)
            .desired_width(60.0)
            .fill(Color32::from_rgb(90, 140, 200));
        ui.add(bar);
        ui.label(format!("{:>5.1}% {caption}", probability * 100.0));
    });
}
