//! `JetFormerConfig`: every size and constant of a model, saved as `config.json` beside its
//! weights, with named presets and validation that names the field at fault.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version of the config and checkpoint layout written by this build.
pub const CONFIG_VERSION: u32 = 1;

/// The whole model: image geometry, flow, decoder, heads, text and loss constants.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetFormerConfig {
    /// Layout version of this file. Default: [`CONFIG_VERSION`].
    #[serde(default = "default_version")]
    pub version: u32,
    /// Human-readable model name shown in the app. Default: the preset's name.
    #[serde(default)]
    pub name: String,
    /// Image size, patch size and the split of each token into modelled and factored dims.
    pub image: ImageConfig,
    /// The Jet normalizing flow.
    pub flow: FlowConfig,
    /// The Gemma-style decoder.
    pub decoder: DecoderConfig,
    /// The output heads.
    pub head: HeadConfig,
    /// Vocabulary, text length and special token ids.
    pub text: TextConfig,
    /// Constants of the training objective.
    #[serde(default)]
    pub loss: LossConfig,
}

fn default_version() -> u32 {
    CONFIG_VERSION
}

/// Image geometry. Images are square RGB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Side of the square image in pixels. `small`: 32.
    pub size: usize,
    /// Side of a patch in pixels; each patch is one token of `3 * patch_size^2` values.
    /// `small`: 4.
    pub patch_size: usize,
    /// Values of each token that the decoder models (k); the remaining `token_dim - k` are
    /// factored out to a standard normal prior. `small`: 8 of 48, the one-sixth ratio of the
    /// JetFormer reference configs.
    pub soft_token_dim: usize,
}

/// One kind of coupling layer in the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CouplingKind {
    /// Split the channels of every token after a fixed random permutation.
    Channels,
    /// Split the tokens by a spatial mask (see [`SpatialMask`]).
    Spatial,
}

/// Split of the token grid into two halves for a spatial coupling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpatialMask {
    /// Tokens whose row + column is even are kept; the others are transformed.
    Checkerboard,
    /// The complement of `Checkerboard`.
    CheckerboardInv,
    /// Even token indices (columns, for an even grid width) are kept.
    Vstripes,
    /// The complement of `Vstripes`.
    VstripesInv,
    /// Even token rows are kept.
    Hstripes,
    /// The complement of `Hstripes`.
    HstripesInv,
}

/// The Jet flow (paper section 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// Number of coupling layers. `small`: 4.
    pub depth: usize,
    /// Transformer blocks inside each coupling network. `small`: 1.
    pub block_depth: usize,
    /// Width of each coupling network. `small`: 64.
    pub width: usize,
    /// Attention heads of each coupling network. `small`: 4.
    pub num_heads: usize,
    /// Kinds of couplings, cycled over the depth. Default: `["channels"]`, as JetFormer.
    #[serde(default = "default_kinds")]
    pub kinds: Vec<CouplingKind>,
    /// Masks of the spatial couplings, cycled over the spatial ones.
    /// Default: `["checkerboard", "checkerboard_inv"]`.
    #[serde(default = "default_masks")]
    pub spatial_masks: Vec<SpatialMask>,
    /// Seed of the channel permutations. They are drawn once and stored in the checkpoint.
    /// Default: 0.
    #[serde(default)]
    pub permutation_seed: u64,
}

fn default_kinds() -> Vec<CouplingKind> {
    vec![CouplingKind::Channels]
}

fn default_masks() -> Vec<SpatialMask> {
    vec![SpatialMask::Checkerboard, SpatialMask::CheckerboardInv]
}

/// The Gemma-style decoder (paper section 5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderConfig {
    /// Model width. `small`: 256.
    pub width: usize,
    /// Number of blocks. `small`: 3.
    pub depth: usize,
    /// Query heads. `small`: 4.
    pub num_heads: usize,
    /// Key/value heads; 1 is multi-query attention. Must divide `num_heads`. `small`: 1.
    pub num_kv_heads: usize,
    /// Width of one head. `small`: 64.
    pub head_dim: usize,
    /// Hidden width of the GeGLU MLP. `small`: 512.
    pub mlp_dim: usize,
    /// Dropout after attention and MLP in training. Default: 0.1.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Epsilon of RMSNorm. Default: 1e-6.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Maximum wavelength of the rotary embedding. Default: 10000.
    #[serde(default = "default_rope")]
    pub rope_max_wavelength: f64,
}

fn default_dropout() -> f64 {
    0.1
}

fn default_norm_eps() -> f64 {
    1e-6
}

fn default_rope() -> f64 {
    10_000.0
}

