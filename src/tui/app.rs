//! The application state as a pure state machine: `handle(event) -> effects`. No I/O here: the
//! effects (ask the engine, cancel, save, persist, quit) are data, carried out by the runtime,
//! which is why every transition is tested without a terminal, a model or a disk.

use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::keymap::{Action, Key, Keymap};
use crate::config::EngineConfig;
use crate::runtime::{EngineInfo, Reply, Source, Turn, View, WatchEvent, history};
use crate::speculative::{Event, GenToken, Mode, Stats};

/// Where a chat turn is.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnState {
    Idle,
    /// Sent; the engine is retrieving and building prompts.
    Retrieving,
    Prefilling {
        done: usize,
        total: usize,
    },
    Generating,
    /// Cancel asked; waiting for the engine to stop.
    Cancelling,
}

/// How an answer ended.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerStatus {
    Streaming,
    Done,
    Cancelled,
    Failed(String),
}

/// One question and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub question: String,
    pub tokens: Vec<GenToken>,
    pub status: AnswerStatus,
    pub mode: Mode,
    pub stats: Option<Stats>,
    pub sources: Vec<Source>,
    pub view: Option<View>,
    /// Accepted drafts per round that drafted, for the sparkline.
    pub rounds: Vec<u64>,
    /// Rounds so far, plain target steps included (live tokens per round while streaming).
    pub round_count: usize,
    /// Files re-indexed while this answer was being written.
    pub index_changed: bool,
    /// Seconds of drafting and verifying so far (live tokens/s while streaming).
    pub decode_s: f64,
}

impl Entry {
    pub fn answer(&self) -> String {
        self.tokens.iter().map(|t| t.text.as_str()).collect()
    }
}

impl From<&history::Entry> for Entry {
    fn from(e: &history::Entry) -> Self {
        Self {
            question: e.question.clone(),
            tokens: e.tokens.clone(),
            status: match &e.status {
                history::Status::Streaming => AnswerStatus::Streaming,
                history::Status::Done => AnswerStatus::Done,
                history::Status::Cancelled => AnswerStatus::Cancelled,
                history::Status::Failed(why) => AnswerStatus::Failed(why.clone()),
            },
            mode: e.mode,
            stats: e.stats.clone(),
            sources: e.sources.iter().map(Source::from).collect(),
            view: e.view.clone(),
            rounds: e.rounds.clone(),
            round_count: e.stats.as_ref().map_or(0, |s| s.rounds),
            index_changed: e.index_changed,
            decode_s: e.stats.as_ref().map_or(0.0, |s| s.decode_s),
        }
    }
}

impl From<&Entry> for history::Entry {
    fn from(e: &Entry) -> Self {
        Self {
            question: e.question.clone(),
            tokens: e.tokens.clone(),
            status: match &e.status {
                AnswerStatus::Streaming => history::Status::Streaming,
                AnswerStatus::Done => history::Status::Done,
                AnswerStatus::Cancelled => history::Status::Cancelled,
                AnswerStatus::Failed(why) => history::Status::Failed(why.clone()),
            },
            mode: e.mode,
            stats: e.stats.clone(),
            sources: e.sources.iter().map(history::SavedSource::from).collect(),
            view: e.view.clone(),
            rounds: e.rounds.clone(),
            index_changed: e.index_changed,
        }
    }
}

/// The corpus as the UI knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexStatus {
    /// Files done / total while a pass runs.
    pub progress: Option<(usize, usize)>,
    pub chunks: u64,
    pub files_skipped: usize,
    /// The last thing that happened ("re-indexed notes.md").
    pub last_change: Option<String>,
}

/// Which part of the screen takes keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Input,
    Chat,
    Sources,
}

/// What the runtime must do after an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Ask {
        question: String,
        history: Vec<Turn>,
        settings: EngineConfig,
    },
    Cancel,
    Save {
        path: PathBuf,
        markdown: String,
    },
    /// The conversation changed: write it to the data directory.
    Persist,
    Quit,
}

