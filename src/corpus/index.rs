//! The on-disk index of one corpus folder: tantivy (BM25 over chunk text, with snippets) plus the
//! manifest, in `<cache>/indexes/<hash of the folder path>/`. [`Indexer`] keeps it current;
//! [`CorpusIndex`] searches it and needs no lock, so it works beside a running indexer.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{
    Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
    Value,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::tokenizer::{
    AsciiFoldingFilter, Language, LowerCaser, RemoveLongFilter, SimpleTokenizer, Stemmer,
    StopWordFilter, TextAnalyzer,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term, doc};

use super::chunk::{Chunk, chunk_pages};
use super::extract::{self, Kind, Limits, Skip};
use super::manifest::{FileEntry, Manifest};
use crate::config::CorpusConfig;
use crate::llm::Tokenizer;

#[derive(Clone, Copy)]
struct Fields {
    path: Field,
    page: Field,
    start: Field,
    end: Field,
    order: Field,
    tokens: Field,
    text: Field,
}

/// The analyzer of chunk text and queries: English, stemmed, without the words that carry no
/// meaning in a question ("what is the ...").
const ANALYZER: &str = "rapid_en";

const STOP_WORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "but", "by", "can", "could", "did", "do",
    "does", "for", "from", "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "me",
    "my", "no", "not", "of", "on", "or", "our", "should", "such", "that", "the", "their", "then",
    "there", "these", "they", "this", "to", "was", "we", "what", "when", "where", "which", "who",
    "why", "will", "with", "would", "you", "your",
];

fn register_analyzer(index: &Index) {
    let analyzer = TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(40))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .filter(StopWordFilter::remove(
            STOP_WORDS.iter().map(|w| (*w).to_owned()),
        ))
        .filter(Stemmer::new(Language::English))
        .build();
    index.tokenizers().register(ANALYZER, analyzer);
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text_options = TextOptions::default().set_stored().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        path: b.add_text_field("path", STRING | STORED),
        page: b.add_u64_field("page", STORED),
        start: b.add_u64_field("start", STORED),
        end: b.add_u64_field("end", STORED),
        order: b.add_u64_field("order", STORED | INDEXED),
        tokens: b.add_u64_field("tokens", STORED),
        text: b.add_text_field("text", text_options),
    };
    (b.build(), fields)
}

/// Where the index of `folder` lives under `indexes_dir`.
pub fn index_dir(indexes_dir: &Path, folder: &Path) -> PathBuf {
    let key = extract::content_hash(folder.to_string_lossy().as_bytes());
    indexes_dir.join(&key[..16])
}

/// The corpus folder, checked and made absolute.
pub fn corpus_root(folder: &Path) -> Result<PathBuf> {
    let root = std::fs::canonicalize(folder).with_context(|| {
        format!(
            "the folder {} does not exist or cannot be opened",
            folder.display()
        )
    })?;
    if !root.is_dir() {
        bail!(
            "{} is not a folder: give the folder of documents to index",
            folder.display()
        );
    }
    Ok(root)
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    pub path: String,
    pub page: Option<u32>,
    pub start: usize,
    pub end: usize,
    pub score: f32,
    /// The best fragment, with query terms between `**`.
    pub snippet: String,
    #[serde(skip)]
    pub order: usize,
    #[serde(skip)]
    pub tokens: usize,
    #[serde(skip)]
    pub text: String,
}

/// Read access to a folder's index (cheap to clone: clones share the reader).
#[derive(Clone)]
pub struct CorpusIndex {
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

impl CorpusIndex {
    /// Opens the index of `root` (as given by [`corpus_root`]); it must have been built.
    pub fn open(indexes_dir: &Path, root: &Path) -> Result<Self> {
        let dir = index_dir(indexes_dir, root).join("tantivy");
        let index = Index::open_in_dir(&dir).with_context(|| {
            format!(
                "{} has no index yet: run `rapid-chat index {}`",
                root.display(),
                root.display()
            )
        })?;
        Self::from_index(index)
    }

