//! The on-disk index of one corpus folder, read side: tantivy's schema and analyzer (BM25 over
//! chunk text, with snippets), where the index lives (`<cache>/indexes/<hash of the folder
//! path>/`), and [`CorpusIndex`], which searches it and needs no lock, so it works beside a
//! running [`super::indexer::Indexer`].

use std::path::{Path, PathBuf};

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
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyDocument};

use super::extract;

#[derive(Clone, Copy)]
pub(super) struct Fields {
    pub(super) path: Field,
    pub(super) page: Field,
    pub(super) start: Field,
    pub(super) end: Field,
    pub(super) order: Field,
    pub(super) tokens: Field,
    pub(super) text: Field,
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

pub(super) fn register_analyzer(index: &Index) {
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

pub(super) fn schema() -> (Schema, Fields) {
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

    pub(super) fn from_index(index: Index) -> Result<Self> {
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
