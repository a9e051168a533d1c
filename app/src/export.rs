//! Writing images the window produced: nearest-neighbour upscaling, strips, and PNG files
//! written atomically.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use image::RgbImage;
use image::imageops::FilterType;

/// Upscales `image` by an integer `scale` with nearest-neighbour sampling, keeping pixels crisp.
pub fn upscale(image: &RgbImage, scale: u32) -> RgbImage {
    if scale <= 1 {
        return image.clone();
    }
    image::imageops::resize(
        image,
        image.width() * scale,
        image.height() * scale,
        FilterType::Nearest,
    )
}

/// Lays `images` side by side in one row. All images must share one height.
pub fn strip(images: &[RgbImage]) -> Result<RgbImage> {
    let Some(first) = images.first() else {
        bail!("the strip has no images");
    };
    let height = first.height();
    if let Some(odd) = images.iter().find(|image| image.height() != height) {
        bail!(
            "strip images must share one height; got {} and {}",
            height,
            odd.height()
        );
    }
    let width: u32 = images.iter().map(RgbImage::width).sum();
    let mut canvas = RgbImage::new(width, height);
    let mut x = 0i64;
    for image in images {
        image::imageops::replace(&mut canvas, image, x, 0);
        x += i64::from(image.width());
    }
    Ok(canvas)
}

/// Adds `.png` to a path without an extension, and rejects any other extension.
pub fn png_path(path: &Path) -> Result<PathBuf> {
    match path.extension() {
        None => Ok(path.with_extension("png")),
        Some(extension) if extension.eq_ignore_ascii_case("png") => Ok(path.to_path_buf()),
        Some(extension) => bail!(
            "{} ends in .{}; images save as PNG, so use a name ending in .png",
            path.display(),
            extension.to_string_lossy()
        ),
    }
}

/// Encodes `image` as PNG and writes it to `path` atomically. Returns the path written.
pub fn write_png(image: &RgbImage, path: &Path) -> Result<PathBuf> {
    let path = png_path(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        bail!(
            "the folder {} does not exist; create it or pick another",
            parent.display()
        );
    }
    jetformer_engine::image::save_png(image, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upscale_repeats_each_pixel() {
        let mut image = RgbImage::new(2, 1);
        image.put_pixel(0, 0, image::Rgb([10, 20, 30]));
        image.put_pixel(1, 0, image::Rgb([200, 100, 0]));
        let big = upscale(&image, 3);
        assert_eq!(big.dimensions(), (6, 3));
        assert_eq!(big.get_pixel(2, 2).0, [10, 20, 30]);
        assert_eq!(big.get_pixel(3, 0).0, [200, 100, 0]);
        assert_eq!(upscale(&image, 1), image);
    }

    #[test]
    fn strip_joins_left_to_right() {
        let red = RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(3, 2, image::Rgb([0, 0, 255]));
        let joined = strip(&[red, blue]).expect("strip");
        assert_eq!(joined.dimensions(), (5, 2));
        assert_eq!(joined.get_pixel(1, 1).0, [255, 0, 0]);
        assert_eq!(joined.get_pixel(2, 0).0, [0, 0, 255]);
        assert!(strip(&[]).is_err());
        let tall = RgbImage::new(1, 4);
        assert!(strip(&[joined, tall]).is_err());
    }

    #[test]
    fn png_paths_are_checked() {
        assert_eq!(
            png_path(Path::new("out/cat")).expect("no extension"),
            PathBuf::from("out/cat.png")
        );
        assert_eq!(
            png_path(Path::new("cat.PNG")).expect("upper case"),
            PathBuf::from("cat.PNG")
        );
        let error = png_path(Path::new("cat.jpg")).expect_err("jpg");
        assert!(error.to_string().contains(".png"));
    }

    #[test]
    fn write_png_round_trips() {
        let dir = std::env::temp_dir().join(format!("jetformer-export-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let image = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8 * 50, y as u8 * 90, 7]));
        let written = write_png(&image, &dir.join("grid")).expect("write");
        assert_eq!(written, dir.join("grid.png"));
        let read = image::open(&written).expect("read").to_rgb8();
        assert_eq!(read, image);
        let missing = write_png(&image, &dir.join("no-such-folder/x.png"));
        assert!(
            missing
                .expect_err("missing folder")
                .to_string()
                .contains("does not exist")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
