//! The terminal UI. Threads do the slow work (ingest + watch, the engine); this thread only
//! waits on all event sources at once, updates the [`app::App`] state machine, carries out its
//! effects and draws. The terminal is restored on every exit, panics included.

pub mod app;
pub mod keymap;
pub mod markdown;
pub mod ui;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use crossbeam_channel::{Receiver, Sender, select};
use crossterm::event::{self as cevent, Event as CEvent, MouseEventKind};
use crossterm::{execute, terminal};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::corpus::{CorpusIndex, Indexer};
use crate::llm::{Models, Tokenizer};
use crate::paths::Dirs;
use crate::session::worker::{Request, Worker};
use crate::session::{Engine, TurnSettings};
use app::{App, AppEvent, Effect, Entry};

/// What the UI needs to start.
pub struct Options {
    pub folder: PathBuf,
    pub config: Config,
    pub dirs: Dirs,
    pub model: PathBuf,
    pub pdf_worker: PathBuf,
    /// Start without the saved conversation.
    pub new: bool,
}

/// A conversation saved for a folder.
#[derive(Serialize, Deserialize)]
struct Saved {
    folder: String,
    entries: Vec<Entry>,
}

fn history_file(dirs: &Dirs, root: &Path) -> PathBuf {
    let key = crate::corpus::extract::content_hash(root.to_string_lossy().as_bytes());
    dirs.data
        .join("history")
        .join(format!("{}.json", &key[..16]))
}

fn load_history(path: &Path) -> Result<Vec<Entry>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice::<Saved>(&bytes)
            .with_context(|| format!("unreadable conversation {}", path.display()))?
            .entries),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn save_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("no parent folder")?;
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)?;
    Ok(())
}

/// Runs the UI until the user quits.
pub fn run(opts: Options) -> Result<()> {
    let Options {
        folder,
        config,
        dirs,
        model,
        pdf_worker,
        new,
    } = opts;
    let keymap = keymap::Keymap::with_overrides(&config.tui.keys)?;
    let theme = ui::Theme::from_config(&config.tui);
    let settings = TurnSettings::from_config(&config.engine)?;
    let root = crate::corpus::index::corpus_root(&folder)?;
    let tokenizer = Arc::new(Tokenizer::load(&model)?);

    let (ui_tx, ui_rx) = crossbeam_channel::unbounded::<AppEvent>();
    let mut read_only = None;
    let index = match Indexer::open(&dirs.indexes(), &root, tokenizer, &config, pdf_worker) {
        Ok(indexer) => {
            let reader = indexer.reader()?;
            spawn_ingest(indexer, ui_tx.clone())?;
            reader
        }
        Err(e) if crate::corpus::index::IndexHeld::is(&e) => {
            read_only = Some(format!("{e:#}; read-only view"));
            CorpusIndex::open(&dirs.indexes(), &root)?
        }
        Err(e) => return Err(e),
    };

    let (engine_tx, engine_rx) = crossbeam_channel::unbounded();
    let engine_config = config.engine.clone();
    let draft_model = config.draft_model.clone();
    let target = model.clone();
    let kv_dir = dirs.kv_cache();
    let worker = Worker::spawn(
        move || {
            let models = Models::load(&target, draft_model.as_deref(), engine_config.gpu_layers)?;
            let mut engine = Engine::new(models, &engine_config)?;
            engine.set_kv_cache(crate::session::kv_cache(&engine_config, kv_dir));
            Ok((engine, engine_config.gpu_layers))
        },
        index,
        engine_tx,
    )?;

    let history_path = history_file(&dirs, &root);
    let (entries, history_note) = if new {
        (Vec::new(), None)
    } else {
        match load_history(&history_path) {
            Ok(e) => (e, None),
            Err(e) => (Vec::new(), Some(format!("{e:#}: starting afresh"))),
        }
    };
    let mut app = App::new(root.display().to_string(), keymap, settings, entries);
    app.notice = read_only.or(history_note);

    let mut terminal = setup_terminal()?;
    let result = event_loop(
        &mut terminal,
        &mut app,
        &theme,
        &ui_rx,
        &engine_rx,
        &worker,
        &history_path,
    );
    restore_terminal();
    result
}

