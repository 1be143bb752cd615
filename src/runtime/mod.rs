//! What every front end shares: opening a folder's corpus (one `open`, with the read-only
//! fallback when another instance holds the index), the ingest and watcher thread, the engine
//! thread, and the saved conversation. The TUI, `ask` and `bench` are thin users of it; none of
//! them touches `llm` or `corpus` internals.

pub mod engine_thread;
pub mod history;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use crossbeam_channel::{Receiver, Sender};

use crate::config::Config;
use crate::corpus::indexer::IndexHeld;
use crate::corpus::{CorpusIndex, Indexer, Report};
use crate::llm::Tokenizer;
use crate::paths::Dirs;
use crate::session::Engine;

pub use crate::corpus::watch::WatchEvent;
pub use crate::corpus::{Hit, Progress, Skipped};
pub use crate::session::{Answer, Source, Turn, View};
pub use engine_thread::{EngineInfo, EngineThread, Reply, Request};
pub use history::History;

/// A folder's documents, opened: the index to answer from, and the indexer that keeps it
/// current unless another instance holds it.
pub struct Corpus {
    /// The folder, resolved.
    pub root: PathBuf,
    pub index: CorpusIndex,
    indexer: Option<Indexer>,
    /// Why the index is read-only (another instance holds it), if it is.
    pub held: Option<String>,
}

impl Corpus {
    /// Opens `folder`'s index in the cache directory, creating it if needed. `exe` is the
    /// rapid-chat executable, which extracts PDFs in a child process.
    pub fn open(config: &Config, dirs: &Dirs, folder: &Path, exe: &Path) -> Result<Self> {
        let root = crate::corpus::index::corpus_root(folder)?;
        let model = crate::llm::fetch::model_path(config.model.as_deref(), &dirs.models())?;
        let tokenizer = Arc::new(Tokenizer::load(&model)?);
        match Indexer::open(&dirs.indexes(), &root, tokenizer, config, exe.to_path_buf()) {
            Ok(indexer) => Ok(Self {
                index: indexer.reader()?,
                root,
                indexer: Some(indexer),
                held: None,
            }),
            Err(e) if IndexHeld::is(&e) => Ok(Self {
                index: CorpusIndex::open(&dirs.indexes(), &root)?,
                root,
                indexer: None,
                held: Some(format!("{e:#}")),
            }),
            Err(e) => Err(e),
        }
    }

    /// Brings the index up to date with the folder (None: the index is held elsewhere and is
    /// used as it is).
    pub fn update(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<Option<Report>> {
        let Some(indexer) = self.indexer.as_mut() else {
            return Ok(None);
        };
        let report = indexer.update(progress)?;
        self.index = indexer.reader()?;
        Ok(Some(report))
    }

    /// Keeps the index current until `updates` closes: a first pass (committing as it goes, so
    /// questions can be asked meanwhile), then the watcher; all of it reported on `updates`.
    pub fn spawn_ingest(&mut self, updates: Sender<Update>) -> Result<()> {
        let Some(mut indexer) = self.indexer.take() else {
            return Ok(());
        };
        let tx = updates;
        std::thread::Builder::new()
            .name("ingest".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let report = indexer.update(&mut |p| {
                    let _ = tx.send(Update::IndexProgress {
                        progress: p.clone(),
                        seconds: started.elapsed().as_secs_f64(),
                    });
                });
                let skipped = match report {
                    Ok(r) => {
                        let _ = tx.send(Update::IndexDone {
                            chunks: r.chunks,
                            skipped: r.files_skipped.len(),
                            indexed: r.files_indexed,
                        });
                        r.files_skipped
                    }
                    Err(e) => {
                        let _ = tx.send(Update::Notice(format!("indexing failed: {e:#}")));
                        Vec::new()
                    }
                };
                let (wtx, wrx) = crossbeam_channel::unbounded();
                match crate::corpus::watch::Watcher::start(
                    indexer,
                    Duration::from_millis(500),
                    &skipped,
                    wtx,
                ) {
                    Ok(_watcher) => {
                        for event in wrx {
                            if tx.send(Update::Watch(event)).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Update::Notice(format!("not watching the folder: {e:#}")));
                    }
                }
            })?;
        Ok(())
    }

