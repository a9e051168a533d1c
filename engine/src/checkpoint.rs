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
/// File name of the caption priors beside a model (optional).
pub const PRIORS_FILE: &str = "caption-priors.json";

/// Writes `bytes` to a temporary file beside `path`, flushes it, then renames it over `path`,
/// so a crash never leaves a partial file where a good one was. On failure the temporary
/// file is removed and the error names `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.{}.partial", std::process::id()));
    let written = std::fs::File::create(&temporary)
        .map_err(|source| ("could not create", source))
        .and_then(|mut file| {
            file.write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(|source| ("could not write", source))
        })
        .and_then(|()| {
            std::fs::rename(&temporary, path).map_err(|source| ("could not replace", source))
        });
    written.map_err(|(action, source)| {
        let _ = std::fs::remove_file(&temporary);
        Error::Io {
            action,
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

/// Returns whether two safetensors files contain the same tensors (names, types, shapes and
/// values), whatever their metadata. A file that does not parse matches nothing.
pub fn same_tensors(first: &[u8], second: &[u8]) -> bool {
    let (Ok(first), Ok(second)) = (
        safetensors::SafeTensors::deserialize(first),
        safetensors::SafeTensors::deserialize(second),
    ) else {
        return false;
    };
    let mut first = first.tensors();
    let mut second = second.tensors();
    first.sort_by(|a, b| a.0.cmp(&b.0));
    second.sort_by(|a, b| a.0.cmp(&b.0));
    first.len() == second.len()
        && first.iter().zip(&second).all(|((name_a, a), (name_b, b))| {
            name_a == name_b
                && a.dtype() == b.dtype()
                && a.shape() == b.shape()
                && a.data() == b.data()
        })
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

/// Log priors of a model's candidate captions (see [`crate::infer::caption_priors`]), kept
/// beside the model in [`PRIORS_FILE`] so that ranking can be calibrated without scoring the
/// reference images again.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CaptionPriors {
    /// Reference images the priors were averaged over.
    pub images: usize,
    /// Log prior in nats of each caption.
    pub priors: std::collections::BTreeMap<String, f64>,
}

impl CaptionPriors {
    /// Reads the priors beside the model in `dir`, or returns `None` when there is no such file.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(PRIORS_FILE);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    /// Writes the priors beside the model in `dir`, atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(PRIORS_FILE);
        let json = serde_json::to_string_pretty(self).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        write_atomically(&path, json.as_bytes())
    }

    /// Returns `scores` minus each caption's prior, or `None` when a caption has no prior,
    /// because a ranking that mixed calibrated and plain scores would compare unlike numbers.
    pub fn calibrate(&self, captions: &[impl AsRef<str>], scores: &[f64]) -> Option<Vec<f64>> {
        captions
            .iter()
            .zip(scores)
            .map(|(caption, score)| Some(score - self.priors.get(caption.as_ref())?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed write names the destination and leaves no temporary file behind.
    #[test]
    fn failed_write_leaves_no_partial_file() {
        let dir = std::env::temp_dir().join(format!("jetformer-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A non-empty folder at the destination makes the final rename fail.
        let target = dir.join("model.safetensors");
        std::fs::create_dir_all(target.join("inside")).expect("create folders");
        let error = write_atomically(&target, b"weights").expect_err("rename over a folder");
        assert!(error.to_string().contains("model.safetensors"), "{error}");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        assert_eq!(names, ["model.safetensors"]);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn priors_calibrate_only_known_captions() {
        let priors = CaptionPriors {
            images: 2,
            priors: [("cat".to_string(), -2.0), ("dog".to_string(), -5.0)].into(),
        };
        assert_eq!(
            priors.calibrate(&["cat", "dog"], &[-3.0, -4.0]),
            Some(vec![-1.0, 1.0])
        );
        assert_eq!(priors.calibrate(&["cat", "car"], &[-3.0, -4.0]), None);

        let dir = std::env::temp_dir().join(format!("jetformer-priors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create");
        assert_eq!(
            CaptionPriors::load(&dir).expect("no file is not an error"),
            None
        );
        priors.save(&dir).expect("save");
        assert_eq!(CaptionPriors::load(&dir).expect("load"), Some(priors));
        std::fs::write(dir.join(PRIORS_FILE), "{").expect("write");
        let error = CaptionPriors::load(&dir).expect_err("a broken file is an error");
        assert!(error.to_string().contains(PRIORS_FILE), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
