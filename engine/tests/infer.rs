//! Inference calls on tiny models: seeded sampling, streaming and cancellation, guidance,
//! captions and scores of an overfitted model, bits per dimension, interpolation.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use image::RgbImage;
use jetformer_engine::image::pixels_pm1_from_u8;
use jetformer_engine::infer::{
    self, CancelToken, CaptionOptions, Event, GenerateOptions, Interpolation, bits_over_draws,
    bits_per_dim, bits_per_dim_given_captions, bits_per_dim_per_draw, caption, generate,
    image_log_ratios, interpolate, rerank_captions, score_captions, top_probabilities,
};
use jetformer_engine::loss::{StepNoise, TrainBatch};
use jetformer_engine::train::{OptimizerConfig, Trainer};
use jetformer_engine::{JetFormer, JetFormerConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Perturb;

impl ModuleMapper for Perturb {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| (t.clone() + t.random_like(Distribution::Normal(0.0, 0.05))).detach())
    }
}

fn random_model() -> JetFormer {
    JetFormer::new(&JetFormerConfig::tiny(), &Device::flex()).map(&mut Perturb)
}

fn options(seed: u64) -> GenerateOptions {
    GenerateOptions {
        seed,
        count: 2,
        candidates: 1,
        preview_every: 4,
        ..GenerateOptions::default()
    }
}

fn run(model: &JetFormer, options: &GenerateOptions) -> (Vec<Event>, Option<Vec<RgbImage>>) {
    let mut events = Vec::new();
    let images = generate(model, &[1, 2, 3], options, &CancelToken::new(), |e| {
        events.push(e)
    })
    .expect("generate");
    (events, images)
}

#[test]
fn same_seed_same_images() {
    let model = random_model();
    let (_, a) = run(&model, &options(5));
    let (_, b) = run(&model, &options(5));
    let (_, c) = run(&model, &options(6));
    let bytes = |images: Option<Vec<RgbImage>>| -> Vec<Vec<u8>> {
        images
            .expect("finished")
            .into_iter()
            .map(|i| i.into_raw())
            .collect()
    };
    let (a, b, c) = (bytes(a), bytes(b), bytes(c));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a[0], a[1], "two images of one call differ");
}

#[test]
fn last_preview_equals_final_image() {
    let model = random_model();
    let (events, images) = run(&model, &options(1));
    let images = images.expect("finished");
    let previews: Vec<(usize, &Vec<RgbImage>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Preview {
                tokens_done,
                images,
            } => Some((*tokens_done, images)),
            _ => None,
        })
        .collect();
    assert_eq!(previews.len(), 16 / 4);
    let sampled: Vec<usize> = events
        .iter()
        .filter_map(|e| match e {
            Event::Sampled { tokens_done } => Some(*tokens_done),
            _ => None,
        })
        .collect();
    assert_eq!(sampled, (1..=16).collect::<Vec<_>>());
    let (done, last) = previews.last().expect("previews");
    assert_eq!(*done, 16);
    assert_eq!(*last, &images);
    assert!(matches!(
        events.first(),
        Some(Event::Started {
            count: 2,
            num_tokens: 16
        })
    ));
    assert!(matches!(events.last(), Some(Event::Finished { .. })));
}

#[test]
fn cancel_stops_without_final_image() {
    let model = random_model();
    let cancel = CancelToken::new();
    let mut events = Vec::new();
    let result = generate(&model, &[1], &options(2), &cancel, |event| {
        if matches!(event, Event::Preview { tokens_done: 8, .. }) {
            cancel.cancel();
        }
        events.push(event);
    })
    .expect("generate");
    assert!(result.is_none());
    assert!(matches!(events.last(), Some(Event::Cancelled)));
    assert!(!events.iter().any(|e| matches!(e, Event::Finished { .. })));
    let previews = events
        .iter()
        .filter(|e| matches!(e, Event::Preview { .. }))
        .count();
    assert_eq!(previews, 2, "stopped within one token of the request");
}

#[test]
fn guided_generation_gives_valid_images() {
    let model = random_model();
    let guided = GenerateOptions {
        guidance: 3.0,
        scale_temperature: 0.9,
        ..options(3)
    };
    let (_, images) = run(&model, &guided);
    let images = images.expect("finished");
    assert_eq!(images.len(), 2);
    assert!(images.iter().all(|i| i.width() == 8 && i.height() == 8));
}

