//! Measuring: `bench` (modes side by side), `simulate` (projections on cost curves) and
//! `cost-curve` (this machine's curve).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::Args;

use super::{Ctx, exit_when_a_worker_fails, folder_questions};
use crate::config::{EngineFlags, Mode};
use crate::llm::{Tokenizer, fetch};
use crate::session::Engine;

#[derive(Args)]
pub struct BenchArgs {
    /// Folder of documents the questions are about (not needed with --tasks).
    pub folder: Option<PathBuf>,
    /// JSON array of {"question", "answer"} (default: questions.json in FOLDER or its parent).
    #[arg(long, value_name = "FILE")]
    pub questions: Option<PathBuf>,
    /// Modes to compare, comma-separated.
    #[arg(long, default_value = "ar,rapid,sd,rag", value_delimiter = ',')]
    pub modes: Vec<Mode>,
    /// Run everything this many times.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Generated retrieval tasks instead of a folder: passkey:N or kv:N (N tokens of text),
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub tasks: Vec<String>,
    /// Depths of the planted fact in generated tasks (0 = start, 1 = end).
    #[arg(long, default_value = "0.1,0.3,0.5,0.7,0.9", value_delimiter = ',')]
    pub depths: Vec<f64>,
    /// Print JSON: a summary per mode and a record per run.
    #[arg(long)]
    pub json: bool,
    /// Use the folder's index as it is, without bringing it up to date first.
    #[arg(long)]
    pub no_update: bool,
    #[command(flatten)]
    pub engine: EngineFlags,
}

#[derive(Args)]
pub struct SimulateArgs {
    /// Folder of documents the questions are about.
    pub folder: PathBuf,
    /// JSON array of {"question", "answer"} (default: questions.json in FOLDER or its parent).
    #[arg(long, value_name = "FILE")]
    pub questions: Option<PathBuf>,
    /// The target's cost curve (CSV from step_cost.cpp or `rapid-chat cost-curve`).
    #[arg(long, value_name = "CSV")]
    pub target_curve: PathBuf,
    /// The depth the target's curve is read at (default: each question's prompt length).
    #[arg(long, value_name = "N")]
    pub target_depth: Option<usize>,
    /// The drafter's cost curve (without it: lookups and plain steps only).
    #[arg(long, value_name = "CSV")]
    pub drafter_curve: Option<PathBuf>,
    /// The depth the drafter's curve is read at (default: each question's drafter prompt).
    #[arg(long, value_name = "N")]
    pub drafter_depth: Option<usize>,
    /// Read the traces from FILE instead of recording them (written by --save-traces).
    #[arg(long, value_name = "FILE", conflicts_with = "save_traces")]
    pub traces: Option<PathBuf>,
    /// Write the recorded traces to FILE (token ids of the prompts, answers and drafts).
    #[arg(long, value_name = "FILE")]
    pub save_traces: Option<PathBuf>,
    /// The longest drafter continuation recorded per position.
    #[arg(long, default_value_t = 16)]
    pub max_draft: usize,
    /// Trace along each question's `reference` answer (the questions file's, e.g.
    /// assets/questions-long.json) instead of the model's own: what the policy gains for a target
    /// that writes such prose.
    #[arg(long, conflicts_with = "traces")]
    pub reference_answers: bool,
    /// The extra time of the two rounds after a change of batch shape, in ms (on a GPU: a batch
    /// without its CUDA graph, then a new capture; the log's "verification shapes calibrated"
    /// line shows it). Fixed shapes pay it at their changes; rounds of their own lengths at
    /// every change of length, and the policy prices it as the engine does on a GPU where the
    /// shapes were timed (not with --verify-batch 1).
    #[arg(long, default_value_t = 0.0, value_name = "MS")]
    pub switch_ms: f64,
    /// Print JSON: {"questions": [{"question", "speedup", ...}], "median", "worst", ...}.
    #[arg(long)]
    pub json: bool,
    /// Use the folder's index as it is, without bringing it up to date first.
    #[arg(long)]
    pub no_update: bool,
    #[command(flatten)]
    pub engine: EngineFlags,
}

#[derive(Args)]
pub struct CostCurveArgs {
    /// Context depths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub depths: Vec<usize>,
    /// Batch sizes G, comma-separated (default 1 to 17).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Timed repeats per size (after two untimed).
    #[arg(long, default_value_t = 10)]
    pub repeats: usize,
    /// Measure the drafter model rather than the target.
    #[arg(long)]
    pub drafter: bool,
    #[command(flatten)]
    pub engine: EngineFlags,
}

pub fn bench_command(ctx: Ctx, args: &BenchArgs) -> Result<()> {
    use crate::bench::{self, Task};
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

pub fn simulate_command(ctx: Ctx, args: &SimulateArgs) -> Result<()> {
    use crate::simulate::{self, CurveTable, Trace};
    use crate::speculative::replay::Replaying;
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
                let t = if args.reference_answers {
                    let reference = q.reference.as_deref().with_context(|| {
                        format!(
                            "{:?} has no \"reference\" answer to trace along",
                            q.question
                        )
                    })?;
                    simulate::record_reference(
                        &mut engine,
                        &index,
                        &q.question,
                        reference,
                        &settings,
                        args.max_draft,
                    )?
                } else {
                    simulate::record(&mut engine, &index, &q.question, &settings, args.max_draft)?
                };
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

pub fn cost_curve_command(ctx: Ctx, args: &CostCurveArgs) -> Result<()> {
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
