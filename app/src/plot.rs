//! The training curves as a PNG: image bits/dim, text loss and held-out bits/dim against the
//! step, read from `metrics.jsonl`.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 600;

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // If the font bytes cannot be read, the plot is drawn without labels.
        let _ = register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// Series read from the metrics log.
#[derive(Default)]
struct Curves {
    image_bits: Vec<(f64, f64)>,
    text_nats: Vec<(f64, f64)>,
    held_out_bits: Vec<(f64, f64)>,
    last_weights_bits: Vec<(f64, f64)>,
}

fn read_curves(metrics: &Path) -> Result<Curves> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("could not read {}", metrics.display()))?;
    let mut curves = Curves::default();
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match value["kind"].as_str() {
            Some("train") => {
                let m = &value["metrics"];
                let step = m["step"].as_f64().unwrap_or(0.0);
                if let Some(bits) = m["loss"]["image_bits_per_dim"].as_f64() {
                    curves.image_bits.push((step, bits));
                }
                if let Some(nats) = m["loss"]["text_nats_per_token"].as_f64() {
                    curves.text_nats.push((step, nats));
                }
            }
            Some("eval") => {
                let step = value["step"].as_f64().unwrap_or(0.0);
                if let Some(bits) = value["held_out_bits_per_dim"].as_f64() {
                    curves.held_out_bits.push((step, bits));
                }
                if let Some(bits) = value["held_out_bits_per_dim_last_weights"].as_f64() {
                    curves.last_weights_bits.push((step, bits));
                }
            }
            _ => {}
        }
    }
    Ok(curves)
}

/// Averages each point with its neighbours so that the noisy per-step values read as a curve.
fn smooth(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let start = i.saturating_sub(window);
            let end = (i + window + 1).min(points.len());
            let mean = points[start..end].iter().map(|p| p.1).sum::<f64>() / (end - start) as f64;
            (points[i].0, mean)
        })
        .collect()
}

fn range(series: &[&[(f64, f64)]]) -> (f64, f64, f64, f64) {
    let points = series.iter().flat_map(|s| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        if y.is_finite() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    let pad = ((y1 - y0) * 0.05).max(1e-3);
    (x0, x1.max(x0 + 1.0), y0 - pad, y1 + pad)
}

/// Draws the curves of `metrics` into the PNG file `out` (written atomically).
pub fn plot_metrics(metrics: &Path, out: &Path) -> Result<()> {
    register_fonts();
    let curves = read_curves(metrics)?;
    let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(HEIGHT / 2);

        let image_bits = smooth(&curves.image_bits, 5);
        let (x0, x1, y0, y1) = range(&[
            &image_bits,
            &curves.held_out_bits,
            &curves.last_weights_bits,
        ]);
        let mut chart = ChartBuilder::on(&top)
            .caption("image bits per dimension", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart.configure_mesh().x_desc("step").draw()?;
        chart
            .draw_series(LineSeries::new(image_bits, &BLUE))?
            .label("training (smoothed)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(curves.held_out_bits.clone(), &RED))?
            .label("held-out (EMA weights)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        let orange = RGBColor(230, 140, 0);
        chart
            .draw_series(LineSeries::new(curves.last_weights_bits.clone(), &orange))?
            .label("held-out (last weights)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], orange));
        // Markers show the evaluations, and a series of one point, which a line cannot.
        for (points, color) in [
            (&curves.held_out_bits, RED),
            (&curves.last_weights_bits, orange),
        ] {
            chart.draw_series(
                points
                    .iter()
                    .map(|&point| Circle::new(point, 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;

        let text_nats = smooth(&curves.text_nats, 5);
        let (x0, x1, y0, y1) = range(&[&text_nats]);
        let mut chart = ChartBuilder::on(&bottom)
            .caption("text loss (nats per token)", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart.configure_mesh().x_desc("step").draw()?;
        chart.draw_series(LineSeries::new(text_nats, &GREEN))?;
        root.present()?;
    }
    let image = image::RgbImage::from_raw(WIDTH, HEIGHT, pixels)
        .context("the plot buffer has the wrong size")?;
    crate::cli::save_png(&image, out)
}
