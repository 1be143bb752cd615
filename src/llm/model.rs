//! The llama.cpp backend (one per process, logging to our log file) and model loading.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

/// A loaded model (weights and vocabulary). llama.cpp's own type: contexts borrow it, and the
/// questions asked of it go through this module and [`super::token`].
pub type Model = LlamaModel;

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
    if !vocab_only {
        super::memory::check_weights_fit(path, gpu_layers, &super::memory::gpus())?;
    }
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

/// The target and drafter models, loaded for the life of the process (contexts borrow them).
#[derive(Clone)]
pub struct Models {
    pub target: &'static LlamaModel,
    pub drafter: &'static LlamaModel,
    pub target_path: PathBuf,
    pub drafter_path: PathBuf,
    /// Whether the drafter is the target itself (self-speculation: loaded once).
    pub same: bool,
}

impl Models {
    /// Loads the target and, when it is another file, the drafter; refuses a drafter whose
    /// vocabulary differs from the target's.
    pub fn load(target: &Path, drafter: Option<&Path>, gpu_layers: i32) -> Result<Self> {
        let target_model: &'static LlamaModel =
            Box::leak(Box::new(load_model(target, gpu_layers, false)?));
        let same = drafter.is_none_or(|d| same_file(d, target));
        let drafter_path = drafter.unwrap_or(target).to_path_buf();
        let drafter_model: &'static LlamaModel = if same {
            target_model
        } else {
            let d = Box::leak(Box::new(load_model(&drafter_path, gpu_layers, false)?));
            check_same_vocab(target_model, target, d, &drafter_path)?;
            d
        };
        Ok(Self {
            target: target_model,
            drafter: drafter_model,
            target_path: target.to_path_buf(),
            drafter_path,
            same,
        })
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Errors unless both models have the same tokens with the same texts.
pub fn check_same_vocab(
    a: &LlamaModel,
    a_path: &Path,
    b: &LlamaModel,
    b_path: &Path,
) -> Result<()> {
    let differs = |what: String| {
        anyhow::anyhow!(
            "the drafter {} does not share the target {}'s vocabulary ({what}): speculative \
             decoding needs the same tokens; pick a drafter of the same model family",
            b_path.display(),
            a_path.display()
        )
    };
    if a.n_vocab() != b.n_vocab() {
        return Err(differs(format!(
            "{} vs {} tokens",
            a.n_vocab(),
            b.n_vocab()
        )));
    }
    let (va, vb) = (a.vocab(), b.vocab());
    for t in va.tokens() {
        if va.text(t) != vb.text(t) {
            return Err(differs(format!("token {} differs", t.0)));
        }
    }
    Ok(())
}

/// Where llama.cpp runs a model of `n_layer` layers loaded with `gpu_layers` (-1: all), in words
/// for the user: the GPU with its memory and the layers on it, or the CPU and why (this build
/// has no CUDA, no GPU was found, or offloading is off).
pub fn placement(n_layer: u32, gpu_layers: i32, threads: u32) -> String {
    let cpu = |why: &str| format!("CPU, {threads} threads ({why})");
    if !backend().is_ok_and(|b| b.supports_gpu_offload()) {
        return cpu("this build has no CUDA");
    }
    let gpus = super::memory::gpus();
    let Some(gpu) = gpus.first() else {
        return cpu("a GPU build, but no GPU was found");
    };
    if gpu_layers == 0 {
        return cpu("gpu_layers = 0");
    }
    let on_gpu = u32::try_from(gpu_layers).map_or(n_layer, |g| g.min(n_layer));
    format!(
        "{} {} GiB, {on_gpu}/{n_layer} layers, KV on GPU",
        gpu.name,
        gpu.total >> 30
    )
}
