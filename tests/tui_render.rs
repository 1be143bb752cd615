//! Rendering snapshots of the terminal UI (ratatui TestBackend + insta). These are pure UI tests:
//! the engine's replies are made by hand here, as the UI receives them.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use rapid_chat::config::{Config, EngineConfig};
use rapid_chat::runtime::{EngineInfo, Progress, Reply, Update};
use rapid_chat::session::{Source, View};
use rapid_chat::speculative::{Event, GenToken, Stats, TokenKind};
use rapid_chat::tui::app::{App, AppEvent};
use rapid_chat::tui::keymap::Keymap;
use rapid_chat::tui::ui::{self, Theme};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::style::{Color, Modifier};

fn app() -> App {
    let settings = EngineConfig::default();
    App::new(
        "/home/me/papers".into(),
        Keymap::default(),
        settings,
        Vec::new(),
    )
}

fn loaded(app: &mut App) {
    loaded_with(app, 8192, 6144);
}

fn loaded_with(app: &mut App, target_ctx: usize, draft_ctx: usize) {
    app.handle(AppEvent::Engine(Reply::Loaded(EngineInfo {
        target: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        drafter: "SmolLM2-135M-Instruct.Q4_1.gguf".into(),
        self_speculation: true,
        device: "CPU, 2 threads (this build has no CUDA)".into(),
        target_ctx,
        draft_ctx,
        ctx_bound: "trained length".into(),
    })));
}

fn draw(app: &App, w: u16, h: u16) -> Terminal<TestBackend> {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    let theme = Theme::from_config(&Config::default().tui);
    terminal.draw(|f| ui::draw(f, app, &theme)).unwrap();
    terminal
}

fn type_and_send(app: &mut App, text: &str) {
    for c in text.chars() {
        app.handle(AppEvent::Key(KeyEvent::new(
            KeyCode::Char(c),
            KeyModifiers::NONE,
        )));
    }
    app.handle(AppEvent::Key(KeyEvent::new(
        KeyCode::Enter,
        KeyModifiers::NONE,
    )));
}

fn token(text: &str, kind: TokenKind) -> AppEvent {
    AppEvent::Engine(Reply::Event(Event::Token(GenToken {
        id: 0,
        text: text.into(),
        kind,
        margin: 1.0,
    })))
}

/// The engine's end of an answer: its statistics, then the finished answer with `tokens`.
fn finish(app: &mut App, tokens: Vec<GenToken>, stats: Stats) {
    app.handle(AppEvent::Engine(Reply::Event(Event::Done(stats.clone()))));
    app.handle(AppEvent::Engine(Reply::Finished(Box::new(
        rapid_chat::session::Answer {
            mode: rapid_chat::speculative::Mode::Rapid,
            output: rapid_chat::speculative::decode::Output {
                produced: Vec::new(),
                eog: false,
                text: String::new(),
                tokens,
                end_margin: None,
                stats,
            },
            sources: vec![],
            view: View::default(),
        },
    ))));
}

#[test]
fn first_start() {
    let mut app = app();
    insta::assert_snapshot!(draw(&app, 100, 24).backend());
    loaded(&mut app);
    insta::assert_snapshot!("first_start_loaded", draw(&app, 100, 24).backend());
}

#[test]
fn indexing_in_progress() {
    let mut app = app();
    loaded(&mut app);
    app.handle(AppEvent::Corpus(Update::IndexProgress {
        progress: Progress {
            files_done: 12,
            files_total: 40,
            bytes_done: 9_400_000,
            bytes_total: 31_300_000,
            path: "manuals/R-exts.pdf".into(),
        },
        seconds: 3.0,
    }));
    insta::assert_snapshot!(draw(&app, 100, 24).backend());
}

