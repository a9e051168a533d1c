//! Engine benchmarks on the `small` preset, CPU backend: flow encode + decode of 32 images,
//! one training step at batch 32, and one cached decoder step at batch 1 and 2.

use burn::tensor::{Device, Distribution, Int, Tensor};
use criterion::{Criterion, criterion_group, criterion_main};
use jetformer_engine::loss::{StepNoise, TrainBatch};
use jetformer_engine::train::{OptimizerConfig, Trainer};
use jetformer_engine::{JetFormer, JetFormerConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn config() -> JetFormerConfig {
    JetFormerConfig::small(1024)
}

fn flow(c: &mut Criterion) {
    let device = Device::flex();
    let config = config();
    let model = JetFormer::new(&config, &device);
    let tokens = Tensor::<3>::random(
        [32, config.num_tokens(), config.token_dim()],
        Distribution::Uniform(-1.0, 1.0),
        &device,
    );
    c.bench_function("flow forward + inverse, 32 images", |b| {
        b.iter(|| {
            let (z, _) = model.flow.forward(tokens.clone());
            let (x, _) = model.flow.inverse(z);
            x.into_data()
        })
    });
}

fn train_step(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    let config = config();
    let batch_size = 32;
    let mut trainer = Trainer::new(JetFormer::new(&config, &device), OptimizerConfig::default());
    let batch = TrainBatch {
        pixels_pm1: Tensor::random(
            [batch_size, config.image.size, config.image.size, 3],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        ),
        text: Tensor::<2, Int>::zeros([batch_size, config.text.max_len], &device),
        text_mask: Tensor::ones([batch_size, config.text.max_len], &device),
    };
    let mut rng = StdRng::seed_from_u64(0);
    let mut group = c.benchmark_group("train");
    group.sample_size(10);
    group.bench_function("train step, small, batch 32", |b| {
        b.iter(|| {
            let noise =
                StepNoise::training(&config, batch_size, trainer.progress(), &mut rng, &device);
            trainer.train_step(&batch, &noise)
        })
    });
    group.finish();
}

fn extend(c: &mut Criterion) {
    let device = Device::flex();
    let config = config();
    let model = JetFormer::new(&config, &device);
    for batch in [1, 2] {
        let prefix_len = config.text.max_len + 2;
        let x = Tensor::<3>::random(
            [batch, prefix_len, config.decoder.width],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let (_, cache) = model.prefill(x, Tensor::ones([batch, prefix_len], &device));
        let token = Tensor::<3>::random(
            [batch, 1, config.decoder.width],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        c.bench_function(&format!("decoder extend, small, batch {batch}"), |b| {
            b.iter_batched(
                || cache.clone(),
                |mut cache| model.extend(token.clone(), &mut cache).into_data(),
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(benches, flow, train_step, extend);
criterion_main!(benches);