    fn from_index(index: Index) -> Result<Self> {
        register_analyzer(&index);
        let (_, fields) = schema();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            index,
            reader,
            fields,
        })
    }

    /// Sees the latest committed state.
    pub fn reload(&self) -> Result<()> {
        Ok(self.reader.reload()?)
    }

    /// Number of chunks in the index.
    pub fn num_chunks(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Every chunk, in document order (path, then position), with score 0 and no snippet.
    pub fn all_chunks(&self) -> Result<Vec<Hit>> {
        let searcher = self.reader.searcher();
        let addresses = searcher.search(
            &tantivy::query::AllQuery,
            &tantivy::collector::DocSetCollector,
        )?;
        let mut hits = Vec::with_capacity(addresses.len());
        for address in addresses {
            let doc: TantivyDocument = searcher.doc(address)?;
            hits.push(self.hit(&doc, 0.0, String::new()));
        }
        hits.sort_by(|a, b| (a.path.as_str(), a.order).cmp(&(b.path.as_str(), b.order)));
        Ok(hits)
    }

    fn hit(&self, doc: &TantivyDocument, score: f32, snippet: String) -> Hit {
        let u = |f: Field| doc.get_first(f).and_then(|v| v.as_u64()).unwrap_or(0);
        let s = |f: Field| {
            doc.get_first(f)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let page = u(self.fields.page);
        Hit {
            path: s(self.fields.path),
            page: (page > 0).then(|| u32::try_from(page).unwrap_or(u32::MAX)),
            start: usize::try_from(u(self.fields.start)).unwrap_or(usize::MAX),
            end: usize::try_from(u(self.fields.end)).unwrap_or(usize::MAX),
            score,
            snippet,
            order: usize::try_from(u(self.fields.order)).unwrap_or(usize::MAX),
            tokens: usize::try_from(u(self.fields.tokens)).unwrap_or(usize::MAX),
            text: s(self.fields.text),
        }
    }

    /// The `top` best chunks for `query` by BM25, best first. Any text is a valid query:
    /// syntax the query language would reject is read as plain words.
    pub fn search(&self, query: &str, top: usize) -> Result<Vec<Hit>> {
        self.ranked(query, top, true)
    }

    /// Like [`Self::search`] without snippets (cheaper, for building prompts).
    pub fn rank(&self, query: &str, top: usize) -> Result<Vec<Hit>> {
        self.ranked(query, top, false)
    }

    fn ranked(&self, query: &str, top: usize, snippets_wanted: bool) -> Result<Vec<Hit>> {
        let searcher = self.reader.searcher();
        let parser = QueryParser::for_index(&self.index, vec![self.fields.text]);
        let cleaned: String = query
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect();
        let (query, _) = parser.parse_query_lenient(&cleaned);
        let top_docs =
            searcher.search(&query, &TopDocs::with_limit(top.max(1)).order_by_score())?;
        let mut snippets = SnippetGenerator::create(&searcher, &*query, self.fields.text)?;
        snippets.set_max_num_chars(240);
        let mut hits = Vec::with_capacity(top_docs.len());
        for (score, address) in top_docs {
            let doc: TantivyDocument = searcher.doc(address)?;
            if !snippets_wanted {
                hits.push(self.hit(&doc, score, String::new()));
                continue;
            }
            let snippet = snippets.snippet_from_doc(&doc);
            let mut marked = String::new();
            let mut from = 0;
            for r in snippet.highlighted() {
                marked.push_str(&snippet.fragment()[from..r.start]);
                marked.push_str("**");
                marked.push_str(&snippet.fragment()[r.clone()]);
                marked.push_str("**");
                from = r.end;
            }
            marked.push_str(&snippet.fragment()[from..]);
            let snippet = marked.split_whitespace().collect::<Vec<_>>().join(" ");
            hits.push(self.hit(&doc, score, snippet));
        }
        Ok(hits)
    }
}

/// A file that was not indexed, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

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
    /// Bytes of documents read and chunks made in this pass.
    #[serde(skip)]
    pub bytes_read: u64,
    #[serde(skip)]
    pub chunks_made: usize,
}

/// Progress of a pass: `done` of `total` files considered, the current one.
#[derive(Debug, Clone)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
    pub path: String,
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
    tokenizer: Arc<Tokenizer>,
    chunk_tokens: usize,
    text_extensions: Vec<String>,
    limits: Limits,
}

