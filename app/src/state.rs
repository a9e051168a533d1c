//! Settings that persist across restarts through eframe's storage. Tensors, images and
//! handles never persist; a field added later reads as its default from an older file.

use std::path::PathBuf;

use jetformer_engine::infer::GenerateOptions;
use serde::{Deserialize, Serialize};

/// Key of the settings in eframe's storage.
pub const SETTINGS_KEY: &str = "jetformer-settings";

/// Largest number of images one Generate press samples.
pub const MAX_COUNT: usize = 8;

/// Largest number of candidates sampled for each image the window shows.
pub const MAX_WINDOW_CANDIDATES: usize = 16;

/// Upscale factors offered when saving a PNG.
pub const SAVE_SCALES: [u32; 4] = [1, 4, 8, 16];

/// Everything the window remembers between runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The last prompt typed. Default: a short example.
    pub prompt: String,
    /// Multiplies every mixture scale of the image head. Default: the engine's.
    pub temperature: f64,
    /// Multiplies the mixture logits of the image head. Default: the engine's.
    pub mixture_temperature: f64,
    /// Scale of the factored-out latent dims; 0 sets them to zero. Default: the engine's.
    pub noise_factor: f64,
    /// Classifier-free guidance weight; 0 turns guidance off. Default: the engine's.
    pub guidance: f64,
    /// Seed of the next generation when `random_seed` is off. Default: 0.
    pub seed: u64,
    /// Draw a new seed for every generation. Default: true.
    pub random_seed: bool,
    /// Images per generation, 1 to [`MAX_COUNT`]. Default: 1.
    pub count: usize,
    /// Images sampled for each one shown, of which the one that makes the prompt most likely
    /// as its caption is kept, 1 to [`MAX_WINDOW_CANDIDATES`]. Default: the engine's.
    pub candidates: usize,
    /// Upscale factor of saved PNGs, one of [`SAVE_SCALES`]. Default: 8.
    pub save_scale: u32,
    /// Images in an exported interpolation strip, both ends included. Default: 8.
    pub strip_steps: usize,
    /// Model directory opened from the menu; `None` uses the bundled model. Default: `None`.
    pub model_dir: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        let engine = GenerateOptions::default();
        Self {
            prompt: "grinning face".into(),
            temperature: engine.scale_temperature,
            mixture_temperature: engine.mixture_temperature,
            noise_factor: engine.noise_factor,
            guidance: engine.guidance,
            seed: engine.seed,
            random_seed: true,
            count: engine.count,
            candidates: engine.candidates,
            save_scale: 8,
            strip_steps: 8,
            model_dir: None,
        }
    }
}

impl Settings {
    /// Reads the settings from eframe's storage; missing or unreadable settings give defaults.
    pub fn load(storage: Option<&dyn eframe::Storage>) -> Self {
        let settings: Self = storage
            .and_then(|storage| eframe::get_value(storage, SETTINGS_KEY))
            .unwrap_or_default();
        settings.sanitized()
    }

    /// Writes the settings to eframe's storage.
    pub fn save(&self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, SETTINGS_KEY, self);
    }

    /// Replaces values a hand-edited or older file may hold that the sliders cannot show.
    pub fn sanitized(mut self) -> Self {
        let defaults = Self::default();
        let positive = |value: f64, default: f64| {
            if value.is_finite() && value > 0.0 {
                value
            } else {
                default
            }
        };
        let non_negative = |value: f64, default: f64| {
            if value.is_finite() && value >= 0.0 {
                value
            } else {
                default
            }
        };
        self.temperature = positive(self.temperature, defaults.temperature);
        self.mixture_temperature = positive(self.mixture_temperature, defaults.mixture_temperature);
        self.noise_factor = non_negative(self.noise_factor, defaults.noise_factor);
        self.guidance = non_negative(self.guidance, defaults.guidance);
        self.count = self.count.clamp(1, MAX_COUNT);
        self.candidates = self.candidates.clamp(1, MAX_WINDOW_CANDIDATES);
        if !SAVE_SCALES.contains(&self.save_scale) {
            self.save_scale = defaults.save_scale;
        }
        self.strip_steps = self.strip_steps.clamp(2, 32);
        self
    }

    /// Sampling settings for the engine with the given seed.
    pub fn generate_options(&self, seed: u64) -> GenerateOptions {
        GenerateOptions {
            count: self.count,
            seed,
            scale_temperature: self.temperature,
            mixture_temperature: self.mixture_temperature,
            noise_factor: self.noise_factor,
            guidance: self.guidance,
            candidates: self.candidates,
            preview_every: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_read_as_defaults() {
        let settings: Settings =
            serde_json::from_str(r#"{"prompt": "a blue car", "guidance": 2.5}"#).expect("parse");
        assert_eq!(settings.prompt, "a blue car");
        assert_eq!(settings.guidance, 2.5);
        assert_eq!(settings.temperature, Settings::default().temperature);
        assert_eq!(settings.count, Settings::default().count);
        assert_eq!(settings.candidates, Settings::default().candidates);
    }

    #[test]
    fn out_of_range_values_are_replaced() {
        let settings = Settings {
            temperature: -1.0,
            mixture_temperature: f64::NAN,
            noise_factor: -0.5,
            count: 0,
            candidates: 100,
            save_scale: 3,
            strip_steps: 1000,
            ..Settings::default()
        }
        .sanitized();
        let defaults = Settings::default();
        assert_eq!(settings.temperature, defaults.temperature);
        assert_eq!(settings.mixture_temperature, defaults.mixture_temperature);
        assert_eq!(settings.noise_factor, defaults.noise_factor);
        assert_eq!(settings.count, 1);
        assert_eq!(settings.candidates, MAX_WINDOW_CANDIDATES);
        assert_eq!(settings.save_scale, defaults.save_scale);
        assert_eq!(settings.strip_steps, 32);
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let settings = Settings {
            prompt: "green frog".into(),
            seed: 42,
            random_seed: false,
            count: 3,
            candidates: 4,
            model_dir: Some(PathBuf::from("/models/frog")),
            ..Settings::default()
        };
        let json = serde_json::to_string(&settings).expect("serialize");
        let back: Settings = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, settings);
    }
}
