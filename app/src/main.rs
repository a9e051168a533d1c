//! The `jetformer` executable. For now it selects the compute backend and reports it; the
//! window and the headless commands build on the engine's inference calls.

use anyhow::Context;
use clap::Parser;
use jetformer_engine::{BackendChoice, ComputeDevice, JetFormerConfig};

/// JetFormer: text-to-image and image-to-text with one transformer and a normalizing flow.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Compute backend: auto (a hardware GPU if there is one, else the CPU), gpu or cpu.
    #[arg(long, default_value = "auto")]
    device: BackendChoice,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,wgpu=error,naga=error"),
    )
    .init();
    let cli = Cli::parse();
    let device = ComputeDevice::select(cli.device).context("could not open the compute device")?;
    let config = JetFormerConfig::small(1024);
    #[allow(clippy::print_stdout)]
    {
        println!("jetformer {}", env!("CARGO_PKG_VERSION"));
        println!("backend: {device}");
        println!(
            "model preset `small`: {0}x{0} images, {1} tokens of {2} values, {3} modelled",
            config.image.size,
            config.num_tokens(),
            config.token_dim(),
            config.image.soft_token_dim
        );
        println!(
            "The window and the generate/caption/train commands are not built yet; \
             the engine and its tests are (cargo test --release --workspace)."
        );
    }
    Ok(())
}
