//! The eframe app: owns the settings, the panels and the worker handle. Each frame it applies
//! the worker's events, handles shortcuts and dropped files, then draws the panels.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use eframe::egui::{self, Key, KeyboardShortcut, Modifiers};
use image::RgbImage;
use jetformer_engine::BackendChoice;
use jetformer_engine::infer::{CancelToken, GenerateOptions};

use crate::dialog::{DialogKind, DialogResult, Dialogs};
use crate::export;
use crate::state::Settings;
use crate::ui::canvas::Canvas;
use crate::ui::gallery::{Gallery, GalleryAction};
use crate::ui::interpolate::{InterpolateAction, Interpolation, Source};
use crate::ui::prompt::{self, PromptAction};
use crate::ui::status::{self, ModelState};
use crate::ui::understand::{CardState, Understand, UnderstandAction};
use crate::worker::{Command, Event, Job, Worker};

/// Title of the window, also eframe's application id for its storage folder.
pub const APP_NAME: &str = "JetFormer";

/// Startup choices from the command line.
#[derive(Clone, Debug, Default)]
pub struct LaunchOptions {
    /// Model directory from `--model`; it wins over the one remembered from the last run.
    pub model_dir: Option<PathBuf>,
    /// Compute backend from `--device`.
    pub backend: BackendChoice,
    /// Window renderer from `--renderer`.
    pub renderer: RendererChoice,
}

/// Renderer of the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RendererChoice {
    /// wgpu with the canvas's WGSL shader, or OpenGL when the machine has no GPU (Linux
    /// without GPU device nodes), because Mesa's software rasterizer draws OpenGL about five
    /// times faster than Vulkan (measured in BENCHMARKS.md).
    #[default]
    Auto,
    /// wgpu (Vulkan, Metal or DX12), with the canvas drawn by its WGSL shader.
    Wgpu,
    /// OpenGL through glow, with the canvas drawn by egui.
    Glow,
}

/// Returns the bundled model's directory in the source tree, as the command line does.
pub fn default_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/model")
}

/// Opens the window and runs until it closes.
pub fn run(options: LaunchOptions) -> Result<()> {
    let viewport = egui::ViewportBuilder::default()
        .with_title(APP_NAME)
        .with_app_id("jetformer")
        .with_inner_size([1200.0, 780.0])
        .with_min_inner_size([640.0, 420.0])
        .with_drag_and_drop(true);
    let first = match options.renderer {
        RendererChoice::Wgpu => eframe::Renderer::Wgpu,
        RendererChoice::Glow => eframe::Renderer::Glow,
        RendererChoice::Auto if jetformer_engine::device::may_have_gpu() => eframe::Renderer::Wgpu,
        RendererChoice::Auto => eframe::Renderer::Glow,
    };
    let native = eframe::NativeOptions {
        viewport,
        renderer: first,
        ..Default::default()
    };
    log::info!("window renderer: {first}");
    let launch = options.clone();
    let result = eframe::run_native(
        APP_NAME,
        native.clone(),
        Box::new(move |cc| Ok(Box::new(JetformerApp::from_creation(cc, launch)?))),
    );
    let Err(error) = result else {
        return Ok(());
    };
    // The first renderer failed to start (no Vulkan, Metal or DX12 adapter, or no OpenGL):
    // try the other. Under OpenGL the canvas draws through egui instead of its shader.
    let second = match first {
        eframe::Renderer::Glow => eframe::Renderer::Wgpu,
        _ => eframe::Renderer::Glow,
    };
    log::warn!("the {first} renderer failed ({error}); retrying with {second}");
    let native = eframe::NativeOptions {
        renderer: second,
        ..native
    };
    eframe::run_native(
        APP_NAME,
        native,
        Box::new(move |cc| Ok(Box::new(JetformerApp::from_creation(cc, options)?))),
    )
    .map_err(|error| anyhow::anyhow!("could not open the window: {error}"))
}

