//! The `jetformer` executable: with no command it opens the desktop window; with a command it
//! runs that command headless over the engine's inference calls.

mod bench;
mod cli;
mod plot;
mod training;

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches};
use jetformer::gui::{self, LaunchOptions, RendererChoice};
use jetformer_engine::BackendChoice;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu=error,naga=error"),
    )
    .init();
    let matches = cli::Cli::command().get_matches();
    let result = if matches.subcommand().is_none() {
        // The global `--model`, `--device` and `--renderer` flags apply to the window.
        gui::run(LaunchOptions {
            model_dir: matches.get_one::<PathBuf>("model").cloned(),
            backend: matches
                .get_one::<BackendChoice>("device")
                .copied()
                .unwrap_or_default(),
            renderer: matches
                .get_one::<RendererChoice>("renderer")
                .copied()
                .unwrap_or_default(),
        })
    } else {
        match cli::Cli::from_arg_matches(&matches) {
            Ok(args) => cli::run(args),
            Err(error) => error.exit(),
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", jetformer::error_message(&error));
            std::process::ExitCode::FAILURE
        }
    }
}