#[test]
fn bad_generate_options_are_errors() {
    let model = random_model();
    let cases = [
        GenerateOptions {
            count: 0,
            ..GenerateOptions::default()
        },
        GenerateOptions {
            scale_temperature: 0.0,
            ..GenerateOptions::default()
        },
        GenerateOptions {
            guidance: f64::NAN,
            ..GenerateOptions::default()
        },
        GenerateOptions {
            noise_factor: -1.0,
            ..GenerateOptions::default()
        },
        GenerateOptions {
            count: 17,
            candidates: 64,
            ..GenerateOptions::default()
        },
    ];
    for options in cases {
        let result = generate(&model, &[1], &options, &CancelToken::new(), |_| {});
        assert!(result.is_err(), "{options:?}");
    }
    let too_long = vec![1; 7];
    assert!(
        generate(
            &model,
            &too_long,
            &GenerateOptions::default(),
            &CancelToken::new(),
            |_| {}
        )
        .is_err()
    );
    assert!(
        generate(
            &model,
            &[99],
            &GenerateOptions::default(),
            &CancelToken::new(),
            |_| {}
        )
        .is_err()
    );
}

#[test]
fn best_of_keeps_highest_prompt_score() {
    let model = random_model();
    let prompt = [1, 2, 3];
    let candidates = 5;
    let single = options(9);
    let all = run(
        &model,
        &GenerateOptions {
            count: single.count * candidates,
            ..single.clone()
        },
    )
    .1
    .expect("finished");
    let ranked = GenerateOptions {
        candidates,
        ..single.clone()
    };
    let mut events = Vec::new();
    let scored_images =
        infer::generate_scored(&model, &prompt, &ranked, &CancelToken::new(), |e| {
            events.push(e)
        })
        .expect("generate")
        .expect("finished");
    assert_eq!(scored_images.len(), single.count);
    for (group, (image, score)) in all.chunks(candidates).zip(&scored_images) {
        let scores: Vec<f64> = group
            .iter()
            .map(|candidate| score_captions(&model, candidate, &[prompt.to_vec()], 1).unwrap()[0])
            .collect();
        let best = infer::best_first(&scores)[0];
        assert_eq!(image, &group[best]);
        assert_eq!(*score, Some(scores[best]));
    }
    // Previews cover every candidate; the final event carries only the images kept.
    assert!(matches!(events[0], Event::Started { count: 10, .. }));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Preview { images, .. } if images.len() == 10))
    );
    let Some(Event::Finished { images }) = events.last() else {
        panic!("no final event: {events:?}");
    };
    let returned: Vec<RgbImage> = scored_images.into_iter().map(|(image, _)| image).collect();
    assert_eq!(images, &returned);

    // One candidate, or an empty prompt, samples and scores nothing more.
    let plain = run(&model, &single).1.expect("finished");
    let single_scored =
        infer::generate_scored(&model, &prompt, &single, &CancelToken::new(), |_| {})
            .expect("generate")
            .expect("finished");
    assert!(single_scored.iter().all(|(_, score)| score.is_none()));
    assert_eq!(
        single_scored
            .into_iter()
            .map(|(i, _)| i)
            .collect::<Vec<_>>(),
        plain
    );
    let mut started = None;
    generate(&model, &[], &ranked, &CancelToken::new(), |e| {
        if let Event::Started { count, .. } = e {
            started = Some(count);
        }
    })
    .expect("generate");
    assert_eq!(started, Some(single.count));

    for bad in [0, infer::MAX_CANDIDATES + 1] {
        let options = GenerateOptions {
            candidates: bad,
            ..single.clone()
        };
        let result = generate(&model, &prompt, &options, &CancelToken::new(), |_| {});
        let message = result.expect_err("out of range").to_string();
        assert!(
            message.contains(&format!("candidates is {bad}")),
            "{message}"
        );
    }
}

fn fixture_images(count: usize) -> Vec<RgbImage> {
    (0..count)
        .map(|i| {
            RgbImage::from_fn(8, 8, |x, y| {
                let on = match i {
                    0 => x < 4,
                    1 => y < 4,
                    2 => (x + y) % 2 == 0,
                    _ => x == y,
                };
                if on {
                    image::Rgb([230, 40, 40])
                } else {
                    image::Rgb([20, 20, 200])
                }
            })
        })
        .collect()
}