fn streaming_app() -> App {
    let mut app = app();
    loaded(&mut app);
    type_and_send(&mut app, "On which port does llama-server listen?");
    app.handle(AppEvent::Engine(Reply::Started {
        sources: vec![Source {
            path: "llama-server.md".into(),
            page: None,
            score: 15.4,
            start: 21796,
            end: 23109,
            text: "`--port PORT` port to listen (default: 8080)".into(),
        }],
        view: View {
            chunks_in_view: 12,
            chunks_total: 161,
            doc_tokens_in_view: 4000,
            doc_tokens_total: 65879,
        },
    }));
    app.handle(AppEvent::Engine(Reply::Event(Event::Prefill {
        done: 4000,
        total: 4000,
        seconds: 33.3,
    })));
    for (text, kind) in [
        ("It", TokenKind::Target),
        (" listens", TokenKind::Accepted),
        (" on", TokenKind::Accepted),
        (" port", TokenKind::Accepted),
        (" **8080**", TokenKind::Bonus),
        (" by", TokenKind::Corrected),
        (" default", TokenKind::Accepted),
        (".", TokenKind::Accepted),
    ] {
        app.handle(token(text, kind));
    }
    // Each round carries the engine's statistics so far; after the third: 8 tokens in 0.3 s,
    // 6 drafted, 5 accepted.
    for (round, accepted) in [3, 0, 2].into_iter().enumerate() {
        let last = round == 2;
        app.handle(AppEvent::Engine(Reply::Event(Event::Round {
            source: rapid_chat::speculative::adaptive::DraftSource::Model,
            drafted: 4,
            accepted,
            t_draft: std::time::Duration::from_millis(30),
            t_draft_step: None,
            t_verify: std::time::Duration::from_millis(70),
            stats: Box::new(Stats {
                generated_tokens: if last { 8 } else { 4 * (round + 1) },
                drafted: if last { 6 } else { 4 },
                accepted: if last { 5 } else { 3 },
                rounds: round + 1,
                decode_s: 0.1 * (round + 1) as f64,
                decode_tok_s: if last { 8.0 / 0.3 } else { 40.0 },
                mean_accepted_len: if last { 8.0 / 3.0 } else { 4.0 },
                ..Stats::default()
            }),
        })));
    }
    app
}

#[test]
fn an_answer_streaming_with_all_three_token_kinds() {
    let app = streaming_app();
    let terminal = draw(&app, 100, 24);
    insta::assert_snapshot!(terminal.backend());
    // Colours are not in the text snapshot: check the kinds' styles on the cells.
    let buf = terminal.backend().buffer();
    let find = |needle: &str| {
        let area = buf.area;
        for y in 0..area.height {
            let row: String = (0..area.width)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect();
            if let Some(col) = row.find(needle) {
                let x = row[..col].chars().count() as u16;
                return buf[(x, y)].clone();
            }
        }
        panic!("{needle} not on screen");
    };
    assert_eq!(find("listens").fg, Color::Green);
    assert!(
        find("by default").modifier.contains(Modifier::UNDERLINED),
        "corrections are underlined"
    );
    assert_eq!(find("by default").fg, Color::Red);
    let bonus = find("8080");
    assert_eq!(bonus.fg, Color::Cyan);
    assert!(
        bonus.modifier.contains(Modifier::ITALIC) && bonus.modifier.contains(Modifier::BOLD),
        "bonus italic, Markdown bold"
    );

    // Colouring off: plain text, corrections no longer marked.
    let mut plain = streaming_app();
    plain.handle(AppEvent::Key(KeyEvent::new(
        KeyCode::Char('t'),
        KeyModifiers::CONTROL,
    )));
    let terminal = draw(&plain, 100, 24);
    let buf = terminal.backend().buffer();
    assert!(buf.content().iter().all(|c| c.fg != Color::Red));
}

#[test]
fn the_sources_pane_and_a_finished_answer() {
    let mut app = streaming_app();
    let stats = Stats {
        generated_tokens: 8,
        drafted: 12,
        accepted: 6,
        acceptance_rate: 0.5,
        mean_accepted_len: 2.67,
        rounds: 3,
        prefill_tokens: 4000,
        prefill_s: 21.5,
        ttft_s: 21.6,
        decode_s: 0.2,
        decode_tok_s: 40.0,
        plain_step_s: 0.03275,
        speedup: 1.31,
        target_ctx_tokens: 4100,
        draft_ctx_tokens: 1100,
        ..Stats::default()
    };
    let mut answer_tokens = app.conversation.entries[0].tokens.clone();
    answer_tokens.truncate(8);
    finish(&mut app, answer_tokens, stats);
    app.handle(AppEvent::Key(KeyEvent::new(
        KeyCode::F(2),
        KeyModifiers::NONE,
    )));
    insta::assert_snapshot!(draw(&app, 100, 30).backend());
}

#[test]
fn the_help_popup() {
    let mut app = app();
    loaded(&mut app);
    app.handle(AppEvent::Key(KeyEvent::new(
        KeyCode::F(1),
        KeyModifiers::NONE,
    )));
    insta::assert_snapshot!(draw(&app, 100, 30).backend());
}

#[test]
fn an_error() {
    let mut app = app();
    loaded(&mut app);
    type_and_send(&mut app, "What does section 7 say?");
    app.handle(AppEvent::Engine(Reply::Failed(
        "the context is full (8192 tokens): ask a shorter question".into(),
    )));
    app.handle(AppEvent::Engine(Reply::LoadFailed("unused".into())));
    insta::assert_snapshot!(draw(&app, 100, 24).backend());
}

#[test]
fn an_80_by_24_terminal() {
    let app = streaming_app();
    insta::assert_snapshot!(draw(&app, 80, 24).backend());
}

