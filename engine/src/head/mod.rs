//! Output heads (paper section 6). The text head is a plain untied Dense layer inside the
//! model; this module contains the Gaussian mixture of the image head.

pub mod gmm;

pub use gmm::Gmm;
