//! Text from documents, file names and the model is untrusted: before it reaches a terminal,
//! control characters (C0, DEL, C1: escape sequences start with them) and bidirectional
//! overrides (which reorder what a line shows) are replaced by U+FFFD, so a document cannot
//! retitle the window, move the cursor, clear the screen or write outside its pane. Newlines
//! are kept where text is multi-line; tabs become spaces.

use std::borrow::Cow;

/// What replaces a neutralized character.
pub const REPLACEMENT: char = '\u{FFFD}';

/// Whether `c` must not reach a terminal as is.
pub fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with newlines kept, tabs as spaces and every other unsafe character replaced.
pub fn neutralize(text: &str) -> Cow<'_, str> {
    clean(text, true)
}

/// `text` on one line: newlines replaced too (file names, status lines).
pub fn neutralize_line(text: &str) -> Cow<'_, str> {
    clean(text, false)
}

fn clean(text: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                '\n' if keep_newlines => '\n',
                '\t' => ' ',
                c if is_unsafe(c) => REPLACEMENT,
                c => c,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_overrides_are_neutralized() {
        let hostile = "a\x1b]0;pwned\x07b\x1b[2J\u{9b}31m\r\x08c\u{202E}d\te\nf";
        let out = neutralize(hostile);
        assert!(!out.chars().any(|c| is_unsafe(c) && c != '\n'));
        assert_eq!(
            out,
            "a\u{FFFD}]0;pwned\u{FFFD}b\u{FFFD}[2J\u{FFFD}31m\u{FFFD}\u{FFFD}c\u{FFFD}d e\nf"
        );
        assert_eq!(neutralize_line("x\ny"), "x\u{FFFD}y");
        assert!(matches!(
            neutralize("plain text, ünïcode ✓"),
            Cow::Borrowed(_)
        ));
    }
}
