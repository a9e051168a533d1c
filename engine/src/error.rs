//! Errors of the engine. Each variant names the value that was wrong and, where there is one,
//! the fix.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field has a value the model cannot be built with.
    #[error("invalid config: `{field}` {problem}")]
    Config {
        /// Dotted path of the field, for example `flow.depth`.
        field: String,
        /// The problem and its fix.
        problem: String,
    },

    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// Action that failed, for example "could not read".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A JSON file could not be parsed.
    #[error("could not parse {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },

    /// A weights file that is unreadable or does not match the model its config describes.
    #[error("could not load the weights in {path}: {problem}")]
    Checkpoint {
        /// The weights file.
        path: PathBuf,
        /// The first mismatch found.
        problem: String,
    },

    /// An input (image, batch, token list) does not fit the model.
    #[error("{0}")]
    Input(String),

    /// The requested backend is not available on this machine.
    #[error("{0}")]
    Device(String),
}

/// Result with the engine's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn config(field: &str, problem: impl Into<String>) -> Self {
        Self::Config {
            field: field.to_string(),
            problem: problem.into(),
        }
    }
}
