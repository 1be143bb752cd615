//! The terminal UI. Threads do the slow work (ingest + watch, the engine); this thread only
//! waits on all event sources at once, updates the [`app::App`] state machine, carries out its
//! effects and draws. The terminal is restored on every exit, panics included.

pub mod app;
pub mod keymap;
pub mod markdown;
pub mod ui;

use std::time::Duration;

use anyhow::{Context as _, Result};
use crossbeam_channel::{Receiver, Sender, select};
use crossterm::event::{self as cevent, Event as CEvent, MouseEventKind};
use crossterm::{execute, terminal};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

use crate::runtime::{self, Reply, Request, Runtime, Update, history};
use app::{App, AppEvent, Effect};

/// Runs the UI until the user quits.
pub fn run(opts: runtime::Options) -> Result<()> {
    let keymap = keymap::Keymap::with_overrides(&opts.config.tui.keys)?;
    let theme = ui::Theme::from_config(&opts.config.tui);
    let settings = opts.config.engine.clone();
    let runtime = Runtime::start(opts)?;
    let entries = runtime.saved.iter().map(app::Entry::from).collect();
    let mut app = App::new(
        runtime.root.display().to_string(),
        keymap,
        settings,
        entries,
    );
    app.notice = runtime.notice.clone();

    let mut terminal = setup_terminal()?;
    // The size the first draw has (later ones come as events): paging moves by half of it.
    if let Ok(size) = terminal.size() {
        app.handle(AppEvent::Resize {
            width: size.width,
            height: size.height,
        });
    }
    let result = event_loop(&mut terminal, &mut app, &theme, &runtime);
    restore_terminal();
    result
}

type Term = Terminal<CrosstermBackend<std::io::Stdout>>;

fn setup_terminal() -> Result<Term> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("main") {
            // The UI itself: give the terminal back, then report as usual.
            restore_terminal();
            hook(info);
        } else {
            // A worker thread: printing would draw over the UI; its channel closing tells the
            // UI, which says so on screen.
            tracing::error!(panic = %info, "a background thread panicked");
        }
    }));
    let setup = || -> Result<Term> {
        terminal::enable_raw_mode()
            .context("cannot put the terminal in raw mode (is this a terminal?)")?;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cevent::EnableMouseCapture,
            cevent::EnableBracketedPaste
        )?;
        Ok(Terminal::new(CrosstermBackend::new(std::io::stdout()))?)
    };
    setup().inspect_err(|_| restore_terminal())
}

/// Leaves the terminal as it was: safe to call more than once.
pub fn restore_terminal() {
    let _ = execute!(
        std::io::stdout(),
        cevent::DisableBracketedPaste,
        cevent::DisableMouseCapture,
        terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = terminal::disable_raw_mode();
}

fn spawn_input(tx: Sender<AppEvent>) -> Result<()> {
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            while let Ok(event) = cevent::read() {
                let app_event = match event {
                    CEvent::Key(k) if k.kind != cevent::KeyEventKind::Release => AppEvent::Key(k),
                    CEvent::Paste(text) => AppEvent::Paste(text),
                    CEvent::Mouse(m) => match m.kind {
                        MouseEventKind::ScrollUp => AppEvent::Scroll(3),
                        MouseEventKind::ScrollDown => AppEvent::Scroll(-3),
                        _ => continue,
                    },
                    CEvent::Resize(width, height) => AppEvent::Resize { width, height },
                    _ => continue,
                };
                if tx.send(app_event).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}

fn event_loop(
    terminal: &mut Term,
    app: &mut App,
    theme: &ui::Theme,
    runtime: &Runtime,
) -> Result<()> {
    let (input_tx, input_rx) = crossbeam_channel::unbounded();
    spawn_input(input_tx)?;
    let tick = crossbeam_channel::tick(Duration::from_millis(250));
    // A channel whose sender is gone would wake the loop at once, forever: it is swapped for one
    // that never fires.
    let mut engine_rx: Receiver<Reply> = runtime.replies.clone();
    let mut updates_rx: Receiver<Update> = runtime.updates.clone();
    let mut redraw = true;
    loop {
        if redraw {
            terminal.draw(|f| ui::draw(f, app, theme))?;
        }
        let first = select! {
            recv(input_rx) -> e => match e {
                Ok(e) => Some(e),
                Err(_) => return Err(anyhow::anyhow!("the terminal stopped sending input")),
            },
            recv(engine_rx) -> r => match r {
                Ok(r) => Some(AppEvent::Engine(r)),
                Err(_) => {
                    engine_rx = crossbeam_channel::never();
                    Some(AppEvent::Engine(Reply::LoadFailed(
                        "the engine stopped unexpectedly (see the log file)".into(),
                    )))
                }
            },
            recv(updates_rx) -> u => match u {
                Ok(u) => Some(AppEvent::Corpus(u)),
                Err(_) => {
                    updates_rx = crossbeam_channel::never();
                    None
                }
            },
            recv(tick) -> _ => None,
        };
        // Take everything already waiting before drawing again (tokens arrive fast).
        let mut events: Vec<AppEvent> = first.into_iter().collect();
        events.extend(input_rx.try_iter());
        events.extend(engine_rx.try_iter().map(AppEvent::Engine));
        events.extend(updates_rx.try_iter().map(AppEvent::Corpus));
        // The tick redraws only what moves by itself (an answer's or the index's progress): an
        // idle screen costs nothing.
        redraw = !events.is_empty() || app.conversation.busy() || app.index.progress.is_some();
        for event in events {
            for effect in app.handle(event) {
                match effect {
                    Effect::Ask {
                        question,
                        history,
                        settings,
                    } => runtime.ask(Request::Ask {
                        question,
                        history,
                        settings,
                    }),
                    Effect::Cancel => runtime.cancel(),
                    Effect::Save { path, markdown } => {
                        let note = runtime.save_markdown(&path, &markdown);
                        app.handle(AppEvent::Notice(note));
                    }
                    Effect::Persist => {
                        let entries: Vec<history::Entry> = app
                            .conversation
                            .entries
                            .iter()
                            .map(history::Entry::from)
                            .collect();
                        if let Err(e) = runtime.persist(&entries) {
                            app.handle(AppEvent::Notice(format!(
                                "cannot save the conversation: {e:#}"
                            )));
                        }
                    }
                    Effect::Quit => return Ok(()),
                }
            }
        }
    }
}
