//! The bundled dataset: emoji in three art styles, built from four npm packages that
//! `scripts/fetch-emoji-packages.sh` downloads and unpacks:
//!
//! - `emoji-datasource-google` (Noto, Apache-2.0): `img/google/64/*.png`, `emoji.json`
//! - `emoji-datasource-twitter` (Twemoji, CC-BY-4.0): `img/twitter/64/*.png`
//! - `fluent-emoji-3d` (Fluent 3D, MIT): `assets/<hexcode>.webp`
//! - `emojibase-data` (MIT): English names, keywords and groups
//!
//! Skin-tone variants and component swatches are left out. Each image keeps its concept,
//! style and category, and carries caption variants for training. A fixed tenth of the
//! (concept, style) pairs is held out as the test split, only from concepts that keep another
//! style in training.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::Deserialize;

use crate::checkpoint::read_json;
use crate::error::{Error, Result};
use crate::image::prepare_rgb;
use crate::train::data::{MetadataRow, write_metadata};

/// Folder names expected inside the packages directory.
pub const PACKAGES: [&str; 4] = [
    "emoji-datasource-google",
    "emoji-datasource-twitter",
    "fluent-emoji-3d",
    "emojibase-data",
];

/// Fraction of (concept, style) pairs held out.
const HELD_OUT_FRACTION: f64 = 0.1;

/// Seed of the split, fixed so that every build gives the same split.
const SPLIT_SEED: u64 = 2024;

/// Keyword tags kept in the tag caption.
const TAGS_KEPT: usize = 4;

/// Counts of what `build` wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmojiSummary {
    /// Distinct concepts with at least one image.
    pub concepts: usize,
    /// Images in the training split.
    pub train_images: usize,
    /// Images in the test split.
    pub test_images: usize,
    /// Images per style, in the order noto, twitter, 3d.
    pub per_style: [usize; 3],
    /// Images that could not be decoded and were skipped.
    pub unreadable: usize,
}

#[derive(Deserialize)]
struct DatasourceEntry {
    unified: String,
    image: String,
    category: String,
    #[serde(default)]
    has_img_google: bool,
    #[serde(default)]
    has_img_twitter: bool,
}

#[derive(Deserialize)]
struct EmojibaseEntry {
    label: String,
    hexcode: String,
    #[serde(default)]
    tags: Vec<String>,
    group: Option<usize>,
}

#[derive(Deserialize)]
struct EmojibaseMessages {
    groups: Vec<EmojibaseGroup>,
}

#[derive(Deserialize)]
struct EmojibaseGroup {
    message: String,
    order: usize,
}

struct Concept {
    name: String,
    category: String,
    tags: Vec<String>,
    /// Source image per style index.
    sources: [Option<PathBuf>; 3],
}

const STYLES: [&str; 3] = ["noto", "twitter", "3d"];