/// Indexes the folder (committing as it goes, so questions can be asked meanwhile), then keeps
/// it current with the watcher; all of it reported to the UI.
fn spawn_ingest(mut indexer: Indexer, tx: Sender<AppEvent>) -> Result<()> {
    std::thread::Builder::new()
        .name("ingest".into())
        .spawn(move || {
            let report = indexer.update(&mut |p| {
                let _ = tx.send(AppEvent::IndexProgress {
                    done: p.done,
                    total: p.total,
                });
            });
            match report {
                Ok(r) => {
                    let _ = tx.send(AppEvent::IndexDone {
                        chunks: r.chunks,
                        skipped: r.files_skipped.len(),
                        indexed: r.files_indexed,
                    });
                }
                Err(e) => {
                    let _ = tx.send(AppEvent::Notice(format!("indexing failed: {e:#}")));
                }
            }
            let (wtx, wrx) = crossbeam_channel::unbounded();
            match crate::corpus::watch::Watcher::start(indexer, Duration::from_millis(500), wtx) {
                Ok(_watcher) => {
                    for event in wrx {
                        if tx.send(AppEvent::Watch(event)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(AppEvent::Notice(format!("not watching the folder: {e:#}")));
                }
            }
        })?;
    Ok(())
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

#[allow(clippy::too_many_arguments)]
fn event_loop(
    terminal: &mut Term,
    app: &mut App,
    theme: &ui::Theme,
    ui_rx: &Receiver<AppEvent>,
    engine_rx: &Receiver<crate::session::worker::Reply>,
    worker: &Worker,
    history_path: &Path,
) -> Result<()> {
    let (input_tx, input_rx) = crossbeam_channel::unbounded();
    spawn_input(input_tx)?;
    let tick = crossbeam_channel::tick(Duration::from_millis(250));
    // A channel whose sender is gone would wake the loop at once, forever: it is swapped for one
    // that never fires.
    let mut engine_rx = engine_rx.clone();
    loop {
        terminal.draw(|f| ui::draw(f, app, theme))?;
        let first = select! {
            recv(input_rx) -> e => match e {
                Ok(e) => Some(e),
                Err(_) => return Err(anyhow::anyhow!("the terminal stopped sending input")),
            },
            recv(engine_rx) -> r => match r {
                Ok(r) => Some(AppEvent::Engine(r)),
                Err(_) => {
                    engine_rx = crossbeam_channel::never();
                    Some(AppEvent::Engine(crate::session::worker::Reply::LoadFailed(
                        "the engine stopped unexpectedly (see the log file)".into(),
                    )))
                }
            },
            recv(ui_rx) -> e => e.ok(),
            recv(tick) -> _ => None,
        };
        // Take everything already waiting before drawing again (tokens arrive fast).
        let mut events: Vec<AppEvent> = first.into_iter().collect();
        events.extend(input_rx.try_iter());
        events.extend(engine_rx.try_iter().map(AppEvent::Engine));
        events.extend(ui_rx.try_iter());
        for event in events {
            for effect in app.handle(event) {
                match effect {
                    Effect::Ask {
                        question,
                        history,
                        settings,
                    } => worker.ask(Request::Ask {
                        question,
                        history,
                        settings,
                    }),
                    Effect::Cancel => worker.cancel(),
                    Effect::Save { path, markdown } => {
                        let note = match save_atomic(&path, markdown.as_bytes()) {
                            Ok(()) => format!("saved the conversation to {}", path.display()),
                            Err(e) => format!("cannot save to {}: {e:#}", path.display()),
                        };
                        app.handle(AppEvent::Notice(note));
                    }
                    Effect::Persist => {
                        let saved = Saved {
                            folder: app.folder.clone(),
                            entries: app.conversation.entries.clone(),
                        };
                        if let Err(e) = serde_json::to_vec(&saved)
                            .map_err(anyhow::Error::from)
                            .and_then(|b| save_atomic(history_path, &b))
                        {
                            tracing::warn!(error = %format!("{e:#}"), "cannot save the conversation");
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
