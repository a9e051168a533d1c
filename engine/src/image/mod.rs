//! Pixel plumbing: 8-bit values to [-1, 1] and back, dequantization and the RGB noise of the
//! curriculum, and patchify / unpatchify in (row, col, channel) order.
//!
//! Dimension names: `batch`, `size` (image side), `patch` (patch side), `num_tokens` =
//! `(size / patch)^2`, `token_dim` = `3 * patch^2`.

mod decode;

pub use decode::{DecodeLimits, load_rgb, prepare_rgb};

use burn::tensor::{Device, Tensor, TensorData};

/// Width of one 8-bit bin on the [-1, 1] scale.
pub const BIN_PM1: f64 = 1.0 / 127.5;

/// Fraction of a bin added before flooring in [`pixels_u8_from_pm1`].
const QUANTIZE_MARGIN: f64 = 1e-3;

/// Converts 8-bit RGB images to floats in [-1, 1]: `x = v / 127.5 - 1`.
///
/// # Shapes
/// - `pixels_u8`: `batch * size * size * 3` bytes, row-major HWC per image
/// - output: `[batch, size, size, 3]`
pub fn pixels_pm1_from_u8(
    pixels_u8: &[u8],
    batch: usize,
    size: usize,
    device: &Device,
) -> Tensor<4> {
    let values: Vec<f32> = pixels_u8
        .iter()
        .map(|&v| f32::from(v) / 127.5 - 1.0)
        .collect();
    Tensor::from_data(TensorData::new(values, [batch, size, size, 3]), device)
}

/// Quantizes floats in [-1, 1] to 8 bits. Values are clipped, then each lands in the bin
/// `floor((x + 1) * 127.5)`: the bin whose dequantized interval `[v, v + 1)` contains it. A
/// margin of 1e-3 of a bin absorbs the float error of `v / 127.5 - 1` at the lower edge.
///
/// # Shapes
/// - `pixels_pm1`: `[batch, size, size, 3]`
/// - output: `batch * size * size * 3` bytes
pub fn pixels_u8_from_pm1(pixels_pm1: Tensor<4>) -> Vec<u8> {
    let scaled = ((pixels_pm1.clamp(-1.0, 1.0) + 1.0) * 127.5 + QUANTIZE_MARGIN)
        .floor()
        .clamp(0.0, 255.0);
    let data = scaled.into_data();
    data.iter::<f32>().map(|v| v as u8).collect()
}

/// Adds uniform dequantization noise `u ~ U[0, 1/127.5)` to every subpixel, so the model is
/// a density on the continuous cube. `uniform` contains draws from U[0, 1).
pub fn dequantize<const D: usize>(pixels_pm1: Tensor<D>, uniform: Tensor<D>) -> Tensor<D> {
    pixels_pm1 + uniform * BIN_PM1
}

/// Adds Gaussian RGB noise of a per-example std on the 0..255 scale and rounds back to 8-bit
/// values, as the noise curriculum prescribes. Values are clipped to 0..255.
///
/// NOTE: the reference does not clip after rounding. Clipping keeps every training image a
/// valid 8-bit image, so bits per dimension stay a bound on a real discrete likelihood.
///
/// # Shapes
/// - `pixels_pm1`: `[batch, size, size, 3]`, on the 8-bit grid
/// - `noise_std_u8`: `[batch]`
/// - `noise`: `[batch, size, size, 3]` standard normal draws
/// - output: `[batch, size, size, 3]`, on the 8-bit grid
pub fn add_rgb_noise(
    pixels_pm1: Tensor<4>,
    noise_std_u8: Tensor<1>,
    noise: Tensor<4>,
) -> Tensor<4> {
    let [batch] = noise_std_u8.dims();
    let values_u8 = ((pixels_pm1 + 1.0) * 127.5).round();
    let std = noise_std_u8.reshape([batch, 1, 1, 1]);
    let noisy = (values_u8 + noise * std).round().clamp(0.0, 255.0);
    noisy / 127.5 - 1.0
}

/// Std of the RGB noise curriculum at training progress `t` in [0, 1]:
/// `sigma_min + (sigma_0 - sigma_min) * (1 + cos(pi t)) / 2`.
pub fn rgb_noise_std_u8(progress: f64, start_u8: f64, end_u8: f64) -> f64 {
    let t = progress.clamp(0.0, 1.0);
    end_u8 + (start_u8 - end_u8) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
}