fn fixture_captions() -> Vec<Vec<usize>> {
    vec![vec![1, 2], vec![3, 4, 5], vec![6], vec![7, 8, 9, 10]]
}

/// Trains a tiny model on four images and captions, image first, until it can caption them.
fn overfitted_model() -> JetFormer {
    let config = JetFormerConfig::tiny();
    let device = Device::flex().autodiff();
    let images = fixture_images(4);
    let captions = fixture_captions();
    let pixels: Vec<u8> = images.iter().flat_map(|i| i.as_raw().clone()).collect();
    let ids: Vec<i64> = captions
        .iter()
        .flat_map(|c| {
            let mut padded = c.clone();
            padded.resize(config.text.max_len, config.text.eos_id);
            padded.into_iter().map(|id| id as i64)
        })
        .collect();
    let batch = TrainBatch {
        pixels_pm1: pixels_pm1_from_u8(&pixels, 4, 8, &device),
        text: Tensor::<2, Int>::from_data(TensorData::new(ids, [4, config.text.max_len]), &device),
        text_mask: Tensor::ones([4, config.text.max_len], &device),
    };
    let mut trainer = Trainer::new(
        JetFormer::new(&config, &device),
        OptimizerConfig {
            learning_rate: 3e-3,
            total_steps: 300,
            ..OptimizerConfig::default()
        },
    );
    let mut rng = StdRng::seed_from_u64(0);
    for _ in 0..300 {
        let noise = StepNoise::evaluation(&config, 4, false, &mut rng, &device);
        trainer.train_step(&batch, &noise);
    }
    trainer.model.valid()
}

#[test]
fn overfitted_model_captions_and_ranks() {
    let model = overfitted_model();
    let images = fixture_images(4);
    let captions = fixture_captions();
    let generated = caption(&model, &images, &CaptionOptions::default()).expect("caption");
    assert_eq!(generated, captions);
    for (index, image) in images.iter().enumerate() {
        let scores = score_captions(&model, image, &captions, 3).expect("score");
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .expect("scores");
        assert_eq!(best, index, "scores {scores:?}");
    }
    let sampled = caption(
        &model,
        &images,
        &CaptionOptions {
            temperature: 0.5,
            seed: 1,
        },
    )
    .expect("caption");
    assert_eq!(sampled.len(), 4);
}

#[test]
fn bits_per_dim_is_repeatable_and_finite() {
    let model = random_model();
    let images = fixture_images(2);
    let a = bits_per_dim(&model, &images, None, 0).expect("bpd");
    let b = bits_per_dim(&model, &images, None, 0).expect("bpd");
    let c = bits_per_dim(&model, &images, Some(&[1, 2]), 0).expect("bpd");
    assert_eq!(a, b);
    assert_eq!(a.len(), 2);
    assert!(a.iter().chain(&c).all(|v| v.is_finite() && *v > 0.0));
    assert_ne!(a, c, "the caption changes the likelihood");
}

#[test]
fn drawn_bits_tighten_the_bound() {
    let model = random_model();
    let images = fixture_images(2);
    let dims = 8 * 8 * 3;
    let rows = bits_per_dim_per_draw(&model, &images, Some(&[1, 2]), 5, 4).expect("draws");
    assert_eq!(rows.len(), 2);
    for draw in 0..4 {
        let single = bits_per_dim(&model, &images, Some(&[1, 2]), 5 + draw as u64).expect("bpd");
        for (row, value) in rows.iter().zip(&single) {
            assert_eq!(
                row[draw], *value,
                "draw {draw} is bits_per_dim with seed 5 + {draw}"
            );
        }
    }
    for row in &rows {
        assert!(
            row.windows(2).any(|pair| pair[0] != pair[1]),
            "the draws differ"
        );
        let combined = bits_over_draws(row, dims);
        let mean = row.iter().sum::<f64>() / row.len() as f64;
        let lowest = row.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(
            combined < mean,
            "{combined} is not below the mean draw {mean}"
        );
        assert!(
            combined >= lowest,
            "{combined} is below the best draw {lowest}"
        );
    }
    let error = bits_per_dim_per_draw(&model, &images, None, 5, 0).expect_err("no draws");
    assert!(error.to_string().contains("use 1 or more"), "{error}");
}

