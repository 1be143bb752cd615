//! Cutting a document into chunks of at most `target` tokens of the model, at paragraph, then
//! line/sentence, then word boundaries (a run without any is halved). Each chunk's token count is
//! exact: it is counted on the chunk's own text.

use std::ops::Range;

use super::extract::Page;

/// A piece of a document, as indexed.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// 1-based page for PDFs.
    pub page: Option<u32>,
    /// Byte range in the document text (pages joined by [`PAGE_SEPARATOR`]).
    pub start: usize,
    pub end: usize,
    /// Position of the chunk in its document.
    pub order: usize,
    pub tokens: usize,
    pub text: String,
}

/// Between pages in the document text that chunk offsets refer to. For text files, which have
/// one page, offsets are byte offsets in the file (UTF-8 files without a BOM).
pub const PAGE_SEPARATOR: &str = "\n\n";

/// The document text that chunk offsets index into.
pub fn document_text(pages: &[Page]) -> String {
    pages
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join(PAGE_SEPARATOR)
}

/// Cuts `pages` into chunks of at most `target` tokens as counted by `count`.
///
/// Counting is most of an indexing pass's work, so text is counted about once: a page that may
/// fit is counted whole; a larger one is cut, by an estimate of its tokens from its bytes (the
/// ratio learned from this document's counts so far), into pieces at the coarsest boundaries, and
/// the pieces are packed into chunks that are counted exactly, giving back a piece where the
/// estimate was short.
pub fn chunk_pages(pages: &[Page], target: usize, count: &dyn Fn(&str) -> usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut offset = 0;
    let mut counter = Counter {
        count,
        ratio: Ratio::default(),
    };
    for page in pages {
        let whole = trim(&page.text, 0..page.text.len());
        for (range, tokens) in chunk_range(&page.text, whole, target, &mut counter) {
            // A long run without boundaries is halved untrimmed: a half may be only whitespace
            // (found by fuzzing: a run of vertical tabs).
            if page.text[range.clone()].trim().is_empty() {
                continue;
            }
            chunks.push(Chunk {
                page: page.number,
                start: offset + range.start,
                end: offset + range.end,
                order: chunks.len(),
                tokens,
                text: page.text[range].to_owned(),
            });
        }
        offset += page.text.len() + PAGE_SEPARATOR.len();
    }
    chunks
}

/// Tokens per byte of the document so far, from its exact counts (a prior of English text's
/// ratio, worth one short page, until then).
#[derive(Debug, Clone, Copy)]
struct Ratio {
    tokens: f64,
    bytes: f64,
}

impl Default for Ratio {
    fn default() -> Self {
        Self {
            tokens: 300.0,
            bytes: 1200.0,
        }
    }
}

impl Ratio {
    fn estimate(&self, bytes: usize) -> f64 {
        bytes as f64 * self.tokens / self.bytes
    }
}

/// The exact count, which also teaches the ratio.
struct Counter<'a> {
    count: &'a dyn Fn(&str) -> usize,
    ratio: Ratio,
}

impl Counter<'_> {
    fn exact(&mut self, text: &str) -> usize {
        let n = (self.count)(text);
        self.ratio.tokens += n as f64;
        self.ratio.bytes += text.len() as f64;
        n
    }
}

/// Packs are filled to this share of the target by the estimate: most then fit at the first
/// count.
const FILL: f64 = 1.0;

/// The deepest level of boundaries: below it a run is halved.
const HALVING: usize = 3;

/// A range cut at boundaries of `level` (0: the page; 1: paragraphs; 2: lines and sentences;
/// 3: words; deeper: halves).
#[derive(Debug, Clone)]
struct Piece {
    range: Range<usize>,
    level: usize,
}

/// Chunks of `range` of `text`, each with its exact count.
fn chunk_range(
    text: &str,
    range: Range<usize>,
    target: usize,
    counter: &mut Counter<'_>,
) -> Vec<(Range<usize>, usize)> {
    if range.is_empty() {
        return Vec::new();
    }
    // Likely to fit whole (a page of prose usually does): one count decides.
    if counter.ratio.estimate(range.len()) <= target as f64 * 1.2 {
        let n = counter.exact(&text[range.clone()]);
        if n <= target {
            return vec![(range, n)];
        }
    }
    let mut pieces = Vec::new();
    split_estimated(
        text,
        Piece { range, level: 0 },
        target,
        &counter.ratio,
        &mut pieces,
    );
    pack(text, pieces, target, counter)
}

/// Cuts `piece` at the coarsest boundaries below its level into pieces that each fit `target`
/// by the estimate.
fn split_estimated(text: &str, piece: Piece, target: usize, ratio: &Ratio, out: &mut Vec<Piece>) {
    if piece.range.is_empty() {
        return;
    }
    if piece.level > 0 && ratio.estimate(piece.range.len()) <= target as f64 * FILL {
        out.push(piece);
        return;
    }
    for part in finer(text, &piece) {
        split_estimated(text, part, target, ratio, out);
    }
}

/// `piece` cut at the next level of boundaries that cuts it (a single character stays whole).
fn finer(text: &str, piece: &Piece) -> Vec<Piece> {
    let mut level = piece.level;
    loop {
        level += 1;
        let range = piece.range.clone();
        let parts = match level {
            1 => split_at(text, range, is_paragraph_break),
            2 => split_at(text, range, is_sentence_break),
            3 => split_at(text, range, |t, i| t.as_bytes()[i].is_ascii_whitespace()),
            _ => halve(text, range),
        };
        if parts.len() > 1 || level > HALVING {
            return parts
                .into_iter()
                .map(|range| Piece {
                    range,
                    level: level.min(HALVING + 1),
                })
                .collect();
        }
    }
}

