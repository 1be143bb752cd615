//! The llama.cpp backend (one per process, logging to our log file) and model loading.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();

/// The process's llama.cpp backend. llama.cpp's log callback is installed before the backend
/// starts, so everything it prints (CUDA's device banner included) goes to `tracing`, whose
/// subscriber writes to the log file.
pub fn backend() -> Result<&'static LlamaBackend> {
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot start llama.cpp: {e}"))
}

/// Checks that `path` exists and starts with the GGUF magic, so the user gets a clear error
/// instead of llama.cpp's null pointer.
pub fn check_gguf(path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| {
        format!(
            "cannot open the model {}: pass --model PATH to a GGUF file, or run \
             `rapid-chat fetch-model` for the default one",
            path.display()
        )
    })?;
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        bail!(
            "{} is not a GGUF model file: pass --model PATH to a .gguf file",
            path.display()
        );
    }
    Ok(())
}

/// Loads a model; `vocab_only` reads just the vocabulary (fast, no weights).
pub fn load_model(path: &Path, gpu_layers: i32, vocab_only: bool) -> Result<LlamaModel> {
    check_gguf(path)?;
    let layers = u32::try_from(gpu_layers).unwrap_or(u32::MAX);
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(layers)
        .with_vocab_only(vocab_only);
    LlamaModel::load_from_file(backend()?, path, &params).with_context(|| {
        format!(
            "llama.cpp could not load {}: the file may be truncated or of an architecture this \
             build does not support (see the log file for llama.cpp's reason)",
            path.display()
        )
    })
}

/// A model's tokenizer, loaded with `vocab_only`: exactly llama.cpp's tokenization of the model,
/// without its weights. Chunk sizes and context budgets are counted with it.
pub struct Tokenizer {
    model: LlamaModel,
    path: PathBuf,
}

impl Tokenizer {
    /// Loads the vocabulary of the GGUF at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        Ok(Self {
            model: load_model(path, 0, true)?,
            path: path.to_path_buf(),
        })
    }

    /// Tokens of `text` as plain text (no BOS, special tokens not parsed).
    pub fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), false, false)
    }

    /// Number of tokens of `text` as plain text.
    pub fn count(&self, text: &str) -> usize {
        self.tokenize(text).len()
    }

    /// Identifies the model file (name, size, modification time) so that indexes built with
    /// another tokenizer are rebuilt.
    pub fn fingerprint(&self) -> String {
        model_fingerprint(&self.path)
    }
}

/// Name, size and modification time of a model file, as one string.
pub fn model_fingerprint(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map_or(0, |m| m.len());
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!("{name}:{size}:{mtime}")
}
