//! The manifest: what the index holds for each file (size, modification time, content hash,
//! chunk count), the files it could not index and why, and with which settings it was built. It
//! makes re-indexing incremental: a file whose size and time are as recorded is not read, and one
//! whose bytes hash as recorded is not extracted again, indexed or skipped.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Bump when the index schema, the extracted text or the chunking changes: older indexes are
/// rebuilt. (2: PDF text normalised, pdftotext first.)
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    pub mtime_ns: u64,
    pub hash: String,
    pub chunks: usize,
}

/// A file that could not be indexed, as it was when it was tried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedEntry {
    pub size: u64,
    pub mtime_ns: u64,
    pub hash: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The tokenizer's model fingerprint and the chunk size: chunks depend on both.
    pub tokenizer: String,
    pub chunk_tokens: usize,
    /// By path relative to the corpus folder, with `/` separators.
    pub files: BTreeMap<String, FileEntry>,
    /// Files read and not indexed (by the same paths), so that a pass does not try them again
    /// until their bytes change.
    #[serde(default)]
    pub skipped: BTreeMap<String, SkippedEntry>,
    /// The PDF readers and limits those files were skipped under: other readers (pdftotext
    /// installed, a longer timeout) try them again.
    #[serde(default)]
    pub readers: String,
}

impl Manifest {
    pub fn new(tokenizer: &str, chunk_tokens: usize) -> Self {
        Self {
            format: FORMAT_VERSION,
            tokenizer: tokenizer.to_owned(),
            chunk_tokens,
            files: BTreeMap::new(),
            skipped: BTreeMap::new(),
            readers: String::new(),
        }
    }

    /// Whether an index described by `self` can be updated with these settings, or must be
    /// rebuilt.
    pub fn compatible(&self, tokenizer: &str, chunk_tokens: usize) -> bool {
        self.format == FORMAT_VERSION
            && self.tokenizer == tokenizer
            && self.chunk_tokens == chunk_tokens
    }

    /// Reads a manifest; `None` when it is missing or unreadable (the index is then rebuilt).
    pub fn load(path: &Path) -> Option<Self> {
        let bytes = std::fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable manifest: rebuilding");
                None
            }
        }
    }

    /// Writes atomically: a temporary file in the same folder, synced, then renamed.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().context("manifest path has no folder")?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        serde_json::to_writer(&mut w, self)?;
        // A full disk shows here, not in a buffer dropped with its error ignored.
        std::io::Write::flush(&mut w)?;
        drop(w);
        tmp.as_file().sync_all()?;
        tmp.persist(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}
