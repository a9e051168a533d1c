//! The compute thread: one named thread owns the device and the model. The window sends
//! [`Command`]s and reads [`Event`]s, and the worker calls the repaint hook after each event.
//! A panic inside a command becomes an [`Event::Failed`] and the thread keeps serving.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use image::RgbImage;
use jetformer_engine::checkpoint::{Bundle, CaptionPriors, load_bundle};
use jetformer_engine::image::{DecodeLimits, load_rgb};
use jetformer_engine::infer::{self, CancelToken, CaptionOptions, GenerateOptions, Interpolation};
use jetformer_engine::{BackendChoice, ComputeDevice};

/// File beside a model with one candidate caption per line, ranked for each dropped image.
pub const CONCEPTS_FILE: &str = "concepts.txt";

/// Candidate captions shown for each dropped image.
pub const TOP_CAPTIONS: usize = 5;

/// Previews per generated image; the engine decodes one every `num_tokens / PREVIEWS` tokens.
const PREVIEWS: usize = 16;

/// Candidate captions scored in one batch.
const SCORE_BATCH: usize = 64;

/// The kind and id of a command, so a failure reaches the panel that sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Loading a model directory.
    LoadModel,
    /// Generation number `id`.
    Generate(u64),
    /// Understanding of dropped image `id`.
    Understand(u64),
    /// Live interpolation request `id`.
    Interpolate(u64),
    /// Interpolation strip request `id`.
    Strip(u64),
}

/// A request from the window.
#[derive(Debug)]
pub enum Command {
    /// Load `config.json`, `model.safetensors`, `tokenizer.json` and, if present,
    /// [`CONCEPTS_FILE`] from `dir`, replacing the current model.
    LoadModel { dir: PathBuf },
    /// Sample images for `prompt`; setting `cancel` stops within one token.
    Generate {
        id: u64,
        prompt: String,
        options: GenerateOptions,
        cancel: CancelToken,
    },
    /// Decode the image file at `path` and caption, rank and measure it.
    Understand { id: u64, path: PathBuf },
    /// Decode the linear blend `(1 - t) a + t b` of two images' latents. `pair` names the two
    /// images so their latents are encoded once per pair.
    Interpolate {
        id: u64,
        pair: [u64; 2],
        first: RgbImage,
        second: RgbImage,
        t: f32,
    },
    /// Decode `steps` evenly spaced linear blends from `first` to `second`.
    Strip {
        id: u64,
        first: RgbImage,
        second: RgbImage,
        steps: usize,
    },
}

impl Command {
    fn job(&self) -> Job {
        match self {
            Self::LoadModel { .. } => Job::LoadModel,
            Self::Generate { id, .. } => Job::Generate(*id),
            Self::Understand { id, .. } => Job::Understand(*id),
            Self::Interpolate { id, .. } => Job::Interpolate(*id),
            Self::Strip { id, .. } => Job::Strip(*id),
        }
    }
}

/// Description of the loaded model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// The model directory.
    pub dir: PathBuf,
    /// The config's name, or the directory name when the config has none.
    pub name: String,
    /// The compute backend and adapter, for example "wgpu on NVIDIA ..." or "cpu (flex) on 2
    /// threads".
    pub backend: String,
    /// Side of the square images in pixels.
    pub image_size: u32,
    /// Side of a soft-token patch in pixels.
    pub patch_size: u32,
    /// Soft tokens per image.
    pub num_tokens: usize,
    /// Candidate captions from [`CONCEPTS_FILE`]; empty when there is none.
    pub concepts: Vec<String>,
    /// Reason ranking is off, partial or not calibrated, if it is.
    pub concepts_note: Option<String>,
    /// Log priors of the concepts (`caption-priors.json`), which calibrate the ranking when
    /// present.
    pub priors: Option<CaptionPriors>,
}

