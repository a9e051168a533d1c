//! The JetFormer desktop window: an eframe app whose panels send commands to one worker thread
//! that owns the model.

pub mod dialog;
pub mod export;
pub mod gui;
pub mod state;
pub mod ui;
pub mod worker;
