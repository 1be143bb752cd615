//! The documents: extraction (PDF, Markdown, text), token-budgeted chunks, the incremental
//! on-disk index (tantivy BM25 + manifest) and the folder watcher.

pub mod chunk;
pub mod extract;
pub mod index;
pub mod manifest;
pub mod watch;

pub use index::{CorpusIndex, Hit, Indexer, Progress, Report, Skipped};