/// Results for one dropped image.
#[derive(Clone, Debug)]
pub struct Understanding {
    /// The image in the form the model reads: cropped, composited on white, resized.
    pub model_view: RgbImage,
    /// The greedy caption.
    pub caption: String,
    /// The best candidate captions with their probabilities (a softmax over all candidates),
    /// highest first. Empty when the model has no candidates.
    pub ranking: Vec<(String, f64)>,
    /// Whether the ranking subtracted each caption's prior from its log-likelihood, which
    /// makes the probabilities those of a uniform prior over the candidates.
    pub calibrated: bool,
    /// Number of the best calibrated captions scored again by the image's likelihood given
    /// each ([`infer::rerank_captions`]), or 0 when none were.
    pub reranked: usize,
    /// Unconditional bits per dimension of the model view.
    pub bits_per_dim: f64,
}

/// A report from the worker.
#[derive(Debug)]
pub enum Event {
    /// A model finished loading.
    ModelLoaded(ModelInfo),
    /// Generation `id` began: `count` images of `num_tokens` soft tokens.
    Started {
        id: u64,
        count: usize,
        num_tokens: usize,
    },
    /// Images of generation `id` decoded from its first `tokens_done` soft tokens.
    Preview {
        id: u64,
        tokens_done: usize,
        images: Vec<RgbImage>,
    },
    /// Generation `id` finished after `elapsed_secs` seconds.
    Generated {
        id: u64,
        images: Vec<RgbImage>,
        elapsed_secs: f64,
    },
    /// Generation `id` stopped because its cancel token was set.
    Cancelled { id: u64 },
    /// Dropped image `id` was understood.
    Understood { id: u64, result: Understanding },
    /// Interpolation request `id` decoded the blend at `t`.
    Interpolated { id: u64, t: f32, image: RgbImage },
    /// Strip request `id` decoded its images, first to second.
    StripReady { id: u64, images: Vec<RgbImage> },
    /// Something the user should know that did not stop the job.
    Warning { message: String },
    /// `job` failed, or panicked, with `message`.
    Failed { job: Job, message: String },
}

/// The window's handle on the worker thread.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    _thread: JoinHandle<()>,
}

impl Worker {
    /// Starts the worker thread on `backend`. `repaint` runs after every event, from the worker
    /// thread. The device opens on the first command, not here, so startup never waits on it.
    pub fn spawn(backend: BackendChoice, repaint: impl Fn() + Send + 'static) -> Result<Self> {
        let (commands, command_receiver) = channel::<Command>();
        let (event_sender, events) = channel();
        let thread = std::thread::Builder::new()
            .name("jetformer-worker".into())
            .spawn(move || {
                let mut state = WorkerState {
                    backend,
                    device: None,
                    bundle: None,
                    info: None,
                    latents: None,
                };
                let emit = |event: Event| {
                    // An error here means the window dropped its receiver, so the event has no reader.
                    let _ = event_sender.send(event);
                    repaint();
                };
                while let Ok(command) = command_receiver.recv() {
                    let job = command.job();
                    match guarded(|| state.execute(command, &emit)) {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => emit(Event::Failed {
                            job,
                            message: crate::error_message(&error),
                        }),
                        Err(panic) => {
                            log::error!("worker panicked in {job:?}: {panic}");
                            emit(Event::Failed {
                                job,
                                message: format!("internal error (the worker panicked): {panic}"),
                            });
                        }
                    }
                }
            })
            .context("could not start the worker thread")?;
        Ok(Self {
            commands,
            events,
            _thread: thread,
        })
    }

    /// Queues a command. Fails only when the worker thread has ended.
    pub fn send(&self, command: Command) -> Result<()> {
        self.commands
            .send(command)
            .map_err(|_| anyhow::anyhow!("the worker thread has stopped; restart the app"))
    }

    /// Returns the next event, if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

/// Runs `job`, turning a panic into its message.
pub fn guarded<T>(job: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(job)).map_err(|payload| {
        if let Some(text) = payload.downcast_ref::<&str>() {
            (*text).to_string()
        } else if let Some(text) = payload.downcast_ref::<String>() {
            text.clone()
        } else {
            "a panic with no message".to_string()
        }
    })
}

/// Latents of the last interpolation pair, `[2, num_tokens, token_dim]`.
struct PairLatents {
    pair: [u64; 2],
    latents: Tensor<3>,
}