/// The generation in progress, or the last one.
struct Run {
    id: u64,
    prompt: String,
    options: GenerateOptions,
    cancel: CancelToken,
    started: Instant,
    tokens_done: usize,
    num_tokens: usize,
    /// Seconds the finished run took; `None` while it runs.
    elapsed_secs: Option<f64>,
    cancelled: bool,
}

impl Run {
    fn is_running(&self) -> bool {
        self.elapsed_secs.is_none() && !self.cancelled
    }
}

/// A path typed in the window, used when no file dialog could open.
struct PathPrompt {
    kind: DialogKind,
    text: String,
    /// The image to write, for a save.
    image: Option<RgbImage>,
    /// Whether the path field has taken the keyboard focus once.
    focused: bool,
}

/// The JetFormer window.
pub struct JetformerApp {
    settings: Settings,
    worker: Worker,
    gpu_canvas: bool,
    model: ModelState,
    run: Option<Run>,
    canvas: Canvas,
    gallery: Gallery,
    understand: Understand,
    interpolation: Interpolation,
    dialogs: Dialogs,
    path_prompt: Option<PathPrompt>,
    /// The image a save dialog writes, set while that dialog is open.
    pending_save: Option<RgbImage>,
    /// The strip request whose result opens a save dialog.
    pending_strip: Option<u64>,
    last_error: Option<String>,
    next_id: u64,
    /// When the window opened, the origin of the frame times in the trace log.
    opened: Instant,
}

impl JetformerApp {
    fn from_creation(cc: &eframe::CreationContext<'_>, launch: LaunchOptions) -> Result<Self> {
        let settings = Settings::load(cc.storage);
        let gpu = cc
            .wgpu_render_state
            .as_ref()
            .is_some_and(crate::ui::canvas::install);
        Self::new(&cc.egui_ctx, settings, launch, gpu)
    }

    /// Builds the app, starts the worker and sends it the model to load. `gpu_canvas` draws the
    /// canvas through its WGSL shader; it needs the pipeline from [`crate::ui::canvas::install`].
    pub fn new(
        ctx: &egui::Context,
        settings: Settings,
        launch: LaunchOptions,
        gpu_canvas: bool,
    ) -> Result<Self> {
        ctx.options_mut(|options| options.theme_preference = egui::ThemePreference::System);
        let repaint_ctx = ctx.clone();
        let worker = Worker::spawn(launch.backend, move || repaint_ctx.request_repaint())?;
        let model_dir = launch
            .model_dir
            .or_else(|| settings.model_dir.clone())
            .unwrap_or_else(default_model_dir);
        let mut app = Self {
            settings,
            worker,
            gpu_canvas,
            model: ModelState::Loading(model_dir.clone()),
            run: None,
            canvas: Canvas::default(),
            gallery: Gallery::default(),
            understand: Understand::default(),
            interpolation: Interpolation::default(),
            dialogs: Dialogs::default(),
            path_prompt: None,
            pending_save: None,
            pending_strip: None,
            last_error: None,
            next_id: 1,
            opened: Instant::now(),
        };
        app.load_model(model_dir);
        Ok(app)
    }

    /// Returns the current settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Returns the last error shown in the status bar.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Returns whether a model is loaded.
    pub fn model_ready(&self) -> bool {
        matches!(self.model, ModelState::Ready(_))
    }

    /// Returns whether model loading has finished, successfully or not.
    pub fn model_settled(&self) -> bool {
        !matches!(self.model, ModelState::Loading(_))
    }

    /// Returns whether a generation is running.
    pub fn is_generating(&self) -> bool {
        self.run.as_ref().is_some_and(Run::is_running)
    }

    /// Returns the number of finished images in the gallery.
    pub fn gallery_len(&self) -> usize {
        self.gallery.entries().len()
    }

    /// Returns the gallery image at `index`, oldest first.
    pub fn gallery_image(&self, index: usize) -> Option<&RgbImage> {
        self.gallery.entries().get(index).map(|entry| &entry.image)
    }

    /// Returns the slider position of the decoded blend on show in the interpolation panel.
    pub fn interpolation_shown(&self) -> Option<f32> {
        self.interpolation.shown_t()
    }

