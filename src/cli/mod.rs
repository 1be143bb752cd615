//! The bodies of the headless commands and of the chat UI's start, behind `src/main.rs`'s
//! parsing: what each command prints and how it uses the runtime, the bench and the simulator.

pub mod answer;
pub mod corpus;
pub mod measure;
pub mod models;
pub mod serve;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result};

use crate::config::{Config, EngineFlags, GpuFlags};
use crate::corpus::CorpusIndex;
use crate::paths::Dirs;
use crate::runtime::{self, Corpus};

/// What every command needs: where things live and the resolved configuration.
pub struct Ctx {
    pub dirs: Dirs,
    pub config: Config,
}

impl Ctx {
    /// The directories, the log file and the configuration: `config_file` (else the config
    /// directory's), then the models and GPU flags given on the command line.
    pub fn new(
        config_file: Option<&Path>,
        model: Option<&Path>,
        draft_model: Option<&Path>,
        gpu: &GpuFlags,
    ) -> Result<Self> {
        let dirs = Dirs::from_env()?;
        crate::logging::init(&dirs.log_file())?;
        let mut config = Config::load(config_file, &dirs.config)?;
        if let Some(m) = model {
            config.model = Some(m.to_path_buf());
        }
        if let Some(m) = draft_model {
            config.draft_model = Some(m.to_path_buf());
        }
        gpu.apply(&mut config.gpu);
        config.validate()?;
        Ok(Self { dirs, config })
    }

    /// Sets the command's engine flags over the configuration.
    pub fn with_flags(mut self, flags: &EngineFlags) -> Result<Self> {
        flags.apply(&mut self.config.engine);
        self.config.validate()?;
        Ok(self)
    }

    pub fn corpus(&self, folder: &Path) -> Result<Corpus> {
        Corpus::open(&self.config, &self.dirs, folder, &exe()?)
    }

    /// The folder's index, brought up to date first unless `update` is false; what that did
    /// and cost goes to stderr.
    pub fn current_index(&self, folder: &Path, update: bool) -> Result<CorpusIndex> {
        let bar = progress_bar();
        let started = Instant::now();
        let index = runtime::current_index(
            &self.config,
            &self.dirs,
            folder,
            update,
            &mut |p| show(&bar, p, started),
            &mut |note| {
                bar.suspend(|| eprintln!("{}", line(&note)));
            },
        );
        bar.finish_and_clear();
        index
    }
}

/// The rapid-chat executable, which extracts PDFs in a child process.
pub fn exe() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the rapid-chat executable")
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
pub fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(1000);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}

/// An indexing pass's progress on `bar`: by bytes, with the time left.
pub fn show(bar: &indicatif::ProgressBar, p: &crate::corpus::Progress, started: Instant) {
    bar.set_position((p.fraction() * 1000.0) as u64);
    bar.set_message(format!(
        "{}  {}",
        runtime::index_gauge(p, started.elapsed().as_secs_f64()),
        line(&p.path)
    ));
}

/// Untrusted text (file names, documents, model output) on one line, safe for a terminal.
pub fn line(text: &str) -> std::borrow::Cow<'_, str> {
    crate::safe_text::neutralize_line(text)
}

/// With workers, a worker that fails ends the command with an error naming it (llama.cpp would
/// abort, or wait forever on it).
pub fn exit_when_a_worker_fails(workers: &[String]) {
    if workers.is_empty() {
        return;
    }
    let workers = workers.to_vec();
    crate::llm::rpc::on_failure(move |failure| {
        eprintln!(
            "\nerror: {}; run again without it (leave it out of --rpc)",
            crate::llm::rpc::describe_failure(&workers, &failure)
        );
        crate::llm::rpc::exit_now(1);
    });
}

/// The folder's current index and its questions file (`questions`, else questions.json in the
/// folder or its parent).
pub fn folder_questions(
    ctx: &Ctx,
    folder: &Path,
    questions: Option<&Path>,
    update: bool,
) -> Result<(CorpusIndex, Vec<crate::bench::Question>)> {
    let file = match questions {
        Some(f) => f.to_path_buf(),
        None => [
            folder.join("questions.json"),
            folder.join("../questions.json"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no questions.json in {} or its parent: pass --questions FILE",
                folder.display()
            )
        })?,
    };
    let index = ctx.current_index(folder, update)?;
    Ok((index, crate::bench::load_questions(&file)?))
}
