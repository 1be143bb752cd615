//! Text as PDF extractors give it, made fit for search and for the models: compatibility
//! characters in their plain form (NFKC: the ligature "ﬁ" is "fi", so a search for "file" finds
//! it), spacing accents that typesetting kept apart set on their letters ("´el´ement" is
//! "élément"), soft hyphens dropped, and words hyphenated at a line's end joined where the
//! document itself writes them whole.
//!
//! Text files are not normalised: their chunks' offsets are byte offsets in the file.

use std::collections::HashMap;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::compose;

/// The combining mark of a spacing accent that TeX-made PDFs set as a glyph of its own.
fn combining(accent: char) -> Option<char> {
    Some(match accent {
        '\u{00B4}' | '\u{02CA}' => '\u{0301}', // acute
        '`' | '\u{02CB}' => '\u{0300}',        // grave
        '\u{00A8}' => '\u{0308}',              // diaeresis
        '\u{02C6}' | '^' => '\u{0302}',        // circumflex
        '\u{02DC}' | '~' => '\u{0303}',        // tilde
        '\u{00AF}' | '\u{02C9}' => '\u{0304}', // macron
        '\u{02D8}' => '\u{0306}',              // breve
        '\u{02D9}' => '\u{0307}',              // dot above
        '\u{02DA}' => '\u{030A}',              // ring above
        '\u{02DD}' => '\u{030B}',              // double acute
        '\u{02C7}' => '\u{030C}',              // caron
        '\u{00B8}' => '\u{0327}',              // cedilla
        '\u{02DB}' => '\u{0328}',              // ogonek
        _ => return None,
    })
}

/// Accents whose ASCII stand-ins are code far more often than accents (`x`, a^b, ~/path): they
/// are composed only inside a word, between two letters.
fn ascii_stand_in(c: char) -> bool {
    matches!(c, '`' | '^' | '~')
}

