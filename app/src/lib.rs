//! The JetFormer desktop window: an eframe app whose panels send commands to one worker thread
//! that owns the model.

pub mod dialog;
pub mod export;
pub mod gui;
pub mod state;
pub mod ui;
pub mod worker;

/// Joins an error and its causes with ": ", leaving out a cause whose text the message
/// already contains (engine errors print their source themselves).
pub fn error_message(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}
