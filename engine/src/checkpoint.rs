//! Checkpoints: a directory with `config.json`, `model.safetensors` and, once text exists,
//! `tokenizer.json`. Loading checks every tensor against the config; writes are atomic.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::Device;

use crate::config::JetFormerConfig;
use crate::error::{Error, Result};
use crate::model::JetFormer;

/// File name of the weights inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the config inside a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";
/// File name of the tokenizer inside a checkpoint directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Writes `bytes` to a temporary file beside `path`, flushes it, then renames it over `path`,
/// so a crash never leaves a partial file where a good one was.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_error = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    };
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.{}.partial", std::process::id()));
    let mut file =
        std::fs::File::create(&temporary).map_err(io_error("could not create", &temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error("could not write", &temporary))?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(|source| {
        let _ = std::fs::remove_file(&temporary);
        Error::Io {
            action: "could not replace",
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        action: "could not read",
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Saves weights and config into `dir`, creating it if needed.
pub fn save(model: &JetFormer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        action: "could not create",
        path: dir.to_path_buf(),
        source,
    })?;
    let weights = weights_bytes(model, &dir.join(WEIGHTS_FILE))?;
    write_atomically(&dir.join(WEIGHTS_FILE), &weights)?;
    model.config.save(&dir.join(CONFIG_FILE))
}

/// Serializes the model's weights to a safetensors file in memory.
pub fn weights_bytes(model: &JetFormer, path: &Path) -> Result<Vec<u8>> {
    let mut store = SafetensorsStore::from_bytes(None);
    let failed = |problem: String| Error::Checkpoint {
        path: path.to_path_buf(),
        problem,
    };
    model
        .save_into(&mut store)
        .map_err(|error| failed(format!("could not serialize the weights: {error}")))?;
    store
        .get_bytes()
        .map_err(|error| failed(format!("could not serialize the weights: {error}")))
}

/// Loads the checkpoint in `dir` onto `device`.
pub fn load(dir: &Path, device: &Device) -> Result<JetFormer> {
    let config = JetFormerConfig::load(&dir.join(CONFIG_FILE))?;
    let weights_path = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&weights_path).map_err(|source| Error::Io {
        action: "could not read",
        path: weights_path.clone(),
        source,
    })?;
    let mut model = JetFormer::new(&config, device);
    load_weights(&mut model, bytes, &weights_path)?;
    Ok(model)
}

/// Replaces the weights of `model` with those in a safetensors file's bytes. Every tensor of
/// the model must be present with its shape; the first mismatch is reported by name.
pub fn load_weights(model: &mut JetFormer, bytes: Vec<u8>, path: &Path) -> Result<()> {
    let failed = |problem: String| Error::Checkpoint {
        path: PathBuf::from(path),
        problem,
    };
    if bytes.is_empty() {
        return Err(failed("the weights file is empty".into()));
    }
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .validate(true)
        .allow_partial(false);
    let result = model
        .load_from(&mut store)
        .map_err(|error| failed(format!("not a readable safetensors file ({error})")))?;
    if let Some(error) = result.errors.first() {
        return Err(failed(error.to_string()));
    }
    if let Some((name, _)) = result.missing.first() {
        return Err(failed(format!("tensor '{name}' is missing")));
    }
    Ok(())
}

/// A model with its tokenizer, as the app and the command line load it.
#[derive(Debug)]
pub struct Bundle {
    /// The weights and config.
    pub model: JetFormer,
    /// The tokenizer and text settings.
    pub text: crate::text::TextCodec,
}

/// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
pub fn load_bundle(dir: &Path, device: &Device) -> Result<Bundle> {
    if !dir.is_dir() {
        return Err(Error::Io {
            action: "could not open the model directory",
            path: dir.to_path_buf(),
            source: if dir.exists() {
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")
            } else {
                std::io::Error::new(std::io::ErrorKind::NotFound, "not found")
            },
        });
    }
    let model = load(dir, device)?;
    let text = crate::text::TextCodec::load(&dir.join(TOKENIZER_FILE), model.config.text.clone())?;
    Ok(Bundle { model, text })
}

/// Saves weights, config and tokenizer into `dir`.
pub fn save_bundle(model: &JetFormer, text: &crate::text::TextCodec, dir: &Path) -> Result<()> {
    save(model, dir)?;
    text.save(&dir.join(TOKENIZER_FILE))
}