/// Output heads (paper section 6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    /// Gaussian mixture components of the image head. `small`: 16.
    pub num_mixtures: usize,
    /// Lower bound of every mixture scale. Default: 1e-6.
    #[serde(default = "default_scale_floor")]
    pub scale_floor: f64,
}

fn default_scale_floor() -> f64 {
    1e-6
}

/// Text vocabulary and special tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextConfig {
    /// Rows of the text embedding: tokenizer vocabulary plus special tokens.
    pub vocab_size: usize,
    /// Text tokens per example, padded with EOS. `small`: 16.
    pub max_len: usize,
    /// Begin of sentence.
    pub bos_id: usize,
    /// Begin of image.
    pub boi_id: usize,
    /// Replaces the text prefix for classifier-free guidance.
    pub nolabel_id: usize,
    /// End of sentence, also the padding token.
    pub eos_id: usize,
}

/// Constants of the training objective (paper section 7).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossConfig {
    /// Weight of the text NLL (nats per token) against image bits per dimension.
    /// Default: 0.0025, as the image-text reference.
    pub text_loss_weight: f64,
    /// Probability that an example puts its text first. Default: 0.5.
    pub text_first_prob: f64,
    /// Probability that a text-first example has its prefix replaced by NOLABEL.
    /// Default: 0.1.
    pub prefix_dropout: f64,
    /// Upper bound of the per-example teacher-forcing noise std on soft tokens. Default: 0.3.
    pub teacher_forcing_noise: f64,
    /// RGB noise std at the start of training, on the 0..255 scale. Default: 64.
    pub rgb_noise_start_u8: f64,
    /// RGB noise std at the end of training, on the 0..255 scale. Default: 3.
    pub rgb_noise_end_u8: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            text_loss_weight: 0.0025,
            text_first_prob: 0.5,
            prefix_dropout: 0.1,
            teacher_forcing_noise: 0.3,
            rgb_noise_start_u8: 64.0,
            rgb_noise_end_u8: 3.0,
        }
    }
}

impl JetFormerConfig {
    /// Returns a model of a few thousand parameters on 8 x 8 images, for tests of the math.
    pub fn tiny() -> Self {
        Self {
            version: CONFIG_VERSION,
            name: "tiny".into(),
            image: ImageConfig {
                size: 8,
                patch_size: 2,
                soft_token_dim: 4,
            },
            flow: FlowConfig {
                depth: 2,
                block_depth: 1,
                width: 16,
                num_heads: 2,
                kinds: default_kinds(),
                spatial_masks: default_masks(),
                permutation_seed: 0,
            },
            decoder: DecoderConfig {
                width: 32,
                depth: 2,
                num_heads: 4,
                num_kv_heads: 1,
                head_dim: 8,
                mlp_dim: 64,
                dropout: 0.0,
                norm_eps: default_norm_eps(),
                rope_max_wavelength: default_rope(),
            },
            head: HeadConfig {
                num_mixtures: 3,
                scale_floor: default_scale_floor(),
            },
            text: TextConfig {
                vocab_size: 24,
                max_len: 6,
                bos_id: 20,
                boi_id: 21,
                nolabel_id: 22,
                eos_id: 23,
            },
            loss: LossConfig::default(),
        }
    }

    /// Returns the bundled model's size: 32 x 32 images in 64 tokens of 48 values, sized to
    /// train on a 2-core CPU.
    pub fn small(vocab_size: usize) -> Self {
        let specials = 4;
        Self {
            version: CONFIG_VERSION,
            name: "small".into(),
            image: ImageConfig {
                size: 32,
                patch_size: 4,
                soft_token_dim: 8,
            },
            flow: FlowConfig {
                depth: 4,
                block_depth: 1,
                width: 64,
                num_heads: 4,
                kinds: default_kinds(),
                spatial_masks: default_masks(),
                permutation_seed: 0,
            },
            decoder: DecoderConfig {
                width: 256,
                depth: 3,
                num_heads: 4,
                num_kv_heads: 1,
                head_dim: 64,
                mlp_dim: 512,
                dropout: default_dropout(),
                norm_eps: default_norm_eps(),
                rope_max_wavelength: default_rope(),
            },
            head: HeadConfig {
                num_mixtures: 16,
                scale_floor: default_scale_floor(),
            },
            text: TextConfig {
                vocab_size: vocab_size + specials,
                max_len: 16,
                bos_id: vocab_size,
                boi_id: vocab_size + 1,
                nolabel_id: vocab_size + 2,
                eos_id: vocab_size + 3,
            },
            loss: LossConfig::default(),
        }
    }

