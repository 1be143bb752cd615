//! Keeping the index current while the application runs: a notify watcher with a debouncer (a
//! burst of saves is one pass), each pass an incremental [`Indexer::update`], reported as events.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use notify::RecursiveMode;

use super::index::{Indexer, Report};

/// What the watcher tells its listener.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A new or changed file is now indexed.
    Indexed(String),
    /// A deleted file's chunks are gone.
    Removed(String),
    /// A file could not be indexed.
    Failed { path: String, reason: String },
    /// A pass finished; the index holds this many chunks.
    Updated { chunks: u64 },
    /// The watcher itself failed (it keeps running).
    Error(String),
}

/// A running watcher; dropping it stops watching.
pub struct Watcher {
    _debouncer: notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
    _thread: std::thread::JoinHandle<()>,
}

impl Watcher {
    /// Watches the indexer's folder; each debounced burst of changes runs one incremental pass
    /// on a background thread and sends its events to `events`.
    pub fn start(
        mut indexer: Indexer,
        debounce: Duration,
        events: Sender<WatchEvent>,
    ) -> Result<Self> {
        let root: PathBuf = indexer.root().to_path_buf();
        let watched = root.clone();
        let index_dir_hidden = move |p: &std::path::Path| {
            p.strip_prefix(&root)
                .map(|r| {
                    r.components()
                        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
                })
                .unwrap_or(true)
        };
        let (tx, rx) = mpsc::channel();
        let mut debouncer = notify_debouncer_full::new_debouncer(debounce, None, tx)
            .context("cannot start the file watcher")?;
        debouncer
            .watch(&watched, RecursiveMode::Recursive)
            .with_context(|| format!("cannot watch {}", watched.display()))?;
        let thread = std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || {
                for result in rx {
                    let relevant = match &result {
                        Ok(batch) => batch
                            .iter()
                            .any(|e| e.paths.iter().any(|p| !index_dir_hidden(p))),
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
                    match indexer.update(&mut |_| {}) {
                        Ok(report) => {
                            if send_report(&events, report).is_err() {
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
        })
    }
}

fn send_report(
    events: &Sender<WatchEvent>,
    report: Report,
) -> Result<(), crossbeam_channel::SendError<WatchEvent>> {
    for path in report.indexed {
        tracing::info!(path = %path, "re-indexed");
        events.send(WatchEvent::Indexed(path))?;
    }
    for path in report.removed {
        tracing::info!(path = %path, "removed from the index");
        events.send(WatchEvent::Removed(path))?;
    }
    for s in report.files_skipped {
        events.send(WatchEvent::Failed {
            path: s.path,
            reason: s.reason,
        })?;
    }
    events.send(WatchEvent::Updated {
        chunks: report.chunks,
    })
}