    /// Asks for typed paths in the window instead of opening native file dialogs, as happens
    /// when none can open (used by tests).
    pub fn use_typed_paths(&mut self) {
        self.dialogs.use_typed_paths();
    }

    /// Returns whether any dropped image is still being captioned.
    pub fn understanding_pending(&self) -> bool {
        self.understand
            .cards()
            .iter()
            .any(|card| matches!(card.state, CardState::Pending))
    }

    /// Opens `paths` as images to understand, as a drop or the Open dialog does.
    pub fn open_images(&mut self, paths: Vec<PathBuf>) {
        for path in paths {
            self.understand_path(path);
        }
    }

    fn allocate_ids(&mut self, count: usize) -> u64 {
        let first = self.next_id;
        self.next_id += count.max(1) as u64;
        first
    }

    fn report(&mut self, message: impl Into<String>) {
        let message = message.into();
        log::warn!("{message}");
        self.last_error = Some(message);
    }

    fn send(&mut self, command: Command) -> bool {
        match self.worker.send(command) {
            Ok(()) => true,
            Err(error) => {
                self.report(crate::error_message(&error));
                false
            }
        }
    }

    fn load_model(&mut self, dir: PathBuf) {
        if let Some(run) = &self.run {
            run.cancel.cancel();
        }
        if !dir.is_dir() {
            self.model = ModelState::Missing {
                message: format!(
                    "no model loaded: {} is not a model directory. Open a model directory \
                     from the Model menu (it needs config.json, model.safetensors and \
                     tokenizer.json).",
                    dir.display()
                ),
            };
            return;
        }
        self.model = ModelState::Loading(dir.clone());
        self.send(Command::LoadModel { dir });
    }

    fn generate(&mut self) {
        if self.is_generating() {
            return;
        }
        if !self.model_ready() {
            self.report("no model loaded; open a model directory from the Model menu");
            return;
        }
        if self.settings.random_seed {
            self.settings.seed = u64::from(rand::random::<u32>());
        }
        let options = self.settings.generate_options(self.settings.seed);
        if let Err(error) = options.validate() {
            self.report(error.to_string());
            return;
        }
        let id = self.allocate_ids(1);
        let cancel = CancelToken::new();
        let prompt = self.settings.prompt.trim().to_string();
        self.run = Some(Run {
            id,
            prompt: prompt.clone(),
            options: options.clone(),
            cancel: cancel.clone(),
            started: Instant::now(),
            tokens_done: 0,
            num_tokens: 0,
            elapsed_secs: None,
            cancelled: false,
        });
        self.send(Command::Generate {
            id,
            prompt,
            options,
            cancel,
        });
    }

    fn cancel(&mut self) {
        if let Some(run) = self.run.as_ref().filter(|run| run.is_running()) {
            run.cancel.cancel();
        }
    }

    fn understand_path(&mut self, path: PathBuf) {
        let id = self.allocate_ids(1);
        if path.is_dir() {
            let message = format!(
                "{} is a folder; drop or open image files instead",
                path.display()
            );
            self.understand
                .add(id, path, CardState::Failed(message.clone()));
            self.report(message);
            return;
        }
        if !self.model_ready() {
            let message = "no model loaded; open a model directory from the Model menu first";
            self.understand
                .add(id, path, CardState::Failed(message.into()));
            self.report(message);
            return;
        }
        self.understand.add(id, path.clone(), CardState::Pending);
        self.send(Command::Understand { id, path });
    }

    /// Returns the model-sized image of a gallery entry or understood drop.
    fn source_image(&self, id: u64) -> Option<RgbImage> {
        if let Some(entry) = self.gallery.get(id) {
            return Some(entry.image.clone());
        }
        self.understand
            .cards()
            .iter()
            .find(|card| card.id == id)
            .and_then(|card| match &card.state {
                CardState::Done { result, .. } => Some(result.model_view.clone()),
                _ => None,
            })
    }

