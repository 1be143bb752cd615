//! An answer as styled, wrapped lines: Markdown structure (headings, emphasis, code, lists) from
//! pulldown-cmark's source ranges, laid over each token's colour by kind. Styles and the hiding of
//! Markdown's markers work on source byte ranges, so every character shown stays with its token.

use pulldown_cmark::{Event, Options, Parser, Tag};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use unicode_width::UnicodeWidthChar;

use crate::speculative::{GenToken, TokenKind};

/// Colours of token kinds.
#[derive(Debug, Clone, Copy)]
pub struct Palette {
    pub accepted: Color,
    pub corrected: Color,
    pub bonus: Color,
}

/// The style of a token kind; `None` colours nothing (plain reading). Corrections stay
/// underlined and bonus tokens italic, so the kinds differ without colour too.
pub fn kind_style(kind: TokenKind, palette: Option<&Palette>) -> Style {
    let Some(p) = palette else {
        return Style::default();
    };
    match kind {
        TokenKind::Accepted => Style::default().fg(p.accepted),
        TokenKind::Corrected => Style::default()
            .fg(p.corrected)
            .add_modifier(Modifier::UNDERLINED),
        TokenKind::Bonus => Style::default().fg(p.bonus).add_modifier(Modifier::ITALIC),
        TokenKind::Target => Style::default(),
    }
}

/// Styled lines of `tokens`, wrapped at `width` columns.
pub fn render(tokens: &[GenToken], palette: Option<&Palette>, width: usize) -> Vec<Line<'static>> {
    // Control characters become U+FFFD first: visible, one cell wide, never sent to the terminal
    // (and wrapping counts the width the terminal shows).
    let texts: Vec<_> = tokens
        .iter()
        .map(|t| crate::safe_text::neutralize(&t.text))
        .collect();
    let text: String = texts.iter().map(|t| t.as_ref()).collect();
    let mut styles: Vec<Style> = Vec::with_capacity(text.len());
    for (t, shown) in tokens.iter().zip(&texts) {
        let s = kind_style(t.kind, palette);
        styles.extend(std::iter::repeat_n(s, shown.len()));
    }
    let mut hidden = vec![false; text.len()];
    overlay_markdown(&text, &mut styles, &mut hidden);
    wrap_styled(&text, &styles, &hidden, width)
}

/// Plain text (questions, notices) wrapped with one style.
pub fn plain(text: &str, style: Style, width: usize) -> Vec<Line<'static>> {
    let text = crate::safe_text::neutralize(text);
    wrap_styled(
        &text,
        &vec![style; text.len()],
        &vec![false; text.len()],
        width,
    )
}

/// Styles Markdown's structure and hides its markers (`**`, `_`, backticks, `#`, code fences).
fn overlay_markdown(text: &str, styles: &mut [Style], hidden: &mut [bool]) {
    let code = Style::default().fg(Color::Yellow);
    let hide = |r: std::ops::Range<usize>, hidden: &mut [bool]| {
        for h in &mut hidden[r.start.min(text.len())..r.end.min(text.len())] {
            *h = true;
        }
    };
    let apply = |r: std::ops::Range<usize>, styles: &mut [Style], f: &dyn Fn(Style) -> Style| {
        for s in &mut styles[r.start.min(text.len())..r.end.min(text.len())] {
            *s = f(*s);
        }
    };
    let run = |at: usize, c: u8| {
        text.as_bytes()[at..]
            .iter()
            .take_while(|&&b| b == c)
            .count()
    };
    for (event, range) in Parser::new_ext(text, Options::ENABLE_STRIKETHROUGH).into_offset_iter() {
        let (s, e) = (range.start, range.end);
        match event {
            Event::Start(Tag::Strong) => {
                apply(s..e, styles, &|st| st.add_modifier(Modifier::BOLD));
                if e >= s + 4 {
                    hide(s..s + 2, hidden);
                    hide(e - 2..e, hidden);
                }
            }
            Event::Start(Tag::Emphasis) => {
                apply(s..e, styles, &|st| st.add_modifier(Modifier::ITALIC));
                if e >= s + 2 {
                    hide(s..s + 1, hidden);
                    hide(e - 1..e, hidden);
                }
            }
            Event::Code(_) => {
                apply(s..e, styles, &|st| st.patch(code));
                let n = run(s, b'`');
                if e >= s + 2 * n {
                    hide(s..s + n, hidden);
                    hide(e - n..e, hidden);
                }
            }
            Event::Start(Tag::Heading { .. }) => {
                apply(s..e, styles, &|st| st.add_modifier(Modifier::BOLD));
                if text.as_bytes()[s] == b'#' {
                    let n = run(s, b'#');
                    hide(s..(s + n + run(s + n, b' ')).min(e), hidden);
                }
            }
            Event::Start(Tag::CodeBlock(kind)) => {
                apply(s..e, styles, &|st| st.patch(code));
                if matches!(kind, pulldown_cmark::CodeBlockKind::Fenced(_)) {
                    let block = &text[s..e];
                    hide(s..block.find('\n').map_or(e, |i| s + i), hidden);
                    let trimmed = block.trim_end_matches('\n');
                    if let Some(i) = trimmed.rfind('\n')
                        && trimmed[i + 1..].trim_start().starts_with("```")
                    {
                        hide(s + i + 1..s + trimmed.len(), hidden);
                    }
                }
            }
            Event::Start(Tag::Item) => {
                // The bullet or number of a list item.
                let end = text[s..e].find(char::is_whitespace).map_or(s, |i| s + i);
                apply(s..end, styles, &|st| st.add_modifier(Modifier::BOLD));
            }
            _ => {}
        }
    }
}

