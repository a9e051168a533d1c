//! Runtime choice of the compute backend: wgpu on a hardware adapter when one exists, else the
//! `flex` CPU backend. A user can force either; the choice is reported.

use std::fmt;

use burn::tensor::{Device, DeviceKind};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Backend requested by the user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// A hardware GPU through wgpu when there is one, else the CPU.
    #[default]
    Auto,
    /// wgpu on its default adapter, even a software one (lavapipe).
    Gpu,
    /// The `flex` CPU backend.
    Cpu,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "auto" => Ok(Self::Auto),
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            other => Err(Error::Device(format!(
                "unknown device `{other}`; use auto, gpu or cpu"
            ))),
        }
    }
}

/// The backend in use.
#[derive(Clone, Debug)]
pub struct ComputeDevice {
    /// The burn device to create tensors on.
    pub device: Device,
    /// "wgpu" or "cpu (flex)".
    pub backend: &'static str,
    /// The adapter's name, or a short description of the CPU backend.
    pub adapter: String,
    /// Whether the adapter is a software rasterizer or CPU (no real GPU).
    pub software: bool,
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.backend, self.adapter)
    }
}

impl ComputeDevice {
    /// Opens the `flex` CPU backend.
    pub fn cpu() -> Self {
        Self {
            device: Device::flex(),
            backend: "cpu (flex)",
            adapter: format!(
                "{} threads",
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
            software: true,
        }
    }

    /// Picks a backend. `Auto` uses wgpu only when the adapter is a real GPU.
    pub fn select(choice: BackendChoice) -> Result<Self> {
        match choice {
            BackendChoice::Cpu => Ok(Self::cpu()),
            BackendChoice::Gpu => probe_wgpu().ok_or_else(|| {
                Error::Device(
                    "no wgpu adapter could be opened; install a Vulkan, Metal or DX12 driver \
                     (on Linux without a GPU, Mesa's lavapipe), or use --device cpu"
                        .into(),
                )
            }),
            BackendChoice::Auto if !may_have_gpu() => Ok(Self::cpu()),
            BackendChoice::Auto => Ok(probe_wgpu()
                .filter(|gpu| !gpu.software)
                .unwrap_or_else(Self::cpu)),
        }
    }
}

/// Returns false when the machine certainly has no GPU, so that `Auto` skips the wgpu probe
/// (and the window draws through OpenGL, which Mesa's software rasterizer runs faster).
/// The probe leaves a polling device thread behind (about 10% of a core on the 2-core
/// development machine), and outside a desktop session the Vulkan loader prints errors.
///
/// NOTE: on Linux this looks for the device nodes of GPU drivers (`/dev/dri/renderD*`,
/// `/dev/nvidia*`); a GPU that exposes neither would need `--device gpu`. Elsewhere it
/// always returns true.
pub fn may_have_gpu() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    let has_entry = |dir: &str, prefix: &str| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .any(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    has_entry("/dev/dri", "renderD") || has_entry("/dev", "nvidia")
}

/// Opens the default wgpu adapter, if any. Opening can panic inside the driver stack when no
/// adapter exists; that is caught and reported as `None`.
fn probe_wgpu() -> Option<ComputeDevice> {
    let identity = std::panic::catch_unwind(|| {
        let device = Device::wgpu(DeviceKind::DefaultDevice);
        let identity = device.identity();
        (device, identity)
    });
    let (device, identity) = identity.ok()?;
    let identity = identity?;
    Some(ComputeDevice {
        device,
        backend: "wgpu",
        software: identity.physical.is_none(),
        adapter: identity.name,
    })
}