    fn interpolation_sources(&self) -> Vec<Source> {
        let gallery = self.gallery.entries().iter().map(|entry| Source {
            id: entry.id,
            title: entry.title(),
        });
        let dropped = self
            .understand
            .cards()
            .iter()
            .filter(|card| matches!(card.state, CardState::Done { .. }))
            .map(|card| Source {
                id: card.id,
                title: card.title(),
            });
        gallery.chain(dropped).collect()
    }

    fn request_interpolation(&mut self) {
        let Some((pair, t)) = self.interpolation.next_request() else {
            return;
        };
        let (Some(first), Some(second)) = (self.source_image(pair[0]), self.source_image(pair[1]))
        else {
            return;
        };
        let id = self.allocate_ids(1);
        self.interpolation.mark_sent(id, pair, t);
        self.send(Command::Interpolate {
            id,
            pair,
            first,
            second,
            t,
        });
    }

    fn export_strip(&mut self) {
        let (Some(first), Some(second)) = (
            self.interpolation
                .first
                .and_then(|id| self.source_image(id)),
            self.interpolation
                .second
                .and_then(|id| self.source_image(id)),
        ) else {
            return;
        };
        let id = self.allocate_ids(1);
        self.pending_strip = Some(id);
        self.send(Command::Strip {
            id,
            first,
            second,
            steps: self.settings.strip_steps,
        });
    }

    fn restore(&mut self, ctx: &egui::Context, id: u64) {
        let Some(entry) = self.gallery.get(id) else {
            return;
        };
        let options = &entry.options;
        self.settings.prompt = entry.prompt.clone();
        self.settings.temperature = options.scale_temperature;
        self.settings.mixture_temperature = options.mixture_temperature;
        self.settings.noise_factor = options.noise_factor;
        self.settings.guidance = options.guidance;
        self.settings.seed = options.seed;
        self.settings.count = options.count;
        self.settings.candidates = options.candidates;
        self.settings.random_seed = false;
        let image = entry.image.clone();
        let patch = self.patch_size();
        self.gallery.select(id);
        self.canvas.set_images(ctx, &[image], patch, None);
    }

    fn patch_size(&self) -> u32 {
        match &self.model {
            ModelState::Ready(info) => info.patch_size,
            _ => 1,
        }
    }

    fn save_image(&mut self, ctx: &egui::Context, image: RgbImage, file_name: &str) {
        let scaled = export::upscale(&image, self.settings.save_scale);
        if let Err(message) = self.dialogs.show(ctx, DialogKind::SavePng, file_name) {
            self.report(message);
            return;
        }
        self.pending_save = Some(scaled);
    }

    fn save_selected(&mut self, ctx: &egui::Context) {
        let Some(entry) = self.gallery.selected() else {
            self.report("no image to save yet; generate one first");
            return;
        };
        let (image, name) = (entry.image.clone(), entry.file_name());
        self.save_image(ctx, image, &name);
    }

    fn show_dialog(&mut self, ctx: &egui::Context, kind: DialogKind) {
        if let Err(message) = self.dialogs.show(ctx, kind, "") {
            self.report(message);
        }
    }
}

// Worker events and dialog results.
impl JetformerApp {
    fn poll_worker(&mut self, ctx: &egui::Context) {
        while let Some(event) = self.worker.try_recv() {
            self.apply(ctx, event);
        }
    }

    fn apply(&mut self, ctx: &egui::Context, event: Event) {
        match event {
            Event::ModelLoaded(info) => {
                if info.dir != default_model_dir() {
                    self.settings.model_dir = Some(info.dir.clone());
                }
                self.model = ModelState::Ready(info);
            }
            Event::Started { id, num_tokens, .. } => {
                if let Some(run) = self.run.as_mut().filter(|run| run.id == id) {
                    run.num_tokens = num_tokens;
                }
            }
            Event::Preview {
                id,
                tokens_done,
                images,
            } => {
                let patch = self.patch_size();
                let Some(run) = self.run.as_mut().filter(|run| run.id == id) else {
                    return;
                };
                run.tokens_done = tokens_done;
                let next = (tokens_done < run.num_tokens).then_some(tokens_done);
                self.canvas.set_images(ctx, &images, patch, next);
            }
            Event::Generated {
                id,
                images,
                elapsed_secs,
            } => self.finish_run(ctx, id, images, elapsed_secs),
            Event::Cancelled { id } => {
                if let Some(run) = self.run.as_mut().filter(|run| run.id == id) {
                    run.cancelled = true;
                }
            }
            Event::Understood { id, result } => self.understand.finish(ctx, id, result),
            Event::Interpolated { id, image, .. } => self.interpolation.finish(ctx, id, &image),
            Event::StripReady { id, images } => {
                if self.pending_strip == Some(id) {
                    self.pending_strip = None;
                    self.save_strip(ctx, &images);
                }
            }
            Event::Warning { message } => self.report(message),
            Event::Failed { job, message } => self.fail(job, message),
        }
    }

