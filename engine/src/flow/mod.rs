//! Jet, the normalizing flow that encodes patch tokens to latents and decodes them back
//! (paper section 3; reference `big_vision/models/proj/jet/jet.py`).

pub mod coupling;
pub mod cpu;
pub mod jet;
pub mod vit;

pub use coupling::{Coupling, CouplingShape};
pub use jet::Jet;
