//! The properties the fuzz targets (`fuzz/`, cargo fuzz) check on arbitrary input, shared with
//! the test that replays the saved corpus of interesting inputs (`tests/fuzz_replay.rs`), so a
//! crash found once stays fixed. Each function panics when a property fails.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::corpus::chunk::{chunk_pages, document_text};
use crate::corpus::extract::{self, Kind, Limits, Page, PdfReader};
use crate::speculative::{GenToken, TokenKind};

/// A stand-in tokenizer: deterministic, grows with the text (words plus a token per 16 bytes).
fn count(s: &str) -> usize {
    s.split_whitespace().count() + s.len() / 16
}

/// The chunker on pages cut from `data` (form feeds separate pages): chunks cover trimmed,
/// non-empty text at their offsets, in order, each within the token budget.
pub fn chunker(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let target = 4 + usize::from(first % 64);
    let text = String::from_utf8_lossy(rest);
    let pages: Vec<Page> = text
        .split('\u{c}')
        .enumerate()
        .map(|(i, t)| Page {
            number: u32::try_from(i + 1).ok(),
            text: t.to_owned(),
        })
        .collect();
    let chunks = chunk_pages(&pages, target, &count);
    let doc = document_text(&pages);
    let mut last_end = 0;
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.order, i, "chunks are numbered in order");
        assert!(c.start >= last_end && c.start < c.end && c.end <= doc.len());
        assert_eq!(
            &doc[c.start..c.end],
            c.text,
            "offsets index the document text"
        );
        assert!(!c.text.trim().is_empty(), "no empty chunk");
        assert_eq!(c.tokens, count(&c.text), "token counts are exact");
        last_end = c.end;
    }
}

/// Text decoding then chunking: binary is refused, UTF-8 kept as is, anything else decoded
/// byte for byte as Latin-1 with a warning.
pub fn text_extraction(data: &[u8]) {
    match extract::decode_text(data) {
        Err(skip) => assert!(!skip.0.is_empty()),
        Ok((text, warning)) => {
            let body = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
            match std::str::from_utf8(body) {
                Ok(s) => {
                    assert_eq!(text, s);
                    assert!(warning.is_none());
                }
                Err(_) => {
                    assert_eq!(text.chars().count(), body.len());
                    assert!(warning.is_some());
                }
            }
            let mut input = vec![16u8];
            input.extend_from_slice(text.as_bytes());
            chunker(&input);
        }
    }
}

/// The answer renderer on model output cut into tokens of every kind at arbitrary points:
/// no panic, and no line wider than the width (which the renderer takes as at least 8).
pub fn markdown(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let width = 1 + usize::from(first % 100);
    let text = String::from_utf8_lossy(rest);
    let kinds = [
        TokenKind::Accepted,
        TokenKind::Corrected,
        TokenKind::Bonus,
        TokenKind::Target,
    ];
    let mut tokens = Vec::new();
    let mut piece = String::new();
    for (i, c) in text.chars().enumerate() {
        piece.push(c);
        if (i * 7 + usize::from(first)) % 5 == 0 {
            tokens.push(GenToken {
                id: 0,
                text: std::mem::take(&mut piece),
                kind: kinds[i % 4],
                margin: 1.0,
            });
        }
    }
    tokens.push(GenToken {
        id: 0,
        text: piece,
        kind: TokenKind::Target,
        margin: 1.0,
    });
    for line in crate::tui::markdown::render(&tokens, None, width) {
        assert!(
            line.width() <= width.max(8),
            "line of width {} over {width}",
            line.width()
        );
    }
}

/// The PDF path as indexing runs it: each reader in a process of its own, under a time limit.
/// Whatever the bytes, a result or a reason comes back in time, and the indexer never crashes.
pub fn pdf(data: &[u8], worker: &Path) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let path = dir.path().join("fuzz.pdf");
    std::fs::write(&path, data).expect("temporary file");
    let limits = Limits {
        max_bytes: 64 << 20,
        pdf_timeout: Duration::from_secs(5),
        exe: worker.to_path_buf(),
        pdf: extract::find_pdftotext()
            .map(PdfReader::Pdftotext)
            .into_iter()
            .chain([PdfReader::Builtin])
            .collect(),
    };
    let started = Instant::now();
    match extract::extract(&path, Kind::Pdf, &limits) {
        Ok(x) => assert!(x.pages.iter().any(|p| !p.text.trim().is_empty())),
        Err(skip) => assert!(!skip.0.is_empty()),
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the time limit held (5 s for each reader)"
    );
}
