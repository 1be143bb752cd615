//! The application state as a pure state machine: `handle(event) -> effects`. No I/O here: the
//! effects (ask the engine, cancel, save, persist, quit) are data, carried out by the runtime,
//! which is why every transition is tested without a terminal, a model or a disk.
//!
//! The app composes parts with one job each: the chat turn's state machine
//! ([`conversation`]), the question being typed ([`editor`]) and the slash commands
//! ([`commands`]). It owns what is left: what a key means where the focus is, scrolling,
//! popups, the index's progress and the status line.

pub mod commands;
pub mod conversation;
pub mod editor;
pub mod effect;
#[cfg(test)]
mod fixtures;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::keymap::{
    Action, HELP_CHAR, Key, Keymap, QUIT_CHAR, SOURCE_NEXT_CHAR, SOURCE_PREV_CHAR,
};
use crate::config::EngineConfig;
use crate::runtime::{Progress, Reply, Update, WatchEvent};
pub use conversation::{AnswerStatus, Conversation, Entry, TurnState};
use conversation::{ChatEvent, Refusal};
use editor::{Editor, Recall};
pub use effect::Effect;

/// The corpus as the UI knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexStatus {
    /// The first pass's progress and the seconds since it began, while it runs.
    pub progress: Option<(Progress, f64)>,
    pub chunks: u64,
    pub files_skipped: usize,
    /// The last thing that happened ("re-indexed notes.md").
    pub last_change: Option<String>,
}

impl IndexStatus {
    /// While the first pass runs: how much of the folder a question can find, in words.
    pub fn searchable(&self) -> Option<String> {
        let (p, _) = self.progress.as_ref()?;
        Some(format!(
            "asked while indexing: {:.0}% of the folder is searchable so far ({} of {} files); \
             the rest cannot inform this answer",
            100.0 * p.fraction(),
            p.files_done,
            p.files_total
        ))
    }
}

/// Which part of the screen takes keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Input,
    Chat,
    Sources,
}

/// Everything the UI can be told.
#[derive(Debug, Clone)]
pub enum AppEvent {
    Key(KeyEvent),
    Paste(String),
    Scroll(i32),
    /// The terminal's new size, in columns and rows.
    Resize {
        width: u16,
        height: u16,
    },
    Engine(Reply),
    /// Indexing and watching.
    Corpus(Update),
    /// The runtime's own outcome of an effect (e.g. "saved to x.md"), or a failure.
    Notice(String),
}

/// The whole UI state.
pub struct App {
    pub folder: String,
    pub keymap: Keymap,
    pub conversation: Conversation,
    pub editor: Editor,
    /// What the next question is asked with.
    pub settings: EngineConfig,
    pub index: IndexStatus,
    pub show_help: bool,
    pub show_sources: bool,
    pub colors: bool,
    /// Lines scrolled up from the bottom of the chat.
    pub scroll: usize,
    pub focus: Focus,
    pub selected_source: usize,
    pub source_open: bool,
    /// The terminal's size (columns, rows) since it was last resized.
    pub size: Option<(u16, u16)>,
    /// A message for the status line (errors of commands, saves).
    pub notice: Option<String>,
    pub quit: bool,
}

/// Lines a page scrolls before the terminal's size is known.
const PAGE: usize = 10;

impl App {
    pub fn new(
        folder: String,
        keymap: Keymap,
        settings: EngineConfig,
        entries: Vec<Entry>,
    ) -> Self {
        let history = entries.iter().map(|e| e.question.clone()).collect();
        Self {
            folder,
            keymap,
            conversation: Conversation::new(entries),
            editor: Editor::new(history),
            settings,
            index: IndexStatus::default(),
            show_help: false,
            show_sources: false,
            colors: true,
            scroll: 0,
            focus: Focus::Input,
            selected_source: 0,
            source_open: false,
            size: None,
            notice: None,
            quit: false,
        }
    }

