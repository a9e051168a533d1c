//! The model's invariants on tiny configs, on the CPU backend (one test also on wgpu).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use jetformer_engine::config::{CouplingKind, SpatialMask};
use jetformer_engine::flow::Jet;
use jetformer_engine::flow::coupling::{invert, spatial_permutation};
use jetformer_engine::image::patchify;
use jetformer_engine::loss::{StepNoise, TrainBatch};
use jetformer_engine::model::SequenceInputs;
use jetformer_engine::train::{OptimizerConfig, Trainer};
use jetformer_engine::{JetFormer, JetFormerConfig, checkpoint};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cpu() -> Device {
    Device::flex()
}

/// Adds N(0, std) noise to every float parameter, so a fresh (identity) flow or zero head
/// becomes a generic function.
struct Perturb {
    std: f64,
}

impl ModuleMapper for Perturb {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let std = self.std;
        param.map(|t| (t.clone() + t.random_like(Distribution::Normal(0.0, std))).detach())
    }
}

/// [`Perturb`] with draws from a seeded host generator, for tests that need exact inputs.
struct SeededPerturb<'a> {
    rng: &'a mut StdRng,
    std: f64,
}

impl ModuleMapper for SeededPerturb<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let std = self.std as f32;
        let rng = &mut *self.rng;
        param.map(|t| {
            let shape = t.dims();
            let noise: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| std * rng.sample::<f32, _>(rand_distr::StandardNormal))
                .collect();
            let noise = Tensor::<D>::from_data(TensorData::new(noise, shape), &t.device());
            (t + noise).detach()
        })
    }
}

