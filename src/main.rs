//! The command line: `rapid-chat [FOLDER]` and the headless commands scripts and tests use.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use rapid_chat::config::{Config, EngineFlags, GpuFlags, Mode};
use rapid_chat::corpus::{CorpusIndex, Report};
use rapid_chat::llm::{Tokenizer, fetch};
use rapid_chat::paths::Dirs;
use rapid_chat::runtime::{self, Corpus};
use rapid_chat::session::Engine;

#[derive(Parser)]
#[command(
    name = "rapid-chat",
    version,
    about = "Ask questions about a folder of long documents \
    with a local LLM, decoded with Retrieval-Augmented Speculative Decoding"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Option<Command>,
    /// Folder of documents (default: the current folder).
    folder: Option<PathBuf>,
    /// Start without the conversation saved for this folder.
    #[arg(long)]
    new: bool,
    #[command(flatten)]
    engine: EngineFlags,
}

#[derive(Args)]
struct Global {
    /// Target model: a GGUF file, or a known model's name (gemma3-270m, smollm2-135m), fetched on
    /// first use (default: gemma3-270m).
    #[arg(long, global = true, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Drafter model: a GGUF file or a known model's name, with the target's vocabulary (default:
    /// the target).
    #[arg(long, global = true, value_name = "PATH")]
    draft_model: Option<PathBuf>,
    /// Config file (default: config.toml in the config directory).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(flatten)]
    gpu: GpuFlags,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch a known model (default: the default model) into the data directory; prints its path.
    FetchModel {
        /// gemma3-270m (the default model) or smollm2-135m.
        #[arg(default_value = fetch::DEFAULT.name)]
        name: String,
        /// List the models it can fetch (name, size, what for, sha256, whether fetched).
        #[arg(long)]
        list: bool,
    },
    /// Ingest and index a folder (incrementally).
    Index {
        folder: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Keep the index current until Ctrl-C, printing each change.
        #[arg(long)]
        watch: bool,
    },
    /// Search a folder's index (updating it first) and print the best chunks.
    Search {
        folder: PathBuf,
        query: String,
        /// Search the index as it is, without bringing it up to date first.
        #[arg(long)]
        no_update: bool,
        /// Number of chunks to print.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Answer a question about a folder: the answer streams to stdout, statistics to stderr.
    Ask(AskArgs),
    /// Measure: every question in every mode, interleaved, with speed-ups over AR measured in
    /// the same run; a Markdown table (or JSON).
    Bench(BenchArgs),
    /// Project rapid's speed on other hardware: records the target's greedy answers to the
    /// questions with the drafter's continuations along them (real model), then replays rapid's
    /// policy under measured cost curves (CSV: depth,prefill_tok_s,G,step_ms).
    Simulate(SimulateArgs),
    /// Measure a cost curve on this machine, as step_cost.cpp does: the decode time of a batch of
    /// G tokens at each depth; prints CSV (depth,prefill_tok_s,G,step_ms) for `simulate`.
    CostCurve(CostCurveArgs),
    /// Serve this machine's devices (its GPUs, else its CPU) to a rapid-chat on another machine,
    /// which adds it with --rpc HOST:PORT (llama.cpp's RPC backend). The protocol has no
    /// authentication: keep it on 127.0.0.1 and reach it through an SSH tunnel.
    Worker {
        /// Address to listen on; anything but 127.0.0.1 lets anyone who can reach it use it.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = rapid_chat::llm::rpc::DEFAULT_PORT)]
        port: u16,
        /// CPU threads for the model's layers when serving the CPU (0 = the number of cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Print the text rapid-chat reads from a document, as it indexes it (pages separated by form
    /// feeds); a caveat goes to stderr.
    Extract { file: PathBuf },
    /// Internal: extract a PDF's pages in a separate process (see corpus::extract).
    #[command(hide = true)]
    ExtractPdf { input: PathBuf, output: PathBuf },
}

#[derive(Args)]
struct AskArgs {
    folder: PathBuf,
    question: String,
    /// Answer from the index as it is, without bringing it up to date first.
    #[arg(long)]
    no_update: bool,
    /// Print one JSON object (answer, tokens with kinds and margins, sources, stats).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineFlags,
}

#[derive(Args)]
struct BenchArgs {
    /// Folder of documents the questions are about (not needed with --tasks).
    folder: Option<PathBuf>,
    /// JSON array of {"question", "answer"} (default: questions.json in FOLDER or its parent).
    #[arg(long, value_name = "FILE")]
    questions: Option<PathBuf>,
    /// Modes to compare, comma-separated.
    #[arg(long, default_value = "ar,rapid,sd,rag", value_delimiter = ',')]
    modes: Vec<Mode>,
    /// Run everything this many times.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Generated retrieval tasks instead of a folder: passkey:N or kv:N (N tokens of text),
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Depths of the planted fact in generated tasks (0 = start, 1 = end).
    #[arg(long, default_value = "0.1,0.3,0.5,0.7,0.9", value_delimiter = ',')]
    depths: Vec<f64>,
    /// Print JSON: a summary per mode and a record per run.
    #[arg(long)]
    json: bool,
    /// Use the folder's index as it is, without bringing it up to date first.
    #[arg(long)]
    no_update: bool,
    #[command(flatten)]
    engine: EngineFlags,
}

#[derive(Args)]
struct SimulateArgs {
    /// Folder of documents the questions are about.
    folder: PathBuf,
    /// JSON array of {"question", "answer"} (default: questions.json in FOLDER or its parent).
    #[arg(long, value_name = "FILE")]
    questions: Option<PathBuf>,
    /// The target's cost curve (CSV from step_cost.cpp or `rapid-chat cost-curve`).
    #[arg(long, value_name = "CSV")]
    target_curve: PathBuf,
    /// The depth the target's curve is read at (default: each question's prompt length).
    #[arg(long, value_name = "N")]
    target_depth: Option<usize>,
    /// The drafter's cost curve (without it: lookups and plain steps only).
    #[arg(long, value_name = "CSV")]
    drafter_curve: Option<PathBuf>,
    /// The depth the drafter's curve is read at (default: each question's drafter prompt).
    #[arg(long, value_name = "N")]
    drafter_depth: Option<usize>,
    /// Read the traces from FILE instead of recording them (written by --save-traces).
    #[arg(long, value_name = "FILE", conflicts_with = "save_traces")]
    traces: Option<PathBuf>,
    /// Write the recorded traces to FILE (token ids of the prompts, answers and drafts).
    #[arg(long, value_name = "FILE")]
    save_traces: Option<PathBuf>,
    /// The longest drafter continuation recorded per position.
    #[arg(long, default_value_t = 16)]
    max_draft: usize,
    /// The extra time of the two rounds after a change of batch shape, in ms (on a GPU: a batch
    /// without its CUDA graph, then a new capture; the log's "verification shapes calibrated"
    /// line shows it). Fixed shapes pay it at their changes; rounds of their own lengths at
    /// every change of length, and the policy prices it as the engine does on a GPU where the
    /// shapes were timed (not with --verify-batch 1).
    #[arg(long, default_value_t = 0.0, value_name = "MS")]
    switch_ms: f64,
    /// Print JSON: {"questions": [{"question", "speedup", ...}], "median", "worst", ...}.
    #[arg(long)]
    json: bool,
    /// Use the folder's index as it is, without bringing it up to date first.
    #[arg(long)]
    no_update: bool,
    #[command(flatten)]
    engine: EngineFlags,
}

#[derive(Args)]
struct CostCurveArgs {
    /// Context depths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    depths: Vec<usize>,
    /// Batch sizes G, comma-separated (default 1 to 17).
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Timed repeats per size (after two untimed).
    #[arg(long, default_value_t = 10)]
    repeats: usize,
    /// Measure the drafter model rather than the target.
    #[arg(long)]
    drafter: bool,
    #[command(flatten)]
    engine: EngineFlags,
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::ExtractPdf { input, output }) = &cli.command {
        if let Err(e) = rapid_chat::corpus::extract::pdf_worker_main(input, output) {
            eprintln!("{e:#}");
            std::process::exit(2);
        }
        return;
    }
    if let Err(e) = run(cli) {
        eprintln!(
            "error: {}",
            rapid_chat::safe_text::neutralize(&format!("{e:#}"))
        );
        std::process::exit(1);
    }
}

/// What every command needs: where things live and the resolved configuration.
struct Ctx {
    dirs: Dirs,
    config: Config,
}

impl Ctx {
    fn new(global: &Global) -> Result<Self> {
        let dirs = Dirs::from_env()?;
        rapid_chat::logging::init(&dirs.log_file())?;
        let mut config = Config::load(global.config.as_deref(), &dirs.config)?;
        if let Some(m) = &global.model {
            config.model = Some(m.clone());
        }
        if let Some(m) = &global.draft_model {
            config.draft_model = Some(m.clone());
        }
        global.gpu.apply(&mut config.gpu);
        config.validate()?;
        Ok(Self { dirs, config })
    }