    pub fn handle(&mut self, event: AppEvent) -> Vec<Effect> {
        match event {
            AppEvent::Key(key) => self.on_key(key),
            AppEvent::Paste(text) => {
                self.editor.insert(&text);
                vec![]
            }
            AppEvent::Scroll(lines) => {
                self.scroll_by(lines);
                vec![]
            }
            AppEvent::Resize { width, height } => {
                self.size = Some((width, height));
                vec![]
            }
            AppEvent::Engine(reply) => {
                match &reply {
                    // A new answer's sources: the selection starts at the best.
                    Reply::Started { .. } => self.selected_source = 0,
                    Reply::WorkerLost(message) => self.notice = Some(message.clone()),
                    _ => {}
                }
                self.chat(ChatEvent::Engine(reply))
            }
            AppEvent::Corpus(Update::IndexProgress { progress, seconds }) => {
                self.index.progress = Some((progress, seconds));
                vec![]
            }
            AppEvent::Corpus(Update::IndexDone {
                chunks,
                skipped,
                indexed,
            }) => {
                self.index.progress = None;
                self.index.chunks = chunks;
                self.index.files_skipped = skipped;
                self.index.last_change = Some(if indexed == 0 {
                    format!("index up to date: {chunks} chunks")
                } else {
                    format!("indexed {indexed} files, {chunks} chunks")
                });
                vec![]
            }
            AppEvent::Corpus(Update::Watch(w)) => self.on_watch(w),
            AppEvent::Corpus(Update::Notice(text)) | AppEvent::Notice(text) => {
                self.notice = Some(text);
                vec![]
            }
        }
    }

    /// Hands `event` to the conversation; a refusal goes to the status line.
    fn chat(&mut self, event: ChatEvent) -> Vec<Effect> {
        self.conversation.handle(event).unwrap_or_else(|r| {
            self.notice = Some(self.refusal(&r));
            vec![]
        })
    }

    /// A refusal in words, naming the user's own keys.
    fn refusal(&self, r: &Refusal) -> String {
        match r {
            Refusal::Busy => format!(
                "an answer is still running: {} stops it",
                self.keymap.hint(Action::Cancel)
            ),
            Refusal::NoModel(e) => format!("the model could not be loaded: {e}"),
        }
    }

    fn on_watch(&mut self, w: WatchEvent) -> Vec<Effect> {
        let change = match w {
            WatchEvent::Indexed(path) => format!("re-indexed {path}"),
            WatchEvent::Removed(path) => format!("removed {path} from the index"),
            WatchEvent::Failed { path, reason } => format!("skipped {path}: {reason}"),
            WatchEvent::Updated { chunks } => {
                self.index.chunks = chunks;
                return vec![];
            }
            WatchEvent::Error(e) => format!("watcher: {e}"),
        };
        self.index.last_change = Some(change);
        self.chat(ChatEvent::IndexChanged)
    }

    fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let k = Key::of(&key);
        let action = self.keymap.action(k);
        if self.show_help || self.source_open {
            // Any key closes a popup; Ctrl-C still quits.
            self.show_help = false;
            self.source_open = false;
            if action != Some(Action::Quit) {
                return vec![];
            }
        }
        let typing = self.focus == Focus::Input;
        if let KeyCode::Char(c) = key.code
            && !key
                .modifiers
                .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT)
        {
            let bare = k.mods.is_empty();
            if bare && c == QUIT_CHAR && !typing {
                return self.quit();
            }
            if bare && c == HELP_CHAR && (!typing || self.editor.is_empty()) {
                self.show_help = true;
                return vec![];
            }
            if self.focus == Focus::Sources {
                match c {
                    SOURCE_NEXT_CHAR => return self.action(Action::HistoryNext),
                    SOURCE_PREV_CHAR => return self.action(Action::HistoryPrev),
                    _ => {}
                }
            }
            if typing && action.is_none() {
                self.editor.insert(&c.to_string());
                return vec![];
            }
        }
        match action {
            Some(action) => self.action(action),
            None => {
                if typing {
                    self.editor.edit(key.code);
                }
                vec![]
            }
        }
    }

    fn quit(&mut self) -> Vec<Effect> {
        self.quit = true;
        let mut effects = Vec::new();
        if self.conversation.busy() {
            effects.push(Effect::Cancel);
        }
        effects.push(Effect::Quit);
        effects
    }

    /// Carries out a user intent.
    pub fn action(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Send if self.focus == Focus::Sources => {
                self.source_open = !self.conversation.current_sources().is_empty();
                vec![]
            }
            Action::Send => self.send(),
            Action::NewLine => {
                self.editor.insert("\n");
                vec![]
            }
            Action::Cancel => self.chat(ChatEvent::Cancel),
            Action::Quit => self.quit(),
            Action::Help => {
                self.show_help = true;
                vec![]
            }
            Action::ScrollUp => {
                self.scroll_by(1);
                vec![]
            }
            Action::ScrollDown => {
                self.scroll_by(-1);
                vec![]
            }
            Action::PageUp => {
                self.scroll_by(self.page());
                vec![]
            }
            Action::PageDown => {
                self.scroll_by(-self.page());
                vec![]
            }
            Action::HistoryPrev | Action::HistoryNext if self.focus == Focus::Sources => {
                let n = self.conversation.current_sources().len();
                if n > 0 {
                    self.selected_source = if action == Action::HistoryPrev {
                        self.selected_source.saturating_sub(1)
                    } else {
                        (self.selected_source + 1).min(n - 1)
                    };
                }
                vec![]
            }
            Action::HistoryPrev | Action::HistoryNext if self.focus == Focus::Chat => {
                self.scroll_by(if action == Action::HistoryPrev { 1 } else { -1 });
                vec![]
            }
            Action::HistoryPrev => {
                self.editor.recall(Recall::Older);
                vec![]
            }
            Action::HistoryNext => {
                self.editor.recall(Recall::Newer);
                vec![]
            }
            Action::ToggleSources => {
                self.toggle_sources();
                vec![]
            }
            Action::ToggleColors => {
                self.colors = !self.colors;
                vec![]
            }
            Action::Focus => {
                self.focus = match self.focus {
                    Focus::Input => Focus::Chat,
                    Focus::Chat if self.show_sources => Focus::Sources,
                    _ => Focus::Input,
                };
                vec![]
            }
        }
    }

    fn toggle_sources(&mut self) {
        self.show_sources = !self.show_sources;
        if !self.show_sources && self.focus == Focus::Sources {
            self.focus = Focus::Input;
        }
    }

    /// Lines a page scrolls: half the terminal once its size is known, which keeps the reader's
    /// place in view across the jump whatever the layout around the chat.
    fn page(&self) -> i32 {
        let lines = self
            .size
            .map_or(PAGE, |(_, rows)| usize::from(rows / 2).max(1));
        lines as i32
    }

    fn scroll_by(&mut self, lines: i32) {
        self.scroll = if lines >= 0 {
            self.scroll.saturating_add(lines as usize)
        } else {
            self.scroll.saturating_sub(lines.unsigned_abs() as usize)
        };
    }

    fn send(&mut self) -> Vec<Effect> {
        let text = self.editor.text().trim().to_owned();
        if text.is_empty() {
            return vec![];
        }
        if text.starts_with('/') {
            self.editor.clear();
            return commands::run(self, &text);
        }
        let ask = ChatEvent::Ask {
            question: text.clone(),
            settings: self.settings.clone(),
        };
        match self.conversation.handle(ask) {
            Ok(effects) => {
                if let Some(entry) = self.conversation.entries.last_mut() {
                    entry.partial_index = self.index.searchable();
                }
                self.editor.clear();
                self.editor.remember(text);
                self.scroll = 0;
                self.notice = None;
                effects
            }
            // The question stays in the input, to send once the answer is over.
            Err(r) => {
                self.notice = Some(self.refusal(&r));
                vec![]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{app, finished, gen_token, prefill, settings, token};
    use super::*;
    use crate::runtime::{Source, Turn, View};
    use crate::speculative::TokenKind;

    fn key(code: KeyCode) -> AppEvent {
        AppEvent::Key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    fn ctrl(c: char) -> AppEvent {
        AppEvent::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
    }

    fn type_text(app: &mut App, text: &str) {
        for c in text.chars() {
            assert!(app.handle(key(KeyCode::Char(c))).is_empty());
        }
    }

    fn ask(app: &mut App, q: &str) -> Vec<Effect> {
        type_text(app, q);
        app.handle(key(KeyCode::Enter))
    }

    fn engine(app: &mut App, reply: Reply) -> Vec<Effect> {
        app.handle(AppEvent::Engine(reply))
    }

    #[test]
    fn a_question_sent_with_enter_asks_with_the_earlier_turns_and_empties_the_input() {
        let mut app = app();
        let effects = ask(&mut app, "What port?");
        assert_eq!(
            effects,
            vec![Effect::Ask {
                question: "What port?".into(),
                history: vec![],
                settings: settings()
            }]
        );
        assert_eq!(app.conversation.turn, TurnState::Retrieving);
        assert!(app.editor.is_empty());
        engine(&mut app, token("8080", TokenKind::Accepted));
        let t = gen_token("8080", TokenKind::Bonus);
        assert_eq!(
            engine(&mut app, finished(vec![t], false)),
            vec![Effect::Persist]
        );
        let effects = ask(&mut app, "And the host?");
        let Effect::Ask { history, .. } = &effects[0] else {
            panic!("{effects:?}")
        };
        assert_eq!(
            history,
            &vec![Turn {
                question: "What port?".into(),
                answer: "8080".into()
            }]
        );
        app.handle(key(KeyCode::Up));
        assert_eq!(
            app.editor.text(),
            "And the host?",
            "sent questions are recalled"
        );
    }

    #[test]
    fn esc_cancels_the_answer_once() {
        let mut app = app();
        ask(&mut app, "q1");
        engine(&mut app, prefill(1, 9));
        assert_eq!(app.handle(key(KeyCode::Esc)), vec![Effect::Cancel]);
        assert_eq!(app.conversation.turn, TurnState::Cancelling);
        assert!(app.handle(key(KeyCode::Esc)).is_empty());
        engine(&mut app, finished(vec![], true));
        assert!(
            app.handle(key(KeyCode::Esc)).is_empty(),
            "nothing to cancel"
        );
        assert_eq!(app.notice, None, "and nothing to say about it");
    }

    #[test]
    fn a_model_that_failed_to_load_blocks_questions_with_a_reason() {
        let mut app = app();
        engine(&mut app, Reply::LoadFailed("not a GGUF".into()));
        assert!(ask(&mut app, "q").is_empty());
        assert!(
            app.notice
                .as_deref()
                .is_some_and(|n| n.contains("not a GGUF"))
        );
        assert!(app.conversation.entries.is_empty());
        assert_eq!(app.editor.text(), "q", "the question is kept");
    }

    #[test]
    fn an_engine_that_dies_mid_answer_says_why_the_next_question_is_refused() {
        let mut app = app();
        ask(&mut app, "q");
        engine(&mut app, token("par", TokenKind::Target));
        engine(
            &mut app,
            Reply::LoadFailed("the engine stopped unexpectedly".into()),
        );
        assert!(
            ask(&mut app, "again").is_empty(),
            "no engine: refused with a reason"
        );
        assert!(app.notice.as_deref().is_some_and(|n| n.contains("stopped")));
    }

    #[test]
    fn a_question_asked_while_indexing_says_how_much_of_the_folder_it_can_find() {
        let mut app = app();
        app.handle(AppEvent::Corpus(Update::IndexProgress {
            progress: Progress {
                files_done: 56,
                files_total: 280,
                bytes_done: 24_000_000,
                bytes_total: 120_000_000,
                path: "r/R-exts.pdf".into(),
            },
            seconds: 30.0,
        }));
        ask(&mut app, "early");
        let note = app.conversation.entries[0].partial_index.clone();
        assert_eq!(
            note.as_deref(),
            Some(
                "asked while indexing: 20% of the folder is searchable so far (56 of 280 files); \
                 the rest cannot inform this answer"
            )
        );
        app.handle(AppEvent::Corpus(Update::IndexDone {
            chunks: 900,
            skipped: 0,
            indexed: 280,
        }));
        engine(&mut app, finished(vec![], false));
        ask(&mut app, "later");
        assert_eq!(app.conversation.entries[1].partial_index, None);
        assert!(
            app.conversation.entries[0].partial_index.is_some(),
            "the first answer keeps its note"
        );
    }

    #[test]
    fn a_file_change_mid_answer_is_shown_and_does_not_disturb_the_answer() {
        let mut app = app();
        ask(&mut app, "q");
        engine(&mut app, token("a", TokenKind::Target));
        app.handle(AppEvent::Corpus(Update::Watch(WatchEvent::Indexed(
            "notes.md".into(),
        ))));
        assert_eq!(
            app.index.last_change.as_deref(),
            Some("re-indexed notes.md")
        );
        assert_eq!(app.conversation.turn, TurnState::Generating);
        engine(&mut app, token("b", TokenKind::Target));
        assert!(app.conversation.entries[0].index_changed);
        assert_eq!(app.conversation.entries[0].answer(), "ab");
        app.handle(AppEvent::Corpus(Update::Watch(WatchEvent::Updated {
            chunks: 42,
        })));
        assert_eq!(app.index.chunks, 42);
    }

    #[test]
    fn asking_while_busy_is_refused_and_quit_cancels_first() {
        let mut app = app();
        ask(&mut app, "q");
        assert!(ask(&mut app, "another").is_empty());
        assert!(app.notice.as_deref().is_some_and(|n| n.contains("Esc")));
        assert_eq!(app.handle(ctrl('c')), vec![Effect::Cancel, Effect::Quit]);
        assert!(app.quit);
    }

    #[test]
    fn a_refusal_names_the_key_the_config_bound() {
        let extra = [("cancel".to_owned(), "ctrl-x".to_owned())].into();
        let keymap = Keymap::with_overrides(&extra).unwrap_or_else(|e| panic!("{e:#}"));
        let mut app = App::new("docs".into(), keymap, settings(), Vec::new());
        ask(&mut app, "q");
        ask(&mut app, "another");
        assert_eq!(
            app.notice.as_deref(),
            Some("an answer is still running: Ctrl-X stops it")
        );
    }

    #[test]
    fn keys_edit_history_and_popups() {
        let mut app = app();
        assert_eq!(app.handle(key(KeyCode::Char('?'))), vec![]);
        assert!(app.show_help, "? on an empty input opens help");
        app.handle(key(KeyCode::Char('x')));
        assert!(
            !app.show_help && app.editor.is_empty(),
            "any key closes help"
        );
        type_text(&mut app, "is q? fine");
        assert_eq!(
            app.editor.text(),
            "is q? fine",
            "q and ? are text inside the input"
        );
        app.handle(AppEvent::Key(KeyEvent::new(
            KeyCode::Enter,
            KeyModifiers::ALT,
        )));
        type_text(&mut app, "line 2");
        assert_eq!(app.editor.text(), "is q? fine\nline 2");
        app.handle(key(KeyCode::Backspace));
        app.handle(key(KeyCode::Home));
        app.handle(key(KeyCode::Delete));
        assert_eq!(app.editor.text(), "is q? fine\nine ");
        app.handle(AppEvent::Paste("\r\npasted".into()));
        assert_eq!(
            app.editor.text(),
            "is q? fine\n\npastedine ",
            "a paste goes in at the cursor, its line end made \\n"
        );
        app.editor = Editor::new(vec!["first".into(), "second".into()]);
        app.handle(key(KeyCode::Up));
        assert_eq!(app.editor.text(), "second");
        app.handle(key(KeyCode::Up));
        assert_eq!(app.editor.text(), "first");
        app.handle(key(KeyCode::Down));
        app.handle(key(KeyCode::Down));
        assert_eq!(app.editor.text(), "");
        app.handle(key(KeyCode::Tab));
        assert_eq!(app.focus, Focus::Chat);
        assert_eq!(
            app.handle(key(KeyCode::Char('q'))),
            vec![Effect::Quit],
            "q quits outside the input"
        );
    }

    #[test]
    fn a_slash_command_typed_runs_and_is_not_asked_or_remembered() {
        let mut app = app();
        assert!(ask(&mut app, "/mode sd").is_empty());
        assert_eq!(app.settings.mode, crate::speculative::Mode::Sd);
        assert!(app.editor.is_empty() && app.conversation.entries.is_empty());
        app.handle(key(KeyCode::Up));
        assert!(app.editor.is_empty(), "commands are not in the history");
    }

    #[test]
    fn the_sources_pane_selects_with_j_k_and_opens_with_enter() {
        let mut app = app();
        ask(&mut app, "q");
        let source = |path: &str| Source {
            path: path.into(),
            page: None,
            score: 1.0,
            start: 0,
            end: 1,
            text: "chunk".into(),
        };
        app.selected_source = 5;
        engine(
            &mut app,
            Reply::Started {
                sources: vec![source("a.md"), source("b.md")],
                view: View::default(),
            },
        );
        assert_eq!(
            app.selected_source, 0,
            "a new answer selects its best source"
        );
        app.handle(ctrl('o'));
        app.handle(key(KeyCode::Tab));
        app.handle(key(KeyCode::Tab));
        assert_eq!(app.focus, Focus::Sources);
        for _ in 0..3 {
            app.handle(key(KeyCode::Char('j')));
        }
        assert_eq!(app.selected_source, 1, "the selection stops at the last");
        app.handle(key(KeyCode::Char('k')));
        assert_eq!(app.selected_source, 0);
        app.handle(key(KeyCode::Enter));
        assert!(app.source_open);
        app.handle(key(KeyCode::Char('x')));
        assert!(!app.source_open, "any key closes it");
        app.handle(ctrl('o'));
        assert_eq!(
            app.focus,
            Focus::Input,
            "hiding the pane gives the focus back"
        );
    }

    #[test]
    fn a_resize_is_recorded_and_a_page_is_half_the_terminal() {
        let mut app = app();
        app.handle(key(KeyCode::PageUp));
        assert_eq!(app.scroll, PAGE, "before any resize");
        assert!(
            app.handle(AppEvent::Resize {
                width: 100,
                height: 40
            })
            .is_empty()
        );
        assert_eq!(app.size, Some((100, 40)));
        app.handle(key(KeyCode::PageUp));
        assert_eq!(app.scroll, PAGE + 20);
        app.handle(key(KeyCode::PageDown));
        app.handle(key(KeyCode::PageDown));
        assert_eq!(app.scroll, 0, "never below the bottom");
        app.handle(AppEvent::Resize {
            width: 10,
            height: 1,
        });
        app.handle(key(KeyCode::PageUp));
        assert_eq!(app.scroll, 1, "a page is at least a line");
    }
}
