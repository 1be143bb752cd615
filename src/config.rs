//! Configuration: built-in defaults < `config.toml` (config directory, or `--config PATH`) <
//! command-line flags. `config.example.toml` documents every key; a test keeps the two in step.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Everything a user can configure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Target model (GGUF). Unset: the default model, fetched on first use.
    pub model: Option<PathBuf>,
    /// Drafter model (GGUF, same vocabulary as the target). Unset: the target itself.
    pub draft_model: Option<PathBuf>,
    pub corpus: CorpusConfig,
    pub engine: EngineConfig,
    pub tui: TuiConfig,
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
    /// A PDF whose text takes longer than this to extract is skipped.
    pub pdf_timeout_s: u64,
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
        }
    }
}

/// Decoding settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `rapid`, `ar`, `sd` or `rag`.
    pub mode: String,
    /// Target context size in tokens.
    pub ctx: u32,
    /// Drafter context size in tokens.
    pub draft_ctx: u32,
    /// Tokens of retrieved chunks the drafter sees.
    pub retrieval_budget: usize,
    /// Largest number of tokens the drafter model drafts per round.
    pub gamma: usize,
    /// Draft from lookups in the documents and the answer too (rapid mode).
    pub lookup: bool,
    /// Largest lookup draft, in tokens.
    pub lookup_max: usize,
    /// Choose each round's draft (lookup, drafter, or none) and its length from measured costs
    /// and acceptance (rapid mode); off: the paper's fixed γ.
    pub adaptive: bool,
    /// With lookups: every round decodes exactly this many tokens, padded (0: each round its
    /// draft alone). For GPUs, where a changing batch shape rebuilds llama.cpp's CUDA graph.
    pub verify_batch: usize,
    /// Drafting stops early when the drafter's top probability falls below this.
    pub draft_confidence: f32,
    /// Knowledge-transfer strength (0 = plain speculative decoding).
    pub eta: f32,
    /// Sampling temperature (0 = greedy).
    pub temp: f32,
    /// Nucleus sampling threshold (1 = off).
    pub top_p: f32,
    /// Seed of the sampler.
    pub seed: u64,
    /// Longest answer, in tokens.
    pub max_tokens: usize,
    /// Save the target's state after reading the documents and restore it when the same
    /// documents are opened again (the corpus KV cache, in the cache directory).
    pub kv_cache: bool,
    /// Size cap of the corpus KV cache in MiB; least recently used states go first.
    pub kv_cache_max_mib: u64,
    /// Layers offloaded to the GPU when llama.cpp has one (-1 = all).
    pub gpu_layers: i32,
    /// CPU threads for llama.cpp (0 = the number of cores).
    pub threads: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            mode: "rapid".into(),
            ctx: 8192,
            draft_ctx: 6144,
            retrieval_budget: 4096,
            gamma: 6,
            lookup: true,
            lookup_max: 16,
            adaptive: true,
            verify_batch: 0,
            draft_confidence: 0.3,
            eta: 0.0,
            temp: 0.0,
            top_p: 1.0,
            seed: 42,
            max_tokens: 256,
            kv_cache: true,
            kv_cache_max_mib: 4096,
            gpu_layers: -1,
            threads: 0,
        }
    }
}

impl Config {
    /// Parses a config file's text; errors name the key and the problem.
    pub fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
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
        let e = &self.engine;
        let checks: [(bool, &str); 12] = [
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
                ["rapid", "ar", "sd", "rag"].contains(&e.mode.as_str()),
                "engine.mode must be one of rapid, ar, sd, rag",
            ),
            (e.ctx >= 256, "engine.ctx must be at least 256"),
            (e.draft_ctx >= 256, "engine.draft_ctx must be at least 256"),
            (
                e.gamma >= 1 && e.gamma <= 64,
                "engine.gamma must be between 1 and 64",
            ),
            (
                e.lookup_max >= 1 && e.lookup_max <= 64,
                "engine.lookup_max must be between 1 and 64",
            ),
            (
                e.verify_batch != 1 && e.verify_batch <= 64,
                "engine.verify_batch must be 0 (off) or between 2 and 64",
            ),
            (
                e.eta >= 0.0 && e.eta.is_finite(),
                "engine.eta must be 0 or more",
            ),
            (
                e.temp >= 0.0 && e.temp.is_finite(),
                "engine.temp must be 0 or more",
            ),
            (
                e.top_p > 0.0 && e.top_p <= 1.0,
                "engine.top_p must be in (0, 1]",
            ),
        ];
        for (ok, message) in checks {
            anyhow::ensure!(ok, "{message}");
        }
        anyhow::ensure!(
            (0.0..=1.0).contains(&e.draft_confidence),
            "engine.draft_confidence must be between 0 and 1"
        );
        anyhow::ensure!(e.max_tokens >= 1, "engine.max_tokens must be at least 1");
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
        for (action, key) in &t.keys {
            crate::tui::keymap::Action::from_name(action)
                .map_err(|e| anyhow::anyhow!("tui.keys.{action}: {e}"))?;
            crate::tui::keymap::parse_key(key)
                .map_err(|e| anyhow::anyhow!("tui.keys.{action}: {e}"))?;
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
