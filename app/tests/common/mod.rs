//! The tiny model that the command line and window tests write to a temporary folder.

use std::path::Path;

use burn::tensor::Device;
use jetformer_engine::checkpoint::save_bundle;
use jetformer_engine::config::TextConfig;
use jetformer_engine::text::{TextCodec, train_tokenizer};
use jetformer_engine::{JetFormer, JetFormerConfig};

/// Captions of the tiny model's tokenizer, and its concept names.
pub const CAPTIONS: [&str; 4] = ["red square", "blue circle", "green stripes", "yellow star"];

/// Writes an untrained tiny model with a tokenizer trained on [`CAPTIONS`] into `dir`, text
/// up to `max_len` tokens, and returns its config.
pub fn write_tiny_model(dir: &Path, max_len: usize) -> JetFormerConfig {
    let tokenizer = train_tokenizer(&CAPTIONS, 280).expect("tokenizer");
    let vocab = tokenizer.get_vocab_size(true);
    let mut config = JetFormerConfig::tiny();
    config.text = TextConfig {
        vocab_size: vocab + 4,
        max_len,
        bos_id: vocab,
        boi_id: vocab + 1,
        nolabel_id: vocab + 2,
        eos_id: vocab + 3,
    };
    config.validate().expect("config");
    let model = JetFormer::new(&config, &Device::flex());
    let text = TextCodec::new(tokenizer, config.text.clone()).expect("codec");
    save_bundle(&model, &text, dir).expect("save");
    config
}
