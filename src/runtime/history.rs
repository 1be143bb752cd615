//! The conversation saved for a folder, in the data directory: its own versioned type, so the
//! UI's state can change without breaking what users have saved. Files written before the
//! version number existed (version 0) have the same fields and still load.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::config::Mode;
use crate::paths::Dirs;
use crate::session::{Source, View};
use crate::speculative::{GenToken, Stats};

/// The version this build writes; it reads this one and every earlier one.
pub const VERSION: u32 = 1;

/// A saved conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Saved {
    /// 0: written before versions were kept.
    #[serde(default)]
    pub version: u32,
    pub folder: String,
    pub entries: Vec<Entry>,
}

/// One question and its answer, as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub question: String,
    pub tokens: Vec<GenToken>,
    pub status: Status,
    pub mode: Mode,
    pub stats: Option<Stats>,
    pub sources: Vec<SavedSource>,
    pub view: Option<View>,
    /// Accepted drafts per round that drafted (the sparkline).
    pub rounds: Vec<u64>,
    /// Files re-indexed while the answer was being written.
    pub index_changed: bool,
    /// Asked before the folder was all indexed: how much of it was searchable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_index: Option<String>,
}

/// How an answer ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Status {
    /// Still being written when the conversation was saved (the app was killed mid-answer).
    Streaming,
    Done,
    Cancelled,
    Failed(String),
}

/// A source as saved: where it is, not its text (the documents are on disk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSource {
    pub path: String,
    pub page: Option<u32>,
    pub score: f32,
}

impl From<&Source> for SavedSource {
    fn from(s: &Source) -> Self {
        Self {
            path: s.path.clone(),
            page: s.page,
            score: s.score,
        }
    }
}

impl From<&SavedSource> for Source {
    fn from(s: &SavedSource) -> Self {
        Self {
            path: s.path.clone(),
            page: s.page,
            score: s.score,
            start: 0,
            end: 0,
            text: String::new(),
        }
    }
}

/// Where a folder's conversation is kept.
pub struct History {
    path: PathBuf,
}

impl History {
    /// The history file of the folder `root` in the data directory.
    pub fn for_folder(dirs: &Dirs, root: &Path) -> Self {
        let key = crate::corpus::extract::content_hash(root.to_string_lossy().as_bytes());
        Self {
            path: dirs
                .data
                .join("history")
                .join(format!("{}.json", &key[..16])),
        }
    }

    /// A history kept in `path`.
    pub fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// The saved entries (none when nothing was saved).
    pub fn load(&self) -> Result<Vec<Entry>> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.path.display()));
            }
        };
        let saved: Saved = serde_json::from_slice(&bytes)
            .with_context(|| format!("unreadable conversation {}", self.path.display()))?;
        anyhow::ensure!(
            saved.version <= VERSION,
            "the conversation {} was saved by a newer rapid-chat (format {}, this one reads up to \
             {VERSION})",
            self.path.display(),
            saved.version
        );
        Ok(saved.entries)
    }

    /// Replaces the saved conversation with `entries`, atomically.
    pub fn save(&self, folder: &str, entries: &[Entry]) -> Result<()> {
        let saved = Saved {
            version: VERSION,
            folder: folder.to_string(),
            entries: entries.to_vec(),
        };
        save_atomic(&self.path, &serde_json::to_vec(&saved)?)
    }
}

/// Writes `bytes` to `path` through a temporary file, so a crash leaves the old file or the new.
pub fn save_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("no parent folder")?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A conversation as the version before this type wrote it (the UI's own entries).
    const VERSION_0: &str = r#"{"folder":"/docs","entries":[{"question":"Which port?",
        "tokens":[{"text":"8080","kind":"accepted","margin":1.5}],"status":"Done","mode":"rapid",
        "stats":{"generated_tokens":1,"drafted":1,"accepted":1},"sources":[{"path":"a.md",
        "page":null,"score":1.25}],"view":{"chunks_in_view":3,"chunks_total":3,
        "doc_tokens_in_view":900,"doc_tokens_total":900},"rounds":[1],"round_count":1,"index_changed":false,"decode_s":0.5},
        {"question":"Stopped?","tokens":[],"status":{"Failed":"boom"},"mode":"ar","stats":null,
        "sources":[],"view":null,"rounds":[],"index_changed":true}]}"#;

    #[test]
    fn a_conversation_saved_before_versions_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.json");
        std::fs::write(&path, VERSION_0).unwrap();
        let entries = History::at(path).load().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].question, "Which port?");
        assert_eq!(entries[0].tokens[0].text, "8080");
        assert_eq!(entries[0].stats.as_ref().unwrap().accepted, 1);
        assert_eq!(entries[0].sources[0].score, 1.25);
        assert_eq!(entries[1].status, Status::Failed("boom".into()));
        assert_eq!(entries[1].mode, Mode::Ar);
        assert!(entries[1].index_changed);
    }

    #[test]
    fn what_is_saved_loads_back_the_same_and_a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/h.json");
        let history = History::at(path.clone());
        assert!(history.load().unwrap().is_empty(), "nothing saved yet");
        let old = History::at(dir.path().join("old.json"));
        std::fs::write(dir.path().join("old.json"), VERSION_0).unwrap();
        let entries = old.load().unwrap();
        history.save("/docs", &entries).unwrap();
        assert_eq!(history.load().unwrap(), entries);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(&format!("\"version\":{VERSION}")));

        std::fs::write(&path, text.replace("\"version\":1", "\"version\":99")).unwrap();
        let err = format!("{:#}", history.load().unwrap_err());
        assert!(err.contains("newer rapid-chat"), "{err}");
    }
}