/// Codepoints in lower case without variation selector 16, joined by `-`.
fn concept_key(hexcode: &str) -> String {
    hexcode
        .to_ascii_lowercase()
        .split('-')
        .filter(|part| *part != "fe0f" && !part.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Builds the dataset from the unpacked packages in `packages` into `out/train` and
/// `out/test`, each with its images and `metadata.jsonl`, at `size` x `size` pixels.
pub fn build(packages: &Path, out: &Path, size: u32) -> Result<EmojiSummary> {
    for name in PACKAGES {
        if !packages.join(name).is_dir() {
            return Err(Error::Input(format!(
                "{} is missing; run scripts/fetch-emoji-packages.sh {} first",
                packages.join(name).display(),
                packages.display()
            )));
        }
    }
    let concepts = collect_concepts(packages)?;
    let held_out = choose_held_out(&concepts);

    let mut rows: [Vec<MetadataRow>; 2] = [Vec::new(), Vec::new()];
    let mut per_style = [0; 3];
    let mut unreadable = 0;
    let mut concept_count = 0;
    for (key, concept) in &concepts {
        let mut any = false;
        for (style_index, source) in concept.sources.iter().enumerate() {
            let Some(source) = source else { continue };
            let Some(image) = decode_source(source, size) else {
                unreadable += 1;
                continue;
            };
            let split = usize::from(held_out.contains(&(key.clone(), style_index)));
            let split_name = ["train", "test"][split];
            let style = STYLES[style_index];
            let file_name = format!("{style}/{key}.png");
            let path = out.join(split_name).join(&file_name);
            save_png(&image, &path)?;
            rows[split].push(emoji_row(concept, style, file_name));
            per_style[style_index] += 1;
            any = true;
        }
        concept_count += usize::from(any);
    }
    for (split, split_rows) in rows.iter().enumerate() {
        write_metadata(&out.join(["train", "test"][split]), split_rows)?;
    }
    Ok(EmojiSummary {
        concepts: concept_count,
        train_images: rows[0].len(),
        test_images: rows[1].len(),
        per_style,
        unreadable,
    })
}

fn emoji_row(concept: &Concept, style: &str, file_name: String) -> MetadataRow {
    let name = &concept.name;
    let mut captions = vec![
        format!("{name}, {}", concept.category),
        format!("a {style} emoji of {name}"),
    ];
    let tags: Vec<&str> = concept
        .tags
        .iter()
        .map(String::as_str)
        .filter(|tag| tag != name)
        .take(TAGS_KEPT)
        .collect();
    if !tags.is_empty() {
        captions.push(tags.join(", "));
    }
    MetadataRow {
        file_name,
        text: name.clone(),
        captions,
        concept: Some(name.clone()),
        style: Some(style.to_string()),
        category: Some(concept.category.clone()),
    }
}

fn collect_concepts(packages: &Path) -> Result<BTreeMap<String, Concept>> {
    let google = packages.join(PACKAGES[0]);
    let twitter = packages.join(PACKAGES[1]);
    let fluent = packages.join(PACKAGES[2]).join("assets");
    let emojibase = packages.join(PACKAGES[3]).join("en");

    let entries: Vec<DatasourceEntry> = read_json(&google.join("emoji.json"))?;
    let names: Vec<EmojibaseEntry> = read_json(&emojibase.join("data.json"))?;
    let messages: EmojibaseMessages = read_json(&emojibase.join("messages.json"))?;
    let groups: HashMap<usize, String> = messages
        .groups
        .into_iter()
        .map(|group| (group.order, group.message))
        .collect();
    let names: HashMap<String, EmojibaseEntry> = names
        .into_iter()
        .map(|entry| (concept_key(&entry.hexcode), entry))
        .collect();
    let fluent_files: HashMap<String, PathBuf> = std::fs::read_dir(&fluent)
        .map_err(|source| Error::Io {
            action: "could not list",
            path: fluent.clone(),
            source,
        })?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter_map(|path| {
            let stem = path.file_stem()?.to_str()?.to_string();
            Some((concept_key(&stem), path))
        })
        .collect();

    let mut concepts = BTreeMap::new();
    for entry in entries {
        if entry.category == "Component" {
            continue;
        }
        let key = concept_key(&entry.unified);
        let Some(named) = names.get(&key) else {
            continue;
        };
        let category = named
            .group
            .and_then(|group| groups.get(&group).cloned())
            .unwrap_or_else(|| entry.category.to_lowercase());
        if category == "components" {
            continue;
        }
        let image_in = |root: &Path, style: &str, present: bool| {
            let path = root.join("img").join(style).join("64").join(&entry.image);
            (present && path.is_file()).then_some(path)
        };
        let sources = [
            image_in(&google, "google", entry.has_img_google),
            image_in(&twitter, "twitter", entry.has_img_twitter),
            fluent_files.get(&key).cloned(),
        ];
        if sources.iter().all(Option::is_none) {
            continue;
        }
        concepts.insert(
            key,
            Concept {
                name: named.label.to_lowercase(),
                category,
                tags: named.tags.clone(),
                sources,
            },
        );
    }
    Ok(concepts)
}

/// Picks about a tenth of all (concept, style) pairs, at most one per concept and only from
/// concepts with two or more styles, so every held-out concept stays in training.
fn choose_held_out(concepts: &BTreeMap<String, Concept>) -> Vec<(String, usize)> {
    let pairs: usize = concepts
        .values()
        .map(|concept| concept.sources.iter().flatten().count())
        .sum();
    let target = (pairs as f64 * HELD_OUT_FRACTION).round() as usize;
    let mut rng = StdRng::seed_from_u64(SPLIT_SEED);
    let mut keys: Vec<&String> = concepts.keys().collect();
    keys.shuffle(&mut rng);
    let mut held_out = Vec::with_capacity(target);
    for key in keys {
        if held_out.len() >= target {
            break;
        }
        let styles: Vec<usize> = concepts[key]
            .sources
            .iter()
            .enumerate()
            .filter_map(|(index, source)| source.as_ref().map(|_| index))
            .collect();
        if styles.len() >= 2
            && let Some(&style) = styles.choose(&mut rng)
        {
            held_out.push((key.clone(), style));
        }
    }
    held_out
}

fn decode_source(path: &Path, size: u32) -> Option<image::RgbImage> {
    let image = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .decode()
        .ok()?;
    Some(prepare_rgb(&image, size))
}

fn save_png(image: &image::RgbImage, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            action: "could not create",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    crate::image::save_png(image, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concept_keys_ignore_case_and_variation_selectors() {
        assert_eq!(concept_key("2764-FE0F"), "2764");
        assert_eq!(concept_key("0023-fe0f-20e3"), "0023-20e3");
        assert_eq!(concept_key("1F913"), "1f913");
    }
}