    fn finish_run(&mut self, ctx: &egui::Context, id: u64, images: Vec<RgbImage>, secs: f64) {
        let patch = self.patch_size();
        let Some(run) = self.run.as_mut().filter(|run| run.id == id) else {
            return;
        };
        run.elapsed_secs = Some(secs);
        run.tokens_done = run.num_tokens;
        let (prompt, options) = (run.prompt.clone(), run.options.clone());
        self.canvas.set_images(ctx, &images, patch, None);
        let first_id = self.allocate_ids(images.len());
        self.gallery
            .add_batch(ctx, first_id, images, &prompt, &options, secs);
    }

    fn fail(&mut self, job: Job, message: String) {
        match job {
            Job::LoadModel => {
                self.model = ModelState::Missing {
                    message: format!(
                        "no model loaded: {message}. Open a model directory from the Model menu."
                    ),
                };
            }
            Job::Generate(id) => {
                if self.run.as_ref().is_some_and(|run| run.id == id) {
                    self.run = None;
                }
            }
            Job::Understand(id) => self.understand.fail(id, message.clone()),
            Job::Interpolate(id) => self.interpolation.fail(id),
            Job::Strip(id) => {
                if self.pending_strip == Some(id) {
                    self.pending_strip = None;
                }
            }
        }
        self.report(message);
    }

    fn save_strip(&mut self, ctx: &egui::Context, images: &[RgbImage]) {
        match export::strip(images) {
            Ok(strip) => self.save_image(ctx, strip, "interpolation-strip.png"),
            Err(error) => self.report(crate::error_message(&error)),
        }
    }

    fn poll_dialogs(&mut self) {
        let Some(result) = self.dialogs.poll() else {
            return;
        };
        match result {
            DialogResult::Picked(kind, paths) => self.use_paths(kind, paths),
            DialogResult::Cancelled(_) => self.pending_save = None,
            DialogResult::Unavailable(kind) | DialogResult::TypedPath(kind) => {
                if matches!(result, DialogResult::Unavailable(_)) {
                    self.report(
                        "no file dialog could open (it needs xdg-desktop-portal or zenity); \
                         type a path instead",
                    );
                }
                self.path_prompt = Some(PathPrompt {
                    kind,
                    text: String::new(),
                    image: self.pending_save.take(),
                    focused: false,
                });
            }
        }
    }

    fn use_paths(&mut self, kind: DialogKind, paths: Vec<PathBuf>) {
        match kind {
            DialogKind::OpenImages => self.open_images(paths),
            DialogKind::OpenModel => {
                if let Some(dir) = paths.into_iter().next() {
                    self.load_model(dir);
                }
            }
            DialogKind::SavePng => {
                let image = self.pending_save.take();
                if let (Some(image), Some(path)) = (image, paths.first()) {
                    self.write_png(&image, path);
                }
            }
        }
    }

    fn write_png(&mut self, image: &RgbImage, path: &Path) {
        match export::write_png(image, path) {
            Ok(written) => log::info!("saved {}", written.display()),
            Err(error) => self.report(format!(
                "could not save the image: {}",
                crate::error_message(&error)
            )),
        }
    }
}

