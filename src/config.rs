//! Configuration: built-in defaults < `config.toml` (config directory, or `--config PATH`) <
//! command-line flags. `config.example.toml` documents every key; a test keeps the two in step.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Everything a user can configure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Target model: a GGUF file or a known model's name. Unset: the default model, fetched on
    /// first use.
    pub model: Option<PathBuf>,
    /// Drafter model (GGUF, same vocabulary as the target). Unset: the target itself.
    pub draft_model: Option<PathBuf>,
    pub corpus: CorpusConfig,
    pub engine: EngineConfig,
    pub gpu: GpuConfig,
    pub tui: TuiConfig,
}

/// How llama.cpp spreads a model over several GPUs, and other machines' devices (llama.cpp's
/// RPC workers) to add to this machine's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuConfig {
    /// layer: whole layers (and their KV cache) per device; row: each layer's rows split over
    /// the GPUs; none: everything on main_gpu.
    pub split_mode: SplitMode,
    /// The device (an index into the devices in use) that holds everything with split_mode =
    /// none, and the intermediate results with row.
    pub main_gpu: u32,
    /// Workers (HOST:PORT, started with `rapid-chat worker`) whose devices take layers too.
    pub rpc: Vec<String>,
}

/// llama.cpp's split modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    #[default]
    Layer,
    Row,
    None,
}

impl std::fmt::Display for SplitMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Layer => "layer",
            Self::Row => "row",
            Self::None => "none",
        })
    }
}

/// Whether ggml-rpc can use `endpoint` as a worker's address: HOST:PORT with an IPv4 address or
/// a host name (its parser splits at the first colon: no IPv6).
pub fn valid_endpoint(endpoint: &str) -> bool {
    matches!(
        endpoint.split_once(':'),
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
    )
}

/// Command-line flags over the config's `[gpu]` section: a flag given wins.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GpuFlags {
    /// How layers are spread over several GPUs: layer, row or none (main GPU only).
    #[arg(long, global = true, value_enum)]
    pub split_mode: Option<SplitMode>,
    /// The main device: everything with --split-mode none.
    #[arg(long, global = true)]
    pub main_gpu: Option<u32>,
    /// Workers whose devices take layers too, as HOST:PORT,HOST:PORT (start each with
    /// `rapid-chat worker`); an empty value uses none.
    #[arg(long, global = true, value_delimiter = ',', num_args = 0..=1, value_name = "HOST:PORT,...")]
    pub rpc: Option<Vec<String>>,
}

impl GpuFlags {
    /// Sets every given flag over `c`.
    pub fn apply(&self, c: &mut GpuConfig) {
        if let Some(v) = self.split_mode {
            c.split_mode = v;
        }
        if let Some(v) = self.main_gpu {
            c.main_gpu = v;
        }
        if let Some(v) = &self.rpc {
            c.rpc = v.iter().filter(|w| !w.trim().is_empty()).cloned().collect();
        }
    }
}

/// The terminal UI: key bindings and colours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuiConfig {
    /// Extra key bindings, action name -> key (e.g. `toggle_sources = "f3"`); they add to the
    /// defaults shown by `?`.
    pub keys: std::collections::BTreeMap<String, String>,
    /// Colour of drafted tokens the target accepted.
    pub accepted: String,
    /// Colour of the target's corrections (also underlined).
    pub corrected: String,
    /// Colour of the target's bonus tokens (also italic).
    pub bonus: String,
    /// Colour of the questions.
    pub question: String,
    /// Colour of borders and labels.
    pub accent: String,
}

impl Default for TuiConfig {
    fn default() -> Self {
        Self {
            keys: std::collections::BTreeMap::new(),
            accepted: "green".into(),
            corrected: "red".into(),
            bonus: "cyan".into(),
            question: "yellow".into(),
            accent: "blue".into(),
        }
    }
}

/// How documents are read and cut into chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorpusConfig {
    /// Target chunk size in tokens of the target model.
    pub chunk_tokens: usize,
    /// Extensions (without the dot) of other UTF-8 text files to index, besides
    /// pdf, md, markdown and txt.
    pub extra_extensions: Vec<String>,
    /// Files larger than this many MiB are skipped.
    pub max_file_mib: u64,
    /// A PDF whose text takes longer than this to extract (with each reader) is skipped.
    pub pdf_timeout_s: u64,
    /// The PDF readers, first choice first: "pdftotext" (poppler's, used when installed) and
    /// "pdf-extract" (built in). The next is tried where one fails or finds almost no text.
    pub pdf_readers: Vec<String>,
    /// Files read at once while indexing (0: one per core).
    pub jobs: usize,
}

