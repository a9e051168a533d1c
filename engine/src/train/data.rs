//! Datasets: a folder of images with `metadata.jsonl`, one `{"file_name": ..., "text": ...}`
//! per line (the Hugging Face imagefolder convention). Optional fields add caption variants
//! (`captions`) and the labels evaluation uses (`concept`, `style`, `category`).
//!
//! Bad rows are skipped and counted, never fatal: a line that is not JSON, a file name that
//! leaves the folder, a missing or unreadable image, an empty caption.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::image::{DecodeLimits, load_rgb};

/// File name of the metadata inside a dataset folder.
pub const METADATA_FILE: &str = "metadata.jsonl";

/// Reasons kept for the report; the rest are only counted.
const REASONS_KEPT: usize = 5;

/// One line of `metadata.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetadataRow {
    /// Image path relative to the folder.
    pub file_name: String,
    /// The caption.
    pub text: String,
    /// More captions of the same image; training draws one of `text` and these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub captions: Vec<String>,
    /// Subject of the image, shared by images of the same thing (for evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept: Option<String>,
    /// Art style (for evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
    /// Category (for evaluation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// A decoded, resized image with its captions.
#[derive(Clone, Debug)]
pub struct Example {
    /// `size * size * 3` bytes, row-major RGB.
    pub pixels: Vec<u8>,
    /// The metadata row it came from.
    pub row: MetadataRow,
}

impl Example {
    /// The caption and its variants, the main caption first.
    pub fn all_captions(&self) -> Vec<&str> {
        std::iter::once(self.row.text.as_str())
            .chain(self.row.captions.iter().map(String::as_str))
            .filter(|caption| !caption.trim().is_empty())
            .collect()
    }

    /// The concept, falling back to the main caption.
    pub fn concept(&self) -> &str {
        self.row.concept.as_deref().unwrap_or(&self.row.text)
    }
}

/// A loaded dataset with the count of skipped rows.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Side of every image in pixels.
    pub size: usize,
    /// The usable examples in file order.
    pub examples: Vec<Example>,
    /// Rows that were skipped.
    pub skipped: usize,
    /// Line numbers and reasons of the first few skipped rows.
    pub reasons: Vec<String>,
}

impl Dataset {
    /// Loads `dir/metadata.jsonl` and its images, resized to `size` x `size`.
    pub fn load(dir: &Path, size: usize) -> Result<Self> {
        let metadata = dir.join(METADATA_FILE);
        let text = std::fs::read_to_string(&metadata).map_err(|source| Error::Io {
            action: "could not read the dataset metadata",
            path: metadata.clone(),
            source,
        })?;
        let root = dir.canonicalize().map_err(|source| Error::Io {
            action: "could not open the dataset folder",
            path: dir.to_path_buf(),
            source,
        })?;
        let mut dataset = Self {
            size,
            examples: Vec::new(),
            skipped: 0,
            reasons: Vec::new(),
        };
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match read_row(&root, line, size) {
                Ok(example) => dataset.examples.push(example),
                Err(reason) => {
                    dataset.skipped += 1;
                    if dataset.reasons.len() < REASONS_KEPT {
                        dataset
                            .reasons
                            .push(format!("line {}: {reason}", index + 1));
                    }
                }
            }
        }
        if dataset.examples.is_empty() {
            let first = dataset.reasons.first().cloned().unwrap_or_default();
            return Err(Error::Input(format!(
                "{} has no usable rows ({} skipped{}); each line needs \
                 {{\"file_name\": ..., \"text\": ...}} naming an image in the folder",
                metadata.display(),
                dataset.skipped,
                if first.is_empty() {
                    String::new()
                } else {
                    format!(", first: {first}")
                }
            )));
        }
        Ok(dataset)
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Returns whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Returns every caption of every example, for training a tokenizer.
    pub fn caption_corpus(&self) -> Vec<String> {
        self.examples
            .iter()
            .flat_map(|example| example.all_captions().into_iter().map(str::to_string))
            .collect()
    }
}

/// Returns the folder of a split: `dir/split` when it has metadata. For the training split
/// without one, returns `dir` itself.
pub fn split_dir(dir: &Path, split: &str) -> Result<PathBuf> {
    let nested = dir.join(split);
    if nested.join(METADATA_FILE).is_file() {
        return Ok(nested);
    }
    if split == "train" && dir.join(METADATA_FILE).is_file() {
        return Ok(dir.to_path_buf());
    }
    Err(Error::Input(format!(
        "{} has no {METADATA_FILE} for the `{split}` split; expected {}",
        dir.display(),
        nested.join(METADATA_FILE).display()
    )))
}

fn read_row(root: &Path, line: &str, size: usize) -> std::result::Result<Example, String> {
    let row: MetadataRow =
        serde_json::from_str(line).map_err(|error| format!("not a metadata row ({error})"))?;
    if row.text.trim().is_empty() {
        return Err(format!("the caption of {} is empty", row.file_name));
    }
    let relative = Path::new(&row.file_name);
    let escapes = relative.components().any(|part| {
        matches!(
            part,
            Component::ParentDir | Component::RootDir | Component::Prefix(_)
        )
    });
    if row.file_name.is_empty() || escapes {
        return Err(format!(
            "file_name `{}` must be a path inside the dataset folder",
            row.file_name
        ));
    }
    let path = root.join(relative);
    let resolved = path
        .canonicalize()
        .map_err(|error| format!("{}: {error}", path.display()))?;
    if !resolved.starts_with(root) {
        return Err(format!(
            "file_name `{}` links outside the dataset folder",
            row.file_name
        ));
    }
    let side = u32::try_from(size).map_err(|_| format!("image size {size} is too large"))?;
    let image = load_rgb(&resolved, side, DecodeLimits::default()).map_err(|e| e.to_string())?;
    Ok(Example {
        pixels: image.into_raw(),
        row,
    })
}

/// Writes `rows` as `metadata.jsonl` into `dir`, atomically.
pub fn write_metadata(dir: &Path, rows: &[MetadataRow]) -> Result<()> {
    let mut text = String::new();
    for row in rows {
        let line = serde_json::to_string(row).map_err(|source| Error::Json {
            path: dir.join(METADATA_FILE),
            source,
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    crate::checkpoint::write_atomically(&dir.join(METADATA_FILE), text.as_bytes())
}