#[test]
fn caption_batch_matches_single_calls() {
    let model = random_model();
    let image = fixture_images(3).remove(2);
    let captions = fixture_captions();
    let together = bits_per_dim_given_captions(&model, &image, &captions, 4).expect("bpd");
    assert_eq!(together.len(), captions.len());
    for (caption, value) in captions.iter().zip(&together) {
        let alone =
            bits_per_dim(&model, std::slice::from_ref(&image), Some(caption), 4).expect("bpd")[0];
        assert!((alone - value).abs() < 1e-4, "{alone} against {value}");
    }
    assert!(together.windows(2).any(|pair| pair[0] != pair[1]));
    let small = RgbImage::new(4, 4);
    let error = bits_per_dim_given_captions(&model, &small, &captions, 4).expect_err("4x4");
    assert!(error.to_string().contains("4x4"), "{error}");
}

#[test]
fn image_ratios_match_single_calls() {
    let model = random_model();
    let image = fixture_images(3).remove(1);
    // More captions than one batch holds, so the shared noise must also cross batches.
    let captions: Vec<Vec<usize>> = (0..18).map(|i| vec![1 + i % 9, 2 + i % 5]).collect();
    let ratios = image_log_ratios(&model, &image, &captions, 7).expect("ratios");
    assert_eq!(ratios.len(), captions.len());
    let size = model.config.image.size;
    let nats = (size * size * 3) as f64 * std::f64::consts::LN_2;
    let single = |caption: Option<&[usize]>| {
        bits_per_dim(&model, std::slice::from_ref(&image), caption, 7).expect("bpd")[0]
    };
    let unconditional = single(None);
    for (caption, ratio) in captions.iter().zip(&ratios) {
        let expected = (unconditional - single(Some(caption))) * nats;
        assert!(
            (expected - ratio).abs() < 1e-4 * nats,
            "{expected} against {ratio}"
        );
    }
    assert!(ratios.windows(2).any(|pair| pair[0] != pair[1]));
    assert!(
        image_log_ratios(&model, &image, &[], 7)
            .expect("none")
            .is_empty()
    );
}

#[test]
fn reranking_reorders_the_best_candidates_only() {
    let model = random_model();
    let image = fixture_images(2).remove(0);
    let captions = fixture_captions();
    // The third and first captions are the best two.
    let scores = [-2.0, -5.0, -1.0, -3.0];
    let reranking = rerank_captions(&model, &image, &captions, &scores, 2, 0.5, 3).expect("rerank");
    assert_eq!(reranking.candidates, vec![2, 0]);
    let best = [captions[2].clone(), captions[0].clone()];
    let ratios = image_log_ratios(&model, &image, &best, 3).expect("ratios");
    assert_eq!(reranking.image_scores, ratios);

    let sums = [scores[2] + 0.5 * ratios[0], scores[0] + 0.5 * ratios[1]];
    let expected_order = if sums[0] >= sums[1] {
        vec![2, 0, 3, 1]
    } else {
        vec![0, 2, 3, 1]
    };
    assert_eq!(reranking.order, expected_order);

    let exps: Vec<f64> = scores.iter().map(|s| f64::exp(*s)).collect();
    let total: f64 = exps.iter().sum();
    let probabilities = &reranking.probabilities;
    assert!((probabilities[1] - exps[1] / total).abs() < 1e-12);
    assert!((probabilities[3] - exps[3] / total).abs() < 1e-12);
    assert!((probabilities[0] + probabilities[2] - (exps[0] + exps[2]) / total).abs() < 1e-12);
    // The candidates share their total by the weighted mean of their two scores.
    let mean_gap = (sums[0] - sums[1]) / 1.5;
    assert!(
        (probabilities[2] / probabilities[0] - mean_gap.exp()).abs()
            < 1e-9 * mean_gap.exp().max(1.0)
    );
    let top = reranking.top(3);
    assert_eq!(top.len(), 3);
    assert_eq!(
        top[0],
        (expected_order[0], probabilities[expected_order[0]])
    );

    let all = rerank_captions(&model, &image, &captions, &scores, 10, 1.0, 3).expect("all");
    assert_eq!(all.candidates, vec![2, 0, 3, 1]);
    // With no weight on the image side the calibrated order and probabilities stay.
    let unweighted = rerank_captions(&model, &image, &captions, &scores, 10, 0.0, 3).expect("0");
    assert_eq!(unweighted.order, vec![2, 0, 3, 1]);
    for (probability, exp) in unweighted.probabilities.iter().zip(&exps) {
        assert!((probability - exp / total).abs() < 1e-12);
    }
    let error =
        rerank_captions(&model, &image, &captions, &scores, 2, -1.0, 3).expect_err("negative");
    assert!(
        error
            .to_string()
            .contains("weight is -1; use a number of 0 or more"),
        "{error}"
    );
    let sum: f64 = all.probabilities.iter().sum();
    assert!((sum - 1.0).abs() < 1e-12);
    let error = rerank_captions(&model, &image, &captions, &scores[..3], 2, 1.0, 3).expect_err("3");
    assert!(error.to_string().contains("3 scores"), "{error}");
}