impl Default for CorpusConfig {
    fn default() -> Self {
        Self {
            chunk_tokens: 512,
            extra_extensions: ["rst", "org", "tex", "adoc", "csv", "log"]
                .map(String::from)
                .to_vec(),
            max_file_mib: 64,
            pdf_timeout_s: 60,
            pdf_readers: ["pdftotext", "pdf-extract"].map(String::from).to_vec(),
            jobs: 0,
        }
    }
}

/// How an answer is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The retrieval-augmented drafter proposes, the long-context target verifies.
    Rapid,
    /// The target alone, one token per step.
    Ar,
    /// Vanilla speculative decoding: the drafter sees the same long context as the target.
    Sd,
    /// The retrieval-augmented drafter answering alone.
    Rag,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Rapid, Mode::Ar, Mode::Sd, Mode::Rag];
}

impl std::str::FromStr for Mode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|m| m.to_string() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown mode {s:?}: use rapid, ar, sd or rag"))
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Rapid => "rapid",
            Self::Ar => "ar",
            Self::Sd => "sd",
            Self::Rag => "rag",
        })
    }
}

/// The element type of the KV cache (keys and values): f16 is llama.cpp's default; q8_0 takes
/// about half the memory and q4_0 about a quarter, so a long context fits a smaller card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvType {
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "q8_0")]
    Q8_0,
    #[serde(rename = "q4_0")]
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// Bytes per cached element (q8_0 and q4_0 store blocks of 32 with a 2-byte scale).
    pub fn bytes_per_element(self) -> f64 {
        match self {
            Self::F16 => 2.0,
            Self::Q8_0 => 34.0 / 32.0,
            Self::Q4_0 => 18.0 / 32.0,
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.to_string() == s)
            .ok_or_else(|| anyhow::anyhow!("unknown KV cache type {s:?}: use f16, q8_0 or q4_0"))
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
        })
    }
}

/// A context's size: a number of tokens, or `auto` (the largest that the model's trained length,
/// the memory where its cache lives and what the corpus needs allow; see `session::sizing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CtxSize {
    #[default]
    Auto,
    Tokens(u32),
}

impl CtxSize {
    /// Whether it is auto or a size of at least `n` tokens.
    pub fn at_least(self, n: u32) -> bool {
        match self {
            Self::Auto => true,
            Self::Tokens(t) => t >= n,
        }
    }
}

impl From<u32> for CtxSize {
    fn from(n: u32) -> Self {
        Self::Tokens(n)
    }
}

impl std::str::FromStr for CtxSize {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        s.parse()
            .map(Self::Tokens)
            .map_err(|_| anyhow::anyhow!("{s:?} is neither a number of tokens nor \"auto\""))
    }
}

