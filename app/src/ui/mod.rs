//! The window's panels, one file each. Each panel draws its part and returns what the user
//! asked for; the app applies it.

pub mod canvas;
pub mod gallery;
pub mod interpolate;
pub mod prompt;
pub mod status;
pub mod understand;