struct WorkerState {
    backend: BackendChoice,
    device: Option<ComputeDevice>,
    bundle: Option<Bundle>,
    info: Option<ModelInfo>,
    latents: Option<PairLatents>,
}

impl WorkerState {
    fn execute(&mut self, command: Command, emit: &dyn Fn(Event)) -> Result<()> {
        match command {
            Command::LoadModel { dir } => {
                let info = self.load_model(&dir)?;
                emit(Event::ModelLoaded(info));
            }
            Command::Generate {
                id,
                prompt,
                options,
                cancel,
            } => self.generate(id, &prompt, options, &cancel, emit)?,
            Command::Understand { id, path } => {
                let result = self.understand(&path)?;
                emit(Event::Understood { id, result });
            }
            Command::Interpolate {
                id,
                pair,
                first,
                second,
                t,
            } => {
                let image = self.interpolate(pair, first, second, t)?;
                emit(Event::Interpolated { id, t, image });
            }
            Command::Strip {
                id,
                first,
                second,
                steps,
            } => {
                let bundle = self.bundle()?;
                let images = infer::interpolate(
                    &bundle.model,
                    &first,
                    &second,
                    steps,
                    Interpolation::Linear,
                )?;
                emit(Event::StripReady { id, images });
            }
        }
        Ok(())
    }

    fn bundle(&self) -> Result<&Bundle> {
        self.bundle
            .as_ref()
            .context("no model is loaded; open a model directory from the Model menu")
    }