fn perturbed<M: Module>(module: M, std: f64) -> M {
    module.map(&mut Perturb { std })
}

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    to_vec(a)
        .iter()
        .zip(to_vec(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn flow_config(kinds: Vec<CouplingKind>, masks: Vec<SpatialMask>) -> JetFormerConfig {
    let mut config = JetFormerConfig::tiny();
    config.flow.depth = 4;
    config.flow.kinds = kinds;
    config.flow.spatial_masks = masks;
    config.validate().expect("valid");
    config
}

fn all_flow_configs() -> Vec<JetFormerConfig> {
    use SpatialMask::*;
    let mut configs = vec![flow_config(
        vec![CouplingKind::Channels],
        vec![Checkerboard],
    )];
    for masks in [
        vec![Checkerboard, CheckerboardInv],
        vec![Vstripes, VstripesInv],
        vec![Hstripes, HstripesInv],
    ] {
        configs.push(flow_config(vec![CouplingKind::Spatial], masks.clone()));
        configs.push(flow_config(
            vec![CouplingKind::Channels, CouplingKind::Spatial],
            masks,
        ));
    }
    configs
}

fn random_tokens(config: &JetFormerConfig, batch: usize) -> Tensor<3> {
    Tensor::random(
        [batch, config.num_tokens(), config.token_dim()],
        Distribution::Uniform(-1.0, 1.0),
        &cpu(),
    )
}

#[test]
fn flow_inverse_undoes_forward_for_every_coupling_kind() {
    for config in all_flow_configs() {
        let flow = perturbed(Jet::new(&config, &cpu()), 0.2);
        let x = random_tokens(&config, 3);
        let (z, log_det) = flow.forward(x.clone());
        let (back, inverse_log_det) = flow.inverse(z.clone());
        let error = max_abs_diff(back, x.clone());
        assert!(
            error < 1e-4,
            "{:?}: round trip error {error}",
            config.flow.kinds
        );
        let cancel = to_vec(log_det.clone() + inverse_log_det)
            .iter()
            .fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            cancel < 1e-3,
            "{:?}: log-dets do not cancel ({cancel})",
            config.flow.kinds
        );
        // The perturbed flow is not the identity, so the test is not vacuous.
        assert!(max_abs_diff(z, x) > 1e-2);
        assert!(to_vec(log_det).iter().any(|v| v.abs() > 1e-2));
    }
}

/// The CPU kernels (`flow::cpu`, used by `forward` and `inverse` on `flex`) compute what
/// burn's tensor ops compute, for every coupling kind, with a batch that does not split evenly
/// across threads.
#[test]
fn cpu_flow_kernels_match_tensor_ops() {
    for config in all_flow_configs() {
        let flow = perturbed(Jet::new(&config, &cpu()), 0.2);
        let x = random_tokens(&config, 5);
        let (z, log_det) = flow.forward(x.clone());
        let (z_ops, log_det_ops) = flow.forward_with_tensor_ops(x);
        let (x_back, inverse_log_det) = flow.inverse(z_ops.clone());
        let (x_back_ops, inverse_log_det_ops) = flow.inverse_with_tensor_ops(z_ops.clone());
        let kinds = &config.flow.kinds;
        for (name, error) in [
            ("latents", max_abs_diff(z, z_ops)),
            ("log|det|", max_abs_diff(log_det, log_det_ops)),
            ("inverse", max_abs_diff(x_back, x_back_ops)),
            (
                "inverse log|det|",
                max_abs_diff(inverse_log_det, inverse_log_det_ops),
            ),
        ] {
            assert!(error < 1e-4, "{kinds:?}: {name} differ by {error}");
        }
    }
}

#[test]
fn fresh_flow_is_identity_with_zero_log_det() {
    for config in all_flow_configs() {
        let flow = Jet::new(&config, &cpu());
        let x = random_tokens(&config, 2);
        let (z, log_det) = flow.forward(x.clone());
        assert!(max_abs_diff(z, x) < 1e-6);
        assert!(to_vec(log_det).iter().all(|v| v.abs() < 1e-6));
    }
}

/// log|det J| by central differences, in f64, against the flow's own log-det.
#[test]
fn log_det_matches_numerical_jacobian() {
    let mut config = flow_config(
        vec![CouplingKind::Channels, CouplingKind::Spatial],
        vec![SpatialMask::Checkerboard, SpatialMask::CheckerboardInv],
    );
    config.image.size = 4; // 4 tokens of 12 values: a 48 x 48 Jacobian.
    config.validate().expect("valid");
    // Host-seeded draws: the device generator is shared by tests running in parallel.
    let mut rng = StdRng::seed_from_u64(17);
    let flow = Jet::new(&config, &cpu()).map(&mut SeededPerturb {
        rng: &mut rng,
        std: 0.3,
    });
    let (num_tokens, token_dim) = (config.num_tokens(), config.token_dim());
    let n = num_tokens * token_dim;
    let x0: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let eps = 3e-3f32;
    // Batch of 2n perturbed inputs: +eps and -eps along each coordinate.
    let mut batch = Vec::with_capacity(2 * n * n);
    for i in 0..n {
        for sign in [1.0f32, -1.0] {
            let mut x = x0.clone();
            x[i] += sign * eps;
            batch.extend(x);
        }
    }
    let inputs = Tensor::<3>::from_data(
        TensorData::new(batch, [2 * n, num_tokens, token_dim]),
        &cpu(),
    );
    let outputs = to_vec(flow.forward(inputs).0);
    // jacobian[j][i] = d z_j / d x_i
    let mut jacobian = vec![vec![0f64; n]; n];
    for i in 0..n {
        for j in 0..n {
            let plus = outputs[(2 * i) * n + j] as f64;
            let minus = outputs[(2 * i + 1) * n + j] as f64;
            jacobian[j][i] = (plus - minus) / (2.0 * eps as f64);
        }
    }
    let numerical = log_abs_det(jacobian);
    let x = Tensor::<3>::from_data(TensorData::new(x0, [1, num_tokens, token_dim]), &cpu());
    let analytic = to_vec(flow.forward(x).1)[0] as f64;
    assert!(analytic.abs() > 0.1, "log-det {analytic} too small to test");
    // f32 central differences leave about 0.5% of error in the log-det.
    let tolerance = 5e-3 * analytic.abs().max(1.0);
    assert!(
        (numerical - analytic).abs() < tolerance,
        "numerical {numerical} vs analytic {analytic}"
    );
}

/// log|det| by Gaussian elimination with partial pivoting.
fn log_abs_det(mut a: Vec<Vec<f64>>) -> f64 {
    let n = a.len();
    let mut total = 0.0;
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&r, &s| a[r][col].abs().total_cmp(&a[s][col].abs()))
            .expect("rows");
        a.swap(col, pivot);
        let p = a[col][col];
        total += p.abs().ln();
        let pivot_row = a[col].clone();
        for row in a.iter_mut().skip(col + 1) {
            let factor = row[col] / p;
            for (value, pivot_value) in row.iter_mut().zip(&pivot_row).skip(col) {
                *value -= factor * pivot_value;
            }
        }
    }
    total
}

