//! Keeping a folder's index current: one pass of [`Indexer::update`] stats every document, reads
//! only those whose size or time changed, hashes them before anything else (a touched file costs
//! its hash, not its extraction; a file skipped before is not tried again until its bytes or the
//! PDF readers change), and extracts and chunks the rest on every core, while one tantivy writer
//! takes the chunks as they come.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use tantivy::{Index, IndexWriter, Term, doc};

use super::chunk::{Chunk, chunk_pages};
use super::extract::{self, Kind, Limits, Skip};
use super::index::{CorpusIndex, Fields, corpus_root, index_dir, register_analyzer, schema};
use super::manifest::{FileEntry, Manifest, SkippedEntry};
pub use super::walk::Skipped;
use super::walk::walk;
use crate::config::CorpusConfig;
use crate::llm::Tokenizer;

/// What one pass of [`Indexer::update`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub files_indexed: usize,
    pub files_unchanged: usize,
    pub files_removed: usize,
    /// Chunks in the index after the pass.
    pub chunks: u64,
    pub files_skipped: Vec<Skipped>,
    /// Files indexed with a caveat (e.g. decoded as Latin-1).
    pub warnings: Vec<Skipped>,
    /// Relative paths indexed (new or changed) and removed in this pass.
    #[serde(skip)]
    pub indexed: Vec<String>,
    #[serde(skip)]
    pub removed: Vec<String>,
    /// Bytes of documents read (hashed, and extracted where they changed) and chunks made in
    /// this pass.
    #[serde(skip)]
    pub bytes_read: u64,
    #[serde(skip)]
    pub chunks_made: usize,
    /// Files in the folder, and how long the pass took.
    #[serde(skip)]
    pub files_seen: usize,
    #[serde(skip)]
    pub seconds: f64,
}

impl Report {
    /// Whether the pass changed what the index holds.
    pub fn changed(&self) -> bool {
        !self.indexed.is_empty() || !self.removed.is_empty()
    }

    /// The pass in one line, for headless commands: what it did and what it cost.
    pub fn summary(&self) -> String {
        if !self.changed() {
            return format!(
                "index up to date ({} files checked in {:.1} s)",
                self.files_seen, self.seconds
            );
        }
        let mut parts = Vec::new();
        if !self.indexed.is_empty() {
            parts.push(format!(
                "{} new or changed files indexed",
                self.indexed.len()
            ));
        }
        if !self.removed.is_empty() {
            parts.push(format!("{} removed", self.removed.len()));
        }
        format!(
            "index brought up to date: {} ({:.1} MB read, {} files checked) in {:.1} s",
            parts.join(", "),
            self.bytes_read as f64 / 1e6,
            self.files_seen,
            self.seconds
        )
    }
}

/// Progress of a pass: files considered of those in the folder, and bytes read of those that
/// must be (their size or time changed), with the last file done.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub files_done: usize,
    pub files_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub path: String,
}

impl Progress {
    /// The share done: by bytes where any must be read, else by files.
    pub fn fraction(&self) -> f64 {
        if self.bytes_total > 0 {
            self.bytes_done as f64 / self.bytes_total as f64
        } else if self.files_total > 0 {
            self.files_done as f64 / self.files_total as f64
        } else {
            1.0
        }
    }

    /// Whether the pass is over.
    pub fn finished(&self) -> bool {
        self.files_done >= self.files_total
    }
}

/// Keeps the index of one folder current. Holds tantivy's writer lock while alive: a second
/// indexer on the same folder, in this process or another, fails with a clear error.
pub struct Indexer {
    root: PathBuf,
    dir: PathBuf,
    index: Index,
    writer: IndexWriter,
    fields: Fields,
    manifest: Manifest,
    work: Arc<Work>,
    text_extensions: Vec<String>,
    jobs: usize,
}

/// What reading a file needs, shared by the pass's threads.
struct Work {
    tokenizer: Arc<Tokenizer>,
    chunk_tokens: usize,
    limits: Limits,
}

