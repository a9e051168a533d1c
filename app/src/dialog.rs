//! Native file dialogs (rfd) on a short-lived thread, so the window keeps drawing while one is
//! open. rfd returns `None` both when the user cancels and when no dialog could open (on Linux
//! it needs xdg-desktop-portal or zenity), so an answer that comes back faster than a person
//! can click is reported as [`DialogResult::Unavailable`] and the window offers a path field.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use eframe::egui;

/// A `None` from rfd that arrives sooner than this means no dialog was shown.
// NOTE: this is a guess at human reaction time; rfd 0.17 offers no way to ask whether a
// dialog backend exists.
const NO_DIALOG_WITHIN: Duration = Duration::from_millis(250);

/// Image extensions offered by the Open dialog; the engine decodes these formats.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "webp", "gif", "bmp", "PNG"];

/// Kind of dialog to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogKind {
    /// Pick image files to understand.
    OpenImages,
    /// Pick a model directory.
    OpenModel,
    /// Pick where to save a PNG.
    SavePng,
}

/// Result of a dialog.
#[derive(Debug)]
pub enum DialogResult {
    /// The user picked these paths (one for a folder or a save target).
    Picked(DialogKind, Vec<PathBuf>),
    /// The user closed the dialog without picking.
    Cancelled(DialogKind),
    /// No dialog could open; ask for a path in the window instead.
    Unavailable(DialogKind),
    /// Typed paths were requested instead of native dialogs; ask for a path in the window.
    TypedPath(DialogKind),
}

/// Runs one dialog at a time and collects its result.
pub struct Dialogs {
    sender: Sender<DialogResult>,
    receiver: Receiver<DialogResult>,
    open: Option<DialogKind>,
    /// Skips the native dialog, so that the window shows a path field instead.
    typed_paths: bool,
}

impl Default for Dialogs {
    fn default() -> Self {
        let (sender, receiver) = channel();
        Self {
            sender,
            receiver,
            open: None,
            typed_paths: false,
        }
    }
}

impl Dialogs {
    /// Makes every later dialog ask for a typed path in the window instead of opening a native
    /// file dialog.
    pub fn use_typed_paths(&mut self) {
        self.typed_paths = true;
    }

    /// Returns the dialog that is open, if any.
    pub fn open_kind(&self) -> Option<DialogKind> {
        self.open
    }

    /// Opens a dialog of `kind`, suggesting `file_name` for a save. Does nothing while another
    /// dialog is open. Returns an error message when the dialog thread could not start.
    pub fn show(
        &mut self,
        ctx: &egui::Context,
        kind: DialogKind,
        file_name: &str,
    ) -> Result<(), String> {
        if self.open.is_some() {
            return Ok(());
        }
        if self.typed_paths {
            self.open = Some(kind);
            let _ = self.sender.send(DialogResult::TypedPath(kind));
            ctx.request_repaint();
            return Ok(());
        }
        let sender = self.sender.clone();
        let ctx = ctx.clone();
        let file_name = file_name.to_string();
        std::thread::Builder::new()
            .name("jetformer-dialog".into())
            .spawn(move || {
                let start = Instant::now();
                let picked = run_dialog(kind, &file_name);
                let result = match picked {
                    Some(paths) if !paths.is_empty() => DialogResult::Picked(kind, paths),
                    _ if start.elapsed() < NO_DIALOG_WITHIN => DialogResult::Unavailable(kind),
                    _ => DialogResult::Cancelled(kind),
                };
                let _ = sender.send(result);
                ctx.request_repaint();
            })
            .map_err(|error| format!("could not start the file dialog: {error}"))?;
        self.open = Some(kind);
        Ok(())
    }

    /// Returns the result of the open dialog once it has closed.
    pub fn poll(&mut self) -> Option<DialogResult> {
        let result = self.receiver.try_recv().ok()?;
        self.open = None;
        Some(result)
    }
}

fn run_dialog(kind: DialogKind, file_name: &str) -> Option<Vec<PathBuf>> {
    match kind {
        DialogKind::OpenImages => rfd::FileDialog::new()
            .set_title("Open images")
            .add_filter("Images", &IMAGE_EXTENSIONS)
            .pick_files(),
        DialogKind::OpenModel => rfd::FileDialog::new()
            .set_title("Open a model directory")
            .pick_folder()
            .map(|dir| vec![dir]),
        DialogKind::SavePng => rfd::FileDialog::new()
            .set_title("Save PNG")
            .add_filter("PNG image", &["png"])
            .set_file_name(file_name)
            .save_file()
            .map(|path| vec![path]),
    }
}