    /// Returns a preset by name: `tiny` or `small` (with a 1024-token vocabulary).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small(1024)),
            other => Err(Error::config(
                "preset",
                format!("is `{other}`; the presets are `tiny` and `small`"),
            )),
        }
    }

    /// Tokens per image: `(size / patch_size)^2`.
    pub fn num_tokens(&self) -> usize {
        let side = self.image.size / self.image.patch_size;
        side * side
    }

    /// Tokens per row of the token grid.
    pub fn grid_side(&self) -> usize {
        self.image.size / self.image.patch_size
    }

    /// Values per token: `3 * patch_size^2`.
    pub fn token_dim(&self) -> usize {
        3 * self.image.patch_size * self.image.patch_size
    }

    /// Values per token that go to the standard normal prior.
    pub fn factored_dims(&self) -> usize {
        self.token_dim() - self.image.soft_token_dim
    }

    /// Subpixels per image, the denominator of bits per dimension.
    pub fn num_subpixels(&self) -> usize {
        self.image.size * self.image.size * 3
    }

    /// Outputs of the image head per position: `m + 2 m k`.
    pub fn image_head_dim(&self) -> usize {
        let m = self.head.num_mixtures;
        m + 2 * m * self.image.soft_token_dim
    }

    /// Length of one training sequence: BOS/BOI, text, BOI/BOS and the image, shifted by one.
    pub fn seq_len(&self) -> usize {
        self.text.max_len + self.num_tokens() + 1
    }

    /// Checks every constraint the model relies on. The error names the field and the fix.
    pub fn validate(&self) -> Result<()> {
        if self.version != CONFIG_VERSION {
            return Err(Error::config(
                "version",
                format!(
                    "is {}; this build reads version {CONFIG_VERSION}",
                    self.version
                ),
            ));
        }
        self.validate_image()?;
        self.validate_flow()?;
        self.validate_decoder()?;
        self.validate_text()?;
        if self.head.num_mixtures == 0 {
            return Err(Error::config("head.num_mixtures", "is 0; use at least 1"));
        }
        if self.head.scale_floor.is_nan() || self.head.scale_floor <= 0.0 {
            return Err(Error::config("head.scale_floor", "must be positive"));
        }
        self.validate_loss()
    }

    fn validate_image(&self) -> Result<()> {
        let image = &self.image;
        positive("image.size", image.size)?;
        positive("image.patch_size", image.patch_size)?;
        if !image.size.is_multiple_of(image.patch_size) {
            return Err(Error::config(
                "image.patch_size",
                format!(
                    "is {} and does not divide image.size {}; pick a divisor",
                    image.patch_size, image.size
                ),
            ));
        }
        let token_dim = self.token_dim();
        if !token_dim.is_multiple_of(2) {
            return Err(Error::config(
                "image.patch_size",
                format!(
                    "is {}, which gives {token_dim} values per token; couplings split \
                     tokens into equal halves, so use an even patch size",
                    image.patch_size
                ),
            ));
        }
        if image.soft_token_dim == 0 || image.soft_token_dim > token_dim {
            return Err(Error::config(
                "image.soft_token_dim",
                format!(
                    "is {}; it must be between 1 and the token dim {token_dim} (factored dims \
                     must be fewer than the token dim)",
                    image.soft_token_dim
                ),
            ));
        }
        Ok(())
    }

    fn validate_flow(&self) -> Result<()> {
        let flow = &self.flow;
        positive("flow.block_depth", flow.block_depth)?;
        positive("flow.width", flow.width)?;
        positive("flow.num_heads", flow.num_heads)?;
        if !flow.width.is_multiple_of(flow.num_heads) {
            return Err(Error::config(
                "flow.num_heads",
                format!(
                    "is {} and does not divide flow.width {}",
                    flow.num_heads, flow.width
                ),
            ));
        }
        if flow.kinds.is_empty() {
            return Err(Error::config(
                "flow.kinds",
                "is empty; list at least one kind",
            ));
        }
        let has_spatial = flow.kinds.contains(&CouplingKind::Spatial);
        if has_spatial && flow.spatial_masks.is_empty() {
            return Err(Error::config(
                "flow.spatial_masks",
                "is empty but flow.kinds has a spatial coupling",
            ));
        }
        if has_spatial && !self.num_tokens().is_multiple_of(2) {
            return Err(Error::config(
                "flow.kinds",
                format!(
                    "has a spatial coupling but the image has an odd number of tokens ({})",
                    self.num_tokens()
                ),
            ));
        }
        Ok(())
    }

    fn validate_decoder(&self) -> Result<()> {
        let decoder = &self.decoder;
        positive("decoder.width", decoder.width)?;
        positive("decoder.depth", decoder.depth)?;
        positive("decoder.num_heads", decoder.num_heads)?;
        positive("decoder.num_kv_heads", decoder.num_kv_heads)?;
        positive("decoder.mlp_dim", decoder.mlp_dim)?;
        if decoder.head_dim == 0 || !decoder.head_dim.is_multiple_of(2) {
            return Err(Error::config(
                "decoder.head_dim",
                format!(
                    "is {}; rotary embeddings need an even, positive head dim",
                    decoder.head_dim
                ),
            ));
        }
        if !decoder.num_heads.is_multiple_of(decoder.num_kv_heads) {
            return Err(Error::config(
                "decoder.num_kv_heads",
                format!(
                    "is {} and does not divide decoder.num_heads {}",
                    decoder.num_kv_heads, decoder.num_heads
                ),
            ));
        }
        if !(0.0..1.0).contains(&decoder.dropout) {
            return Err(Error::config("decoder.dropout", "must be in [0, 1)"));
        }
        Ok(())
    }

    fn validate_text(&self) -> Result<()> {
        let text = &self.text;
        positive("text.max_len", text.max_len)?;
        let ids = [
            ("text.bos_id", text.bos_id),
            ("text.boi_id", text.boi_id),
            ("text.nolabel_id", text.nolabel_id),
            ("text.eos_id", text.eos_id),
        ];
        for (i, (field, id)) in ids.iter().enumerate() {
            if *id >= text.vocab_size {
                return Err(Error::config(
                    field,
                    format!("is {id}, outside the vocabulary of {}", text.vocab_size),
                ));
            }
            if let Some((other, _)) = ids[..i].iter().find(|(_, other_id)| other_id == id) {
                return Err(Error::config(
                    field,
                    format!("is {id}, the same id as {other}; special tokens must differ"),
                ));
            }
        }
        Ok(())
    }

    fn validate_loss(&self) -> Result<()> {
        let loss = &self.loss;
        let probabilities = [
            ("loss.text_first_prob", loss.text_first_prob),
            ("loss.prefix_dropout", loss.prefix_dropout),
        ];
        for (field, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::config(
                    field,
                    format!("is {p}; use a probability in [0, 1]"),
                ));
            }
        }
        let non_negative = [
            ("loss.text_loss_weight", loss.text_loss_weight),
            ("loss.teacher_forcing_noise", loss.teacher_forcing_noise),
            ("loss.rgb_noise_start_u8", loss.rgb_noise_start_u8),
            ("loss.rgb_noise_end_u8", loss.rgb_noise_end_u8),
        ];
        for (field, value) in non_negative {
            if value.is_nan() || value < 0.0 {
                return Err(Error::config(field, format!("is {value}; it must be >= 0")));
            }
        }
        Ok(())
    }

    /// Reads and validates `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            action: "could not read",
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Writes `config.json` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        crate::checkpoint::write_atomically(path, json.as_bytes())
    }
}