impl Indexer {
    /// Opens (or creates, or rebuilds when its format or settings changed) the index of `folder`.
    pub fn open(
        indexes_dir: &Path,
        folder: &Path,
        tokenizer: Arc<Tokenizer>,
        config: &crate::config::Config,
        exe: PathBuf,
    ) -> Result<Self> {
        let root = corpus_root(folder)?;
        let dir = index_dir(indexes_dir, &root);
        let tantivy_dir = dir.join("tantivy");
        let corpus: &CorpusConfig = &config.corpus;
        let fingerprint = tokenizer.fingerprint();
        let manifest = Manifest::load(&dir.join("manifest.json"))
            .filter(|m| m.compatible(&fingerprint, corpus.chunk_tokens));
        let (schema, fields) = schema();
        let (index, mut manifest) = match (manifest, Index::open_in_dir(&tantivy_dir)) {
            (Some(manifest), Ok(index)) if index.schema() == schema => (index, manifest),
            _ => {
                tracing::info!(folder = %root.display(), "building a new index");
                if tantivy_dir.exists() {
                    // Another instance may be writing to it: never delete a locked index.
                    let lock = tantivy_dir.join(".tantivy-writer.lock");
                    if lock.exists() && try_lock(&lock)? {
                        return Err(IndexHeld(root).into());
                    }
                    std::fs::remove_dir_all(&tantivy_dir).with_context(|| {
                        format!("cannot remove the old index {}", tantivy_dir.display())
                    })?;
                }
                std::fs::create_dir_all(&tantivy_dir).with_context(|| {
                    format!("cannot create the index folder {}", tantivy_dir.display())
                })?;
                std::fs::write(dir.join("folder.txt"), root.to_string_lossy().as_bytes())?;
                // A new index holds nothing: so does its manifest, whatever the old one said.
                let index = Index::create_in_dir(&tantivy_dir, schema)?;
                (index, Manifest::new(&fingerprint, corpus.chunk_tokens))
            }
        };
        register_analyzer(&index);
        let writer = index.writer(64 << 20).map_err(|e| match e {
            tantivy::TantivyError::LockFailure(..) => IndexHeld(root.clone()).into(),
            other => anyhow::Error::new(other).context("cannot open the index for writing"),
        })?;
        let limits = Limits::of(corpus, exe);
        let readers = format!(
            "{:?}, {:?}, {} bytes",
            limits.pdf, limits.pdf_timeout, limits.max_bytes
        );
        if manifest.readers != readers {
            manifest.skipped.clear();
            manifest.readers = readers;
        }
        if !limits
            .pdf
            .iter()
            .any(|r| matches!(r, extract::PdfReader::Pdftotext(_)))
            && corpus.pdf_readers.iter().any(|r| r == "pdftotext")
        {
            tracing::warn!(
                "poppler's pdftotext is not installed: PDFs are read with the built-in reader \
                 alone (slower, and some PDFs it cannot read); install poppler-utils"
            );
        }
        let jobs = match corpus.jobs {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(Self {
            root,
            dir,
            index,
            writer,
            fields,
            manifest,
            work: Arc::new(Work {
                tokenizer,
                chunk_tokens: corpus.chunk_tokens,
                limits,
            }),
            text_extensions: config.text_extensions(),
            jobs,
        })
    }

    /// The corpus folder (absolute).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Which files it indexes, by extension (without the dot).
    pub fn text_extensions(&self) -> &[String] {
        &self.text_extensions
    }

    /// A searcher over this index (sees each commit after [`CorpusIndex::reload`]).
    pub fn reader(&self) -> Result<CorpusIndex> {
        CorpusIndex::from_index(self.index.clone())
    }

    /// What the index holds, by relative path.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Brings the index in line with the folder: new and changed files are (re-)extracted and
    /// re-chunked, deleted ones dropped, unchanged ones not read at all.
    pub fn update(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<Report> {
        let started = Instant::now();
        let (files, mut skipped) = walk(&self.root, &self.text_extensions);
        let mut report = Report {
            files_seen: files.len(),
            ..Report::default()
        };
        let seen: BTreeSet<&str> = files.iter().map(|(rel, _, _)| rel.as_str()).collect();
        let gone: Vec<String> = self
            .manifest
            .files
            .keys()
            .filter(|k| !seen.contains(k.as_str()))
            .cloned()
            .collect();
        for rel in gone {
            self.writer
                .delete_term(Term::from_field_text(self.fields.path, &rel));
            self.manifest.files.remove(&rel);
            report.removed.push(rel);
        }
        self.manifest
            .skipped
            .retain(|k, _| seen.contains(k.as_str()));

        let mut jobs = Vec::new();
        for (rel, path, kind) in &files {
            let stat = match std::fs::metadata(path) {
                Ok(meta) => extract::stat(&meta),
                Err(e) => {
                    self.forget(rel, &mut report);
                    skipped.push(Skipped {
                        path: rel.clone(),
                        reason: format!("cannot read: {e}"),
                    });
                    continue;
                }
            };
            let indexed = self.manifest.files.get(rel);
            if indexed.is_some_and(|e| (e.size, e.mtime_ns) == stat) {
                report.files_unchanged += 1;
                continue;
            }
            let before = self.manifest.skipped.get(rel);
            if let Some(s) = before.filter(|s| (s.size, s.mtime_ns) == stat) {
                skipped.push(Skipped {
                    path: rel.clone(),
                    reason: s.reason.clone(),
                });
                continue;
            }
            jobs.push(Job {
                rel: rel.clone(),
                path: path.clone(),
                kind: *kind,
                size: stat.0,
                indexed_hash: indexed.map(|e| e.hash.clone()),
                skipped_hash: before.map(|s| (s.hash.clone(), s.reason.clone())),
            });
        }
        // The largest first: the last file to finish is then a small one, and no core idles
        // while one reads a long manual.
        jobs.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.rel.cmp(&b.rel)));
        let mut state = Progress {
            files_done: files.len() - jobs.len(),
            files_total: files.len(),
            bytes_done: 0,
            bytes_total: jobs.iter().map(|j| j.size).sum(),
            path: String::new(),
        };
        progress(&state);

        let mut last_commit = Instant::now();
        let work = Arc::clone(&self.work);
        let outcome = run_jobs(jobs, self.jobs, &work, &mut |job, outcome| {
            state.files_done += 1;
            state.bytes_done += job.size;
            state.path.clone_from(&job.rel);
            self.apply(&job, outcome, &mut report, &mut skipped);
            progress(&state);
            // Commit now and then, so that searches see a long first pass as it goes.
            if last_commit.elapsed() > Duration::from_secs(2) {
                self.commit()?;
                last_commit = Instant::now();
            }
            Ok(())
        });
        // What was done is kept, even when the pass stopped on an error.
        let committed = self.commit();
        outcome?;
        committed?;
        for s in &skipped {
            tracing::debug!(path = %s.path, reason = %s.reason, "skipped");
        }
        // In the folder's order, whichever reader finished first.
        report.indexed.sort();
        report.removed.sort();
        report.warnings.sort_by(|a, b| a.path.cmp(&b.path));
        skipped.sort_by(|a, b| a.path.cmp(&b.path));
        report.files_removed = report.removed.len();
        report.files_indexed = report.indexed.len();
        report.files_skipped = skipped;
        report.chunks = self.manifest.files.values().map(|f| f.chunks as u64).sum();
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Drops what the index holds of `rel`: stale chunks of a file that can no longer be read
    /// would answer for it.
    fn forget(&mut self, rel: &str, report: &mut Report) {
        self.writer
            .delete_term(Term::from_field_text(self.fields.path, rel));
        if self.manifest.files.remove(rel).is_some() {
            report.removed.push(rel.to_owned());
        }
    }

    /// Takes one file's outcome into the index and the manifest.
    fn apply(
        &mut self,
        job: &Job,
        outcome: Outcome,
        report: &mut Report,
        skipped: &mut Vec<Skipped>,
    ) {
        let rel = job.rel.as_str();
        match outcome {
            Outcome::Unread(reason) => {
                tracing::warn!(path = %rel, reason = %reason, "skipped");
                self.forget(rel, report);
                skipped.push(Skipped {
                    path: rel.to_owned(),
                    reason,
                });
            }
            Outcome::Touched { size, mtime_ns } => {
                report.bytes_read += size;
                if let Some(entry) = self.manifest.files.get_mut(rel) {
                    entry.size = size;
                    entry.mtime_ns = mtime_ns;
                }
                report.files_unchanged += 1;
            }
            Outcome::Skipped { file, reason } => {
                report.bytes_read += file.size;
                tracing::warn!(path = %rel, reason = %reason, "skipped");
                self.forget(rel, report);
                self.manifest.skipped.insert(
                    rel.to_owned(),
                    SkippedEntry {
                        size: file.size,
                        mtime_ns: file.mtime_ns,
                        hash: file.hash,
                        reason: reason.clone(),
                    },
                );
                skipped.push(Skipped {
                    path: rel.to_owned(),
                    reason,
                });
            }
            Outcome::Chunked {
                file,
                chunks,
                warning,
            } => {
                report.bytes_read += file.size;
                if let Some(w) = warning {
                    report.warnings.push(Skipped {
                        path: rel.to_owned(),
                        reason: w,
                    });
                }
                self.writer
                    .delete_term(Term::from_field_text(self.fields.path, rel));
                for c in &chunks {
                    if let Err(e) = self.add_chunk(rel, c) {
                        // The part of a file whose chunks could not all be added would answer
                        // for it.
                        self.forget(rel, report);
                        skipped.push(Skipped {
                            path: rel.to_owned(),
                            reason: format!("cannot index: {e}"),
                        });
                        return;
                    }
                }
                report.chunks_made += chunks.len();
                self.manifest.skipped.remove(rel);
                self.manifest.files.insert(
                    rel.to_owned(),
                    FileEntry {
                        size: file.size,
                        mtime_ns: file.mtime_ns,
                        hash: file.hash,
                        chunks: chunks.len(),
                    },
                );
                report.indexed.push(rel.to_owned());
            }
        }
    }

    /// Makes the index's changes durable, then the manifest that describes them.
    fn commit(&mut self) -> Result<()> {
        const WAY_OUT: &str = "is the disk full? Free some space and run again: what was indexed \
                               before is kept";
        self.writer
            .commit()
            .with_context(|| format!("cannot commit the index ({WAY_OUT})"))?;
        self.manifest
            .save(&self.dir.join("manifest.json"))
            .with_context(|| format!("cannot save the index manifest ({WAY_OUT})"))
    }

    fn add_chunk(&mut self, rel: &str, c: &Chunk) -> tantivy::Result<()> {
        let f = self.fields;
        self.writer.add_document(doc!(
            f.path => rel,
            f.page => u64::from(c.page.unwrap_or(0)),
            f.start => c.start as u64,
            f.end => c.end as u64,
            f.order => c.order as u64,
            f.tokens => c.tokens as u64,
            f.text => c.text.as_str(),
        ))?;
        Ok(())
    }
}

/// A file the pass must read: its size or time is not what the manifest says.
struct Job {
    rel: String,
    path: PathBuf,
    kind: Kind,
    size: u64,
    /// The hash it was indexed with, if it was.
    indexed_hash: Option<String>,
    /// The hash it was skipped with and why, if it was.
    skipped_hash: Option<(String, String)>,
}

/// A file as read: its size and time, and the hash of its bytes.
struct FileRead {
    size: u64,
    mtime_ns: u64,
    hash: String,
}

/// What reading one file came to.
enum Outcome {
    /// It could not be read (vanished, changed meanwhile, too large, not allowed): tried again
    /// at the next pass.
    Unread(String),
    /// Its bytes are those indexed: only its time moved.
    Touched { size: u64, mtime_ns: u64 },
    /// Read, and not indexable (for this reason) until its bytes change.
    Skipped { file: FileRead, reason: String },
    Chunked {
        file: FileRead,
        chunks: Vec<Chunk>,
        warning: Option<String>,
    },
}

impl Work {
    /// Reads, hashes, and where the bytes are new, extracts and chunks one file.
    fn read(&self, job: &Job) -> Outcome {
        let (bytes, size, mtime_ns) = match extract::read_stable(&job.path, self.limits.max_bytes) {
            Ok(read) => read,
            Err(Skip(reason)) => return Outcome::Unread(reason),
        };
        let hash = extract::content_hash(&bytes);
        if job.indexed_hash.as_deref() == Some(hash.as_str()) {
            return Outcome::Touched { size, mtime_ns };
        }
        let file = FileRead {
            size,
            mtime_ns,
            hash,
        };
        if let Some((h, reason)) = &job.skipped_hash
            && *h == file.hash
        {
            return Outcome::Skipped {
                file,
                reason: reason.clone(),
            };
        }
        match extract::extract_bytes(&bytes, job.kind, &self.limits) {
            Err(Skip(reason)) => Outcome::Skipped { file, reason },
            Ok((pages, warning)) => {
                drop(bytes);
                let tokenizer = &self.tokenizer;
                let chunks = chunk_pages(&pages, self.chunk_tokens, &|t| tokenizer.count(t));
                Outcome::Chunked {
                    file,
                    chunks,
                    warning,
                }
            }
        }
    }
}

/// Reads `jobs` on `threads` threads, handing each outcome to `done` on this thread, in the
/// order they finish. Stops at `done`'s first error (the threads finish the file they hold).
fn run_jobs(
    jobs: Vec<Job>,
    threads: usize,
    work: &Arc<Work>,
    done: &mut dyn FnMut(Job, Outcome) -> Result<()>,
) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let threads = threads.clamp(1, jobs.len());
    let (job_tx, job_rx) = crossbeam_channel::unbounded::<Job>();
    for job in jobs {
        let _ = job_tx.send(job);
    }
    drop(job_tx);
    // Bounded: at most a few files' chunks wait for the writer.
    let (out_tx, out_rx) = crossbeam_channel::bounded::<(Job, Outcome)>(threads);
    std::thread::scope(|scope| {
        for i in 0..threads {
            let todo = job_rx.clone();
            let out_tx = out_tx.clone();
            let work = Arc::clone(work);
            let started = std::thread::Builder::new()
                .name(format!("reader-{i}"))
                .spawn_scoped(scope, move || {
                    for job in todo {
                        let outcome = work.read(&job);
                        if out_tx.send((job, outcome)).is_err() {
                            return;
                        }
                    }
                });
            if let Err(e) = started {
                return stop(&job_rx, out_rx, anyhow::Error::new(e))
                    .context("cannot start a thread to read the documents");
            }
        }
        drop(out_tx);
        while let Ok((job, outcome)) = out_rx.recv() {
            if let Err(e) = done(job, outcome) {
                return stop(&job_rx, out_rx, e);
            }
        }
        Ok(())
    })
}

/// Ends a pass early with `e`: the readers stop after the file they hold, as no job is left and
/// no one takes their outcomes any more.
fn stop(
    jobs: &crossbeam_channel::Receiver<Job>,
    outcomes: crossbeam_channel::Receiver<(Job, Outcome)>,
    e: anyhow::Error,
) -> Result<()> {
    while jobs.try_recv().is_ok() {}
    drop(outcomes);
    Err(e)
}

/// Another process (or another indexer in this one) is writing the folder's index. Callers
/// that only need to read can fall back to [`CorpusIndex::open`].
#[derive(Debug, thiserror::Error)]
#[error(
    "the index of {} is held by another running rapid-chat: close it, or wait for it to finish \
     indexing",
    .0.display()
)]
pub struct IndexHeld(pub PathBuf);

impl IndexHeld {
    /// Whether `e` is this error.
    pub fn is(e: &anyhow::Error) -> bool {
        e.downcast_ref::<Self>().is_some()
    }
}

/// Whether another process holds tantivy's writer lock file (an advisory lock).
fn try_lock(lock: &Path) -> Result<bool> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(lock)?;
    match file.try_lock() {
        Ok(()) => {
            file.unlock()?;
            Ok(false)
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}
