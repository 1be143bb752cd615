//! Where rapid-chat keeps its files: config, cache (indexes, logs, KV states) and data (models).
//!
//! The `directories` crate gives the platform's usual places; `RAPID_CHAT_CONFIG_DIR`,
//! `RAPID_CHAT_CACHE_DIR` and `RAPID_CHAT_DATA_DIR` override them (tests and CI use these to stay
//! out of the user's home).

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The three directories rapid-chat writes to.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub config: PathBuf,
    pub cache: PathBuf,
    pub data: PathBuf,
}

impl Dirs {
    /// The platform's directories, each overridable by its environment variable.
    pub fn from_env() -> Result<Self> {
        let project = directories::ProjectDirs::from("", "", "rapid-chat");
        let pick = |var: &str, default: Option<PathBuf>| -> Result<PathBuf> {
            match std::env::var_os(var) {
                Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
                _ => default.with_context(|| {
                    format!("no home directory found: set {var} to a writable folder")
                }),
            }
        };
        Ok(Self {
            config: pick(
                "RAPID_CHAT_CONFIG_DIR",
                project.as_ref().map(|p| p.config_dir().to_path_buf()),
            )?,
            cache: pick(
                "RAPID_CHAT_CACHE_DIR",
                project.as_ref().map(|p| p.cache_dir().to_path_buf()),
            )?,
            data: pick(
                "RAPID_CHAT_DATA_DIR",
                project.as_ref().map(|p| p.data_dir().to_path_buf()),
            )?,
        })
    }

    /// Where models fetched by `fetch-model` live.
    pub fn models(&self) -> PathBuf {
        self.data.join("models")
    }

    /// Where the per-folder indexes live.
    pub fn indexes(&self) -> PathBuf {
        self.cache.join("indexes")
    }

    /// Where saved document states (the corpus KV cache) live.
    pub fn kv_cache(&self) -> PathBuf {
        self.cache.join("kv")
    }

    /// The log file: llama.cpp's output and ours, never the terminal.
    pub fn log_file(&self) -> PathBuf {
        self.cache.join("rapid-chat.log")
    }
}
