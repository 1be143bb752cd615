//! Shared by the integration tests: the real default model, the demo corpus, temporary caches.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rapid_chat::config::Config;
use rapid_chat::corpus::Indexer;
use rapid_chat::llm::{Tokenizer, fetch};
use rapid_chat::paths::Dirs;

/// The default model, fetched into the data directory when missing (as the app does).
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dirs = Dirs::from_env().expect("data directory");
        fetch::ensure(fetch::DEFAULT, &dirs.models(), false).expect("fetch the default model")
    })
    .clone()
}

pub fn tokenizer() -> Arc<Tokenizer> {
    static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| Arc::new(Tokenizer::load(&model_path()).expect("load the vocabulary")))
        .clone()
}

pub fn demo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo")
}

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rapid-chat"))
}

/// A copy of the demo corpus in a temporary folder, with a temporary index cache.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub cache: tempfile::TempDir,
}

impl Sandbox {
    pub fn empty() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            cache: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn demo() -> Self {
        let s = Self::empty();
        for entry in std::fs::read_dir(demo_dir()).expect("demo corpus") {
            let path = entry.expect("entry").path();
            std::fs::copy(&path, s.dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn indexer_with(&self, config: &Config) -> anyhow::Result<Indexer> {
        Indexer::open(
            self.cache.path(),
            self.dir.path(),
            tokenizer(),
            config,
            exe(),
        )
    }

    pub fn indexer(&self) -> Indexer {
        self.indexer_with(&Config::default())
            .expect("open the index")
    }
}