    /// The indexer, for a front end that drives it itself (`index --watch`); None when held.
    pub fn into_indexer(self) -> Option<Indexer> {
        self.indexer
    }
}

/// What the background threads other than the engine tell a front end.
#[derive(Debug, Clone)]
pub enum Update {
    /// An indexing pass moved on, `seconds` after it began.
    IndexProgress {
        progress: Progress,
        seconds: f64,
    },
    IndexDone {
        chunks: u64,
        skipped: usize,
        indexed: usize,
    },
    Watch(WatchEvent),
    /// Something the user should read (a failure of a background job).
    Notice(String),
}

/// What an interactive front end starts with.
pub struct Options {
    pub folder: PathBuf,
    pub config: Config,
    pub dirs: Dirs,
    /// The rapid-chat executable (PDFs are extracted in a child process).
    pub exe: PathBuf,
    /// Start without the conversation saved for this folder.
    pub new: bool,
}

/// An interactive session over a folder: the corpus kept current, the engine thread, the saved
/// conversation. Its channels carry everything the front end must show.
pub struct Runtime {
    pub root: PathBuf,
    engine: EngineThread,
    /// The engine's replies.
    pub replies: Receiver<Reply>,
    /// Indexing and watching.
    pub updates: Receiver<Update>,
    history: History,
    /// The conversation saved for this folder (empty when starting afresh).
    pub saved: Vec<history::Entry>,
    /// Something to tell the user about starting (a read-only index, an unreadable history).
    pub notice: Option<String>,
}

impl Runtime {
    /// Opens the corpus and starts ingesting it, starts loading the engine (the first reply says
    /// whether it loaded), and reads the saved conversation.
    pub fn start(opts: Options) -> Result<Self> {
        let Options {
            folder,
            config,
            dirs,
            exe,
            new,
        } = opts;
        let mut corpus = Corpus::open(&config, &dirs, &folder, &exe)?;
        let (updates_tx, updates) = crossbeam_channel::unbounded();
        corpus.spawn_ingest(updates_tx)?;
        let (replies_tx, replies) = crossbeam_channel::unbounded();
        let history = History::for_folder(&dirs, &corpus.root);
        let workers = config.gpu.rpc.clone();
        let load = move |with_workers: bool| {
            let mut config = config.clone();
            if !with_workers {
                config.gpu.rpc.clear();
            }
            Engine::load(&config, &dirs)
        };
        let engine = EngineThread::spawn(
            std::sync::Arc::new(load),
            workers,
            corpus.index.clone(),
            replies_tx,
        )?;
        let (saved, history_note) = if new {
            (Vec::new(), None)
        } else {
            match history.load() {
                Ok(entries) => (entries, None),
                Err(e) => (Vec::new(), Some(format!("{e:#}: starting afresh"))),
            }
        };
        Ok(Self {
            root: corpus.root,
            engine,
            replies,
            updates,
            history,
            saved,
            notice: corpus
                .held
                .map(|h| format!("{h}; read-only view"))
                .or(history_note),
        })
    }

    /// Asks a question; the answer streams on `replies`.
    pub fn ask(&self, request: Request) {
        self.engine.ask(request);
    }

    /// Stops the answer in progress.
    pub fn cancel(&self) {
        self.engine.cancel();
    }

    /// Writes the conversation for this folder, to be loaded at the next start.
    pub fn persist(&self, entries: &[history::Entry]) -> Result<()> {
        self.history
            .save(&self.root.display().to_string(), entries)
            .inspect_err(|e| {
                tracing::warn!(error = %format!("{e:#}"), "cannot save the conversation");
            })
    }

    /// Writes `markdown` to `path`; the outcome, in words for the user.
    pub fn save_markdown(&self, path: &Path, markdown: &str) -> String {
        match history::save_atomic(path, markdown.as_bytes()) {
            Ok(()) => format!("saved the conversation to {}", path.display()),
            Err(e) => format!("cannot save to {}: {e:#}", path.display()),
        }
    }
}