#[test]
fn masks_and_permutations_are_bijections() {
    use SpatialMask::*;
    for mask in [
        Checkerboard,
        CheckerboardInv,
        Vstripes,
        VstripesInv,
        Hstripes,
        HstripesInv,
    ] {
        for side in [2, 4, 8] {
            let order = spatial_permutation(mask, side);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..side * side).collect::<Vec<_>>(),
                "{mask:?} {side}"
            );
            let inverse = invert(&order);
            assert!(order.iter().enumerate().all(|(i, &p)| inverse[p] == i));
        }
    }
    // A mask and its inverse keep complementary halves.
    let half = 8;
    let a = spatial_permutation(Checkerboard, 4)[..half].to_vec();
    let b = spatial_permutation(CheckerboardInv, 4)[..half].to_vec();
    assert!(a.iter().all(|i| !b.contains(i)));
    // Channel permutations stored in the flow are permutations and differ between layers.
    let config = JetFormerConfig::tiny();
    let flow = Jet::new(&config, &cpu());
    let perms: Vec<Vec<i64>> = flow
        .couplings
        .iter()
        .map(|c| c.permutation.val().into_data().iter::<i64>().collect())
        .collect();
    for perm in &perms {
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..config.token_dim() as i64).collect::<Vec<_>>());
    }
    assert_ne!(perms[0], perms[1]);
}

fn tiny_model(config: &JetFormerConfig) -> JetFormer {
    perturbed(JetFormer::new(config, &cpu()), 0.05)
}

fn sequence_inputs(
    config: &JetFormerConfig,
    text_first: bool,
    masked_padding: bool,
) -> SequenceInputs {
    let batch = 2;
    let text_len = config.text.max_len;
    let eos = config.text.eos_id as i64;
    // Example 0: 3 real tokens then padding; example 1: 5 real tokens.
    let lengths = [3usize, 5];
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for &len in &lengths {
        for i in 0..text_len {
            ids.push(if i < len {
                (i as i64 * 3 + 1) % 20
            } else {
                eos
            });
            mask.push(if masked_padding && i >= len {
                0.0f32
            } else {
                1.0
            });
        }
    }
    SequenceInputs {
        text: Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, text_len]), &cpu()),
        text_mask: Tensor::from_data(TensorData::new(mask, [batch, text_len]), &cpu()),
        soft_tokens: Tensor::random(
            [batch, config.num_tokens(), config.image.soft_token_dim],
            Distribution::Normal(0.0, 1.0),
            &cpu(),
        ),
        text_first: Tensor::full([batch], if text_first { 1.0 } else { 0.0 }, &cpu()),
        drop_prefix: Tensor::zeros([batch], &cpu()),
    }
}

/// Prefill of the first `prefix` positions, then one `extend` per remaining position, gives
/// the same outputs as the full causal pass.
#[test]
fn cached_decoding_matches_full_pass() {
    let config = JetFormerConfig::tiny();
    let model = tiny_model(&config);
    for text_first in [true, false] {
        for masked_padding in [false, true] {
            let inputs = sequence_inputs(&config, text_first, masked_padding);
            let (x, mask) = model.embed_sequence(&inputs);
            let [batch, seq_len, width] = x.dims();
            let full = model.decoder.forward(x.clone(), mask.clone());
            // The prefix ends where generation starts: after BOI (text first) or BOS.
            let prefix = if text_first {
                config.text.max_len + 2
            } else {
                config.num_tokens() + 2
            };
            let (head, mut cache) = model.prefill(
                x.clone().narrow(1, 0, prefix),
                mask.clone().narrow(1, 0, prefix),
            );
            let mut outputs = vec![head];
            for position in prefix..seq_len {
                let token = x.clone().narrow(1, position, 1);
                outputs.push(model.extend(token, &mut cache));
            }
            let cached = Tensor::cat(outputs, 1);
            assert_eq!(cached.dims(), [batch, seq_len, width]);
            // Compare only positions that are real tokens: padding outputs are never used.
            let keep = mask.reshape([batch, seq_len, 1]);
            let error = max_abs_diff(full * keep.clone(), cached * keep);
            assert!(
                error < 1e-4,
                "text_first={text_first} masked={masked_padding}: {error}"
            );
        }
    }
}

