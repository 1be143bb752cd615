//! The question being typed: its text, the cursor, the edits a key makes, and the earlier
//! questions recalled with Up and Down. Knows nothing of keys' bindings; the app decides what
//! a key means and calls these.

use crossterm::event::KeyCode;

/// The input line and the history it recalls from.
#[derive(Debug, Clone, Default)]
pub struct Editor {
    text: String,
    /// Byte offset of the cursor in `text`.
    cursor: usize,
    history: Vec<String>,
    /// Which history question is shown; `None` while typing a new one.
    recalled: Option<usize>,
}

/// Which way to walk the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recall {
    Older,
    Newer,
}

impl Editor {
    /// An empty input that recalls `history`, oldest first.
    pub fn new(history: Vec<String>) -> Self {
        Self {
            history,
            ..Self::default()
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Byte offset of the cursor in [`Self::text`].
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Inserts typed or pasted text at the cursor. Control characters are dropped (they would
    /// act on the terminal when drawn) and line ends become `\n`, as pastes bring `\r\n` or `\r`.
    pub fn insert(&mut self, text: &str) {
        let clean: String = text
            .replace("\r\n", "\n")
            .replace('\r', "\n")
            .chars()
            .filter(|c| *c == '\n' || !c.is_control())
            .collect();
        self.text.insert_str(self.cursor, &clean);
        self.cursor += clean.len();
    }

    /// The edit an unbound key makes: deleting and moving the cursor. Other keys do nothing.
    pub fn edit(&mut self, code: KeyCode) {
        match code {
            KeyCode::Backspace => {
                if let Some(c) = self.text[..self.cursor].chars().next_back() {
                    self.cursor -= c.len_utf8();
                    self.text.remove(self.cursor);
                }
            }
            KeyCode::Delete if self.cursor < self.text.len() => {
                self.text.remove(self.cursor);
            }
            KeyCode::Left => {
                if let Some(c) = self.text[..self.cursor].chars().next_back() {
                    self.cursor -= c.len_utf8();
                }
            }
            KeyCode::Right => {
                if let Some(c) = self.text[self.cursor..].chars().next() {
                    self.cursor += c.len_utf8();
                }
            }
            KeyCode::Home => {
                self.cursor = self.text[..self.cursor].rfind('\n').map_or(0, |i| i + 1)
            }
            KeyCode::End => {
                self.cursor += self.text[self.cursor..]
                    .find('\n')
                    .unwrap_or(self.text.len() - self.cursor);
            }
            _ => {}
        }
    }

    /// Replaces the text with the next older or newer question; newer than the newest is an
    /// empty input again.
    pub fn recall(&mut self, way: Recall) {
        if self.history.is_empty() {
            return;
        }
        let last = self.history.len() - 1;
        let pos = match (self.recalled, way) {
            (None, Recall::Older) => Some(last),
            (None, Recall::Newer) => None,
            (Some(p), Recall::Older) => Some(p.saturating_sub(1)),
            (Some(p), Recall::Newer) if p >= last => None,
            (Some(p), Recall::Newer) => Some(p + 1),
        };
        self.recalled = pos;
        self.text = pos.map(|p| self.history[p].clone()).unwrap_or_default();
        self.cursor = self.text.len();
    }

    /// Empties the input for the next question.
    pub fn clear(&mut self) {
        self.text.clear();
        self.cursor = 0;
        self.recalled = None;
    }

    /// Adds a question that was sent to the history.
    pub fn remember(&mut self, question: String) {
        self.history.push(question);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(text: &str) -> Editor {
        let mut e = Editor::default();
        e.insert(text);
        e
    }

    #[test]
    fn edits_act_at_the_cursor_and_home_end_stay_on_the_line() {
        let mut e = typed("is q? fine\nline 2");
        e.edit(KeyCode::Backspace);
        assert_eq!(e.text(), "is q? fine\nline ");
        e.edit(KeyCode::Home);
        assert_eq!(e.cursor(), "is q? fine\n".len());
        e.edit(KeyCode::Delete);
        assert_eq!(e.text(), "is q? fine\nine ");
        e.edit(KeyCode::Left);
        e.edit(KeyCode::Home);
        assert_eq!(e.cursor(), 0, "Home goes to the start of the first line");
        e.edit(KeyCode::End);
        assert_eq!(
            e.cursor(),
            "is q? fine".len(),
            "End stops at the line's end"
        );
        e.edit(KeyCode::Right);
        e.insert("l");
        assert_eq!(e.text(), "is q? fine\nline ");
    }

    #[test]
    fn cursor_moves_by_whole_characters() {
        let mut e = typed("γη");
        e.edit(KeyCode::Left);
        assert_eq!(e.cursor(), "γ".len());
        e.edit(KeyCode::Backspace);
        assert_eq!((e.text(), e.cursor()), ("η", 0));
        e.edit(KeyCode::Backspace);
        e.edit(KeyCode::Left);
        assert_eq!(e.text(), "η", "nothing before the cursor: nothing happens");
        e.edit(KeyCode::Right);
        e.edit(KeyCode::Delete);
        e.edit(KeyCode::Right);
        assert_eq!((e.text(), e.cursor()), ("η", "η".len()));
    }

    #[test]
    fn pasted_line_ends_become_newlines_and_control_characters_are_dropped() {
        let e = typed("a\r\nb\rc\x1b[2J\u{7}");
        assert_eq!(e.text(), "a\nb\nc[2J");
        assert_eq!(e.cursor(), e.text().len());
    }

    #[test]
    fn history_recalls_older_then_newer_then_an_empty_input() {
        let mut e = Editor::new(vec!["first".into(), "second".into()]);
        e.recall(Recall::Older);
        assert_eq!(e.text(), "second");
        e.recall(Recall::Older);
        assert_eq!(e.text(), "first");
        e.recall(Recall::Older);
        assert_eq!(e.text(), "first", "the oldest stays");
        assert_eq!(
            e.cursor(),
            "first".len(),
            "the cursor is at the end to go on typing"
        );
        e.recall(Recall::Newer);
        assert_eq!(e.text(), "second");
        e.recall(Recall::Newer);
        assert_eq!(e.text(), "");
        e.remember("third".into());
        e.recall(Recall::Older);
        assert_eq!(e.text(), "third");
        e.clear();
        assert!(e.is_empty());
        e.recall(Recall::Older);
        assert_eq!(
            e.text(),
            "third",
            "clearing starts the walk from the newest again"
        );
    }

    #[test]
    fn no_history_leaves_the_text_alone() {
        let mut e = typed("draft");
        e.recall(Recall::Older);
        e.recall(Recall::Newer);
        assert_eq!(e.text(), "draft");
    }
}