/// The folder's index, brought up to date first unless `update` is false or another instance
/// holds it. What the update did and cost, or why there was none, goes to `note` in one line.
pub fn current_index(
    config: &Config,
    dirs: &Dirs,
    folder: &Path,
    update: bool,
    progress: &mut dyn FnMut(&Progress),
    note: &mut dyn FnMut(String),
) -> Result<CorpusIndex> {
    if !update {
        let root = crate::corpus::index::corpus_root(folder)?;
        let index = CorpusIndex::open(&dirs.indexes(), &root)?;
        note(format!(
            "index used as it is (--no-update): {} chunks",
            index.num_chunks()
        ));
        return Ok(index);
    }
    let exe = std::env::current_exe().context("cannot find the rapid-chat executable")?;
    let mut corpus = Corpus::open(config, dirs, folder, &exe)?;
    match corpus.update(progress)? {
        Some(report) => note(report.summary()),
        None => note(format!(
            "note: {}; using the index as it is",
            corpus.held.as_deref().unwrap_or("the index is held")
        )),
    }
    Ok(corpus.index)
}

/// An indexing pass's progress in words: "56/280 files, 35.2/120.4 MB, 1.3 MB/s, 1 min 5 s
/// left" (by bytes, as files differ a thousandfold in size), or by files where none need
/// reading.
pub fn index_gauge(p: &Progress, seconds: f64) -> String {
    if p.bytes_total == 0 {
        return gauge(p.files_done, p.files_total, "files", seconds);
    }
    let mb = |b: u64| b as f64 / 1e6;
    let mut out = format!(
        "{}/{} files, {:.1}/{:.1} MB",
        p.files_done,
        p.files_total,
        mb(p.bytes_done),
        mb(p.bytes_total)
    );
    if p.bytes_done > 0 && p.bytes_done < p.bytes_total && seconds > 0.0 {
        let rate = p.bytes_done as f64 / seconds;
        let left = ((p.bytes_total - p.bytes_done) as f64 / rate).ceil() as u64;
        out.push_str(&format!(
            ", {:.1} MB/s, {} left",
            rate / 1e6,
            duration(left)
        ));
    }
    out
}

/// Whole seconds in words: "<1 s", "42 s", "3 min 5 s".
fn duration(s: u64) -> String {
    match s {
        0 => "<1 s".to_string(),
        s if s < 60 => format!("{s} s"),
        s => format!("{} min {} s", s / 60, s % 60),
    }
}

/// Long work in words for the user: "6144/6840 tokens, 120/s, 6 s left" (the rate and the time
/// left once there is a rate to go by).
pub fn gauge(done: usize, total: usize, unit: &str, seconds: f64) -> String {
    let mut out = format!("{done}/{total} {unit}");
    if done == 0 || done >= total || seconds <= 0.0 {
        return out;
    }
    let rate = done as f64 / seconds;
    let left = ((total - done) as f64 / rate).ceil() as u64;
    out.push_str(&format!(", {rate:.0}/s, {} left", duration(left)));
    out
}

#[cfg(test)]
mod tests {
    use super::{Progress, gauge, index_gauge};

    #[test]
    fn an_index_gauge_goes_by_bytes() {
        let p = Progress {
            files_done: 56,
            files_total: 280,
            bytes_done: 30_000_000,
            bytes_total: 120_000_000,
            path: "r/R-exts.pdf".into(),
        };
        assert_eq!(
            index_gauge(&p, 20.0),
            "56/280 files, 30.0/120.0 MB, 1.5 MB/s, 1 min 0 s left"
        );
        let nothing_to_read = Progress {
            bytes_total: 0,
            bytes_done: 0,
            ..p
        };
        assert_eq!(
            index_gauge(&nothing_to_read, 1.0),
            "56/280 files, 56/s, 4 s left"
        );
    }

    #[test]
    fn a_gauge_gives_the_rate_and_the_time_left_once_it_can() {
        assert_eq!(gauge(0, 6840, "tokens", 0.0), "0/6840 tokens");
        assert_eq!(gauge(600, 6840, "tokens", 0.0), "600/6840 tokens");
        assert_eq!(
            gauge(6144, 6840, "tokens", 51.2),
            "6144/6840 tokens, 120/s, 6 s left"
        );
        assert_eq!(
            gauge(1200, 36000, "tokens", 10.0),
            "1200/36000 tokens, 120/s, 4 min 50 s left"
        );
        assert_eq!(gauge(12, 40, "files", 3.0), "12/40 files, 4/s, 7 s left");
        assert_eq!(gauge(6840, 6840, "tokens", 57.0), "6840/6840 tokens");
    }
}
