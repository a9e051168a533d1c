//! Inference benchmarks on the `small` preset with fresh weights, CPU backend: one image
//! with and without guidance, time to the first preview, one caption, bits per dimension.
//! Fresh weights never emit EOS, so captions run the full text length (the slowest case).

use burn::tensor::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use image::RgbImage;
use jetformer_engine::infer::{self, CancelToken, CaptionOptions, Event, GenerateOptions};
use jetformer_engine::{JetFormer, JetFormerConfig};

fn model() -> JetFormer {
    JetFormer::new(&JetFormerConfig::small(1024), &Device::flex())
}

fn generation(c: &mut Criterion) {
    let model = model();
    let mut group = c.benchmark_group("generate");
    group.sample_size(10);
    for guidance in [0.0, 2.0] {
        let options = GenerateOptions {
            guidance,
            candidates: 1,
            ..GenerateOptions::default()
        };
        group.bench_function(format!("one image, guidance {guidance}"), |b| {
            b.iter(|| infer::generate(&model, &[1, 2, 3], &options, &CancelToken::new(), |_| {}))
        });
    }
    let preview = GenerateOptions {
        preview_every: 1,
        candidates: 1,
        ..GenerateOptions::default()
    };
    group.bench_function("first preview", |b| {
        b.iter(|| {
            let cancel = CancelToken::new();
            infer::generate(&model, &[1, 2, 3], &preview, &cancel, |event| {
                if matches!(event, Event::Preview { .. }) {
                    cancel.cancel();
                }
            })
        })
    });
    group.finish();
}

fn understanding(c: &mut Criterion) {
    let model = model();
    let image = RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])
    });
    let mut group = c.benchmark_group("understand");
    group.sample_size(10);
    group.bench_function("caption one image", |b| {
        b.iter(|| {
            infer::caption(
                &model,
                std::slice::from_ref(&image),
                &CaptionOptions::default(),
            )
        })
    });
    let batch = vec![image.clone(); 32];
    group.bench_function("bits per dim, 32 images", |b| {
        b.iter(|| infer::bits_per_dim(&model, &batch, None, 0))
    });
    group.finish();
}

criterion_group!(benches, generation, understanding);
criterion_main!(benches);
