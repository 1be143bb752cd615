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
pub fn chunk_pages(pages: &[Page], target: usize, count: &dyn Fn(&str) -> usize) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut offset = 0;
    for page in pages {
        let mut units = Vec::new();
        split_to_fit(
            &page.text,
            trim(&page.text, 0..page.text.len()),
            0,
            target,
            count,
            &mut units,
        );
        for range in pack(&page.text, &units, target, count) {
            // A long run without boundaries is halved untrimmed: a half may be only whitespace
            // (found by fuzzing: a run of vertical tabs).
            if page.text[range.clone()].trim().is_empty() {
                continue;
            }
            let text = page.text[range.clone()].to_owned();
            let tokens = count(&text);
            chunks.push(Chunk {
                page: page.number,
                start: offset + range.start,
                end: offset + range.end,
                order: chunks.len(),
                tokens,
                text,
            });
        }
        offset += page.text.len() + PAGE_SEPARATOR.len();
    }
    chunks
}

/// A range of text that fits in a chunk, with its token count.
struct Unit {
    range: Range<usize>,
    tokens: usize,
}

/// Splits `range` of `text` into units of at most `target` tokens, at the coarsest boundaries
/// that make them fit.
fn split_to_fit(
    text: &str,
    range: Range<usize>,
    level: usize,
    target: usize,
    count: &dyn Fn(&str) -> usize,
    out: &mut Vec<Unit>,
) {
    if range.is_empty() {
        return;
    }
    let tokens = count(&text[range.clone()]);
    if tokens <= target {
        out.push(Unit { range, tokens });
        return;
    }
    let parts = match level {
        0 => split_at(text, range.clone(), is_paragraph_break),
        1 => split_at(text, range.clone(), is_sentence_break),
        2 => split_at(text, range.clone(), |t, i| {
            t.as_bytes()[i].is_ascii_whitespace()
        }),
        _ => halve(text, range.clone()),
    };
    if parts.len() <= 1 {
        split_to_fit(text, range, level + 1, target, count, out);
    } else {
        for part in parts {
            split_to_fit(text, part, (level + 1).min(3), target, count, out);
        }
    }
}

/// Joins consecutive units into chunks of at most `target` tokens.
fn pack(
    text: &str,
    units: &[Unit],
    target: usize,
    count: &dyn Fn(&str) -> usize,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < units.len() {
        let mut j = i + 1;
        let mut estimate = units[i].tokens;
        while j < units.len() && estimate + 1 + units[j].tokens <= target {
            estimate += 1 + units[j].tokens;
            j += 1;
        }
        // The estimate is close but not exact (merges across the joins): check, and give back
        // units until the real count fits. A single unit always fits.
        while j > i + 1 && count(&text[units[i].range.start..units[j - 1].range.end]) > target {
            j -= 1;
        }
        out.push(units[i].range.start..units[j - 1].range.end);
        i = j;
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
