//! Reading user images: any format and colour type the `image` crate decodes, with size
//! limits against decompression bombs, EXIF orientation applied, alpha composited on white,
//! a centre crop to square and a resize to the model's size.

use std::io::{BufRead, Seek};
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage, RgbaImage};

use crate::error::{Error, Result};

/// Limits on what a decoder may allocate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width or height in pixels. Default: 16384.
    pub max_side: u32,
    /// Largest decoded size in bytes. Default: 512 MiB.
    pub max_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_side: 16_384,
            max_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Reads an image file and returns it as `size` x `size` RGB bytes, row-major.
pub fn load_rgb(path: &Path, size: u32, limits: DecodeLimits) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        action: "could not read",
        path: path.to_path_buf(),
        source,
    })?;
    decode_rgb(std::io::Cursor::new(bytes), size, limits)
        .map_err(|problem| Error::Input(format!("{}: {problem}", path.display())))
}

fn decode_rgb<R: BufRead + Seek>(
    reader: R,
    size: u32,
    limits: DecodeLimits,
) -> std::result::Result<RgbImage, String> {
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|error| format!("could not read the file ({error})"))?;
    if reader.format().is_none() {
        return Err("not an image in a format this build reads (PNG, JPEG, WebP, GIF, BMP)".into());
    }
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    decoder_limits.max_alloc = Some(limits.max_bytes);
    reader.limits(decoder_limits);
    let describe = |error| describe(error, limits);
    let mut decoder = reader.into_decoder().map_err(describe)?;
    let orientation = decoder.orientation().map_err(describe)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(describe)?;
    image.apply_orientation(orientation);
    Ok(prepare_rgb(&image, size))
}

fn describe(error: image::ImageError, limits: DecodeLimits) -> String {
    match error {
        image::ImageError::Limits(_) => format!(
            "the image is larger than the decoding limits ({} pixels a side, {} MiB decoded), \
             so resize it first",
            limits.max_side,
            limits.max_bytes / (1024 * 1024)
        ),
        other => format!("could not decode the image ({other})"),
    }
}

/// Composites alpha on white, crops the centre square and resizes to `size` x `size`.
///
/// Alpha goes on white at full size before resizing, because dropping the alpha channel of
/// transparent pixels leaves their (often black) colour.
pub fn prepare_rgb(image: &DynamicImage, size: u32) -> RgbImage {
    let rgb = composite_on_white(&image.to_rgba8());
    let (width, height) = rgb.dimensions();
    let side = width.min(height);
    let cropped =
        image::imageops::crop_imm(&rgb, (width - side) / 2, (height - side) / 2, side, side)
            .to_image();
    if side == size {
        return cropped;
    }
    image::imageops::resize(&cropped, size, size, FilterType::Triangle)
}

fn composite_on_white(rgba: &RgbaImage) -> RgbImage {
    let (width, height) = rgba.dimensions();
    RgbImage::from_fn(width, height, |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let alpha = u16::from(a);
        let blend = |c: u8| ((u16::from(c) * alpha + 255 * (255 - alpha) + 127) / 255) as u8;
        image::Rgb([blend(r), blend(g), blend(b)])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_bytes(image: &DynamicImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        image
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("encode");
        bytes
    }

    #[test]
    fn transparent_pixels_become_white() {
        let mut rgba = RgbaImage::new(4, 4);
        rgba.put_pixel(1, 1, image::Rgba([10, 20, 30, 255]));
        let bytes = png_bytes(&DynamicImage::ImageRgba8(rgba));
        let rgb =
            decode_rgb(std::io::Cursor::new(bytes), 4, DecodeLimits::default()).expect("decode");
        assert_eq!(rgb.get_pixel(0, 0).0, [255, 255, 255]);
        assert_eq!(rgb.get_pixel(1, 1).0, [10, 20, 30]);
    }

    #[test]
    fn wide_images_are_cropped_to_the_centre() {
        let rgb = RgbImage::from_fn(12, 4, |x, _| {
            if (4..8).contains(&x) {
                image::Rgb([200, 0, 0])
            } else {
                image::Rgb([0, 0, 200])
            }
        });
        let out = prepare_rgb(&DynamicImage::ImageRgb8(rgb), 4);
        assert!(out.pixels().all(|p| p.0 == [200, 0, 0]));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let limits = DecodeLimits::default();
        let text = decode_rgb(
            std::io::Cursor::new(b"hello, not an image".to_vec()),
            8,
            limits,
        );
        assert!(text.expect_err("text").contains("not an image"));
        let good = png_bytes(&DynamicImage::ImageRgb8(RgbImage::new(64, 64)));
        let truncated = decode_rgb(
            std::io::Cursor::new(good[..good.len() / 2].to_vec()),
            8,
            limits,
        );
        assert!(truncated.is_err());
        let small_limits = DecodeLimits {
            max_side: 32,
            max_bytes: 1 << 20,
        };
        let bomb = decode_rgb(std::io::Cursor::new(good), 8, small_limits);
        assert!(
            bomb.expect_err("too large")
                .contains("larger than the decoding limits")
        );
    }
}
