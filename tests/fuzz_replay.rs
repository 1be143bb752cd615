//! Replays the fuzzers' saved corpus of interesting inputs (`fuzz/corpus/TARGET/`, kept by
//! cargo fuzz and minimized) through the same property checks, on the stable toolchain: what a
//! fuzz run once found stays fixed. See fuzz/README.md for running the fuzzers.

mod common;

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no saved inputs in {}", dir.display());
    files
}

fn replay(target: &str, check: &dyn Fn(&[u8])) {
    for path in inputs(target) {
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        assert!(result.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn the_chunker_corpus_replays() {
    replay("chunker", &rapid_chat::fuzzing::chunker);
}

#[test]
fn the_text_extraction_corpus_replays() {
    replay("text_extraction", &rapid_chat::fuzzing::text_extraction);
}

#[test]
fn the_markdown_corpus_replays() {
    replay("markdown", &rapid_chat::fuzzing::markdown);
}

#[test]
fn the_pdf_corpus_replays_through_the_contained_worker() {
    let worker = common::exe();
    replay("pdf", &|data| rapid_chat::fuzzing::pdf(data, &worker));
}