#[test]
fn tiny_terminals_do_not_panic() {
    let app = streaming_app();
    for (w, h) in [(1, 1), (10, 3), (30, 8), (60, 10)] {
        draw(&app, w, h);
    }
}

/// Documents, file names and model output cannot act on the terminal: escape sequences (window
/// title, cursor moves, clearing), 8-bit CSI and bidirectional overrides are neutralized in the
/// chat, the sources pane and the chunk popup, with the printable rest kept.
#[test]
fn hostile_text_never_reaches_the_terminal_as_control_characters() {
    let hostile = "\x1b]0;pwned\x07\x1b[2J\x1b[10;10H\u{9b}31m\rX\u{202E}evil";
    let mut app = app();
    loaded(&mut app);
    type_and_send(&mut app, "what?");
    app.handle(AppEvent::Engine(Reply::Started {
        sources: vec![Source {
            path: format!("{hostile}.md"),
            page: None,
            score: 1.0,
            start: 0,
            end: 10,
            text: format!("chunk {hostile}"),
        }],
        view: View::default(),
    }));
    app.handle(token(&format!("answer {hostile} end"), TokenKind::Target));
    // The sources pane, then the chunk popup.
    app.handle(AppEvent::Key(KeyEvent::new(
        KeyCode::F(2),
        KeyModifiers::NONE,
    )));
    for open in [false, true] {
        if open {
            app.handle(AppEvent::Key(KeyEvent::new(
                KeyCode::Tab,
                KeyModifiers::NONE,
            )));
            app.handle(AppEvent::Key(KeyEvent::new(
                KeyCode::Enter,
                KeyModifiers::NONE,
            )));
        }
        let terminal = draw(&app, 100, 30);
        let buffer = terminal.backend().buffer();
        let mut screen = String::new();
        for cell in buffer.content() {
            assert!(
                !cell.symbol().chars().any(rapid_chat::safe_text::is_unsafe),
                "a control character reached a cell: {:?}",
                cell.symbol()
            );
            screen.push_str(cell.symbol());
        }
        assert!(screen.contains("pwned"), "the printable text stays visible");
        if open {
            assert!(screen.contains("chunk"), "the popup is open");
        }
    }
    // The same through the neutralizing pass alone: a cell given a control character directly.
    let mut buf = ratatui::buffer::Buffer::empty(ratatui::layout::Rect::new(0, 0, 4, 1));
    buf[(1, 0)].set_symbol("\x1b");
    ui::neutralize_buffer(&mut buf);
    assert_eq!(buf[(1, 0)].symbol(), "\u{FFFD}");
}

/// An answer's context use is shown against the size it had: a conversation saved under larger
/// contexts must not read "3951/2048" after a restart with smaller ones.
/// The screen's text (120 x 30) after one answer that ended with `stats`.
fn screen_after_answer(stats: Stats) -> String {
    let mut app = app();
    loaded_with(&mut app, 2048, 1536);
    type_and_send(&mut app, "what?");
    app.handle(token("answer", TokenKind::Target));
    app.handle(AppEvent::Engine(Reply::Event(Event::Done(stats))));
    let terminal = draw(&app, 120, 30);
    terminal
        .backend()
        .buffer()
        .content()
        .iter()
        .map(|c| c.symbol())
        .collect::<String>()
}

#[test]
fn context_use_is_shown_against_the_answers_own_context_size() {
    let screen = screen_after_answer;
    let s = screen(Stats {
        target_ctx_tokens: 3951,
        target_n_ctx: 4608,
        draft_ctx_tokens: 1088,
        draft_n_ctx: 1536,
        ..Stats::default()
    });
    assert!(s.contains("3951/4608"), "{s}");
    assert!(s.contains("1088/1536"), "{s}");
    // Saved before the sizes were kept: no impossible fraction.
    let s = screen(Stats {
        target_ctx_tokens: 3951,
        draft_ctx_tokens: 1088,
        ..Stats::default()
    });
    assert!(s.contains("3951 ") && !s.contains("3951/"), "{s}");
    assert!(s.contains("1088/1536"), "{s}");
}

/// A fixed verification batch (a GPU keeping its CUDA graph) is named in the sidebar; rounds of
/// their own lengths say nothing.
#[test]
fn a_fixed_verification_batch_is_named() {
    let screen = |verify_shape| {
        screen_after_answer(Stats {
            verify_shape,
            ..Stats::default()
        })
    };
    assert!(screen(8).contains("8 tokens, fixed"));
    for none in [0, 1] {
        assert!(!screen(none).contains("fixed"));
    }
}