/// Joins consecutive pieces into chunks of at most `target` tokens: filled by the estimate,
/// then counted; a chunk over the target gives back its last piece, and a single piece over it
/// is cut finer.
fn pack(
    text: &str,
    pieces: Vec<Piece>,
    target: usize,
    counter: &mut Counter<'_>,
) -> Vec<(Range<usize>, usize)> {
    let mut queue: std::collections::VecDeque<Piece> = pieces.into();
    let mut out = Vec::new();
    while let Some(first) = queue.front() {
        let start = first.range.start;
        let mut j = 1;
        while j < queue.len()
            && counter.ratio.estimate(queue[j].range.end - start) <= target as f64 * FILL
        {
            j += 1;
        }
        loop {
            let range = start..queue[j - 1].range.end;
            let n = counter.exact(&text[range.clone()]);
            if n <= target {
                out.push((range, n));
                queue.drain(..j);
                break;
            }
            if j > 1 {
                j -= 1;
                continue;
            }
            let Some(piece) = queue.pop_front() else {
                break;
            };
            let parts = finer(text, &piece);
            if parts.len() <= 1 {
                // One character over the target: only a target below a character's tokens
                // does this; it goes as it is.
                out.push((piece.range, n));
                break;
            }
            for part in parts.into_iter().rev() {
                queue.push_front(part);
            }
            break;
        }
    }
    out
}

fn is_paragraph_break(text: &str, i: usize) -> bool {
    let b = text.as_bytes();
    b[i] == b'\n'
        && text[i + 1..]
            .trim_start_matches([' ', '\t', '\r'])
            .starts_with('\n')
}

fn is_sentence_break(text: &str, i: usize) -> bool {
    let b = text.as_bytes();
    b[i] == b'\n'
        || (b[i].is_ascii_whitespace()
            && i > 0
            && matches!(b[i - 1], b'.' | b'!' | b'?' | b';' | b':'))
}

/// Splits at every byte where `is_break` holds, trimming whitespace off the parts.
fn split_at(
    text: &str,
    range: Range<usize>,
    is_break: impl Fn(&str, usize) -> bool,
) -> Vec<Range<usize>> {
    let mut parts = Vec::new();
    let mut start = range.start;
    for i in range.clone() {
        if is_break(text, i) {
            let part = trim(text, start..i);
            if !part.is_empty() {
                parts.push(part);
            }
            start = i + 1;
        }
    }
    let last = trim(text, start..range.end);
    if !last.is_empty() {
        parts.push(last);
    }
    parts
}

/// Two halves at the char boundary nearest the middle.
fn halve(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    let mut mid = range.start + range.len() / 2;
    while mid > range.start && !text.is_char_boundary(mid) {
        mid -= 1;
    }
    if mid == range.start {
        mid = range.start
            + text[range.clone()]
                .chars()
                .next()
                .map_or(range.len(), char::len_utf8);
    }
    if mid >= range.end {
        return vec![range];
    }
    vec![range.start..mid, mid..range.end]
}

/// `range` without leading and trailing whitespace.
fn trim(text: &str, range: Range<usize>) -> Range<usize> {
    let s = &text[range.clone()];
    let start = range.start + (s.len() - s.trim_start().len());
    let end = range.end - (s.len() - s.trim_end().len());
    start..end.max(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    fn page(text: &str) -> Vec<Page> {
        vec![Page {
            number: None,
            text: text.to_owned(),
        }]
    }

    #[test]
    fn chunks_fit_cover_the_text_in_order_and_point_at_their_text() {
        let text = "One two three.\n\nFour five six seven. Eight nine.\n\nTen.\n".repeat(20);
        let pages = page(&text);
        let chunks = chunk_pages(&pages, 12, &words);
        assert!(chunks.len() > 5);
        let doc = document_text(&pages);
        let mut covered = 0;
        for (i, c) in chunks.iter().enumerate() {
            assert!(c.tokens <= 12, "chunk {i} has {} tokens", c.tokens);
            assert_eq!(c.order, i);
            assert_eq!(&doc[c.start..c.end], c.text);
            assert!(c.start >= covered);
            covered = c.end;
        }
        let total: usize = chunks.iter().map(|c| words(&c.text)).sum();
        assert_eq!(total, words(&text), "no word lost or doubled");
    }

    #[test]
    fn a_run_without_breaks_is_halved_until_it_fits() {
        let blob = "é".repeat(5000);
        let chars = |s: &str| s.chars().count();
        let chunks = chunk_pages(&page(&blob), 64, &chars);
        assert!(chunks.iter().all(|c| c.tokens <= 64 && c.tokens > 0));
        assert_eq!(chunks.iter().map(|c| c.tokens).sum::<usize>(), 5000);
    }

    #[test]
    fn pages_keep_their_numbers_and_offsets() {
        let pages = vec![
            Page {
                number: Some(1),
                text: "alpha beta".into(),
            },
            Page {
                number: Some(2),
                text: "gamma delta".into(),
            },
        ];
        let chunks = chunk_pages(&pages, 100, &words);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].page, Some(2));
        assert_eq!(
            &document_text(&pages)[chunks[1].start..chunks[1].end],
            "gamma delta"
        );
    }
}