    fn load_model(&mut self, dir: &Path) -> Result<ModelInfo> {
        // A failed load leaves no model, so nothing runs on a half-replaced one.
        self.bundle = None;
        self.info = None;
        self.latents = None;
        if self.device.is_none() {
            let device =
                ComputeDevice::select(self.backend).context("could not open the compute device")?;
            log::info!("compute device: {device}");
            self.device = Some(device);
        }
        let device = self.device.as_ref().context("no compute device")?;
        let bundle = load_bundle(dir, &device.device).with_context(|| {
            format!(
                "could not load the model in {}; it needs config.json, model.safetensors and \
                 tokenizer.json",
                dir.display()
            )
        })?;
        let config = &bundle.model.config;
        let (concepts, mut concepts_note) = read_concepts(&bundle, dir);
        let priors = match CaptionPriors::load(dir) {
            Ok(priors) => priors,
            Err(error) => {
                let note = format!("ranking is not calibrated: {error}");
                concepts_note = Some(match concepts_note {
                    Some(first) => format!("{first}; {note}"),
                    None => note,
                });
                None
            }
        };
        let name = if config.name.is_empty() {
            dir.file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string())
        } else {
            config.name.clone()
        };
        let info = ModelInfo {
            dir: dir.to_path_buf(),
            name,
            backend: device.to_string(),
            image_size: config.image.size as u32,
            patch_size: config.image.patch_size as u32,
            num_tokens: config.num_tokens(),
            concepts,
            concepts_note,
            priors,
        };
        log::info!("loaded model {} from {}", info.name, dir.display());
        self.bundle = Some(bundle);
        self.info = Some(info.clone());
        Ok(info)
    }

    fn generate(
        &self,
        id: u64,
        prompt: &str,
        options: GenerateOptions,
        cancel: &CancelToken,
        emit: &dyn Fn(Event),
    ) -> Result<()> {
        let bundle = self.bundle()?;
        let encoded = bundle.text.encode(prompt)?;
        if encoded.truncated_tokens > 0 {
            emit(Event::Warning {
                message: match encoded.truncated_tokens {
                    1 => format!(
                        "the prompt is longer than the model's {} tokens; its last token was \
                         dropped",
                        bundle.text.config().max_len
                    ),
                    count => format!(
                        "the prompt is longer than the model's {} tokens; its last {count} \
                         tokens were dropped",
                        bundle.text.config().max_len
                    ),
                },
            });
        }
        let num_tokens = bundle.model.config.num_tokens();
        let options = GenerateOptions {
            preview_every: num_tokens.div_ceil(PREVIEWS).max(1),
            ..options
        };
        let start = Instant::now();
        let images =
            infer::generate(
                &bundle.model,
                &encoded.ids,
                &options,
                cancel,
                |event| match event {
                    infer::Event::Started { count, num_tokens } => emit(Event::Started {
                        id,
                        count,
                        num_tokens,
                    }),
                    infer::Event::Preview {
                        tokens_done,
                        images,
                    } => emit(Event::Preview {
                        id,
                        tokens_done,
                        images,
                    }),
                    // Previews carry the progress the window shows, and the return value the
                    // final images.
                    infer::Event::Sampled { .. }
                    | infer::Event::Finished { .. }
                    | infer::Event::Cancelled => {}
                },
            )?;
        match images {
            Some(images) => emit(Event::Generated {
                id,
                images,
                elapsed_secs: start.elapsed().as_secs_f64(),
            }),
            None => emit(Event::Cancelled { id }),
        }
        Ok(())
    }

    fn understand(&self, path: &Path) -> Result<Understanding> {
        let bundle = self.bundle()?;
        let info = self.info.as_ref().context("no model is loaded")?;
        if path.is_dir() {
            bail!("{} is a folder; drop or open image files", path.display());
        }
        let model_view = load_rgb(path, info.image_size, DecodeLimits::default())?;
        let model = &bundle.model;
        let images = std::slice::from_ref(&model_view);
        let caption_ids = infer::caption(model, images, &CaptionOptions::default())?;
        let caption = caption_ids
            .first()
            .map(|ids| bundle.text.decode(ids))
            .unwrap_or_default();
        let mut calibrated = false;
        let mut reranked = 0;
        let ranking = if info.concepts.is_empty() {
            Vec::new()
        } else {
            let ids = info
                .concepts
                .iter()
                .map(|concept| Ok(bundle.text.encode(concept)?.ids))
                .collect::<Result<Vec<_>>>()?;
            // NOTE: the card shows once every candidate is scored and the best re-ranked.
            // With the bundled model's 1906 concepts, `jetformer rank` took 1.10 to 1.23 s on a
            // 2-core CPU without re-ranking and 1.66 s with the best 40 re-ranked.
            let scores = infer::score_captions(model, &model_view, &ids, SCORE_BATCH)?;
            let priors = info.priors.as_ref();
            match priors.and_then(|p| p.calibrate(&info.concepts, &scores)) {
                Some(adjusted) => {
                    let (best, candidates) = infer::best_captions(
                        model,
                        &model_view,
                        &ids,
                        &adjusted,
                        infer::RERANK_CANDIDATES,
                        TOP_CAPTIONS,
                    )?;
                    calibrated = true;
                    reranked = candidates;
                    best.into_iter()
                        .map(|(index, probability)| (info.concepts[index].clone(), probability))
                        .collect()
                }
                None => top_probabilities(&info.concepts, &scores, TOP_CAPTIONS),
            }
        };
        let bits_per_dim = infer::bits_per_dim(model, images, None, 0)?
            .first()
            .copied()
            .context("bits per dimension returned no value")?;
        Ok(Understanding {
            model_view,
            caption,
            ranking,
            calibrated,
            reranked,
            bits_per_dim,
        })
    }

    fn interpolate(
        &mut self,
        pair: [u64; 2],
        first: RgbImage,
        second: RgbImage,
        t: f32,
    ) -> Result<RgbImage> {
        let bundle = self
            .bundle
            .as_ref()
            .context("no model is loaded; open a model directory from the Model menu")?;
        let cached = self.latents.as_ref().filter(|cached| cached.pair == pair);
        let latents = match cached {
            Some(cached) => cached.latents.clone(),
            None => {
                let latents = infer::encode(&bundle.model, &[first, second])?;
                self.latents = Some(PairLatents {
                    pair,
                    latents: latents.clone(),
                });
                latents
            }
        };
        let t = t.clamp(0.0, 1.0);
        // [2, num_tokens, token_dim] -> two [1, num_tokens, token_dim] halves, blended.
        let blend = latents.clone().narrow(0, 0, 1) * (1.0 - t) + latents.narrow(0, 1, 1) * t;
        infer::decode(&bundle.model, blend)
            .into_iter()
            .next()
            .context("decoding returned no image")
    }
}

