//! What the runtime must do after an event: the app's and the conversation's effects, as data.

use std::path::PathBuf;

use crate::config::EngineConfig;
use crate::runtime::Turn;

/// What the runtime must do after an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Ask {
        question: String,
        history: Vec<Turn>,
        settings: EngineConfig,
    },
    Cancel,
    Save {
        path: PathBuf,
        markdown: String,
    },
    /// The conversation changed: write it to the data directory.
    Persist,
    Quit,
}
