//! JetFormer (Tschannen et al., 2024, arXiv 2411.19722): one autoregressive transformer over
//! text tokens and image soft tokens, with a normalizing flow (Jet, arXiv 2412.15129) as the
//! image encoder and decoder, trained jointly by maximum likelihood.
//!
//! Reference implementation: `google-research/big_vision` (`models/proj/jet/jet.py`,
//! `models/proj/jetformer/jetformer.py`, `trainers/proj/jetformer/train.py`).

pub mod activation;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod error;
pub mod flow;
pub mod head;
pub mod image;
pub mod infer;
pub mod loss;
pub mod model;
pub mod text;
pub mod train;
pub mod transformer;

pub use config::JetFormerConfig;
pub use device::{BackendChoice, ComputeDevice};
pub use error::{Error, Result};
pub use model::JetFormer;
