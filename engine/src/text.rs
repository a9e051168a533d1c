//! Text: a byte-level BPE tokenizer (the `tokenizers` crate, saved as `tokenizer.json`),
//! lower-cased input, and the special ids BOS, BOI, NOLABEL and EOS, which the config places
//! after the tokenizer's vocabulary.

use std::path::Path;

use tokenizers::Tokenizer;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::utils::Lowercase;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::config::TextConfig;
use crate::error::{Error, Result};

/// A prompt or caption as token ids, padded with EOS to the model's text length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedText {
    /// The ids without padding, at most the model's text length.
    pub ids: Vec<usize>,
    /// Tokens dropped from the end because the text was longer than the model reads.
    pub truncated_tokens: usize,
}

/// The tokenizer and the text settings of a model.
#[derive(Clone)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    config: TextConfig,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec")
            .field("vocab", &self.tokenizer.get_vocab_size(true))
            .field("config", &self.config)
            .finish()
    }
}

/// Trains a byte-level BPE tokenizer of at most `vocab_size` tokens on `texts`.
pub fn train_tokenizer<S: AsRef<str> + Sync>(texts: &[S], vocab_size: usize) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_normalizer(Some(Lowercase));
    tokenizer.with_pre_tokenizer(Some(ByteLevel::default()));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tokenizer
        .train(&mut trainer, texts.iter().map(|t| t.as_ref()))
        .map_err(|error| Error::Input(format!("tokenizer training failed: {error}")))?;
    Ok(tokenizer)
}

impl TextCodec {
    /// Pairs a tokenizer with a model's text settings. The special ids must lie outside the
    /// tokenizer's vocabulary.
    pub fn new(tokenizer: Tokenizer, config: TextConfig) -> Result<Self> {
        let vocab = tokenizer.get_vocab_size(true);
        let lowest_special = [
            config.bos_id,
            config.boi_id,
            config.nolabel_id,
            config.eos_id,
        ]
        .into_iter()
        .min()
        .unwrap_or(0);
        if lowest_special < vocab || config.vocab_size < vocab {
            return Err(Error::config(
                "text.vocab_size",
                format!(
                    "is {} with special ids from {lowest_special}, but the tokenizer has {vocab} \
                     tokens; the special ids must follow the tokenizer's vocabulary",
                    config.vocab_size
                ),
            ));
        }
        Ok(Self { tokenizer, config })
    }

    /// Loads `tokenizer.json`.
    pub fn load(path: &Path, config: TextConfig) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path).map_err(|error| Error::Checkpoint {
            path: path.to_path_buf(),
            problem: format!("not a readable tokenizer ({error})"),
        })?;
        Self::new(tokenizer, config)
    }

    /// Saves `tokenizer.json` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .tokenizer
            .to_string(true)
            .map_err(|error| Error::Input(format!("could not serialize the tokenizer: {error}")))?;
        crate::checkpoint::write_atomically(path, json.as_bytes())
    }

    /// Returns the model's text settings.
    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// Tokenizes a prompt or caption. Empty or whitespace-only text and control characters
    /// are errors; text longer than the model reads is truncated and the count reported.
    pub fn encode(&self, text: &str) -> Result<EncodedText> {
        if text.trim().is_empty() {
            return Err(Error::Input("the text is empty; type some words".into()));
        }
        if let Some(c) = text.chars().find(|c| c.is_control() && !c.is_whitespace()) {
            return Err(Error::Input(format!(
                "the text contains the control character U+{:04X}; remove it",
                c as u32
            )));
        }
        let encoding = self
            .tokenizer
            .encode(text.trim(), false)
            .map_err(|error| Error::Input(format!("could not tokenize the text: {error}")))?;
        let mut ids: Vec<usize> = encoding.get_ids().iter().map(|&id| id as usize).collect();
        let truncated_tokens = ids.len().saturating_sub(self.config.max_len);
        ids.truncate(self.config.max_len);
        Ok(EncodedText {
            ids,
            truncated_tokens,
        })
    }

    /// Turns ids back into text, skipping special ids.
    pub fn decode(&self, ids: &[usize]) -> String {
        let vocab = self.tokenizer.get_vocab_size(true);
        let ids: Vec<u32> = ids
            .iter()
            .filter(|&&id| id < vocab)
            .map(|&id| id as u32)
            .collect();
        let text = self.tokenizer.decode(&ids, true).unwrap_or_default();
        // The byte-level pre-tokenizer adds a space before the first word.
        text.trim().to_string()
    }

    /// Tokens in the tokenizer's vocabulary (special ids not counted).
    pub fn tokenizer_vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JetFormerConfig;

    fn codec() -> TextCodec {
        let captions = [
            "grinning face",
            "a noto emoji of grinning face",
            "red heart, smileys & emotion",
            "thumbs up",
            "a twemoji emoji of thumbs up",
            "face with tears of joy",
        ];
        let tokenizer = train_tokenizer(&captions, 300).expect("train");
        let vocab = tokenizer.get_vocab_size(true);
        let config = JetFormerConfig::small(vocab).text;
        TextCodec::new(tokenizer, config).expect("codec")
    }

    #[test]
    fn round_trip_and_lowercase() {
        let codec = codec();
        let encoded = codec.encode("Grinning Face").expect("encode");
        assert_eq!(encoded.truncated_tokens, 0);
        assert_eq!(codec.decode(&encoded.ids), "grinning face");
        // Bytes never seen in training still encode (byte-level BPE has no unknown token).
        let unseen = codec.encode("猫 🐈").expect("encode");
        assert_eq!(codec.decode(&unseen.ids), "猫 🐈");
    }

    #[test]
    fn long_text_is_truncated_and_bad_text_rejected() {
        let codec = codec();
        let long = "grinning face ".repeat(20);
        let encoded = codec.encode(&long).expect("encode");
        assert_eq!(encoded.ids.len(), codec.config().max_len);
        assert!(encoded.truncated_tokens > 0);
        assert!(codec.encode("   ").is_err());
        assert!(
            codec
                .encode("bell \u{7}")
                .expect_err("control")
                .to_string()
                .contains("U+0007")
        );
    }

    #[test]
    fn save_and_load_match() {
        let codec = codec();
        let path =
            std::env::temp_dir().join(format!("jetformer-tokenizer-{}.json", std::process::id()));
        codec.save(&path).expect("save");
        let loaded = TextCodec::load(&path, codec.config().clone()).expect("load");
        assert_eq!(
            loaded.encode("thumbs up").expect("a"),
            codec.encode("thumbs up").expect("b")
        );
        let _ = std::fs::remove_file(path);
    }
}