/// Reads the candidate captions beside a model, keeping those the tokenizer accepts. Returns
/// them with a note when ranking is off or some lines were skipped.
fn read_concepts(bundle: &Bundle, dir: &Path) -> (Vec<String>, Option<String>) {
    let path = dir.join(CONCEPTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let note = format!(
                "caption ranking is off: the model has no {CONCEPTS_FILE} (one caption per line)"
            );
            return (Vec::new(), Some(note));
        }
        Err(error) => {
            let note = format!(
                "caption ranking is off: could not read {}: {error}",
                path.display()
            );
            return (Vec::new(), Some(note));
        }
    };
    let mut concepts = Vec::new();
    let mut skipped = 0;
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if bundle.text.encode(line).is_ok() {
            concepts.push(line.to_string());
        } else {
            skipped += 1;
        }
    }
    let note = if concepts.is_empty() {
        Some(format!(
            "caption ranking is off: {} has no usable captions",
            path.display()
        ))
    } else if skipped > 0 {
        Some(format!(
            "{skipped} lines of {} could not be tokenized and are not ranked",
            path.display()
        ))
    } else {
        None
    };
    (concepts, note)
}

/// Pairs the `top` highest scores with their captions, as probabilities of a softmax over all
/// `scores` (log-probabilities in nats), highest first.
pub fn top_probabilities(captions: &[String], scores: &[f64], top: usize) -> Vec<(String, f64)> {
    let scores = &scores[..scores.len().min(captions.len())];
    infer::top_probabilities(scores, top)
        .into_iter()
        .map(|(index, probability)| (captions[index].clone(), probability))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_ranks_highest_first() {
        let captions: Vec<String> = ["cat", "dog", "car"].map(String::from).to_vec();
        let scores = [-3.0, -1.0, -2.0];
        let ranked = top_probabilities(&captions, &scores, 2);
        assert_eq!(ranked.len(), 2);
        assert_eq!(ranked[0].0, "dog");
        assert_eq!(ranked[1].0, "car");
        let total: f64 = scores.iter().map(|s| f64::exp(*s)).sum();
        assert!((ranked[0].1 - (-1f64).exp() / total).abs() < 1e-12);
        assert!((ranked[1].1 - (-2f64).exp() / total).abs() < 1e-12);
    }

    #[test]
    fn softmax_survives_very_negative_scores() {
        let captions: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let ranked = top_probabilities(&captions, &[-5000.0, -5001.0], 5);
        assert_eq!(ranked.len(), 2);
        assert!(ranked.iter().all(|(_, p)| p.is_finite()));
        assert!(ranked.iter().all(|(_, p)| *p > 0.0));
        assert!((ranked[0].1 + ranked[1].1 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn guard_turns_panic_into_message() {
        let result = guarded(|| -> u32 { panic!("tensor shape mismatch") });
        assert_eq!(result, Err("tensor shape mismatch".to_string()));
        let formatted = guarded(|| -> u32 { panic!("bad value {}", 7) });
        assert_eq!(formatted, Err("bad value 7".to_string()));
        assert_eq!(guarded(|| 5), Ok(5));
    }

    #[test]
    fn worker_reports_missing_model_and_keeps_serving() {
        let worker = Worker::spawn(BackendChoice::Cpu, || {}).expect("spawn");
        let missing = std::env::temp_dir().join("jetformer-no-such-model");
        for _ in 0..2 {
            worker
                .send(Command::LoadModel {
                    dir: missing.clone(),
                })
                .expect("send");
            let event = worker.events.recv().expect("event");
            let Event::Failed { job, message } = event else {
                panic!("expected a failure, got {event:?}");
            };
            assert_eq!(job, Job::LoadModel);
            assert!(message.contains("jetformer-no-such-model"), "{message}");
        }
        worker
            .send(Command::Understand {
                id: 9,
                path: missing,
            })
            .expect("send");
        let event = worker.events.recv().expect("event");
        let Event::Failed { job, message } = event else {
            panic!("expected a failure, got {event:?}");
        };
        assert_eq!(job, Job::Understand(9));
        assert!(message.contains("no model is loaded"), "{message}");
    }
}
