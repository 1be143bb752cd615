//! The corpus KV cache on disk: the target's state after reading the documents, saved once and
//! restored when the same documents are opened again with the same model and context settings,
//! so reopening a folder skips its longest cost.
//!
//! An entry is two files named by a key (SHA-256 of the model's identity, the context settings
//! and the token ids): `KEY.kv`, llama.cpp's own state file, and `KEY.json`, its length and
//! SHA-256. Both are written to temporary names and renamed, the metadata last, so a crash
//! leaves either no entry or a whole one; a state file is loaded only when its hash matches.
//! Entries are evicted least recently used first (loading one refreshes its time) to stay under
//! a size cap.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, Result};
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped when the entry format changes.
const FORMAT: u32 = 1;

/// A directory of saved states under a size cap.
#[derive(Debug, Clone)]
pub struct KvCache {
    dir: PathBuf,
    max_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    tokens: usize,
    bytes: u64,
    sha256: String,
}

/// The cache key of a state: what produced it and the tokens it holds.
pub fn key(model_id: &str, settings: &str, tokens: &[LlamaToken]) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT.to_le_bytes());
    for part in [model_id, settings, build_version()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    for t in tokens {
        h.update(t.0.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// Another release may vendor another llama.cpp, whose states may not load: part of the key.
fn build_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

impl KvCache {
    pub fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self { dir, max_bytes }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.kv")),
            self.dir.join(format!("{key}.json")),
        )
    }

    /// The verified state file of `key`, or None when there is no whole entry. A damaged entry
    /// (hash or length wrong) is removed and reported as missing.
    pub fn find(&self, key: &str) -> Option<PathBuf> {
        let (data, meta) = self.paths(key);
        let m: Meta = serde_json::from_str(&std::fs::read_to_string(&meta).ok()?).ok()?;
        let ok = m.format == FORMAT
            && std::fs::metadata(&data).is_ok_and(|d| d.len() == m.bytes)
            && sha256_file(&data).is_ok_and(|h| h == m.sha256);
        if !ok {
            tracing::warn!(key, "damaged KV cache entry removed");
            let _ = std::fs::remove_file(&meta);
            let _ = std::fs::remove_file(&data);
            return None;
        }
        // Recently used: evicted last.
        if let Ok(f) = std::fs::File::options().append(true).open(&data) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(data)
    }

    /// Stores an entry: `write` writes the state file to the path it is given. Then evicts the
    /// least recently used entries beyond the cap. Returns the entry's size.
    pub fn store(
        &self,
        key: &str,
        tokens: usize,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<u64> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let (data, meta) = self.paths(key);
        let tmp = |p: &Path| p.with_extension(format!("tmp{}", std::process::id()));
        let (data_tmp, meta_tmp) = (tmp(&data), tmp(&meta));
        let result = (|| {
            write(&data_tmp)?;
            let bytes = std::fs::metadata(&data_tmp)?.len();
            let m = Meta {
                format: FORMAT,
                tokens,
                bytes,
                sha256: sha256_file(&data_tmp)?,
            };
            sync_file(&data_tmp)?;
            std::fs::rename(&data_tmp, &data)?;
            std::fs::write(&meta_tmp, serde_json::to_vec(&m)?)?;
            sync_file(&meta_tmp)?;
            std::fs::rename(&meta_tmp, &meta)?;
            Ok::<_, anyhow::Error>(bytes)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&data_tmp);
            let _ = std::fs::remove_file(&meta_tmp);
        }
        let bytes = result.with_context(|| {
            format!(
                "cannot save the document cache in {} (disk full? set engine.kv_cache = false \
                 to stop saving)",
                self.dir.display()
            )
        })?;
        self.evict(key);
        Ok(bytes)
    }

    /// Removes the least recently used entries until the cache fits its cap (never `keep`), and
    /// leftovers of interrupted writes.
    pub fn evict(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut states: Vec<(SystemTime, u64, String)> = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            let meta = e.metadata().ok();
            let age = meta
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .unwrap_or_default();
            let ext = path.extension().and_then(|x| x.to_str()).unwrap_or("");
            if ext.starts_with("tmp") {
                // Another process may be writing it right now: only old ones are leftovers.
                if age.as_secs() > 3600 {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            if ext == "kv" {
                let key = name.trim_end_matches(".kv").to_owned();
                let modified = meta
                    .as_ref()
                    .and_then(|m| m.modified().ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                states.push((modified, meta.map_or(0, |m| m.len()), key));
            }
        }
        let mut total: u64 = states.iter().map(|s| s.1).sum();
        states.sort();
        for (_, bytes, key) in states {
            if total <= self.max_bytes {
                break;
            }
            if key == keep {
                continue;
            }
            let (data, meta) = self.paths(&key);
            let _ = std::fs::remove_file(meta);
            let _ = std::fs::remove_file(data);
            total = total.saturating_sub(bytes);
            tracing::info!(key, bytes, "KV cache entry evicted");
        }
    }
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max: u64) -> KvCache {
        KvCache::new(dir.join("kv"), max)
    }

    fn put(c: &KvCache, key: &str, bytes: usize) {
        c.store(key, 1, |p| Ok(std::fs::write(p, vec![7u8; bytes])?))
            .unwrap();
    }

    #[test]
    fn keys_differ_by_model_settings_and_tokens() {
        let t = [LlamaToken(1), LlamaToken(2)];
        let k = key("m", "ctx=1", &t);
        assert_eq!(k, key("m", "ctx=1", &t));
        assert_ne!(k, key("m2", "ctx=1", &t));
        assert_ne!(k, key("m", "ctx=2", &t));
        assert_ne!(k, key("m", "ctx=1", &t[..1]));
        // The length prefix keeps parts from running into each other.
        assert_ne!(key("ab", "c", &t), key("a", "bc", &t));
    }

    #[test]
    fn stores_finds_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 1 << 20);
        assert_eq!(c.find("a"), None);
        put(&c, "a", 1000);
        let path = c.find("a").unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 1000);
        // A flipped byte: the entry is not used, and gone.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(c.find("a"), None);
        assert!(!path.exists());
        // A state file without its metadata (a crash between the renames) is not an entry.
        put(&c, "b", 10);
        std::fs::remove_file(c.dir().join("b.json")).unwrap();
        assert_eq!(c.find("b"), None);
        // A failed write leaves nothing behind.
        assert!(c.store("c", 1, |_| anyhow::bail!("disk full")).is_err());
        assert_eq!(c.find("c"), None);
        let names: Vec<String> = std::fs::read_dir(c.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
    }

    #[test]
    fn evicts_least_recently_used_beyond_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), 2500);
        put(&c, "old", 1000);
        std::thread::sleep(std::time::Duration::from_millis(20));
        put(&c, "mid", 1000);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Using "old" makes "mid" the least recently used.
        assert!(c.find("old").is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        put(&c, "new", 1000);
        assert!(c.find("old").is_some());
        assert!(c.find("new").is_some());
        assert_eq!(c.find("mid"), None);
        // An entry larger than the cap is kept while it is the one just stored.
        put(&c, "huge", 5000);
        assert!(c.find("huge").is_some());
    }
}
