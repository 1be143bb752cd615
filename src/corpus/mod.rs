//! The documents: extraction (PDF, Markdown, text) and its normalisation, token-budgeted chunks,
//! the incremental on-disk index (tantivy BM25 + manifest: its read side in `index`, the pass
//! that keeps it current in `indexer`), the folder walk and the folder watcher.

pub mod chunk;
pub mod extract;
pub mod index;
pub mod indexer;
pub mod manifest;
pub mod normalize;
pub mod walk;
pub mod watch;

pub use index::{CorpusIndex, Hit};
pub use indexer::{Indexer, Progress, Report, Skipped};