impl Indexer {
    /// Opens (or creates, or rebuilds when its format or settings changed) the index of `folder`.
    pub fn open(
        indexes_dir: &Path,
        folder: &Path,
        tokenizer: Arc<Tokenizer>,
        config: &crate::config::Config,
        pdf_worker: PathBuf,
    ) -> Result<Self> {
        let root = corpus_root(folder)?;
        let dir = index_dir(indexes_dir, &root);
        let tantivy_dir = dir.join("tantivy");
        let corpus: &CorpusConfig = &config.corpus;
        let fingerprint = tokenizer.fingerprint();
        let manifest = Manifest::load(&dir.join("manifest.json"))
            .filter(|m| m.compatible(&fingerprint, corpus.chunk_tokens));
        let (schema, fields) = schema();
        let (index, manifest) = match (manifest, Index::open_in_dir(&tantivy_dir)) {
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
        Ok(Self {
            root,
            dir,
            index,
            writer,
            fields,
            manifest,
            tokenizer,
            chunk_tokens: corpus.chunk_tokens,
            text_extensions: config.text_extensions(),
            limits: Limits {
                max_bytes: corpus.max_file_mib << 20,
                pdf_timeout: Duration::from_secs(corpus.pdf_timeout_s),
                pdf_worker,
            },
        })
    }

    /// The corpus folder (absolute).
    pub fn root(&self) -> &Path {
        &self.root
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
        let (files, mut skipped) = walk(&self.root, &self.text_extensions);
        let mut report = Report::default();
        let seen: BTreeSet<&str> = files.iter().map(|(rel, _, _)| rel.as_str()).collect();
        let gone: Vec<String> = self
            .manifest
            .files
            .keys()
            .filter(|k| !seen.contains(String::as_str(k)))
            .cloned()
            .collect();
        for rel in gone {
            self.writer
                .delete_term(Term::from_field_text(self.fields.path, &rel));
            self.manifest.files.remove(&rel);
            report.removed.push(rel);
        }
        let total = files.len();
        let mut last_commit = std::time::Instant::now();
        for (i, (rel, path, kind)) in files.iter().enumerate() {
            progress(&Progress {
                done: i,
                total,
                path: rel.clone(),
            });
            // Commit now and then, so that searches see a long first pass as it goes.
            if last_commit.elapsed() > Duration::from_secs(2) {
                self.commit()?;
                last_commit = std::time::Instant::now();
            }
            match self.update_file(rel, path, *kind, &mut report) {
                Ok(()) => {}
                Err(reason) => {
                    tracing::warn!(path = %rel, reason = %reason, "skipped");
                    // Stale chunks of a file that can no longer be read would answer for it,
                    // and so would the part of a file whose chunks could not all be added.
                    self.writer
                        .delete_term(Term::from_field_text(self.fields.path, rel));
                    if self.manifest.files.remove(rel).is_some() {
                        report.removed.push(rel.clone());
                    }
                    skipped.push(Skipped {
                        path: rel.clone(),
                        reason: reason.0,
                    });
                }
            }
        }
        progress(&Progress {
            done: total,
            total,
            path: String::new(),
        });
        self.commit()?;
        for s in &skipped {
            if !files.iter().any(|(rel, _, _)| rel == &s.path) {
                tracing::warn!(path = %s.path, reason = %s.reason, "skipped");
            }
        }
        report.files_removed = report.removed.len();
        report.files_indexed = report.indexed.len();
        report.files_skipped = skipped;
        report.chunks = self.manifest.files.values().map(|f| f.chunks as u64).sum();
        Ok(report)
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

    fn update_file(
        &mut self,
        rel: &str,
        path: &Path,
        kind: Kind,
        report: &mut Report,
    ) -> Result<(), Skip> {
        if let Some(entry) = self.manifest.files.get(rel) {
            let meta = std::fs::metadata(path).map_err(|e| Skip(format!("cannot read: {e}")))?;
            if extract::stat(&meta) == (entry.size, entry.mtime_ns) {
                report.files_unchanged += 1;
                return Ok(());
            }
        }
        let extracted = extract::extract(path, kind, &self.limits)?;
        report.bytes_read += extracted.size;
        if let Some(entry) = self.manifest.files.get_mut(rel)
            && entry.hash == extracted.hash
        {
            // Touched, not changed.
            entry.size = extracted.size;
            entry.mtime_ns = extracted.mtime_ns;
            report.files_unchanged += 1;
            return Ok(());
        }
        if let Some(w) = &extracted.warning {
            report.warnings.push(Skipped {
                path: rel.to_owned(),
                reason: w.clone(),
            });
        }
        let tokenizer = Arc::clone(&self.tokenizer);
        let chunks = chunk_pages(&extracted.pages, self.chunk_tokens, &|t| tokenizer.count(t));
        self.writer
            .delete_term(Term::from_field_text(self.fields.path, rel));
        for c in &chunks {
            self.add_chunk(rel, c)
                .map_err(|e| Skip(format!("cannot index: {e}")))?;
        }
        report.chunks_made += chunks.len();
        self.manifest.files.insert(
            rel.to_owned(),
            FileEntry {
                size: extracted.size,
                mtime_ns: extracted.mtime_ns,
                hash: extracted.hash,
                chunks: chunks.len(),
            },
        );
        report.indexed.push(rel.to_owned());
        Ok(())
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

/// Every indexable file under `root` as (relative path, path, kind), sorted, and the entries
/// skipped on the way (symlinks out of the folder, loops, unreadable folders). Hidden folders
/// and files are not entered.
pub fn walk(
    root: &Path,
    text_extensions: &[String],
) -> (Vec<(String, PathBuf, Kind)>, Vec<Skipped>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let rel_of = |p: &Path| {
        p.strip_prefix(root)
            .unwrap_or(p)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    };
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().map(rel_of).unwrap_or_default();
                skipped.push(Skipped {
                    path,
                    reason: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let path = entry.path();
        let Some(kind) = extract::kind_of(path, text_extensions) else {
            continue;
        };
        let rel = rel_of(path);
        let ft = entry.file_type();
        if ft.is_symlink() {
            match std::fs::canonicalize(path) {
                Ok(target) if !target.starts_with(root) => {
                    skipped.push(Skipped {
                        path: rel,
                        reason: "symlink to a file outside the folder (not followed)".into(),
                    });
                    continue;
                }
                Ok(target) if !target.is_file() => {
                    skipped.push(Skipped {
                        path: rel,
                        reason: "symlink to something other than a file (not followed)".into(),
                    });
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    skipped.push(Skipped {
                        path: rel,
                        reason: format!("broken or looping symlink: {e}"),
                    });
                    continue;
                }
            }
        } else if !ft.is_file() {
            skipped.push(Skipped {
                path: rel,
                reason: "not a regular file".into(),
            });
            continue;
        }
        files.push((rel, path.to_path_buf(), kind));
    }
    (files, skipped)
}