// Input and layout.
impl JetformerApp {
    fn handle_shortcuts(&mut self, ctx: &egui::Context) {
        let command = |key| KeyboardShortcut::new(Modifiers::COMMAND, key);
        let (generate, cancel, open, save, quit) = ctx.input_mut(|input| {
            (
                input.consume_shortcut(&command(Key::Enter)),
                input.consume_key(Modifiers::NONE, Key::Escape),
                input.consume_shortcut(&command(Key::O)),
                input.consume_shortcut(&command(Key::S)),
                input.consume_shortcut(&command(Key::Q)),
            )
        });
        if quit {
            // eframe saves the settings and the window size as the window closes.
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        if generate {
            self.generate();
        }
        if cancel {
            if self.path_prompt.is_some() {
                self.path_prompt = None;
            } else {
                self.cancel();
            }
        }
        if open {
            self.show_dialog(ctx, DialogKind::OpenImages);
        }
        if save {
            self.save_selected(ctx);
        }
    }

    fn handle_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|input| input.raw.dropped_files.clone());
        for file in dropped {
            let path = file.path();
            if path.as_os_str().is_empty() {
                self.report("a dropped item has no file path; save it to a file and open it");
                continue;
            }
            self.understand_path(path.to_path_buf());
        }
    }

    /// Draws one frame into `ui`: the whole window.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.poll_worker(&ctx);
        // Every frame's time, for measuring the frame rate outside runs (`RUST_LOG=jetformer=trace`).
        log::trace!(
            "frame at {:.1} ms",
            self.opened.elapsed().as_secs_f64() * 1e3
        );
        // Frame timing during a run, for measuring the frame rate (`RUST_LOG=jetformer=debug`).
        if let Some(run) = self.run.as_ref().filter(|run| run.is_running()) {
            log::debug!(
                "frame at {:.1} ms of run {}, {} of {} tokens",
                run.started.elapsed().as_secs_f64() * 1e3,
                run.id,
                run.tokens_done,
                run.num_tokens
            );
        }
        self.poll_dialogs();
        self.handle_shortcuts(&ctx);
        self.handle_dropped_files(&ctx);

        egui::Panel::top("menu").show(ui, |ui| self.menu_bar(ui));
        egui::Panel::bottom("status").show(ui, |ui| {
            if status::show(ui, &self.model, self.last_error.as_deref()) {
                self.last_error = None;
            }
        });
        egui::Panel::left("prompt")
            .default_size(300.0)
            .show(ui, |ui| self.prompt_panel(ui));
        egui::Panel::right("understand")
            .default_size(340.0)
            .show(ui, |ui| self.side_panel(ui));
        egui::Panel::bottom("gallery")
            .resizable(true)
            .default_size(170.0)
            .show(ui, |ui| self.gallery_panel(ui));
        egui::CentralPanel::default().show(ui, |ui| self.canvas_panel(ui));
        self.path_prompt_window(&ctx);
        self.request_interpolation();
    }

    fn menu_bar(&mut self, ui: &mut egui::Ui) {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("Model", |ui| {
                if ui.button("Open model directory…").clicked() {
                    self.show_dialog(ui.ctx(), DialogKind::OpenModel);
                }
                if ui.button("Use the bundled model").clicked() {
                    self.settings.model_dir = None;
                    self.load_model(default_model_dir());
                }
                ui.separator();
                if ui.button("Quit  Ctrl+Q").clicked() {
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
            });
            ui.menu_button("Images", |ui| {
                if ui.button("Open images…  Ctrl+O").clicked() {
                    self.show_dialog(ui.ctx(), DialogKind::OpenImages);
                }
                if ui.button("Save selected image…  Ctrl+S").clicked() {
                    self.save_selected(ui.ctx());
                }
            });
        });
    }

    fn prompt_panel(&mut self, ui: &mut egui::Ui) {
        let running = self.is_generating();
        let ready = self.model_ready();
        match prompt::show(ui, &mut self.settings, running, ready) {
            Some(PromptAction::Generate) => self.generate(),
            Some(PromptAction::Cancel) => self.cancel(),
            None => {}
        }
    }

    fn side_panel(&mut self, ui: &mut egui::Ui) {
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.heading("Understand");
            let note = match &self.model {
                ModelState::Ready(info) => info.concepts_note.clone(),
                _ => None,
            };
            let hovered = ui.input(|input| !input.raw.hovered_files.is_empty());
            match self.understand.show(ui, note.as_deref(), hovered) {
                Some(UnderstandAction::Open) => self.show_dialog(ui.ctx(), DialogKind::OpenImages),
                Some(UnderstandAction::Remove(_)) | None => {}
            }
            ui.separator();
            ui.heading("Interpolate");
            let sources = self.interpolation_sources();
            let ready = self.model_ready();
            let action =
                self.interpolation
                    .show(ui, &sources, &mut self.settings.strip_steps, ready);
            if action == Some(InterpolateAction::ExportStrip) {
                self.export_strip();
            }
        });
    }

    fn gallery_panel(&mut self, ui: &mut egui::Ui) {
        match self.gallery.show(ui, &mut self.settings.save_scale) {
            Some(GalleryAction::Restore(id)) => self.restore(ui.ctx(), id),
            Some(GalleryAction::Save(id)) => {
                if let Some(entry) = self.gallery.get(id) {
                    let (image, name) = (entry.image.clone(), entry.file_name());
                    self.gallery.select(id);
                    self.save_image(ui.ctx(), image, &name);
                }
            }
            None => {}
        }
    }

    fn canvas_panel(&mut self, ui: &mut egui::Ui) {
        if let ModelState::Missing { message } = &self.model {
            ui.colored_label(ui.visuals().warn_fg_color, message);
        }
        if let Some(run) = &self.run {
            progress_row(ui, run);
        }
        self.canvas.show(ui, self.gpu_canvas);
    }

    fn path_prompt_window(&mut self, ctx: &egui::Context) {
        let Some(prompt) = &mut self.path_prompt else {
            return;
        };
        let title = match prompt.kind {
            DialogKind::OpenImages => "Open an image",
            DialogKind::OpenModel => "Open a model directory",
            DialogKind::SavePng => "Save PNG",
        };
        let mut submit = false;
        let mut close = false;
        egui::Window::new(title)
            .collapsible(false)
            .resizable(false)
            .show(ctx, |ui| {
                ui.label("No file dialog could open. Type a full path:");
                let label = ui.label("Path");
                let field = ui
                    .add(egui::TextEdit::singleline(&mut prompt.text).desired_width(360.0))
                    .labelled_by(label.id);
                if !prompt.focused {
                    field.request_focus();
                    prompt.focused = true;
                }
                if field.lost_focus() && ui.input(|input| input.key_pressed(Key::Enter)) {
                    submit = true;
                }
                ui.horizontal(|ui| {
                    submit |= ui.button("OK").clicked();
                    close = ui.button("Cancel").clicked();
                });
            });
        if close {
            self.path_prompt = None;
        } else if submit && !prompt.text.trim().is_empty() {
            let Some(prompt) = self.path_prompt.take() else {
                return;
            };
            let path = PathBuf::from(prompt.text.trim());
            match (prompt.kind, prompt.image) {
                (DialogKind::SavePng, Some(image)) => self.write_png(&image, &path),
                (kind, _) => self.use_paths(kind, vec![path]),
            }
        }
    }
}

fn progress_row(ui: &mut egui::Ui, run: &Run) {
    let total = run.num_tokens.max(1);
    let secs = run
        .elapsed_secs
        .unwrap_or_else(|| run.started.elapsed().as_secs_f64());
    let state = if run.cancelled {
        "cancelled"
    } else if run.elapsed_secs.is_some() {
        "done"
    } else {
        "sampling"
    };
    let text = format!(
        "{} / {} tokens, {secs:.2} s, {state}",
        run.tokens_done, run.num_tokens
    );
    ui.horizontal_wrapped(|ui| {
        let bar =
            egui::ProgressBar::new(run.tokens_done as f32 / total as f32).desired_width(200.0);
        ui.add(bar);
        ui.label(text);
    });
}

impl eframe::App for JetformerApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        self.settings.save(storage);
    }
}