    /// Sets the command's engine flags over the configuration.
    fn with_flags(mut self, flags: &EngineFlags) -> Result<Self> {
        flags.apply(&mut self.config.engine);
        self.config.validate()?;
        Ok(self)
    }

    fn corpus(&self, folder: &Path) -> Result<Corpus> {
        Corpus::open(&self.config, &self.dirs, folder, &pdf_worker()?)
    }

    /// The folder's index, brought up to date first unless `update` is false; what that did
    /// and cost goes to stderr.
    fn current_index(&self, folder: &Path, update: bool) -> Result<CorpusIndex> {
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
fn pdf_worker() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the rapid-chat executable")
}

fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new(&cli.global)?.with_flags(&cli.engine)?;
    match cli.command {
        Some(Command::FetchModel { list: true, .. }) => {
            let dir = ctx.dirs.models();
            for m in fetch::KNOWN_MODELS {
                let fetched = if dir.join(m.file_name).is_file() {
                    "fetched"
                } else {
                    "not fetched"
                };
                println!(
                    "{:<14} {:>4} MB  {}\n               {} ({fetched})\n               sha256 {}",
                    m.name,
                    m.size / 1_000_000,
                    m.about,
                    m.file_name,
                    m.sha256
                );
            }
            Ok(())
        }
        Some(Command::Worker {
            host,
            port,
            threads,
        }) => worker_command(&ctx, &host, port, threads),
        Some(Command::FetchModel { name, .. }) => {
            let model = fetch::known(&name)?;
            let path = fetch::ensure(model, &ctx.dirs.models(), false)?;
            println!("{}", path.display());
            Ok(())
        }
        Some(Command::Index {
            folder,
            json,
            watch,
        }) => index_command(&ctx, &folder, json, watch),
        Some(Command::Search {
            folder,
            query,
            top,
            json,
            no_update,
        }) => search_command(&ctx, &folder, &query, top, json, !no_update),
        Some(Command::Extract { file }) => extract_command(&ctx, &file),
        Some(Command::Ask(args)) => ask_command(ctx, &args),
        Some(Command::Bench(args)) => bench_command(ctx, &args),
        Some(Command::Simulate(args)) => simulate_command(ctx, &args),
        Some(Command::CostCurve(args)) => cost_curve_command(ctx, &args),
        Some(Command::ExtractPdf { .. }) => unreachable!("handled before logging starts"),
        None => {
            let folder = cli.folder.unwrap_or_else(|| PathBuf::from("."));
            if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
                anyhow::bail!(
                    "the chat UI needs a terminal; for scripts use `rapid-chat ask FOLDER \"QUESTION\"`"
                );
            }
            rapid_chat::tui::run(runtime::Options {
                folder,
                pdf_worker: pdf_worker()?,
                config: ctx.config,
                dirs: ctx.dirs,
                new: cli.new,
            })
        }
    }
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress_bar() -> indicatif::ProgressBar {
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
fn show(bar: &indicatif::ProgressBar, p: &rapid_chat::corpus::Progress, started: Instant) {
    bar.set_position((p.fraction() * 1000.0) as u64);
    bar.set_message(format!(
        "{}  {}",
        runtime::index_gauge(p, started.elapsed().as_secs_f64()),
        line(&p.path)
    ));
}

/// Untrusted text (file names, documents, model output) on one line, safe for a terminal.
fn line(text: &str) -> std::borrow::Cow<'_, str> {
    rapid_chat::safe_text::neutralize_line(text)
}

fn print_report(report: &Report, seconds: f64) {
    println!(
        "{} files indexed, {} unchanged, {} removed; {} chunks in the index ({seconds:.2} s)",
        report.files_indexed, report.files_unchanged, report.files_removed, report.chunks
    );
    for s in &report.files_skipped {
        println!("  skipped {}: {}", line(&s.path), line(&s.reason));
    }
    for w in &report.warnings {
        println!("  note {}: {}", line(&w.path), line(&w.reason));
    }
}

fn index_command(ctx: &Ctx, folder: &Path, json: bool, watch: bool) -> Result<()> {
    let mut corpus = ctx.corpus(folder)?;
    let started = Instant::now();
    let bar = progress_bar();
    let report = corpus.update(&mut |p| show(&bar, p, started));
    bar.finish_and_clear();
    let report = report?.with_context(|| {
        format!(
            "{}: wait for it to finish or quit it",
            corpus.held.as_deref().unwrap_or("the index is held")
        )
    })?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        files = report.files_indexed,
        bytes = report.bytes_read,
        chunks = report.chunks_made,
        seconds,
        "index pass"
    );
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report, seconds);
    }
    if watch {
        use rapid_chat::runtime::WatchEvent;
        let (tx, rx) = crossbeam_channel::unbounded();
        let indexer = corpus.into_indexer().context("the index is held")?;
        let _watcher = rapid_chat::corpus::watch::Watcher::start(
            indexer,
            std::time::Duration::from_millis(500),
            &report.files_skipped,
            tx,
        )?;
        eprintln!("Watching {} (Ctrl-C to stop)", folder.display());
        for event in rx {
            // One line per change; the chunk count after a pass is not a change of its own.
            if let WatchEvent::Updated { .. } = event {
                continue;
            }
            println!("{}", line(&event.to_string()));
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}

fn extract_command(ctx: &Ctx, file: &Path) -> Result<()> {
    use rapid_chat::corpus::extract;
    let kind = extract::kind_of(file, &ctx.config.text_extensions()).with_context(|| {
        format!(
            "{} is not a document rapid-chat indexes (PDF, Markdown, text, or              corpus.extra_extensions)",
            file.display()
        )
    })?;
    let limits = extract::Limits::of(&ctx.config.corpus, pdf_worker()?);
    let doc = extract::extract(file, kind, &limits)
        .map_err(|s| anyhow::anyhow!("{}: {s}", file.display()))?;
    if let Some(w) = &doc.warning {
        eprintln!("note: {w}");
    }
    let text = doc
        .pages
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join("\x0c");
    let mut stdout = std::io::stdout().lock();
    if stdout.is_terminal() {
        writeln!(stdout, "{}", rapid_chat::safe_text::neutralize(&text))?;
    } else {
        writeln!(stdout, "{text}")?;
    }
    Ok(())
}

/// Serves this machine's devices until killed; warns when the address is not this machine only.
fn worker_command(ctx: &Ctx, host: &str, port: u16, threads: usize) -> Result<()> {
    use rapid_chat::llm::rpc;
    let host = &rpc::worker_host(host)?;
    if !rpc::is_loopback(host) {
        eprintln!(
            "warning: llama.cpp's RPC protocol has no authentication and no encryption: anyone \
             who can reach {host}:{port} can run code on this worker's devices and read what it \
             computes. Listen on 127.0.0.1 and reach it through an SSH tunnel instead \
             (on the main machine: ssh -N -L {port}:127.0.0.1:{port} THIS_HOST, then --rpc \
             127.0.0.1:{port})."
        );
    }
    let threads = if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    eprintln!(
        "rapid-chat worker on {host}:{port}: add it with `rapid-chat --rpc {host}:{port}` on the \
         main machine (Ctrl-C stops it)"
    );
    let cache = ctx.dirs.cache.join("rpc");
    let cache = std::fs::create_dir_all(&cache).ok().map(|()| cache);
    rpc::serve(host, port, threads, cache.as_deref())
}

/// With workers, a worker that fails ends the command with an error naming it (llama.cpp would
/// abort, or wait forever on it).
fn exit_when_a_worker_fails(workers: &[String]) {
    if workers.is_empty() {
        return;
    }
    let workers = workers.to_vec();
    rapid_chat::llm::rpc::on_failure(move |failure| {
        eprintln!(
            "\nerror: {}; run again without it (leave it out of --rpc)",
            rapid_chat::llm::rpc::describe_failure(&workers, &failure)
        );
        rapid_chat::llm::rpc::exit_now(1);
    });
}

fn ask_command(ctx: Ctx, args: &AskArgs) -> Result<()> {
    use rapid_chat::speculative::{Event, Flow};
    let ctx = ctx.with_flags(&args.engine)?;
    let index = ctx.current_index(&args.folder, !args.no_update)?;
    exit_when_a_worker_fails(&ctx.config.gpu.rpc);
    let mut engine = Engine::load(&ctx.config, &ctx.dirs)?;
    let settings = &ctx.config.engine;
    let tty = std::io::stderr().is_terminal();
    let mut stdout = std::io::stdout();
    let json = args.json;
    let mut sink = |event: Event| {
        match event {
            Event::Prefill {
                done,
                total,
                seconds,
            } if tty && !json => {
                eprint!(
                    "\r\x1b[Kreading the documents: {}",
                    runtime::gauge(done, total, "tokens", seconds)
                );
                if done == total {
                    eprint!("\r\x1b[K");
                }
            }
            Event::Token(t) if !json => {
                let _ = write!(stdout, "{}", rapid_chat::safe_text::neutralize(&t.text));
                let _ = stdout.flush();
            }
            _ => {}
        }
        Flow::Continue
    };
    let answer = engine.answer(&index, &args.question, &[], settings, &mut sink)?;
    let s = &answer.output.stats;
    if json {
        let value = serde_json::json!({
            "answer": answer.output.text,
            "mode": answer.mode,
            "device": engine.device(),
            "contexts": engine.sizes(),
            "tokens": answer.output.tokens,
            "sources": answer.sources,
            "view": answer.view,
            "stats": s,
        });
        println!("{value}");
    } else {
        println!();
        eprintln!(
            "[{}] {} tokens, {:.1} tok/s, {} plain steps' speed; drafted {}, accepted {} \
             ({:.0}%), {:.2} tokens/round; prefill {} tokens in {:.1} s; first token after {:.2} s; \
             documents in view: {} of {} chunks; {}; contexts: {}",
            answer.mode,
            s.generated_tokens,
            s.decode_tok_s,
            // 0: no plain step was measured (e.g. sd, which always drafts).
            if s.speedup > 0.0 {
                format!("{:.2}x", s.speedup)
            } else {
                "unmeasured".into()
            },
            s.drafted,
            s.accepted,
            s.acceptance_rate * 100.0,
            s.mean_accepted_len,
            s.prefill_tokens,
            s.prefill_s,
            s.ttft_s,
            answer.view.chunks_in_view,
            answer.view.chunks_total,
            engine.device(),
            engine.sizes().describe(),
        );
    }
    Ok(())
}

fn simulate_command(ctx: Ctx, args: &SimulateArgs) -> Result<()> {
    use rapid_chat::simulate::{self, CurveTable, Trace};
    use rapid_chat::speculative::replay::Replaying;
    let ctx = ctx.with_flags(&args.engine)?;
    let target = CurveTable::read(&args.target_curve)?;
    let drafter = args
        .drafter_curve
        .as_deref()
        .map(CurveTable::read)
        .transpose()?;
    let traces: Vec<Trace> = match &args.traces {
        Some(path) => serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the traces {}", path.display()))?,
        )
        .with_context(|| format!("{} holds no traces", path.display()))?,
        None => {
            let mut settings = ctx.config.engine.clone();
            settings.temp = 0.0;
            let (index, questions) = folder_questions(
                &ctx,
                &args.folder,
                args.questions.as_deref(),
                !args.no_update,
            )?;
            exit_when_a_worker_fails(&ctx.config.gpu.rpc);
            let mut engine = Engine::load(&ctx.config, &ctx.dirs)?;
            let mut traces = Vec::new();
            for (i, q) in questions.iter().enumerate() {
                let started = Instant::now();
                let t =
                    simulate::record(&mut engine, &index, &q.question, &settings, args.max_draft)?;
                eprintln!(
                    "[{}/{}] traced {} answer tokens ({} prompt, {} drafter prompt) in {:.1} s",
                    i + 1,
                    questions.len(),
                    t.answer.len(),
                    t.prompt.len(),
                    t.draft_prompt.len(),
                    started.elapsed().as_secs_f64()
                );
                traces.push(t);
            }
            if let Some(path) = &args.save_traces {
                std::fs::write(path, serde_json::to_string(&traces)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            traces
        }
    };
    anyhow::ensure!(
        args.switch_ms >= 0.0 && args.switch_ms.is_finite(),
        "--switch-ms must be 0 or more"
    );
    let replaying = Replaying {
        drafter: drafter.is_some(),
        switch_s: args.switch_ms / 1e3,
        ..Replaying::of(&ctx.config.engine)
    };
    let report = simulate::project_all(
        &traces,
        &target,
        args.target_depth,
        drafter.as_ref().map(|d| (d, args.drafter_depth)),
        &replaying,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let depth = |d: Option<usize>| d.map_or("each question's prompt".into(), |d| d.to_string());
        println!(
            "target curve {} at depth {}; drafter curve {}\n",
            args.target_curve.display(),
            depth(args.target_depth),
            args.drafter_curve
                .as_ref()
                .map_or("none (lookups only)".into(), |p| format!(
                    "{} at depth {}",
                    p.display(),
                    depth(args.drafter_depth)
                )),
        );
        print!("{}", simulate::markdown(&report));
    }
    Ok(())
}

fn cost_curve_command(ctx: Ctx, args: &CostCurveArgs) -> Result<()> {
    let ctx = ctx.with_flags(&args.engine)?;
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let sizes: Vec<usize> = if args.sizes.is_empty() {
        (1..=17).collect()
    } else {
        args.sizes.clone()
    };
    anyhow::ensure!(
        sizes.iter().all(|&g| g >= 1),
        "--sizes: batch sizes start at 1"
    );
    let engine = Engine::load(&ctx.config, &ctx.dirs)?;
    println!("depth,prefill_tok_s,G,step_ms");
    for &depth in &args.depths {
        let (rate, curve) = engine.cost_curve(args.drafter, depth, &sizes, args.repeats)?;
        println!("{depth},{rate:.0},0,0");
        for (g, ms) in curve {
            println!("{depth},{rate:.0},{g},{ms:.3}");
        }
    }
    Ok(())
}

/// The folder's current index and its questions file (`questions`, else questions.json in the
/// folder or its parent).
fn folder_questions(
    ctx: &Ctx,
    folder: &Path,
    questions: Option<&Path>,
    update: bool,
) -> Result<(CorpusIndex, Vec<rapid_chat::bench::Question>)> {
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
    Ok((index, rapid_chat::bench::load_questions(&file)?))
}

fn bench_command(ctx: Ctx, args: &BenchArgs) -> Result<()> {
    use rapid_chat::bench::{self, Task};
    let ctx = ctx.with_flags(&args.engine)?;
    let modes = args.modes.clone();
    anyhow::ensure!(!modes.is_empty(), "--modes: name at least one mode");
    anyhow::ensure!(args.repeat >= 1, "--repeat must be at least 1");
    let mut tasks: Vec<Task> = Vec::new();
    if args.tasks.is_empty() {
        let folder = args
            .folder
            .as_deref()
            .context("name a FOLDER with questions (or generate tasks with --tasks passkey:N)")?;
        let (index, questions) =
            folder_questions(&ctx, folder, args.questions.as_deref(), !args.no_update)?;
        for (i, q) in questions.into_iter().enumerate() {
            tasks.push(Task {
                name: format!("q{}", i + 1),
                index: index.clone(),
                question: q,
            });
        }
    } else {
        let model = fetch::model_path(ctx.config.model.as_deref(), &ctx.dirs.models())?;
        let tokenizer = Tokenizer::load(&model)?;
        let root = ctx.dirs.cache.join("bench");
        for task in &args.tasks {
            let (kind, n) = bench::parse_task(task)?;
            for &depth in &args.depths {
                anyhow::ensure!(
                    (0.0..=1.0).contains(&depth),
                    "--depths: {depth} is not in [0, 1]"
                );
                let folder = bench::task_folder(&root, kind, n, depth);
                let seed = ctx.config.engine.seed ^ (n as u64) << 8 ^ (depth * 1000.0) as u64;
                let g = bench::generate(kind, n, depth, seed, &|s| tokenizer.count(s));
                std::fs::create_dir_all(&folder)
                    .with_context(|| format!("cannot create {}", folder.display()))?;
                let doc = folder.join("document.txt");
                if std::fs::read_to_string(&doc).ok().as_deref() != Some(g.text.as_str()) {
                    std::fs::write(&doc, &g.text)
                        .with_context(|| format!("cannot write {}", doc.display()))?;
                }
                tasks.push(Task {
                    name: format!("{task}@{depth}"),
                    index: ctx.current_index(&folder, !args.no_update)?,
                    question: g.question,
                });
            }
        }
    }
    exit_when_a_worker_fails(&ctx.config.gpu.rpc);
    let mut engine = Engine::load(&ctx.config, &ctx.dirs)?;
    let settings = ctx.config.engine.clone();
    let plan = bench::Plan {
        modes: modes.clone(),
        repeat: args.repeat,
        settings,
    };
    let total = tasks.len() * modes.len() * args.repeat;
    let mut done = 0;
    let runs = bench::run(&mut engine, &tasks, &plan, &mut |r| {
        done += 1;
        eprintln!(
            "[{done}/{total}] {} {:<5} {:6.1} tok/s  acceptance {:.2}  {} tokens{}",
            r.task,
            r.mode.to_string(),
            r.tok_s,
            r.acceptance,
            r.stats.generated_tokens,
            match r.correct {
                Some(true) => "  correct",
                Some(false) => "  wrong",
                None => "",
            }
        );
    })?;
    let summaries = bench::summarize(&runs, &modes);
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "summary": summaries, "runs": runs })
        );
    } else {
        let e = &ctx.config.engine;
        println!(
            "{} questions x {} modes x {} repeats; contexts (the last question's): {}; retrieval \
             {}, gamma {}, lookup {}, adaptive {}, eta {}, temp {}, max tokens {}; {}\n",
            tasks.len(),
            modes.len(),
            args.repeat,
            engine.sizes().describe(),
            e.retrieval_budget,
            e.gamma,
            e.lookup,
            e.adaptive,
            e.eta,
            e.temp,
            e.max_tokens,
            engine.device(),
        );
        let curve = runs
            .iter()
            .rev()
            .find(|r| r.mode == Mode::Rapid && !r.stats.verify_curve.is_empty())
            .map(|r| r.stats.verify_curve.as_slice());
        print!("{}", bench::markdown(&summaries, curve));
    }
    Ok(())
}