/// Masked padding changes the outputs at real positions only through what they attend.
#[test]
fn masked_padding_is_not_attended() {
    let config = JetFormerConfig::tiny();
    let model = tiny_model(&config);
    let mut inputs = sequence_inputs(&config, true, true);
    let base = model.forward_sequence(&inputs).image_head;
    // Change the ids at masked positions: nothing downstream may change.
    let [batch, text_len] = inputs.text.dims();
    let other = Tensor::<2, Int>::full([batch, text_len], 7, &cpu());
    let mask_int = inputs.text_mask.clone().int();
    inputs.text = inputs.text.clone() * mask_int.clone() + other * (mask_int.neg() + 1);
    let changed = model.forward_sequence(&inputs).image_head;
    assert!(max_abs_diff(base, changed) < 1e-5);
}

fn structured_images(config: &JetFormerConfig, count: usize) -> Vec<u8> {
    let size = config.image.size;
    let mut pixels = Vec::with_capacity(count * size * size * 3);
    for i in 0..count {
        for row in 0..size {
            for col in 0..size {
                let stripe = if (row + i) % 4 < 2 { 200u8 } else { 40 };
                pixels.push(stripe);
                pixels.push((col * 255 / size.max(1)) as u8);
                pixels.push(((i * 37) % 256) as u8);
            }
        }
    }
    pixels
}

fn text_batch(config: &JetFormerConfig, count: usize) -> (Tensor<2, Int>, Tensor<2>) {
    let text_len = config.text.max_len;
    let ids: Vec<i64> = (0..count)
        .flat_map(|i| {
            let eos = config.text.eos_id as i64;
            (0..text_len).map(move |t| {
                if t < 2 {
                    ((i * 2 + t) % 20) as i64
                } else {
                    eos
                }
            })
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(ids, [count, text_len]), &cpu()),
        Tensor::ones([count, text_len], &cpu()),
    )
}

fn train_batch(config: &JetFormerConfig, count: usize, device: &Device) -> TrainBatch {
    let pixels = structured_images(config, count);
    let (text, text_mask) = text_batch(config, count);
    TrainBatch {
        pixels_pm1: jetformer_engine::image::pixels_pm1_from_u8(
            &pixels,
            count,
            config.image.size,
            device,
        ),
        text: text.to_device(device),
        text_mask: text_mask.to_device(device),
    }
}