/// Every key hint is made from the keymap: keys rebound in the config are the keys the screen
/// names, in the chat, the input's title, the sources pane and the status line.
#[test]
fn key_hints_name_the_keys_the_config_bound() {
    let extra = [
        ("send", "ctrl-s"),
        ("help", "f5"),
        ("cancel", "ctrl-x"),
        ("focus", "f6"),
    ]
    .into_iter()
    .map(|(a, k)| (a.to_owned(), k.to_owned()))
    .collect();
    let settings = EngineConfig::default();
    let keymap = Keymap::with_overrides(&extra).unwrap();
    let mut app = App::new("/home/me/papers".into(), keymap, settings, Vec::new());
    let screen = |app: &App| {
        let terminal = draw(app, 160, 30);
        let buffer = terminal.backend().buffer();
        let width = buffer.area.width as usize;
        let cells: Vec<&str> = buffer.content().iter().map(|c| c.symbol()).collect();
        cells
            .chunks(width)
            .map(|row| row.concat())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let s = screen(&app);
    assert!(s.contains("Ctrl-S sends; ? or F5 shows the keys."), "{s}");
    assert!(
        s.contains("question (Ctrl-S sends, Alt-Enter new line)"),
        "{s}"
    );
    assert!(s.contains("?/F5 help"), "{s}");
    app.handle(AppEvent::Key(KeyEvent::new(
        KeyCode::Char('q'),
        KeyModifiers::NONE,
    )));
    app.handle(AppEvent::Key(KeyEvent::new(
        KeyCode::Char('s'),
        KeyModifiers::CONTROL,
    )));
    app.handle(AppEvent::Key(KeyEvent::new(
        KeyCode::F(2),
        KeyModifiers::NONE,
    )));
    let s = screen(&app);
    assert!(s.contains("question (Ctrl-X stops the answer)"), "{s}");
    assert!(
        s.contains("sources given to the drafter (F6, j/k, Ctrl-S)"),
        "{s}"
    );
}

#[test]
fn reading_the_documents_shows_the_rate_and_the_time_left() {
    let mut app = app();
    loaded(&mut app);
    type_and_send(&mut app, "What is the date of version 3 of the GPL?");
    app.handle(AppEvent::Engine(Reply::Event(Event::Prefill {
        done: 2400,
        total: 6840,
        seconds: 20.0,
    })));
    let screen = format!("{:?}", draw(&app, 100, 24).backend());
    assert!(
        screen.contains("reading the documents: 2400/6840 tokens, 120/s, 37 s left"),
        "{screen}"
    );
}

/// The session's rate is this run's: an answer loaded with the saved conversation (decoded
/// under other conditions, here at 0.5 tok/s beside a build) does not drag it down.
#[test]
fn the_session_rate_leaves_out_saved_answers() {
    use rapid_chat::runtime::history;
    use rapid_chat::tui::app::Entry;
    let saved = history::Entry {
        question: "earlier?".into(),
        tokens: Vec::new(),
        status: history::Status::Done,
        mode: rapid_chat::config::Mode::Rapid,
        stats: Some(Stats {
            generated_tokens: 10,
            decode_s: 20.0,
            ..Stats::default()
        }),
        sources: Vec::new(),
        view: None,
        rounds: Vec::new(),
        index_changed: false,
        partial_index: None,
    };
    let mut app = App::new(
        "/home/me/papers".into(),
        Keymap::default(),
        EngineConfig::default(),
        vec![Entry::from(&saved)],
    );
    loaded(&mut app);
    // Before this run's first answer: nothing measured yet.
    let before = session_section(&app);
    assert!(before.contains("0 (+1 saved)"), "{before}");
    assert!(before.contains("tok/s      –"), "{before}");
    type_and_send(&mut app, "now?");
    app.handle(token("answer", TokenKind::Target));
    let stats = Stats {
        generated_tokens: 80,
        decode_s: 2.0,
        decode_tok_s: 40.0,
        ..Stats::default()
    };
    let tokens = app.conversation.entries[1].tokens.clone();
    finish(&mut app, tokens, stats);
    let below = session_section(&app);
    assert!(below.contains("1 (+1 saved)"), "{below}");
    // 80 tokens in 2 s: 40.0; with the saved answer it would be 90 in 22 s, 4.1.
    assert!(below.contains("40.0"), "{below}");
    assert!(!below.contains("4.1"), "{below}");
}

/// The sidebar's lines from its "session" heading down (120 x 40).
fn session_section(app: &App) -> String {
    let terminal = draw(app, 120, 40);
    let lines: Vec<String> = (0..40)
        .map(|y| {
            (0..120)
                .map(|x| terminal.backend().buffer()[(x, y)].symbol())
                .collect()
        })
        .collect();
    let session = lines
        .iter()
        .position(|l| l.contains("session"))
        .expect("a session section");
    lines[session..].join("\n")
}
