//! Studies rapid mode's drafting policy for hardware you do not have: records the real model's
//! greedy answers to a questions file (with the prompts rapid mode builds for them), then replays
//! the policy on those answers under any verification cost curve, next to the best any policy
//! could do with the same lookups (see `rapid_chat::speculative::replay`).
//!
//! ```text
//! rapid-chat index assets/demo            # the example reads an existing index
//! cargo run --release --example policy_replay -- record assets/demo assets/questions.json \
//!     traces.json [--ctx 4608] [--draft-ctx 1536] [--retrieval-budget 1024] [--max-tokens 256]
//! cargo run --release --example policy_replay -- replay traces.json \
//!     --costs "1:1.30,5:1.71,11:3.48" [--costs ...] [--lookup-max 16] [--gamma 6]
//! ```
//! Cost curves are `SIZE:MILLISECONDS` points (verification of SIZE tokens), interpolated between;
//! a `bench` run's calibration on the hardware gives them. Speed claims come from `bench` on the
//! hardware itself; this shows what the policy leaves on the table and why.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use rapid_chat::config::Config;
use rapid_chat::corpus::CorpusIndex;
use rapid_chat::llm::{Models, Token, fetch};
use rapid_chat::paths::Dirs;
use rapid_chat::session::Engine;
use rapid_chat::speculative::replay::{self, CostCurve};
use rapid_chat::speculative::{Flow, Mode, median};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Trace {
    question: String,
    /// What the drafter saw (the retrieved chunks): looked in by lookups.
    extra: Vec<i32>,
    /// The target's prompt.
    prompt: Vec<i32>,
    /// The target's greedy answer.
    answer: Vec<i32>,
}

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} needs a value")),
        None => Ok(default),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("record") if args.len() >= 4 => record(
            Path::new(&args[1]),
            Path::new(&args[2]),
            Path::new(&args[3]),
            &args[4..],
        ),
        Some("replay") if args.len() >= 2 => replay(Path::new(&args[1]), &args[2..]),
        _ => bail!(
            "usage: policy_replay record FOLDER QUESTIONS OUT.json [--ctx N] [--draft-ctx N] \
             [--retrieval-budget N] [--max-tokens N] | replay TRACES.json --costs SPEC ..."
        ),
    }
}

fn record(folder: &Path, questions: &Path, out: &Path, args: &[String]) -> Result<()> {
    let dirs = Dirs::from_env()?;
    rapid_chat::logging::init(&dirs.log_file())?;
    let mut config = Config::load(None, &dirs.config)?;
    let e = &mut config.engine;
    e.ctx = flag(args, "--ctx", 4608u32.into())?;
    e.draft_ctx = flag(args, "--draft-ctx", 1536u32.into())?;
    e.retrieval_budget = flag(args, "--retrieval-budget", 1024)?;
    e.max_tokens = flag(args, "--max-tokens", 256)?;
    e.temp = 0.0;
    let root = rapid_chat::corpus::index::corpus_root(folder)?;
    let index = CorpusIndex::open(&dirs.indexes(), &root)
        .context("index the folder first: rapid-chat index FOLDER")?;
    let model: PathBuf = match &config.model {
        Some(p) => p.clone(),
        None => fetch::ensure(fetch::DEFAULT, &dirs.models(), false)?,
    };
    let models = Models::load(&model, None, config.engine.gpu_layers)?;
    let mut engine = Engine::new(models, &config.engine)?;
    let mut settings = config.engine.clone();
    let mut traces = Vec::new();
    for q in rapid_chat::bench::load_questions(questions)? {
        settings.mode = Mode::Rapid;
        let prompts = engine.prepare(&index, &q.question, &[], &settings)?;
        settings.mode = Mode::Ar;
        let answer = engine.answer(&index, &q.question, &[], &settings, &mut |_| Flow::Continue)?;
        let ids = |v: &[Token]| v.iter().map(|t| t.0).collect::<Vec<_>>();
        eprintln!(
            "{}: {} answer tokens",
            q.question,
            answer.output.tokens.len()
        );
        traces.push(Trace {
            question: q.question,
            extra: ids(&prompts.draft),
            prompt: ids(&prompts.target),
            answer: answer.output.tokens.iter().map(|t| t.id).collect(),
        });
    }
    std::fs::write(out, serde_json::to_string(&traces)?)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(())
}