impl std::fmt::Display for CtxSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Tokens(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for CtxSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Tokens(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for CtxSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Tokens(u32),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a number of tokens or \"auto\""))?
        {
            Raw::Tokens(n) => Ok(Self::Tokens(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Declares the engine's settings once: the `[engine]` section of `config.toml`
/// ([`EngineConfig`], with its defaults), the command-line flags over it ([`EngineFlags`], the
/// same names and help), and setting one by name from text ([`EngineConfig::set`], for the chat's
/// slash commands). Every path goes through [`EngineConfig::validate`].
macro_rules! engine_settings {
    ($(
        $(#[doc = $doc:literal])*
        $(#[arg($($arg:tt)*)])?
        $(#[serde($($serde:tt)*)])?
        $field:ident : $ty:ty = $default:expr,
    )*) => {
        /// The engine's settings: the models' contexts and how answers are decoded.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct EngineConfig {
            $(
                $(#[doc = $doc])*
                $(#[serde($($serde)*)])?
                pub $field: $ty,
            )*
        }

        impl Default for EngineConfig {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        /// Command-line flags over the config's `[engine]` section: a flag given wins.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct EngineFlags {
            $(
                $(#[doc = $doc])*
                #[arg(long $(, $($arg)*)?)]
                pub $field: Option<$ty>,
            )*
        }

        impl EngineFlags {
            /// Sets every given flag over `c`.
            pub fn apply(&self, c: &mut EngineConfig) {
                $( if let Some(v) = &self.$field { c.$field = v.clone(); } )*
            }
        }

        impl EngineConfig {
            /// The settings' names, as in `config.toml` and the flags (with `-` for `_`).
            pub const NAMES: &[&str] = &[$( stringify!($field), )*];

            /// Sets the setting `name` from `value` if the result is valid; the settings are
            /// unchanged otherwise.
            pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
                let mut next = self.clone();
                match name {
                    $(
                        stringify!($field) => {
                            next.$field = value.trim().parse().map_err(|e| {
                                anyhow::anyhow!("{name}: {value:?} is not valid here ({e})")
                            })?;
                        }
                    )*
                    _ => anyhow::bail!(
                        "unknown setting {name:?} (settings: {})",
                        Self::NAMES.join(", ")
                    ),
                }
                next.validate()?;
                *self = next;
                Ok(())
            }
        }
    };
}

engine_settings! {
    /// rapid (retrieval-augmented drafter, default), ar (target only), sd (drafter with the full
    /// context), rag (the retrieval-augmented drafter answering alone).
    mode: Mode = Mode::Rapid,
    /// Target context size in tokens, or auto: the largest the model's trained length and the
    /// free memory allow, no larger than the corpus needs.
    ctx: CtxSize = CtxSize::Auto,
    /// Drafter context size in tokens, or auto: room for the retrieved chunks and the
    /// conversation.
    draft_ctx: CtxSize = CtxSize::Auto,
    /// Tokens of retrieved chunks the drafter sees.
    retrieval_budget: usize = 4096,
    /// Largest number of tokens the drafter model drafts per round.
    gamma: usize = 6,
    /// Draft from lookups in the documents and the answer too (rapid mode).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    lookup: bool = true,
    /// Largest lookup draft, in tokens.
    lookup_max: usize = 16,
    /// Choose each round's draft (lookup, drafter, or none) and its length from measured costs
    /// and acceptance (rapid mode); false: the paper's fixed γ.
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    adaptive: bool = true,
    /// With lookups: every round decodes exactly this many tokens, padded, drafting only lookups
    /// (1: each round its draft alone; 0: on a GPU with the target as its own drafter, where a
    /// changing batch shape makes llama.cpp capture its CUDA graph anew, the shape the
    /// calibrated costs call for, e.g. 8 for SmolLM2 and none for Gemma 3 270M; else 1).
    verify_batch: usize = 0,
    /// With lookups and adaptation: every round decodes 1, 2, 4, … up to this many tokens
    /// (a power of two; 0 = off), its draft padded up to the shape the policy chose. The shape
    /// changes only when that pays for the CUDA graph llama.cpp then captures anew. For GPUs.
    verify_shapes: usize = 0,
    /// Drafting stops early when the drafter's top probability falls below this.
    draft_confidence: f32 = 0.3,
    /// Knowledge-transfer strength (0 = plain speculative decoding).
    eta: f32 = 0.0,
    /// Sampling temperature (0 = greedy).
    temp: f32 = 0.0,
    /// Nucleus sampling threshold (1 = off).
    top_p: f32 = 1.0,
    /// Seed of the sampler.
    seed: u64 = 42,
    /// Longest answer, in tokens.
    max_tokens: usize = 256,
    /// Never stop at end-of-generation: every answer runs to max_tokens (for timing models whose
    /// text means nothing, such as synthetic weights; not a config key).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    #[serde(skip)]
    ignore_eos: bool = false,
    /// Save the target's state after reading the documents and restore it when the same
    /// documents are opened again (the corpus KV cache, in the cache directory).
    #[arg(num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    kv_cache: bool = true,
    /// Size cap of the corpus KV cache in MiB; least recently used states go first.
    kv_cache_max_mib: u64 = 4096,
    /// The KV cache's element type: f16, q8_0 (half the memory) or q4_0 (a quarter). The
    /// quantized types turn flash attention on, which llama.cpp needs for them.
    kv_type: KvType = KvType::F16,
    /// Layers offloaded to the GPU when llama.cpp has one (-1 = all).
    #[arg(allow_hyphen_values = true)]
    gpu_layers: i32 = -1,
    /// CPU threads for llama.cpp (0 = the cores that other programs leave free when the engine
    /// starts: a thread sharing a core with a busy program holds up the others).
    threads: u32 = 0,
}

impl EngineConfig {
    /// Checks the values serde cannot: ranges. Messages name the setting as in `config.toml`.
    pub fn validate(&self) -> Result<()> {
        let e = self;
        let checks: [(bool, &str); 13] = [
            (e.ctx.at_least(256), "ctx must be auto or at least 256"),
            (
                e.draft_ctx.at_least(256),
                "draft_ctx must be auto or at least 256",
            ),
            (e.gamma >= 1 && e.gamma <= 64, "gamma must be from 1 to 64"),
            (
                e.lookup_max >= 1 && e.lookup_max <= 64,
                "lookup_max must be from 1 to 64",
            ),
            (
                e.verify_batch <= 64,
                "verify_batch must be from 0 (auto) to 64 (1: off)",
            ),
            (
                e.verify_shapes == 0
                    || (e.verify_shapes.is_power_of_two() && (2..=64).contains(&e.verify_shapes)),
                "verify_shapes must be 0 (off) or a power of two from 2 to 64",
            ),
            (
                e.verify_batch <= 1 || e.verify_shapes == 0,
                "set verify_batch (one shape) or verify_shapes (the policy chooses among several), not both",
            ),
            (e.eta >= 0.0 && e.eta.is_finite(), "eta must be 0 or more"),
            (
                e.temp >= 0.0 && e.temp.is_finite(),
                "temp must be 0 or more (0 = greedy)",
            ),
            (e.top_p > 0.0 && e.top_p <= 1.0, "top_p must be in (0, 1]"),
            (
                (0.0..=1.0).contains(&e.draft_confidence),
                "draft_confidence must be between 0 and 1",
            ),
            (e.max_tokens >= 1, "max_tokens must be at least 1"),
            (
                e.retrieval_budget >= 1,
                "retrieval_budget must be at least 1",
            ),
        ];
        for (ok, message) in checks {
            anyhow::ensure!(ok, "{message}");
        }
        Ok(())
    }

    /// Whether the answer is greedy (temperature 0).
    pub fn greedy(&self) -> bool {
        self.temp <= 0.0
    }
}

impl Config {
    /// Parses a config file's text; errors name the key and the problem.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| match key_at(text, e.span()) {
            Some(key) => anyhow::anyhow!("{key}: {e}"),
            None => anyhow::anyhow!("{e}"),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads `path` if given (it must exist), else `config.toml` in `config_dir` if present,
    /// else the defaults.
    pub fn load(path: Option<&Path>, config_dir: &Path) -> Result<Self> {
        let (file, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (config_dir.join("config.toml"), false),
        };
        match std::fs::read_to_string(&file) {
            Ok(text) => Self::parse(&text)
                .with_context(|| format!("invalid config file {}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read config file {}", file.display())),
        }
    }

    /// Checks the values serde cannot: ranges and names.
    pub fn validate(&self) -> Result<()> {
        let c = &self.corpus;
        let checks: [(bool, &str); 4] = [
            (
                c.chunk_tokens >= 16,
                "corpus.chunk_tokens must be at least 16",
            ),
            (
                c.max_file_mib >= 1,
                "corpus.max_file_mib must be at least 1",
            ),
            (
                c.pdf_timeout_s >= 1,
                "corpus.pdf_timeout_s must be at least 1",
            ),
            (
                !c.pdf_readers.is_empty()
                    && c.pdf_readers
                        .iter()
                        .all(|r| r == "pdftotext" || r == "pdf-extract"),
                "corpus.pdf_readers: name \"pdftotext\", \"pdf-extract\" or both, first choice first",
            ),
        ];
        for (ok, message) in checks {
            anyhow::ensure!(ok, "{message}");
        }
        self.engine
            .validate()
            .map_err(|e| anyhow::anyhow!("engine.{e}"))?;
        for worker in &self.gpu.rpc {
            anyhow::ensure!(
                valid_endpoint(worker),
                "gpu.rpc: {worker:?} is not HOST:PORT with an IPv4 address or a host name (for \
                 example 192.168.1.20:50052)"
            );
        }
        let t = &self.tui;
        for (name, value) in [
            ("accepted", &t.accepted),
            ("corrected", &t.corrected),
            ("bonus", &t.bonus),
            ("question", &t.question),
            ("accent", &t.accent),
        ] {
            anyhow::ensure!(
                value.parse::<ratatui::style::Color>().is_ok(),
                "tui.{name}: {value:?} is not a colour (a name like \"green\", or \"#rrggbb\")"
            );
        }
        Ok(())
    }

    /// Extensions indexed as text, lower case, without the dot.
    pub fn text_extensions(&self) -> Vec<String> {
        let mut exts: Vec<String> = ["md", "markdown", "txt"].map(String::from).to_vec();
        exts.extend(
            self.corpus
                .extra_extensions
                .iter()
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase()),
        );
        exts
    }
}

/// The dotted key (`engine.mode`) whose value starts the line holding `span`, for errors that
/// toml reports by position only (a value of the wrong type or an unknown mode).
fn key_at(text: &str, span: Option<std::ops::Range<usize>>) -> Option<String> {
    let at = span?.start.min(text.len());
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let section = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match section {
        Some(section) => format!("{section}.{key}"),
        None => key.to_string(),
    })
}