fn search_command(
    ctx: &Ctx,
    folder: &Path,
    query: &str,
    top: usize,
    json: bool,
    update: bool,
) -> Result<()> {
    let index = ctx.current_index(folder, update)?;
    let hits = index.search(query, top)?;
    if json {
        println!("{}", serde_json::to_string(&hits)?);
        return Ok(());
    }
    print_hits(&hits);
    Ok(())
}

fn print_hits(hits: &[rapid_chat::corpus::Hit]) {
    if hits.is_empty() {
        println!("no matches");
    }
    let tty = std::io::stdout().is_terminal();
    for (i, h) in hits.iter().enumerate() {
        let page = h.page.map(|p| format!(" p.{p}")).unwrap_or_default();
        println!(
            "{}. {}{page} [{}..{}] score {:.2}",
            i + 1,
            line(&h.path),
            h.start,
            h.end,
            h.score
        );
        let snippet = line(&h.snippet);
        let snippet = if tty {
            let mut out = String::new();
            for (k, part) in snippet.split("**").enumerate() {
                if k % 2 == 1 {
                    out.push_str(&format!("\x1b[1m{part}\x1b[0m"));
                } else {
                    out.push_str(part);
                }
            }
            out
        } else {
            snippet.into_owned()
        };
        println!("   {snippet}");
    }
}