/// Checks an untrained model (identity flow, zero image head) on a known image. Its image
/// bits/dim is the standard normal NLL of the pixels, and a zeroed text head gives ln(vocab).
#[test]
fn untrained_loss_parts_equal_hand_computed_values() {
    struct ZeroTextHead;
    impl ModuleMapper for ZeroTextHead {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.zeros_like())
        }
    }
    for soft_token_dim in [4, 12] {
        let mut config = JetFormerConfig::tiny();
        config.image.soft_token_dim = soft_token_dim; // 12: no factored dims at all
        let mut model = JetFormer::new(&config, &cpu());
        model.text_head = model.text_head.map(&mut ZeroTextHead);
        let batch = train_batch(&config, 2, &cpu());
        let mut rng = StdRng::seed_from_u64(0);
        for text_first in [true, false] {
            let mut noise = StepNoise::evaluation(&config, 2, text_first, &mut rng, &cpu());
            noise.dequantization = noise.dequantization.zeros_like();
            let out = model.loss(&batch, &noise);
            let pixels: Vec<f64> = to_vec(batch.pixels_pm1.clone())
                .iter()
                .map(|&v| v as f64)
                .collect();
            let n = config.num_subpixels();
            let ln2 = std::f64::consts::LN_2;
            for (example, bits) in to_vec(out.image_bits_per_dim.clone()).iter().enumerate() {
                let xs = &pixels[example * n..(example + 1) * n];
                let nll: f64 = xs
                    .iter()
                    .map(|x| 0.5 * x * x + 0.5 * (2.0 * std::f64::consts::PI).ln())
                    .sum();
                let expected = nll / (n as f64 * ln2) + 127.5f64.log2();
                assert!(
                    (*bits as f64 - expected).abs() < 1e-4,
                    "{bits} vs {expected}"
                );
            }
            let expected_text = (config.text.vocab_size as f64).ln();
            for nats in to_vec(out.text_nats_per_token.clone()) {
                assert!((nats as f64 - expected_text).abs() < 1e-4);
            }
            assert!(to_vec(out.log_det_per_dim).iter().all(|v| v.abs() < 1e-7));
            let total = to_vec(out.total)[0] as f64;
            let expected_total = if text_first {
                to_vec(out.image_bits_per_dim)
                    .iter()
                    .map(|&v| v as f64)
                    .sum::<f64>()
                    / 2.0
            } else {
                expected_text * config.loss.text_loss_weight
            };
            assert!((total - expected_total).abs() < 1e-4);
        }
    }
}

/// Sum of |grad| over the flow's float parameters (0 when none has a gradient).
fn flow_gradient_mass(config: &JetFormerConfig, text_first: bool) -> f64 {
    let device = cpu().autodiff();
    let model = perturbed(JetFormer::new(config, &device), 0.05).unfreeze();
    let batch = train_batch(config, 2, &device);
    let mut rng = StdRng::seed_from_u64(1);
    let noise = StepNoise::evaluation(config, 2, text_first, &mut rng, &device);
    let grads = GradientsParams::from_grads(model.loss(&batch, &noise).total.backward(), &model);
    struct Mass<'a> {
        grads: &'a GradientsParams,
        total: f64,
    }
    impl ModuleVisitor for Mass<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(grad) = self.grads.get::<D>(param.id) {
                self.total += grad.abs().sum().into_scalar::<f64>();
            }
        }
    }
    let mut mass = Mass {
        grads: &grads,
        total: 0.0,
    };
    model.flow.visit(&mut mass);
    mass.total
}

#[test]
fn flow_gradients_only_from_text_first() {
    let config = JetFormerConfig::tiny();
    assert!(flow_gradient_mass(&config, true) > 1e-3);
    assert_eq!(flow_gradient_mass(&config, false), 0.0);
}

fn train_steps(config: &JetFormerConfig, steps: usize, seed: u64) -> (Trainer, Vec<f64>) {
    let device = cpu().autodiff();
    let model = JetFormer::new(config, &device);
    let mut trainer = Trainer::new(
        model,
        OptimizerConfig {
            learning_rate: 3e-3,
            total_steps: steps,
            ..OptimizerConfig::default()
        },
    );
    let batch = train_batch(config, 8, &device);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut bits = Vec::new();
    for _ in 0..steps {
        let mut noise = StepNoise::training(config, 8, trainer.progress(), &mut rng, &device);
        // Image bits/dim is what this run measures: every example text first.
        noise.text_first = noise.text_first.ones_like();
        noise.rgb_noise_std_u8 = noise.rgb_noise_std_u8.zeros_like();
        noise.teacher_forcing = noise.teacher_forcing.zeros_like();
        bits.push(trainer.train_step(&batch, &noise).image_bits_per_dim);
    }
    (trainer, bits)
}