fn replay(path: &Path, args: &[String]) -> Result<()> {
    let traces: Vec<Trace> = serde_json::from_str(
        &std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
    )?;
    let lookup_max: usize = flag(args, "--lookup-max", 16)?;
    let gamma: usize = flag(args, "--gamma", 6)?;
    // A fixed verification shape: `--fixed G:MS` (every round decodes G tokens in MS).
    let fixed: Option<(usize, f64)> = match args.iter().position(|a| a == "--fixed") {
        Some(i) => {
            let v = args.get(i + 1).context("--fixed needs G:MS")?;
            let (g, ms) = v.split_once(':').context("--fixed needs G:MS")?;
            Some((g.parse()?, ms.parse::<f64>()? / 1000.0))
        }
        None => None,
    };
    let curves: Vec<&String> = args
        .windows(2)
        .filter(|w| w[0] == "--costs")
        .map(|w| &w[1])
        .collect();
    if curves.is_empty() {
        bail!("give at least one --costs SIZE:MS,SIZE:MS,...");
    }
    let toks = |v: &[i32]| v.iter().map(|&t| Token::new(t)).collect::<Vec<_>>();
    for spec in curves {
        let curve = CostCurve::parse(spec, lookup_max + 1)?;
        println!("costs {spec}");
        println!(
            "| question | tokens | policy | rounds (lookup) | accepted/drafted | best | rounds \
             (lookup) | fixed shape | rounds |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        // One engine answers them in order: its estimates carry over, as in `bench`.
        let mut costs = replay::calibrated(&curve, gamma, lookup_max, 0.0);
        let (mut ours, mut bests, mut fixeds) = (Vec::new(), Vec::new(), Vec::new());
        for t in &traces {
            let (extra, prompt, answer) = (toks(&t.extra), toks(&t.prompt), toks(&t.answer));
            let (r, next) =
                replay::replay_policy(&extra, &prompt, &answer, lookup_max, &curve, costs);
            costs = next;
            let b = replay::replay_best(&extra, &prompt, &answer, lookup_max, &curve);
            let f = fixed.map(|(g, t)| replay::replay_fixed(&extra, &prompt, &answer, g, t));
            let fixed_x = f.map(|f| f.tokens as f64 * curve.t(1) / f.seconds.max(1e-12));
            println!(
                "| {} | {} | {:.2}x | {} ({}) | {}/{} | {:.2}x | {} ({}) | {} | {} |",
                t.question.chars().take(40).collect::<String>(),
                r.tokens,
                r.speedup(&curve),
                r.rounds,
                r.lookup_rounds,
                r.accepted,
                r.drafted,
                b.speedup(&curve),
                b.rounds,
                b.lookup_rounds,
                fixed_x.map_or("–".into(), |x| format!("{x:.2}x")),
                f.map_or(0, |f| f.rounds),
            );
            ours.push(r.speedup(&curve));
            bests.push(b.speedup(&curve));
            fixeds.extend(fixed_x);
        }
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "median: policy {:.2}x (lowest {:.2}x), best {:.2}x (lowest {:.2}x)\n",
            median(&mut ours).unwrap_or(0.0),
            min(&ours),
            median(&mut bests).unwrap_or(0.0),
            min(&bests)
        );
        if !fixeds.is_empty() {
            println!(
                "fixed shape: median {:.2}x (lowest {:.2}x)\n",
                median(&mut fixeds).unwrap_or(0.0),
                min(&fixeds)
            );
        }
    }
    Ok(())
}
