//! The gallery: every finished image with its prompt and settings. Clicking an image restores
//! its settings; each image saves as a PNG.

use eframe::egui::{self, ColorImage, TextureHandle, TextureOptions};
use image::RgbImage;
use jetformer_engine::infer::GenerateOptions;

use crate::state::SAVE_SCALES;

/// Side of a gallery thumbnail in points.
const THUMBNAIL: f32 = 96.0;

/// One finished image.
pub struct GalleryEntry {
    /// Identifier, unique among gallery entries and dropped images.
    pub id: u64,
    /// The image at the model's size.
    pub image: RgbImage,
    /// The prompt it was sampled for.
    pub prompt: String,
    /// The settings and seed it was sampled with.
    pub options: GenerateOptions,
    /// Position in its batch, from 0.
    pub index: usize,
    /// Seconds the whole batch took.
    pub elapsed_secs: f64,
    texture: TextureHandle,
}

impl GalleryEntry {
    /// Returns a short name for lists and file names.
    pub fn title(&self) -> String {
        format!("#{} {}", self.id, self.prompt)
    }

    /// Suggests a file name built from the prompt and seed.
    pub fn file_name(&self) -> String {
        let stem: String = self
            .prompt
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        format!(
            "{}-seed{}-{}.png",
            stem.trim_matches('-'),
            self.options.seed,
            self.index + 1
        )
    }
}

/// Requests from the gallery to the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GalleryAction {
    /// Restore the prompt and settings of entry `id` and show it.
    Restore(u64),
    /// Save entry `id` as a PNG.
    Save(u64),
}

/// All finished images, newest last.
#[derive(Default)]
pub struct Gallery {
    entries: Vec<GalleryEntry>,
    selected: Option<u64>,
}

impl Gallery {
    /// Adds one finished batch and selects its first image.
    pub fn add_batch(
        &mut self,
        ctx: &egui::Context,
        first_id: u64,
        images: Vec<RgbImage>,
        prompt: &str,
        options: &GenerateOptions,
        elapsed_secs: f64,
    ) {
        self.selected = Some(first_id);
        for (index, image) in images.into_iter().enumerate() {
            let id = first_id + index as u64;
            let pixels = ColorImage::from_rgb(
                [image.width() as usize, image.height() as usize],
                image.as_raw(),
            );
            let texture =
                ctx.load_texture(format!("gallery-{id}"), pixels, TextureOptions::NEAREST);
            self.entries.push(GalleryEntry {
                id,
                image,
                prompt: prompt.to_string(),
                options: options.clone(),
                index,
                elapsed_secs,
                texture,
            });
        }
    }

    /// Returns every entry, oldest first.
    pub fn entries(&self) -> &[GalleryEntry] {
        &self.entries
    }

    /// Returns entry `id`.
    pub fn get(&self, id: u64) -> Option<&GalleryEntry> {
        self.entries.iter().find(|entry| entry.id == id)
    }

    /// Returns the selected entry: the last one clicked or generated.
    pub fn selected(&self) -> Option<&GalleryEntry> {
        self.selected.and_then(|id| self.get(id))
    }

    /// Marks entry `id` as selected.
    pub fn select(&mut self, id: u64) {
        self.selected = Some(id);
    }

    /// Draws the gallery as a horizontal strip with the save size below it.
    pub fn show(&self, ui: &mut egui::Ui, save_scale: &mut u32) -> Option<GalleryAction> {
        let mut action = None;
        ui.horizontal_wrapped(|ui| {
            ui.heading("Gallery");
            let count = self.entries.len();
            ui.label(format!(
                "{count} {}",
                if count == 1 { "image" } else { "images" }
            ));
            ui.separator();
            ui.label("Save at");
            for scale in SAVE_SCALES {
                let text = if scale == 1 {
                    "native size".to_string()
                } else {
                    format!("{scale}x")
                };
                ui.selectable_value(save_scale, scale, text);
            }
            if let Some(entry) = self.selected()
                && ui
                    .button("Save PNG…")
                    .on_hover_text("Save the selected image (Ctrl+S)")
                    .clicked()
            {
                action = Some(GalleryAction::Save(entry.id));
            }
        });
        if self.entries.is_empty() {
            ui.weak("Finished images appear here. Click one to restore its prompt and settings.");
            return action;
        }
        egui::ScrollArea::horizontal().show(ui, |ui| {
            ui.horizontal(|ui| {
                for entry in self.entries.iter().rev() {
                    if let Some(clicked) = self.show_entry(ui, entry) {
                        action = Some(clicked);
                    }
                }
            });
        });
        action
    }

    fn show_entry(&self, ui: &mut egui::Ui, entry: &GalleryEntry) -> Option<GalleryAction> {
        let mut action = None;
        ui.vertical(|ui| {
            ui.set_width(THUMBNAIL);
            let selected = self.selected == Some(entry.id);
            let image = egui::Image::new((entry.texture.id(), egui::Vec2::splat(THUMBNAIL)));
            let response = ui
                .add(egui::Button::image(image).selected(selected))
                .on_hover_text(settings_text(entry));
            response
                .widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, entry.title()));
            if response.clicked() {
                action = Some(GalleryAction::Restore(entry.id));
            }
            ui.add(egui::Label::new(&entry.prompt).truncate());
            if ui.small_button("Save").clicked() {
                action = Some(GalleryAction::Save(entry.id));
            }
        });
        action
    }
}

fn settings_text(entry: &GalleryEntry) -> String {
    let options = &entry.options;
    format!(
        "{}\nseed {} (image {} of {}), temperature {:.2}, mixture temperature {:.2}, \
         noise factor {:.2}, guidance {:.1}, best of {}\n{:.2} s for the batch\nClick to \
         restore these settings",
        entry.prompt,
        options.seed,
        entry.index + 1,
        options.count,
        options.scale_temperature,
        options.mixture_temperature,
        options.noise_factor,
        options.guidance,
        options.candidates,
        entry.elapsed_secs
    )
}