/// Wraps at word boundaries (hard-breaking words longer than the width), keeping styles; hidden
/// bytes (Markdown markers) are left out.
fn wrap_styled(text: &str, styles: &[Style], hidden: &[bool], width: usize) -> Vec<Line<'static>> {
    let mut w = Wrapper {
        width: width.max(8),
        ..Wrapper::default()
    };
    let mut offset = 0;
    for raw in text.split('\n') {
        for (i, c) in raw.char_indices() {
            let c = if c == '\t' { ' ' } else { c };
            if c.is_control() || hidden.get(offset + i).copied().unwrap_or(false) {
                continue;
            }
            w.push(c, styles.get(offset + i).copied().unwrap_or_default());
        }
        w.end_line();
        offset += raw.len() + 1;
    }
    w.lines
}

/// Lines being filled: the current row and the word being read.
#[derive(Default)]
struct Wrapper {
    width: usize,
    lines: Vec<Line<'static>>,
    row: Vec<(char, Style)>,
    row_width: usize,
    word: Vec<(char, Style)>,
    word_width: usize,
}

impl Wrapper {
    fn push(&mut self, c: char, style: Style) {
        // A space after a word ends it (the space starts the next word).
        if c == ' ' && self.word.last().is_some_and(|(p, _)| *p != ' ') {
            self.flush_word();
        }
        self.word.push((c, style));
        self.word_width += c.width().unwrap_or(0);
    }

    fn flush_word(&mut self) {
        if self.row_width + self.word_width > self.width && self.row_width > 0 {
            self.break_row();
            // A new line does not start with the space that ended the last.
            let spaces = self.word.iter().take_while(|(c, _)| *c == ' ').count();
            self.word.drain(..spaces);
            self.word_width -= spaces;
        }
        for (c, s) in std::mem::take(&mut self.word) {
            let cw = c.width().unwrap_or(0);
            if self.row_width + cw > self.width {
                self.break_row();
            }
            self.row.push((c, s));
            self.row_width += cw;
        }
        self.word_width = 0;
    }

    fn break_row(&mut self) {
        self.lines.push(to_line(&self.row));
        self.row.clear();
        self.row_width = 0;
    }

    fn end_line(&mut self) {
        self.flush_word();
        self.break_row();
    }
}

fn to_line(row: &[(char, Style)]) -> Line<'static> {
    let mut spans: Vec<Span<'static>> = Vec::new();
    let mut current = String::new();
    let mut style = row.first().map(|(_, s)| *s).unwrap_or_default();
    for &(c, s) in row {
        if s != style && !current.is_empty() {
            spans.push(Span::styled(std::mem::take(&mut current), style));
        }
        style = s;
        current.push(c);
    }
    if !current.is_empty() {
        spans.push(Span::styled(current, style));
    }
    Line::from(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(text: &str, kind: TokenKind) -> GenToken {
        GenToken {
            id: 0,
            text: text.into(),
            kind,
            margin: 1.0,
        }
    }

    #[test]
    fn wraps_at_words_and_keeps_every_character() {
        let tokens = [tok(
            "The quick brown fox jumps over the lazy dog",
            TokenKind::Target,
        )];
        let lines = render(&tokens, None, 12);
        let texts: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        assert!(texts.iter().all(|l| l.chars().count() <= 12), "{texts:?}");
        assert_eq!(
            texts
                .join(" ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            "The quick brown fox jumps over the lazy dog"
        );
    }

    #[test]
    fn kinds_and_markdown_both_show() {
        let palette = Palette {
            accepted: Color::Green,
            corrected: Color::Red,
            bonus: Color::Cyan,
        };
        let tokens = [
            tok("Use **bold", TokenKind::Accepted),
            tok("** and `code`", TokenKind::Corrected),
        ];
        let lines = render(&tokens, Some(&palette), 80);
        let spans = &lines[0].spans;
        assert_eq!(lines[0].to_string(), "Use bold and code", "markers hidden");
        let bold = spans
            .iter()
            .find(|s| s.content.contains("bold"))
            .expect("bold span");
        assert!(bold.style.add_modifier.contains(Modifier::BOLD));
        assert_eq!(bold.style.fg, Some(Color::Green));
        let code = spans
            .iter()
            .find(|s| s.content.contains("code"))
            .expect("code span");
        assert!(
            code.style.add_modifier.contains(Modifier::UNDERLINED),
            "a correction stays underlined"
        );
    }
}