fn positive(field: &str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(Error::config(field, "is 0; it must be positive"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid() {
        JetFormerConfig::tiny().validate().expect("tiny");
        JetFormerConfig::small(1000).validate().expect("small");
        let small = JetFormerConfig::small(1000);
        assert_eq!(small.num_tokens(), 64);
        assert_eq!(small.token_dim(), 48);
        assert_eq!(small.factored_dims(), 40);
    }

    #[test]
    fn errors_name_the_field() {
        type Edit = Box<dyn Fn(&mut JetFormerConfig)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("image.patch_size", Box::new(|c| c.image.patch_size = 3)),
            ("image.patch_size", Box::new(|c| c.image.patch_size = 1)),
            (
                "image.soft_token_dim",
                Box::new(|c| c.image.soft_token_dim = 13),
            ),
            (
                "image.soft_token_dim",
                Box::new(|c| c.image.soft_token_dim = 0),
            ),
            (
                "decoder.num_kv_heads",
                Box::new(|c| c.decoder.num_kv_heads = 3),
            ),
            ("decoder.head_dim", Box::new(|c| c.decoder.head_dim = 7)),
            ("flow.num_heads", Box::new(|c| c.flow.num_heads = 3)),
            ("text.eos_id", Box::new(|c| c.text.eos_id = c.text.bos_id)),
            ("text.bos_id", Box::new(|c| c.text.bos_id = 99)),
            (
                "loss.prefix_dropout",
                Box::new(|c| c.loss.prefix_dropout = 1.5),
            ),
        ];
        for (field, edit) in cases {
            let mut config = JetFormerConfig::tiny();
            edit(&mut config);
            let message = config.validate().expect_err(field).to_string();
            assert!(message.contains(field), "{message} should name {field}");
        }
    }

    #[test]
    fn json_round_trip() {
        let config = JetFormerConfig::small(500);
        let json = serde_json::to_string(&config).expect("serialize");
        let back: JetFormerConfig = serde_json::from_str(&json).expect("parse");
        assert_eq!(config, back);
    }
}