#[test]
fn top_probabilities_are_softmax() {
    let ranked = top_probabilities(&[0.0, 2.0f64.ln(), f64::NEG_INFINITY, 0.0], 3);
    let indices: Vec<usize> = ranked.iter().map(|&(index, _)| index).collect();
    assert_eq!(indices, vec![1, 0, 3]);
    let probabilities: Vec<f64> = ranked.iter().map(|&(_, p)| p).collect();
    for (got, expected) in probabilities.iter().zip([0.5, 0.25, 0.25]) {
        assert!((got - expected).abs() < 1e-12, "{probabilities:?}");
    }
    assert!(top_probabilities(&[f64::NEG_INFINITY], 1).is_empty());
}

#[test]
fn interpolation_endpoints_are_the_inputs() {
    let model = random_model();
    let images = fixture_images(2);
    for mode in [Interpolation::Linear, Interpolation::Spherical] {
        let strip = interpolate(&model, &images[0], &images[1], 5, mode).expect("interpolate");
        assert_eq!(strip.len(), 5);
        for (got, expected) in [(&strip[0], &images[0]), (&strip[4], &images[1])] {
            let max_diff = got
                .as_raw()
                .iter()
                .zip(expected.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .expect("pixels");
            assert!(max_diff <= 1, "{mode:?}: endpoint differs by {max_diff}");
        }
        assert_ne!(strip[2].as_raw(), images[0].as_raw());
    }
    assert!(interpolate(&model, &images[0], &images[1], 1, Interpolation::Linear).is_err());
    let decoded = infer::decode(&model, infer::encode(&model, &images).expect("encode"));
    assert_eq!(decoded.len(), 2);
}

#[test]
fn caption_scores_match_full_pass() {
    use burn::tensor::activation::log_softmax;
    use jetformer_engine::loss::split_latents;
    use jetformer_engine::model::SequenceInputs;

    let model = random_model();
    let config = model.config.clone();
    let image = RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([(x * 30) as u8, (y * 30) as u8, 90])
    });
    // Lengths 0 to the model's text length, scored in batches that mix lengths.
    let captions: Vec<Vec<usize>> = vec![
        vec![],
        vec![3, 1],
        vec![5],
        vec![2, 4, 6, 8, 1, 0],
        vec![7, 7, 7],
    ];
    let scores = score_captions(&model, &image, &captions, 2).expect("score");

    let device = Device::flex();
    let (soft_tokens, _) = split_latents(
        &config,
        infer::encode(&model, std::slice::from_ref(&image)).expect("encode"),
    );
    let text_len = config.text.max_len;
    for (caption, score) in captions.iter().zip(&scores) {
        let mut ids: Vec<i64> = caption.iter().map(|&id| id as i64).collect();
        ids.resize(text_len, config.text.eos_id as i64);
        let text = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, text_len]), &device);
        let outputs = model.forward_sequence(&SequenceInputs {
            text: text.clone(),
            text_mask: Tensor::ones([1, text_len], &device),
            soft_tokens: soft_tokens.clone(),
            text_first: Tensor::zeros([1], &device),
            drop_prefix: Tensor::zeros([1], &device),
        });
        let log_probs: Vec<f32> = log_softmax(outputs.text_logits, 2)
            .gather(2, text.reshape([1, text_len, 1]))
            .into_data()
            .iter::<f32>()
            .collect();
        // The caption and its first EOS.
        let expected: f32 = log_probs[..(caption.len() + 1).min(text_len)].iter().sum();
        assert!(
            (f64::from(expected) - score).abs() < 1e-3,
            "caption {caption:?}: cached score {score}, full pass {expected}"
        );
    }
}