/// Sets each spacing accent on the letter it belongs to, where Unicode has that letter: the
/// accent comes before its letter ("´e", as TeX places it), or after it ("c¸"). An accent that
/// makes no letter stays as it is.
pub fn compose_accents(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(mark) = combining(c) {
            let before = i.checked_sub(1).map(|j| chars[j]);
            let after = chars.get(i + 1).copied();
            let inside = before.is_some_and(char::is_alphabetic);
            let allowed = !ascii_stand_in(c) || inside;
            // Before its letter (the usual order).
            if allowed
                && let Some(letter) = after.filter(|l| l.is_alphabetic())
                && let Some(composed) = compose(letter, mark)
            {
                out.push(composed);
                i += 2;
                continue;
            }
            // After its letter: the letter is already out; replace it.
            if allowed
                && !ascii_stand_in(c)
                && let Some(letter) = before.filter(|l| l.is_alphabetic())
                && let Some(composed) = compose(letter, mark)
                && out.ends_with(letter)
            {
                out.pop();
                out.push(composed);
                i += 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// NFKC, except for the spacing accents left alone (NFKC would turn "´" into a space and a
/// combining accent that lands on the space), and without soft hyphens.
fn nfkc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    for c in text.chars() {
        if c == '\u{00AD}' {
            continue;
        }
        if combining(c).is_some() && !c.is_ascii() {
            out.extend(run.nfkc());
            run.clear();
            out.push(c);
        } else {
            run.push(c);
        }
    }
    out.extend(run.nfkc());
    out
}

/// The lower-case words of `pages` (hyphenated compounds whole) and how often each occurs, for
/// the hyphenation check.
type Words = HashMap<String, usize>;

fn vocabulary(pages: &[&mut String]) -> Words {
    let mut words = Words::new();
    let mut lower = String::new();
    for p in pages {
        for w in p.split(|c: char| !c.is_alphabetic() && c != '-') {
            let w = w.trim_matches('-');
            if w.len() < 2 {
                continue;
            }
            lower.clear();
            lower.extend(w.chars().flat_map(char::to_lowercase));
            match words.get_mut(lower.as_str()) {
                Some(n) => *n += 1,
                None => {
                    words.insert(lower.clone(), 1);
                }
            }
        }
    }
    words
}

/// Joins "exam-\nple" into "example" (the line break moves after the word) where the document
/// has "example" elsewhere; keeps "well-\nknown" as "well-known" where it has that instead, and
/// anything else as it was.
fn join_hyphenated(text: &str, words: &Words) -> String {
    if !text.contains("-\n") {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("-\n") {
        let (head, tail) = rest.split_at(at);
        let tail = &tail[2..];
        let first_start = head
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_alphabetic())
            .last()
            .map_or(head.len(), |(i, _)| i);
        let first = &head[first_start..];
        let indent = tail.len() - tail.trim_start_matches([' ', '\t']).len();
        let after = &tail[indent..];
        let second_len = after
            .char_indices()
            .find(|(_, c)| !c.is_alphabetic())
            .map_or(after.len(), |(i, _)| i);
        let second = &after[..second_len];
        out.push_str(head);
        let starts_lower = second.chars().next().is_some_and(char::is_lowercase);
        if !first.is_empty() && starts_lower {
            let joined = format!("{first}{second}").to_lowercase();
            let hyphened = format!("{first}-{second}").to_lowercase();
            if words.contains_key(&joined) {
                out.push_str(second);
                out.push('\n');
                rest = &after[second_len..];
                continue;
            }
            if words.contains_key(&hyphened) || is_compound(&hyphened, words) {
                out.push('-');
                out.push_str(second);
                out.push('\n');
                rest = &after[second_len..];
                continue;
            }
        }
        out.push_str("-\n");
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// Whether both halves of "a-b" are words found elsewhere in the document (beyond this line
/// end) and the whole is not: then the hyphen is more likely part of a compound than a break
/// inside one word.
fn is_compound(hyphened: &str, words: &Words) -> bool {
    let elsewhere = |w: &str| words.get(w).is_some_and(|&n| n >= 2);
    let mut parts = hyphened.splitn(2, '-');
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => {
            elsewhere(a) && elsewhere(b) && !words.contains_key(&format!("{a}{b}"))
        }
        _ => false,
    }
}

/// Normalises the pages of one extracted PDF in place (see the module's doc).
pub fn normalize_pages<'a>(pages: impl IntoIterator<Item = &'a mut String>) {
    let mut pages: Vec<&mut String> = pages.into_iter().collect();
    for p in pages.iter_mut() {
        **p = nfkc(&compose_accents(p));
    }
    // (Most pages have no line-end hyphen: no vocabulary for them.)
    if pages.iter().any(|p| p.contains("-\n")) {
        let words = vocabulary(&pages);
        for p in pages.iter_mut() {
            **p = join_hyphenated(p, &words);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(texts: &[&str]) -> Vec<String> {
        let mut pages: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        normalize_pages(pages.iter_mut());
        pages
    }

    #[test]
    fn ligatures_become_their_letters() {
        assert_eq!(
            normalized(&["the \u{FB01}le \u{FB02}ows, e\u{FB00}ort"]),
            ["the file flows, effort"]
        );
    }

    #[test]
    fn spacing_accents_are_set_on_their_letters() {
        assert_eq!(normalized(&["l\u{B4}el\u{B4}ement"]), ["lélément"]);
        assert_eq!(normalized(&["f\u{A8}uhren, gro\u{DF}"]), ["führen, groß"]);
        assert_eq!(normalized(&["syst`eme, \u{2C6}etre"]), ["système, être"]);
        assert_eq!(normalized(&["fran\u{B8}cais"]), ["français"]);
        // After its letter, as TeX sets a cedilla.
        assert_eq!(normalized(&["franc\u{B8}ais"]), ["français"]);
    }

    #[test]
    fn code_keeps_its_backquotes_tildes_and_carets() {
        assert_eq!(
            normalized(&["`apply` and ~/path and a^b"]),
            ["`apply` and ~/path and a^b"]
        );
    }

    #[test]
    fn an_accent_without_a_letter_to_make_stays() {
        assert_eq!(normalized(&["x\u{B4} = 3"]), ["x\u{B4} = 3"]);
    }

    #[test]
    fn soft_hyphens_are_dropped() {
        assert_eq!(normalized(&["hy\u{AD}phen"]), ["hyphen"]);
    }

    #[test]
    fn line_end_hyphens_join_where_the_document_has_the_word() {
        let out = normalized(&[
            "an exam-\nple of well-\nknown text; a reg-\n  ister",
            "another example, a well-known one, a register",
        ]);
        assert_eq!(out[0], "an example\n of well-known\n text; a register\n");
    }

    #[test]
    fn unknown_splits_are_left_as_they_were() {
        let out = normalized(&["the foo-\nbar thing", "nothing else"]);
        assert_eq!(out[0], "the foo-\nbar thing");
    }
}
