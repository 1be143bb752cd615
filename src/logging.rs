//! Logging to a file under the cache directory: ours and llama.cpp's, never the terminal.

use std::path::Path;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

/// Sends `tracing` output (and so llama.cpp's, see [`crate::llm::backend`]) to `log_file`,
/// appending. The level comes from `RAPID_CHAT_LOG` (default `info`). Call once, first.
pub fn init(log_file: &Path) -> Result<()> {
    let dir = log_file.parent().context("log file has no parent folder")?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .with_context(|| format!("cannot open the log file {}", log_file.display()))?;
    let filter =
        EnvFilter::try_from_env("RAPID_CHAT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}