/// Everything the UI can be told.
#[derive(Debug, Clone)]
pub enum AppEvent {
    Key(KeyEvent),
    Paste(String),
    Scroll(i32),
    Engine(Reply),
    /// An indexing pass moved on (files done, total).
    IndexProgress {
        done: usize,
        total: usize,
    },
    IndexDone {
        chunks: u64,
        skipped: usize,
        indexed: usize,
    },
    Watch(WatchEvent),
    /// The runtime's own outcome of an effect (e.g. "saved to x.md"), or a failure.
    Notice(String),
}

/// The whole UI state.
pub struct App {
    pub folder: String,
    pub keymap: Keymap,
    pub entries: Vec<Entry>,
    pub turn: TurnState,
    pub input: String,
    /// Byte offset of the cursor in `input`.
    pub cursor: usize,
    pub history: Vec<String>,
    history_pos: Option<usize>,
    pub settings: EngineConfig,
    pub engine: Option<EngineInfo>,
    pub engine_error: Option<String>,
    pub index: IndexStatus,
    pub show_help: bool,
    pub show_sources: bool,
    pub colors: bool,
    /// Lines scrolled up from the bottom of the chat.
    pub scroll: usize,
    pub focus: Focus,
    pub selected_source: usize,
    pub source_open: bool,
    /// A message for the status line (errors of commands, saves).
    pub notice: Option<String>,
    pub quit: bool,
}

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
            entries,
            turn: TurnState::Idle,
            input: String::new(),
            cursor: 0,
            history,
            history_pos: None,
            settings,
            engine: None,
            engine_error: None,
            index: IndexStatus::default(),
            show_help: false,
            show_sources: false,
            colors: true,
            scroll: 0,
            focus: Focus::Input,
            selected_source: 0,
            source_open: false,
            notice: None,
            quit: false,
        }
    }

    /// Whether an answer is being produced.
    pub fn busy(&self) -> bool {
        self.turn != TurnState::Idle
    }

    /// The earlier turns a new question sees (failed ones left out).
    pub fn conversation(&self) -> Vec<Turn> {
        self.entries
            .iter()
            .filter(|e| matches!(e.status, AnswerStatus::Done | AnswerStatus::Cancelled))
            .map(|e| Turn {
                question: e.question.clone(),
                answer: e.answer(),
            })
            .collect()
    }

    /// The sources of the latest answer.
    pub fn current_sources(&self) -> &[Source] {
        self.entries.last().map_or(&[], |e| e.sources.as_slice())
    }

    pub fn handle(&mut self, event: AppEvent) -> Vec<Effect> {
        match event {
            AppEvent::Key(key) => self.on_key(key),
            AppEvent::Paste(text) => {
                self.insert(&text.replace("\r\n", "\n").replace('\r', "\n"));
                vec![]
            }
            AppEvent::Scroll(lines) => {
                self.scroll_by(lines);
                vec![]
            }
            AppEvent::Engine(reply) => self.on_engine(reply),
            AppEvent::IndexProgress { done, total } => {
                self.index.progress = Some((done, total));
                vec![]
            }
            AppEvent::IndexDone {
                chunks,
                skipped,
                indexed,
            } => {
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
            AppEvent::Watch(w) => {
                self.on_watch(w);
                vec![]
            }
            AppEvent::Notice(text) => {
                self.notice = Some(text);
                vec![]
            }
        }
    }

    fn on_watch(&mut self, w: WatchEvent) {
        let change = match w {
            WatchEvent::Indexed(path) => format!("re-indexed {path}"),
            WatchEvent::Removed(path) => format!("removed {path} from the index"),
            WatchEvent::Failed { path, reason } => format!("skipped {path}: {reason}"),
            WatchEvent::Updated { chunks } => {
                self.index.chunks = chunks;
                return;
            }
            WatchEvent::Error(e) => format!("watcher: {e}"),
        };
        if self.busy()
            && let Some(last) = self.entries.last_mut()
        {
            last.index_changed = true;
        }
        self.index.last_change = Some(change);
    }

    fn on_engine(&mut self, reply: Reply) -> Vec<Effect> {
        match reply {
            Reply::Loaded(info) => {
                self.engine = Some(info);
                vec![]
            }
            Reply::LoadFailed(e) => {
                // A question sent while the model was loading will get no answer.
                if let Some(last) = self.streaming() {
                    last.status = AnswerStatus::Failed(e.clone());
                }
                self.turn = TurnState::Idle;
                self.engine_error = Some(e);
                vec![]
            }
            Reply::Started { sources, view } => {
                if let Some(last) = self.streaming() {
                    last.sources = sources;
                    last.view = Some(view);
                }
                self.selected_source = 0;
                vec![]
            }
            Reply::Event(event) => {
                self.on_decode_event(event);
                vec![]
            }
            Reply::Finished(answer) => {
                let cancelled = answer.output.stats.cancelled;
                if let Some(last) = self.streaming() {
                    last.tokens = answer.output.tokens;
                    last.stats = Some(answer.output.stats);
                    last.status = if cancelled {
                        AnswerStatus::Cancelled
                    } else {
                        AnswerStatus::Done
                    };
                }
                self.turn = TurnState::Idle;
                vec![Effect::Persist]
            }
            Reply::Failed(e) => {
                if let Some(last) = self.streaming() {
                    last.status = AnswerStatus::Failed(e);
                }
                self.turn = TurnState::Idle;
                vec![Effect::Persist]
            }
        }
    }

    fn on_decode_event(&mut self, event: Event) {
        match event {
            Event::Prefill { done, total } => {
                if self.turn != TurnState::Cancelling {
                    self.turn = TurnState::Prefilling { done, total };
                }
            }
            Event::Token(t) => {
                if self.turn != TurnState::Cancelling {
                    self.turn = TurnState::Generating;
                }
                if let Some(last) = self.streaming() {
                    last.tokens.push(t);
                }
            }
            Event::Round {
                drafted,
                accepted,
                t_draft,
                t_verify,
                ..
            } => {
                if let Some(last) = self.streaming() {
                    last.round_count += 1;
                    // The sparkline shows drafts; plain target steps have none.
                    if drafted > 0 {
                        last.rounds.push(accepted as u64);
                    }
                    last.decode_s += (t_draft + t_verify).as_secs_f64();
                }
            }
            Event::Done(stats) => {
                if let Some(last) = self.streaming() {
                    last.stats = Some(stats);
                }
            }
        }
    }

    fn streaming(&mut self) -> Option<&mut Entry> {
        self.entries
            .last_mut()
            .filter(|e| e.status == AnswerStatus::Streaming)
    }

    fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        let k = Key::of(&key);
        if self.show_help || self.source_open {
            // Any key closes a popup; Ctrl-C still quits.
            self.show_help = false;
            self.source_open = false;
            if self.keymap.action(k) != Some(Action::Quit) {
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
            if bare && c == 'q' && !typing {
                return self.quit();
            }
            if bare && c == '?' && (!typing || self.input.is_empty()) {
                self.show_help = true;
                return vec![];
            }
            if !typing && self.focus == Focus::Sources {
                match c {
                    'j' => return self.action(Action::HistoryNext),
                    'k' => return self.action(Action::HistoryPrev),
                    _ => {}
                }
            }
            if typing && self.keymap.action(k).is_none() {
                self.insert(&c.to_string());
                return vec![];
            }
        }
        if let Some(action) = self.keymap.action(k) {
            return self.action(action);
        }
        if typing {
            self.edit(key.code);
        } else if self.focus == Focus::Sources && key.code == KeyCode::Enter {
            self.source_open = !self.current_sources().is_empty();
        }
        vec![]
    }

    fn quit(&mut self) -> Vec<Effect> {
        self.quit = true;
        let mut effects = Vec::new();
        if self.busy() {
            effects.push(Effect::Cancel);
        }
        effects.push(Effect::Quit);
        effects
    }

    /// Carries out a user intent.
    pub fn action(&mut self, action: Action) -> Vec<Effect> {
        match action {
            Action::Send if self.focus == Focus::Sources => {
                self.source_open = !self.current_sources().is_empty();
                vec![]
            }
            Action::Send => self.send(),
            Action::NewLine => {
                self.insert("\n");
                vec![]
            }
            Action::Cancel => {
                if self.busy() && self.turn != TurnState::Cancelling {
                    self.turn = TurnState::Cancelling;
                    vec![Effect::Cancel]
                } else {
                    vec![]
                }
            }
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
                self.scroll_by(PAGE as i32);
                vec![]
            }
            Action::PageDown => {
                self.scroll_by(-(PAGE as i32));
                vec![]
            }
            Action::HistoryPrev | Action::HistoryNext if self.focus == Focus::Sources => {
                let n = self.current_sources().len();
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
                self.recall(-1);
                vec![]
            }
            Action::HistoryNext => {
                self.recall(1);
                vec![]
            }
            Action::ToggleSources => {
                self.show_sources = !self.show_sources;
                if !self.show_sources && self.focus == Focus::Sources {
                    self.focus = Focus::Input;
                }
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

    fn scroll_by(&mut self, lines: i32) {
        self.scroll = if lines >= 0 {
            self.scroll.saturating_add(lines as usize)
        } else {
            self.scroll.saturating_sub(lines.unsigned_abs() as usize)
        };
    }

    fn recall(&mut self, step: i32) {
        if self.history.is_empty() {
            return;
        }
        let last = self.history.len() - 1;
        let pos = match (self.history_pos, step < 0) {
            (None, true) => Some(last),
            (None, false) => None,
            (Some(p), true) => Some(p.saturating_sub(1)),
            (Some(p), false) if p >= last => None,
            (Some(p), false) => Some(p + 1),
        };
        self.history_pos = pos;
        self.input = pos.map(|p| self.history[p].clone()).unwrap_or_default();
        self.cursor = self.input.len();
    }

    fn insert(&mut self, text: &str) {
        let clean: String = text
            .chars()
            .filter(|c| *c == '\n' || !c.is_control())
            .collect();
        self.input.insert_str(self.cursor, &clean);
        self.cursor += clean.len();
    }

    fn edit(&mut self, code: KeyCode) {
        match code {
            KeyCode::Backspace => {
                if let Some(c) = self.input[..self.cursor].chars().next_back() {
                    self.cursor -= c.len_utf8();
                    self.input.remove(self.cursor);
                }
            }
            KeyCode::Delete if self.cursor < self.input.len() => {
                self.input.remove(self.cursor);
            }
            KeyCode::Left => {
                if let Some(c) = self.input[..self.cursor].chars().next_back() {
                    self.cursor -= c.len_utf8();
                }
            }
            KeyCode::Right => {
                if let Some(c) = self.input[self.cursor..].chars().next() {
                    self.cursor += c.len_utf8();
                }
            }
            KeyCode::Home => {
                self.cursor = self.input[..self.cursor].rfind('\n').map_or(0, |i| i + 1)
            }
            KeyCode::End => {
                self.cursor += self.input[self.cursor..]
                    .find('\n')
                    .unwrap_or(self.input.len() - self.cursor);
            }
            _ => {}
        }
    }

    fn send(&mut self) -> Vec<Effect> {
        let text = self.input.trim().to_owned();
        if text.is_empty() {
            return vec![];
        }
        if text.starts_with('/') {
            self.input.clear();
            self.cursor = 0;
            self.history_pos = None;
            return self.command(&text);
        }
        if self.busy() {
            self.notice = Some("an answer is still running: Esc stops it".into());
            return vec![];
        }
        if let Some(e) = &self.engine_error {
            self.notice = Some(format!("the model could not be loaded: {e}"));
            return vec![];
        }
        self.input.clear();
        self.cursor = 0;
        self.history_pos = None;
        self.history.push(text.clone());
        let history = self.conversation();
        self.entries.push(Entry {
            question: text.clone(),
            tokens: Vec::new(),
            status: AnswerStatus::Streaming,
            mode: self.settings.mode,
            stats: None,
            sources: Vec::new(),
            view: None,
            rounds: Vec::new(),
            round_count: 0,
            index_changed: false,
            decode_s: 0.0,
        });
        self.turn = TurnState::Retrieving;
        self.scroll = 0;
        self.notice = None;
        vec![Effect::Ask {
            question: text,
            history,
            settings: self.settings.clone(),
        }]
    }

    /// Slash commands: `/mode`, `/gamma`, `/eta`, `/temp`, `/sources`, `/clear`, `/save`, `/help`.
    fn command(&mut self, text: &str) -> Vec<Effect> {
        let mut parts = text[1..].split_whitespace();
        let name = parts.next().unwrap_or("");
        let arg = parts.next();
        let p = &mut self.settings;
        let result: Result<String, String> = match (name, arg) {
            ("mode", Some(m)) => m
                .parse::<Mode>()
                .map(|m| {
                    self.settings.mode = m;
                    format!("mode: {m}")
                })
                .map_err(|e| e.to_string()),
            ("gamma", Some(v)) => match v.parse::<usize>() {
                Ok(g) if (1..=64).contains(&g) => {
                    p.gamma = g;
                    Ok(format!("γ = {g}"))
                }
                _ => Err("/gamma takes a number from 1 to 64".into()),
            },
            ("eta", Some(v)) => match v.parse::<f32>() {
                Ok(x) if x >= 0.0 && x.is_finite() => {
                    p.eta = x;
                    Ok(format!("η = {x}"))
                }
                _ => Err("/eta takes a number, 0 or more".into()),
            },
            ("temp", Some(v)) => match v.parse::<f32>() {
                Ok(x) if x >= 0.0 && x.is_finite() => {
                    p.temp = x;
                    Ok(format!("temperature = {x}"))
                }
                _ => Err("/temp takes a number, 0 or more (0 = greedy)".into()),
            },
            ("sources", None) => {
                self.show_sources = !self.show_sources;
                Ok(if self.show_sources {
                    "sources shown"
                } else {
                    "sources hidden"
                }
                .into())
            }
            ("clear", None) if self.busy() => {
                Err("an answer is running: Esc stops it first".into())
            }
            ("clear", None) => {
                self.entries.clear();
                self.scroll = 0;
                self.notice = Some("conversation cleared".into());
                return vec![Effect::Persist];
            }
            ("save", file) => {
                let path = PathBuf::from(file.unwrap_or("rapid-chat-conversation.md"));
                return vec![Effect::Save {
                    path,
                    markdown: self.markdown(),
                }];
            }
            ("help", None) => {
                self.show_help = true;
                Ok(String::new())
            }
            _ => Err(format!(
                "unknown command {text}: /mode rapid|ar|sd|rag, /gamma N, /eta X, /temp X, \
                 /sources, /clear, /save [FILE], /help"
            )),
        };
        self.notice = Some(match result {
            Ok(m) => m,
            Err(e) => e,
        })
        .filter(|m| !m.is_empty());
        vec![]
    }

    /// The conversation as Markdown, with sources.
    pub fn markdown(&self) -> String {
        let mut out = format!("# rapid-chat: {}\n\n", self.folder);
        for e in &self.entries {
            out.push_str(&format!("## {}\n\n{}\n\n", e.question, e.answer().trim()));
            match &e.status {
                AnswerStatus::Cancelled => out.push_str("_(cancelled)_\n\n"),
                AnswerStatus::Failed(err) => out.push_str(&format!("_(failed: {err})_\n\n")),
                _ => {}
            }
            if !e.sources.is_empty() {
                out.push_str("Sources:\n");
                for s in &e.sources {
                    let page = s.page.map(|p| format!(", page {p}")).unwrap_or_default();
                    out.push_str(&format!("- {}{page} (score {:.2})\n", s.path, s.score));
                }
                out.push('\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Answer;
    use crate::speculative::TokenKind;
    use crate::speculative::decode::Output;

    fn settings() -> EngineConfig {
        EngineConfig {
            gamma: 4,
            seed: 1,
            max_tokens: 64,
            retrieval_budget: 1024,
            ..EngineConfig::default()
        }
    }

    fn app() -> App {
        App::new("docs".into(), Keymap::default(), settings(), Vec::new())
    }

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

    fn token(text: &str, kind: TokenKind) -> AppEvent {
        AppEvent::Engine(Reply::Event(Event::Token(GenToken {
            id: 1,
            text: text.into(),
            kind,
            margin: 2.0,
        })))
    }

    fn finished(tokens: Vec<GenToken>, cancelled: bool) -> AppEvent {
        let stats = Stats {
            generated_tokens: tokens.len(),
            cancelled,
            ..Stats::default()
        };
        AppEvent::Engine(Reply::Finished(Box::new(Answer {
            mode: Mode::Rapid,
            output: Output {
                text: tokens.iter().map(|t| t.text.clone()).collect(),
                tokens,
                end_margin: None,
                stats,
            },
            sources: Vec::new(),
            view: View::default(),
        })))
    }

    #[test]
    fn a_turn_goes_idle_retrieving_prefilling_generating_done() {
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
        assert_eq!(app.turn, TurnState::Retrieving);
        assert!(app.input.is_empty());
        app.handle(AppEvent::Engine(Reply::Started {
            sources: vec![],
            view: View::default(),
        }));
        app.handle(AppEvent::Engine(Reply::Event(Event::Prefill {
            done: 10,
            total: 100,
        })));
        assert_eq!(
            app.turn,
            TurnState::Prefilling {
                done: 10,
                total: 100
            }
        );
        app.handle(token("80", TokenKind::Accepted));
        app.handle(token("80", TokenKind::Corrected));
        assert_eq!(app.turn, TurnState::Generating);
        assert_eq!(app.entries[0].answer(), "8080");
        let t = GenToken {
            id: 1,
            text: "8080".into(),
            kind: TokenKind::Bonus,
            margin: 1.0,
        };
        assert_eq!(app.handle(finished(vec![t], false)), vec![Effect::Persist]);
        assert_eq!(app.turn, TurnState::Idle);
        assert_eq!(app.entries[0].status, AnswerStatus::Done);
        // A follow-up sees the earlier turn.
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
    }

    #[test]
    fn cancel_during_prefill_and_during_generation() {
        let mut app = app();
        ask(&mut app, "q1");
        app.handle(AppEvent::Engine(Reply::Event(Event::Prefill {
            done: 1,
            total: 9,
        })));
        assert_eq!(app.handle(key(KeyCode::Esc)), vec![Effect::Cancel]);
        assert_eq!(app.turn, TurnState::Cancelling);
        // A second Esc does not cancel twice; late prefill events do not undo the cancel.
        assert!(app.handle(key(KeyCode::Esc)).is_empty());
        app.handle(AppEvent::Engine(Reply::Event(Event::Prefill {
            done: 2,
            total: 9,
        })));
        assert_eq!(app.turn, TurnState::Cancelling);
        app.handle(finished(vec![], true));
        assert_eq!(app.entries[0].status, AnswerStatus::Cancelled);
        assert_eq!(app.turn, TurnState::Idle);

        ask(&mut app, "q2");
        app.handle(token("partial", TokenKind::Accepted));
        assert_eq!(app.handle(key(KeyCode::Esc)), vec![Effect::Cancel]);
        app.handle(token(" answer", TokenKind::Accepted));
        let kept = vec![
            GenToken {
                id: 1,
                text: "partial".into(),
                kind: TokenKind::Accepted,
                margin: 1.0,
            },
            GenToken {
                id: 2,
                text: " answer".into(),
                kind: TokenKind::Accepted,
                margin: 1.0,
            },
        ];
        app.handle(finished(kept, true));
        assert_eq!(app.entries[1].status, AnswerStatus::Cancelled);
        assert_eq!(
            app.entries[1].answer(),
            "partial answer",
            "the partial answer stays"
        );
        assert!(app.markdown().contains("_(cancelled)_"));
    }

    #[test]
    fn an_engine_error_fails_the_turn_and_the_next_question_goes_through() {
        let mut app = app();
        ask(&mut app, "q");
        assert_eq!(
            app.handle(AppEvent::Engine(Reply::Failed("context full".into()))),
            vec![Effect::Persist]
        );
        assert_eq!(
            app.entries[0].status,
            AnswerStatus::Failed("context full".into())
        );
        assert_eq!(app.turn, TurnState::Idle);
        assert!(
            app.conversation().is_empty(),
            "failed turns are not sent as history"
        );
        assert_eq!(ask(&mut app, "again").len(), 1);
    }

    #[test]
    fn a_model_that_failed_to_load_blocks_questions_with_a_reason() {
        let mut app = app();
        app.handle(AppEvent::Engine(Reply::LoadFailed("not a GGUF".into())));
        assert!(ask(&mut app, "q").is_empty());
        assert!(
            app.notice
                .as_deref()
                .is_some_and(|n| n.contains("not a GGUF"))
        );
        assert!(app.entries.is_empty());
    }

    #[test]
    fn an_engine_that_dies_mid_answer_fails_the_turn_instead_of_hanging() {
        let mut app = app();
        ask(&mut app, "q");
        app.handle(token("par", TokenKind::Target));
        app.handle(AppEvent::Engine(Reply::LoadFailed(
            "the engine stopped unexpectedly".into(),
        )));
        assert_eq!(app.turn, TurnState::Idle);
        assert!(matches!(&app.entries[0].status, AnswerStatus::Failed(e) if e.contains("stopped")));
        assert!(
            ask(&mut app, "again").is_empty(),
            "no engine: refused with a reason"
        );
        assert!(app.notice.is_some());
    }

    #[test]
    fn a_file_change_mid_answer_is_shown_and_does_not_disturb_the_answer() {
        let mut app = app();
        ask(&mut app, "q");
        app.handle(token("a", TokenKind::Target));
        app.handle(AppEvent::Watch(WatchEvent::Indexed("notes.md".into())));
        assert_eq!(
            app.index.last_change.as_deref(),
            Some("re-indexed notes.md")
        );
        assert_eq!(app.turn, TurnState::Generating);
        app.handle(token("b", TokenKind::Target));
        assert!(app.entries[0].index_changed);
        assert_eq!(app.entries[0].answer(), "ab");
        app.handle(AppEvent::Watch(WatchEvent::Updated { chunks: 42 }));
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
    fn keys_edit_history_and_popups() {
        let mut app = app();
        assert_eq!(app.handle(key(KeyCode::Char('?'))), vec![]);
        assert!(app.show_help, "? on an empty input opens help");
        app.handle(key(KeyCode::Char('x')));
        assert!(
            !app.show_help && app.input.is_empty(),
            "any key closes help"
        );
        type_text(&mut app, "is q? fine");
        assert_eq!(app.input, "is q? fine", "q and ? are text inside the input");
        app.handle(AppEvent::Key(KeyEvent::new(
            KeyCode::Enter,
            KeyModifiers::ALT,
        )));
        type_text(&mut app, "line 2");
        assert_eq!(app.input, "is q? fine\nline 2");
        app.handle(key(KeyCode::Backspace));
        app.handle(key(KeyCode::Home));
        app.handle(key(KeyCode::Delete));
        assert_eq!(app.input, "is q? fine\nine ");
        app.input.clear();
        app.cursor = 0;
        app.history = vec!["first".into(), "second".into()];
        app.handle(key(KeyCode::Up));
        assert_eq!(app.input, "second");
        app.handle(key(KeyCode::Up));
        assert_eq!(app.input, "first");
        app.handle(key(KeyCode::Down));
        app.handle(key(KeyCode::Down));
        assert_eq!(app.input, "");
        app.handle(key(KeyCode::Tab));
        assert_eq!(app.focus, Focus::Chat);
        assert_eq!(
            app.handle(key(KeyCode::Char('q'))),
            vec![Effect::Quit],
            "q quits outside the input"
        );
    }

    #[test]
    fn slash_commands_change_settings_and_save() {
        let mut app = app();
        ask(&mut app, "/mode sd");
        assert_eq!(app.settings.mode, Mode::Sd);
        ask(&mut app, "/gamma 8");
        ask(&mut app, "/eta 0.5");
        ask(&mut app, "/temp 0.7");
        assert_eq!(
            (app.settings.gamma, app.settings.eta, app.settings.temp),
            (8, 0.5, 0.7)
        );
        ask(&mut app, "/gamma 0");
        assert!(app.notice.as_deref().is_some_and(|n| n.contains("1 to 64")));
        assert_eq!(app.settings.gamma, 8);
        ask(&mut app, "/mode warp");
        assert!(
            app.notice
                .as_deref()
                .is_some_and(|n| n.contains("unknown mode"))
        );
        ask(&mut app, "/sources");
        assert!(app.show_sources);
        ask(&mut app, "/bogus");
        assert!(
            app.notice
                .as_deref()
                .is_some_and(|n| n.contains("/save [FILE]"))
        );
        let effects = ask(&mut app, "/save out.md");
        assert!(
            matches!(&effects[..], [Effect::Save { path, .. }] if path == &PathBuf::from("out.md"))
        );
        ask(&mut app, "real question");
        app.handle(finished(vec![], false));
        assert_eq!(ask(&mut app, "/clear"), vec![Effect::Persist]);
        assert!(app.entries.is_empty());
        assert!(app.entries.iter().all(|e| e.mode == Mode::Sd));
    }
}
