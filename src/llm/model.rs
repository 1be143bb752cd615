//! The llama.cpp backend (one per process, logging to our log file) and model loading.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::{LlamaModelParams, LlamaSplitMode};
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

/// Where a model's layers go: this machine's GPUs and the workers' devices.
#[derive(Debug, Clone, Default)]
pub struct Offload {
    /// Layers to offload (-1: all; 0: none, the CPU runs the model).
    pub gpu_layers: i32,
    pub split_mode: crate::config::SplitMode,
    pub main_gpu: u32,
    /// Workers (HOST:PORT) whose devices take layers too.
    pub rpc: Vec<String>,
}

impl Offload {
    /// This machine only, `gpu_layers` on its GPUs.
    pub fn local(gpu_layers: i32) -> Self {
        Self {
            gpu_layers,
            ..Self::default()
        }
    }

    /// The configured offload.
    pub fn of(gpu_layers: i32, gpu: &crate::config::GpuConfig) -> Self {
        Self {
            gpu_layers,
            split_mode: gpu.split_mode,
            main_gpu: gpu.main_gpu,
            rpc: gpu.rpc.clone(),
        }
    }

    /// The devices to load on: this machine's GPUs, then the workers' devices (workers are
    /// checked and added first). Devices of workers added earlier but not named now are left
    /// out, so a run without them never touches them.
    pub fn devices(&self) -> Result<Vec<super::memory::Device>> {
        let remote = super::rpc::add_workers(&self.rpc)?;
        Ok(super::memory::offload_devices()
            .into_iter()
            .filter(|d| !d.remote || remote.contains(&d.name))
            .collect())
    }
}

/// Loads a model; `vocab_only` reads just the vocabulary (fast, no weights).
pub fn load_model(path: &Path, gpu_layers: i32, vocab_only: bool) -> Result<LlamaModel> {
    load_model_on(path, &Offload::local(gpu_layers), vocab_only)
}

/// Loads a model with its layers placed as `offload` says.
pub fn load_model_on(path: &Path, offload: &Offload, vocab_only: bool) -> Result<LlamaModel> {
    check_gguf(path)?;
    let devices = if vocab_only {
        Vec::new()
    } else {
        offload.devices()?
    };
    // With workers the weights are split beyond this machine's GPUs: theirs to refuse.
    if !vocab_only && offload.rpc.is_empty() {
        super::memory::check_weights_fit(path, offload.gpu_layers, &super::memory::gpus())?;
    }
    let layers = u32::try_from(offload.gpu_layers).unwrap_or(u32::MAX);
    let indices: Vec<usize> = devices.iter().map(|d| d.index).collect();
    let split = match offload.split_mode {
        crate::config::SplitMode::Layer => LlamaSplitMode::Layer,
        crate::config::SplitMode::Row => LlamaSplitMode::Row,
        crate::config::SplitMode::None => LlamaSplitMode::None,
    };
    let params = LlamaModelParams::default()
        .with_n_gpu_layers(layers)
        .with_vocab_only(vocab_only)
        .with_split_mode(split)
        .with_main_gpu(i32::try_from(offload.main_gpu).unwrap_or(0))
        .with_devices(&indices)
        .context("llama.cpp refused the device list")?;
    if !devices.is_empty() && !vocab_only {
        let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
        tracing::info!(devices = %names.join(", "), "loading {}", path.display());
    }
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
        super::token::tokenize(&self.model, text, super::token::Tokenize::Plain)
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
    /// Where their layers are.
    pub offload: Offload,
}

impl Models {
    /// Loads the target and, when it is another file, the drafter, on this machine; refuses a
    /// drafter whose vocabulary differs from the target's.
    pub fn load(target: &Path, drafter: Option<&Path>, gpu_layers: i32) -> Result<Self> {
        Self::load_on(target, drafter, &Offload::local(gpu_layers))
    }

    /// Like [`Models::load`], with the layers placed as `offload` says.
    pub fn load_on(target: &Path, drafter: Option<&Path>, offload: &Offload) -> Result<Self> {
        let gpu_layers = offload.gpu_layers;
        let load_model = |path: &Path, _: i32, vocab_only| load_model_on(path, offload, vocab_only);
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
            offload: offload.clone(),
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
pub fn placement(n_layer: u32, offload: &Offload, threads: u32) -> String {
    let cpu = |why: &str| format!("CPU, {threads} threads ({why})");
    let devices = offload.devices().unwrap_or_default();
    if devices.is_empty() {
        return cpu(if has_cuda() {
            "a GPU build, but no GPU was found"
        } else {
            "this build has no CUDA"
        });
    }
    if offload.gpu_layers == 0 {
        return cpu("gpu_layers = 0");
    }
    let gpus = super::memory::gpus();
    let names: Vec<String> = devices
        .iter()
        .map(|d| {
            if d.remote {
                format!("{} worker {}", d.name, d.description)
            } else {
                let total = gpus
                    .iter()
                    .find(|g| g.name.starts_with(&d.name))
                    .map_or(0, |g| g.total >> 30);
                format!("{} {} {total} GiB", d.name, d.description)
            }
        })
        .collect();
    let on_gpu = u32::try_from(offload.gpu_layers).map_or(n_layer, |g| g.min(n_layer));
    let kv = if devices.iter().any(|d| d.remote) {
        "KV with the layers"
    } else {
        "KV on GPU"
    };
    format!("{}, {on_gpu}/{n_layer} layers, {kv}", names.join(", "))
}

/// Whether this build has llama.cpp's CUDA backend.
fn has_cuda() -> bool {
    // SAFETY: a lookup by a NUL-terminated name in llama.cpp's registry.
    backend().is_ok()
        && !unsafe { llama_cpp_sys_2::ggml_backend_reg_by_name(c"CUDA".as_ptr()) }.is_null()
}