#[test]
fn training_drives_image_bits_per_dim_down() {
    let config = JetFormerConfig::tiny();
    let (_, bits) = train_steps(&config, 300, 3);
    let first: f64 = bits[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = bits[bits.len() - 10..].iter().sum::<f64>() / 10.0;
    assert!(
        last < first - 1.0,
        "bits/dim went from {first:.3} to {last:.3}"
    );
}

#[test]
fn non_finite_step_leaves_weights_unchanged() {
    let config = JetFormerConfig::tiny();
    let (mut trainer, _) = train_steps(&config, 3, 4);
    // A longer schedule, so that the learning rate after step 3 is not 0.
    trainer.config.total_steps = 100;
    let device = cpu().autodiff();
    let mut batch = train_batch(&config, 8, &device);
    batch.pixels_pm1 = batch.pixels_pm1.clone() * f32::NAN;
    let mut rng = StdRng::seed_from_u64(5);
    let noise = StepNoise::training(&config, 8, trainer.progress(), &mut rng, &device);
    let before = parameter_bits(&trainer.model);

    let loss = trainer.train_step(&batch, &noise);
    assert!(!loss.total.is_finite());
    assert_eq!(trainer.step, 4);
    assert_eq!(trainer.skipped_steps, 1);
    assert!(
        parameter_bits(&trainer.model) == before,
        "a NaN step changed the weights"
    );

    // The next finite step trains again.
    let batch = train_batch(&config, 8, &device);
    let loss = trainer.train_step(&batch, &noise);
    assert!(loss.total.is_finite());
    assert_eq!(trainer.skipped_steps, 1);
    assert!(parameter_bits(&trainer.model) != before);
}

/// Trap 1 of the spec: after a few steps every output dim of the flow depends on the input,
/// including every dim the decoder models.
#[test]
fn trained_flow_mixes_every_dim() {
    let config = JetFormerConfig::tiny();
    let (trainer, _) = train_steps(&config, 20, 5);
    let flow = trainer.model.flow.valid();
    let x = random_tokens(&config, 1);
    let (z, _) = flow.forward(x.clone());
    let d = config.token_dim();
    let mut moved = vec![false; d];
    for channel in 0..d {
        // Perturb one input channel of every token and see which output channels move.
        let bump = Tensor::<3>::zeros(x.dims(), &cpu())
            .slice_fill([0..1, 0..config.num_tokens(), channel..channel + 1], 0.05);
        let (z2, _) = flow.forward(x.clone() + bump);
        let delta = to_vec((z2 - z.clone()).abs().sum_dim(1));
        for (out, value) in delta.iter().enumerate() {
            if *value > 1e-6 && out != channel {
                moved[out] = true;
            }
        }
    }
    assert!(
        moved.iter().all(|&m| m),
        "output dims that no other input dim reaches: {moved:?}"
    );
}

/// Growing the flow and the soft token dim keeps every density: in both orders the grown
/// model's image bits/dim and text loss equal the original's.
#[test]
fn grown_model_computes_the_same_losses() {
    let config = JetFormerConfig::tiny();
    let model = tiny_model(&config);
    let mut bigger = config.clone();
    bigger.flow.depth = 5;
    bigger.image.soft_token_dim = 7;
    let grown = model.clone().grown(&bigger).expect("grow");
    assert_eq!(grown.flow.couplings.len(), 5);
    let moved = perturbed(grown.clone(), 0.05);
    let batch = train_batch(&config, 2, &cpu());
    for text_first in [true, false] {
        let losses = |model: &JetFormer, config: &JetFormerConfig| {
            let mut rng = StdRng::seed_from_u64(1);
            let noise = StepNoise::evaluation(config, 2, text_first, &mut rng, &cpu());
            let out = model.loss(&batch, &noise);
            (out.image_bits_per_dim, out.text_nats_per_token)
        };
        let (bits, nats) = losses(&model, &config);
        let (grown_bits, grown_nats) = losses(&grown, &bigger);
        assert!(max_abs_diff(bits.clone(), grown_bits) < 1e-4);
        assert!(max_abs_diff(nats, grown_nats) < 1e-4);
        // The comparison can fail: new weights that are not the identity change the density.
        let (moved_bits, _) = losses(&moved, &bigger);
        assert!(max_abs_diff(bits, moved_bits) > 1e-3);
    }

    let mut shallower = config.clone();
    shallower.flow.depth = 1;
    let error = model.clone().grown(&shallower).expect_err("shrinking");
    assert!(error.to_string().contains("flow.depth"), "{error}");
    let mut wider = bigger.clone();
    wider.decoder.mlp_dim *= 2;
    assert!(model.grown(&wider).is_err());
}

#[test]
fn checkpoint_round_trip_and_mismatch() {
    let config = JetFormerConfig::tiny();
    let model = tiny_model(&config);
    let dir = tempdir("roundtrip");
    checkpoint::save(&model, &dir).expect("save");
    let loaded = checkpoint::load(&dir, &cpu()).expect("load");
    assert_eq!(parameter_bits(&model), parameter_bits(&loaded));
    let inputs = sequence_inputs(&config, true, false);
    assert_eq!(
        to_vec(model.forward_sequence(&inputs).image_head),
        to_vec(loaded.forward_sequence(&inputs).image_head)
    );

    // Another config's weights under this config.
    let mut other = config.clone();
    other.decoder.mlp_dim = 48;
    let other_dir = tempdir("other");
    checkpoint::save(&JetFormer::new(&other, &cpu()), &other_dir).expect("save");
    std::fs::copy(dir.join("config.json"), other_dir.join("config.json")).expect("copy");
    let message = checkpoint::load(&other_dir, &cpu())
        .expect_err("mismatch")
        .to_string();
    assert!(message.contains("mlp"), "{message}");

    // Empty, truncated and foreign weights files are errors.
    let weights = dir.join(checkpoint::WEIGHTS_FILE);
    let good = std::fs::read(&weights).expect("read");
    for bad in [
        Vec::new(),
        good[..good.len() / 2].to_vec(),
        b"not a safetensors file at all".to_vec(),
    ] {
        std::fs::write(&weights, &bad).expect("write");
        let error = checkpoint::load(&dir, &cpu()).expect_err("bad file");
        assert!(error.to_string().contains("model.safetensors"), "{error}");
    }
}

/// Collects every parameter's values as bit patterns, in module order.
fn parameter_bits(model: &JetFormer) -> Vec<Vec<u64>> {
    struct Collect(Vec<Vec<u64>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(
                param
                    .val()
                    .into_data()
                    .iter::<f32>()
                    .map(|v| u64::from(v.to_bits()))
                    .collect(),
            );
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
            self.0.push(
                param
                    .val()
                    .into_data()
                    .iter::<i64>()
                    .map(|v| v as u64)
                    .collect(),
            );
        }
    }
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    assert!(collect.0.len() > 10);
    collect.0
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("jetformer-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("tempdir");
    dir
}

/// The same forward pass on wgpu (a software Vulkan adapter on CI) and on the CPU backend.
#[test]
fn wgpu_and_cpu_agree() {
    let config = JetFormerConfig::tiny();
    let model = tiny_model(&config);
    let gpu = Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
    let gpu_model = model.clone().to_device(&gpu);
    let inputs = sequence_inputs(&config, true, true);
    let cpu_out = to_vec(model.forward_sequence(&inputs).image_head);
    let gpu_inputs = SequenceInputs {
        text: inputs.text.to_device(&gpu),
        text_mask: inputs.text_mask.to_device(&gpu),
        soft_tokens: inputs.soft_tokens.to_device(&gpu),
        text_first: inputs.text_first.to_device(&gpu),
        drop_prefix: inputs.drop_prefix.to_device(&gpu),
    };
    let gpu_out = to_vec(gpu_model.forward_sequence(&gpu_inputs).image_head);
    let error = cpu_out
        .iter()
        .zip(&gpu_out)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(error < 1e-3, "max difference {error}");
    let tokens = patchify(
        Tensor::random([2, 8, 8, 3], Distribution::Uniform(-1.0, 1.0), &cpu()),
        2,
    );
    let (z_cpu, ld_cpu) = model.flow.forward(tokens.clone());
    let (z_gpu, ld_gpu) = gpu_model.flow.forward(tokens.to_device(&gpu));
    assert!(max_abs_diff(z_cpu, z_gpu.to_device(&cpu())) < 1e-3);
    assert!(max_abs_diff(ld_cpu, ld_gpu.to_device(&cpu())) < 1e-3);
}
