//! Keeping the index current while the application runs: a notify watcher with a debouncer (a
//! burst of saves is one pass). Only changes to documents start a pass (created, written,
//! removed, renamed, their time set; a folder created, removed or renamed): never reads, whether
//! ours or anyone's, so a pass, which opens folders and files, cannot start the next one. Each
//! pass is an incremental [`Indexer::update`]; what it changed is reported as events, and a pass
//! that changed nothing reports nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use notify::RecursiveMode;
use notify::event::{AccessKind, EventKind, MetadataKind, ModifyKind};

use super::extract;
use super::indexer::{Indexer, Report, Skipped};

/// What the watcher tells its listener.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A new or changed file is now indexed.
    Indexed(String),
    /// A deleted file's chunks are gone.
    Removed(String),
    /// A file could not be indexed.
    Failed { path: String, reason: String },
    /// A pass that changed the index finished; the index holds this many chunks.
    Updated { chunks: u64 },
    /// The watcher itself failed (it keeps running).
    Error(String),
}

impl std::fmt::Display for WatchEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Indexed(path) => write!(f, "indexed {path}"),
            Self::Removed(path) => write!(f, "removed {path} from the index"),
            Self::Failed { path, reason } => write!(f, "skipped {path}: {reason}"),
            Self::Updated { chunks } => write!(f, "the index holds {chunks} chunks"),
            Self::Error(e) => write!(f, "watcher: {e}"),
        }
    }
}

/// A running watcher; dropping it stops watching.
pub struct Watcher {
    _debouncer: notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
    _thread: std::thread::JoinHandle<()>,
    passes: Arc<AtomicUsize>,
}

impl Watcher {
    /// Watches the indexer's folder; each debounced burst of changes to documents runs one
    /// incremental pass on a background thread and sends what changed to `events`. `skipped` is
    /// what the last pass skipped (already told): only new reasons are sent.
    pub fn start(
        mut indexer: Indexer,
        debounce: Duration,
        skipped: &[Skipped],
        events: Sender<WatchEvent>,
    ) -> Result<Self> {
        let root: PathBuf = indexer.root().to_path_buf();
        let extensions = indexer.text_extensions().to_vec();
        let (tx, rx) = mpsc::channel();
        let mut debouncer = notify_debouncer_full::new_debouncer(debounce, None, tx)
            .context("cannot start the file watcher")?;
        debouncer
            .watch(&root, RecursiveMode::Recursive)
            .with_context(|| format!("cannot watch {}", root.display()))?;
        let passes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&passes);
        let mut told: BTreeMap<String, String> = skipped
            .iter()
            .map(|s| (s.path.clone(), s.reason.clone()))
            .collect();
        let thread = std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || {
                for result in rx {
                    let relevant = match &result {
                        Ok(batch) => batch
                            .iter()
                            .any(|e| is_change(&e.event, &root, &extensions)),
                        Err(errors) => {
                            for e in errors {
                                let _ = events.send(WatchEvent::Error(e.to_string()));
                            }
                            true
                        }
                    };
                    if !relevant {
                        continue;
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    match indexer.update(&mut |_| {}) {
                        Ok(report) => {
                            if send_report(&events, report, &mut told).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %format!("{e:#}"), "re-indexing failed");
                            if events.send(WatchEvent::Error(format!("{e:#}"))).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .context("cannot start the watcher thread")?;
        Ok(Self {
            _debouncer: debouncer,
            _thread: thread,
            passes,
        })
    }

    /// The passes run since it started.
    pub fn passes(&self) -> usize {
        self.passes.load(Ordering::SeqCst)
    }
}

/// Whether `event` may change what the index holds: a document (or a folder, which may hold
/// documents) created, written, removed, renamed or given another time, outside hidden folders.
/// Reads are not changes: a pass opens folders and files, and must not start the next one.
fn is_change(event: &notify::Event, root: &Path, extensions: &[String]) -> bool {
    if event.need_rescan() {
        return true;
    }
    match event.kind {
        EventKind::Access(AccessKind::Close(notify::event::AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => return false,
        _ => {}
    }
    event.paths.iter().any(|p| {
        let hidden = p.strip_prefix(root).map_or(true, |r| {
            r.components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        });
        if hidden || p == root {
            return false;
        }
        // A folder (or, once gone, a name without an extension, which may have been one).
        extract::kind_of(p, extensions).is_some()
            || p.is_dir()
            || (!p.exists() && p.extension().is_none())
    })
}

/// Sends what a pass changed: files indexed and removed, and skips not told before (`told`,
/// by path, kept current).
fn send_report(
    events: &Sender<WatchEvent>,
    report: Report,
    told: &mut BTreeMap<String, String>,
) -> Result<(), crossbeam_channel::SendError<WatchEvent>> {
    let changed = report.changed();
    for path in report.indexed {
        tracing::info!(path = %path, "re-indexed");
        events.send(WatchEvent::Indexed(path))?;
    }
    for path in report.removed {
        tracing::info!(path = %path, "removed from the index");
        events.send(WatchEvent::Removed(path))?;
    }
    let now: BTreeMap<String, String> = report
        .files_skipped
        .into_iter()
        .map(|s| (s.path, s.reason))
        .collect();
    for (path, reason) in &now {
        if told.get(path) != Some(reason) {
            events.send(WatchEvent::Failed {
                path: path.clone(),
                reason: reason.clone(),
            })?;
        }
    }
    *told = now;
    if changed {
        events.send(WatchEvent::Updated {
            chunks: report.chunks,
        })?;
    }
    Ok(())
}