/// Cuts images into patch tokens, patches in row-major order, each flattened in
/// (row, col, channel) order.
///
/// # Shapes
/// - `images`: `[batch, size, size, 3]`
/// - output: `[batch, num_tokens, token_dim]`
pub fn patchify(images: Tensor<4>, patch: usize) -> Tensor<3> {
    let [batch, height, width, channels] = images.dims();
    let (rows, cols) = (height / patch, width / patch);
    images
        .reshape([batch, rows, patch, cols, patch, channels])
        // [batch, rows, cols, patch_row, patch_col, channels]
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([batch, rows * cols, patch * patch * channels])
}

/// Inverse of [`patchify`] for square images.
///
/// # Shapes
/// - `tokens`: `[batch, num_tokens, token_dim]`
/// - output: `[batch, size, size, 3]`
pub fn unpatchify(tokens: Tensor<3>, patch: usize) -> Tensor<4> {
    let [batch, num_tokens, token_dim] = tokens.dims();
    let side = (num_tokens as f64).sqrt().round() as usize;
    let channels = token_dim / (patch * patch);
    tokens
        .reshape([batch, side, side, patch, patch, channels])
        // [batch, rows, patch_row, cols, patch_col, channels]
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([batch, side * patch, side * patch, channels])
}

/// Encodes `image` as PNG in memory, then writes it atomically.
pub fn save_png(image: &image::RgbImage, path: &std::path::Path) -> crate::error::Result<()> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|error| {
            crate::error::Error::Input(format!("could not encode {}: {error}", path.display()))
        })?;
    crate::checkpoint::write_atomically(path, &bytes)
}

#[cfg(test)]
mod tests {
    use burn::tensor::Distribution;

    use super::*;

    fn device() -> Device {
        Device::flex()
    }

    #[test]
    fn patch_order_is_row_col_channel() {
        // A 4x4 image whose value encodes (row, col, channel).
        let values: Vec<f32> = (0..4 * 4 * 3).map(|i| i as f32).collect();
        let image = Tensor::<4>::from_data(TensorData::new(values, [1, 4, 4, 3]), &device());
        let tokens = patchify(image.clone(), 2);
        assert_eq!(tokens.dims(), [1, 4, 12]);
        let token1: Vec<f32> = tokens
            .clone()
            .slice([0..1, 1..2, 0..12])
            .into_data()
            .iter::<f32>()
            .collect();
        // Patch 1 is rows 0..2, cols 2..4: pixel (0,2) then (0,3), (1,2), (1,3).
        let pixel = |r: usize, c: usize| (0..3).map(move |ch| ((r * 4 + c) * 3 + ch) as f32);
        let expected: Vec<f32> = pixel(0, 2)
            .chain(pixel(0, 3))
            .chain(pixel(1, 2))
            .chain(pixel(1, 3))
            .collect();
        assert_eq!(token1, expected);
        let back = unpatchify(tokens, 2);
        let same: Vec<f32> = back.into_data().iter::<f32>().collect();
        let original: Vec<f32> = image.into_data().iter::<f32>().collect();
        assert_eq!(same, original);
    }

    #[test]
    fn u8_round_trip_and_dequantization_stay_in_bin() {
        let pixels: Vec<u8> =
            (0..=255).chain(0..=255).chain(0..=255).collect::<Vec<u8>>()[..3 * 16 * 16].to_vec();
        let pm1 = pixels_pm1_from_u8(&pixels, 1, 16, &device());
        assert_eq!(pixels_u8_from_pm1(pm1.clone()), pixels);
        // Stay clear of the top of the bin, where the quantization margin rounds up.
        let uniform = pm1.random_like(Distribution::Uniform(0.0, 0.99));
        let noisy = dequantize(pm1, uniform);
        assert_eq!(pixels_u8_from_pm1(noisy), pixels);
    }

    #[test]
    fn noise_curriculum_endpoints() {
        assert!((rgb_noise_std_u8(0.0, 64.0, 3.0) - 64.0).abs() < 1e-12);
        assert!((rgb_noise_std_u8(1.0, 64.0, 3.0) - 3.0).abs() < 1e-12);
        assert!((rgb_noise_std_u8(0.5, 64.0, 3.0) - 33.5).abs() < 1e-12);
    }
}
