//! The command line: `rapid-chat [FOLDER]` and the headless commands scripts and tests use,
//! parsed here; their bodies are in `rapid_chat::cli`.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use rapid_chat::cli::answer::AskArgs;
use rapid_chat::cli::measure::{BenchArgs, CostCurveArgs, SimulateArgs};
use rapid_chat::cli::{Ctx, answer, corpus, measure, models};
use rapid_chat::config::{EngineFlags, GpuFlags};
use rapid_chat::llm::fetch;

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
    /// Serve the folder's answers behind an OpenAI-compatible API (POST /v1/chat/completions,
    /// GET /v1/models, /health, /metrics), indexing and watching it as the chat UI does.
    Serve(rapid_chat::cli::serve::ServeArgs),
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

fn main() {
    let cli = Cli::parse();
    if let Some(Command::ExtractPdf { input, output }) = &cli.command {
        if let Err(e) = rapid_chat::corpus::extract::extract_pdf_main(input, output) {
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

fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    let ctx = Ctx::new(
        g.config.as_deref(),
        g.model.as_deref(),
        g.draft_model.as_deref(),
        &g.gpu,
    )?
    .with_flags(&cli.engine)?;
    match cli.command {
        Some(Command::FetchModel { list: true, .. }) => {
            models::list_models(&ctx);
            Ok(())
        }
        Some(Command::FetchModel { name, .. }) => models::fetch_model(&ctx, &name),
        Some(Command::Worker {
            host,
            port,
            threads,
        }) => models::worker_command(&ctx, &host, port, threads),
        Some(Command::Index {
            folder,
            json,
            watch,
        }) => corpus::index_command(&ctx, &folder, json, watch),
        Some(Command::Search {
            folder,
            query,
            top,
            json,
            no_update,
        }) => corpus::search_command(&ctx, &folder, &query, top, json, !no_update),
        Some(Command::Extract { file }) => corpus::extract_command(&ctx, &file),
        Some(Command::Ask(args)) => answer::ask_command(ctx, &args),
        Some(Command::Bench(args)) => measure::bench_command(ctx, &args),
        Some(Command::Serve(args)) => rapid_chat::cli::serve::serve_command(ctx, &args),
        Some(Command::Simulate(args)) => measure::simulate_command(ctx, &args),
        Some(Command::CostCurve(args)) => measure::cost_curve_command(ctx, &args),
        Some(Command::ExtractPdf { .. }) => unreachable!("handled before logging starts"),
        None => answer::chat(
            ctx,
            cli.folder.unwrap_or_else(|| PathBuf::from(".")),
            cli.new,
        ),
    }
}
