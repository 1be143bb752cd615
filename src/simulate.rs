//! `rapid-chat simulate`: what rapid mode would gain on hardware that is not at hand. With greedy
//! decoding the answer is the target's own greedy answer whatever drafts are tried, so which
//! drafts a round would have had accepted depends on the tokens alone: a trace records, for each
//! question, the target's answer (decoded here, with the real model) and at every position of it
//! the drafter's own greedy continuation from its retrieved-chunk prompt and the true prefix, and
//! the lookup candidates follow from the text. Replaying rapid's policy (the same code the decode
//! loop runs) on a trace under measured cost curves gives the rounds it would take there and
//! their time: projected costs (from the curves), real acceptance (from the real model's
//! answers). Curves are CSV as `step_cost.cpp` and `rapid-chat cost-curve` write them:
//! `depth,prefill_tok_s,G,step_ms`.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::EngineConfig;
use crate::corpus::CorpusIndex;
use crate::llm::Token;
use crate::session::Engine;
use crate::speculative::adaptive::Costs;
use crate::speculative::replay::{self, Case, CostCurve, Projection, Replaying};
use crate::speculative::{Flow, Mode, median};

/// One question's trace: everything a replay needs, and nothing about the machine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    pub question: String,
    /// The target's prompt (token ids), as rapid mode builds it.
    pub prompt: Vec<i32>,
    /// The drafter's prompt: the retrieved chunks and the question.
    pub draft_prompt: Vec<i32>,
    /// The target's greedy answer.
    pub answer: Vec<i32>,
    /// Every token the target produced, in order: the answer's, those of a turn marker it was
    /// cut at, and (with `eog`) the end-of-generation token that ended it. Empty in traces
    /// recorded before it was kept: then the answer, as if the answer ended by itself.
    #[serde(default)]
    pub produced: Vec<i32>,
    #[serde(default)]
    pub eog: bool,
    /// The answer's token limit when it was recorded (None in older traces: the answer's length).
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// At each position `i` of what the target produced: the drafter's greedy continuation
    /// after its prompt and the first `i` tokens, each token with the drafter's probability for
    /// it.
    pub drafts: Vec<Vec<(i32, f32)>>,
}

/// A trace's ids as tokens, for a replay.
pub struct Tokens {
    draft_prompt: Vec<Token>,
    prompt: Vec<Token>,
    produced: Vec<Token>,
    drafts: Vec<Vec<(Token, f32)>>,
    eog: bool,
    max_tokens: Option<usize>,
}

impl Tokens {
    pub fn case(&self) -> Case<'_> {
        Case {
            draft_prompt: &self.draft_prompt,
            prompt: &self.prompt,
            answer: &self.produced,
            drafts: &self.drafts,
            eog: self.eog,
            max_tokens: self.max_tokens,
        }
    }
}

/// The trace's tokens, as a replay reads them.
pub fn tokens(t: &Trace) -> Tokens {
    let toks = |v: &[i32]| v.iter().map(|&t| Token::new(t)).collect::<Vec<_>>();
    let recorded_all = !t.produced.is_empty();
    Tokens {
        draft_prompt: toks(&t.draft_prompt),
        prompt: toks(&t.prompt),
        produced: toks(if recorded_all { &t.produced } else { &t.answer }),
        drafts: (t.drafts.iter())
            .map(|d| d.iter().map(|&(t, p)| (Token::new(t), p)).collect())
            .collect(),
        eog: recorded_all && t.eog,
        max_tokens: t.max_tokens,
    }
}

/// Records the trace of `question`: the target's greedy answer (AR mode, `settings` otherwise),
/// and the drafter's continuations of up to `max_draft` tokens along it.
pub fn record(
    engine: &mut Engine,
    index: &CorpusIndex,
    question: &str,
    settings: &EngineConfig,
    max_draft: usize,
) -> Result<Trace> {
    anyhow::ensure!(settings.greedy(), "traces need greedy decoding (temp 0)");
    let rapid = EngineConfig {
        mode: Mode::Rapid,
        ..settings.clone()
    };
    let prompts = engine.prepare(index, question, &[], &rapid)?;
    let ar = EngineConfig {
        mode: Mode::Ar,
        ..settings.clone()
    };
    let answer = engine.run(prompts.clone(), &ar, &mut |_| Flow::Continue)?;
    let output = answer.output;
    let produced: Vec<Token> = output.produced.iter().map(|&t| Token::new(t)).collect();
    let mut trace = trace_along(engine, question, &prompts, &produced, max_draft)?;
    trace.answer = output.tokens.iter().map(|t| t.id).collect();
    trace.produced = output.produced;
    trace.eog = output.eog;
    trace.max_tokens = Some(settings.max_tokens);
    Ok(trace)
}

/// The trace of what the target `produced` after `prompts`: the drafter's continuations at each
/// of its positions, as if it were the answer (the caller says what else it knows of it).
fn trace_along(
    engine: &mut Engine,
    question: &str,
    prompts: &crate::session::prompt::Prompts,
    produced: &[Token],
    max_draft: usize,
) -> Result<Trace> {
    let drafts = engine.drafter_continuations(&prompts.draft, produced, max_draft)?;
    let ids = |v: &[Token]| v.iter().map(|t| t.0).collect::<Vec<_>>();
    Ok(Trace {
        question: question.to_string(),
        prompt: ids(&prompts.target),
        draft_prompt: ids(&prompts.draft),
        answer: ids(produced),
        produced: Vec::new(),
        eog: false,
        max_tokens: None,
        drafts: drafts
            .into_iter()
            .map(|c| c.into_iter().map(|(t, p)| (t.0, p)).collect())
            .collect(),
    })
}

/// Records the trace of `question` along `reference` (its answer as a capable model would write
/// it) instead of the model's own: the target's prompt as rapid mode builds it, the reference's
/// tokens as what the target produced (it ends there, as if by itself), and the drafter's own
/// continuations along them. It projects what the policy gains for a target that writes such
/// prose, where a small model's own long answers loop.
pub fn record_reference(
    engine: &mut Engine,
    index: &CorpusIndex,
    question: &str,
    reference: &str,
    settings: &EngineConfig,
    max_draft: usize,
) -> Result<Trace> {
    let rapid = EngineConfig {
        mode: Mode::Rapid,
        ..settings.clone()
    };
    // The target decodes nothing here: only the drafter reads its prompt (as it drafts).
    let prompts = engine.prepare(index, question, &[], &rapid)?;
    let produced = engine.tokenize(reference);
    anyhow::ensure!(
        !produced.is_empty(),
        "the reference answer to {question:?} is empty"
    );
    trace_along(engine, question, &prompts, &produced, max_draft)
}

/// A cost curve's rows, `depth,prefill_tok_s,G,step_ms` (rows with `G = 0` carry only the
/// prefill rate).
#[derive(Debug, Clone)]
pub struct CurveTable {
    rows: Vec<(usize, usize, f64)>,
}

impl CurveTable {
    pub fn parse(text: &str) -> Result<Self> {
        let mut rows = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with("depth") {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let row = || -> Option<(usize, usize, f64)> {
                Some((
                    f.first()?.parse().ok()?,
                    f.get(2)?.parse().ok()?,
                    f.get(3)?.parse().ok()?,
                ))
            };
            let (depth, g, ms) = row().with_context(|| {
                format!(
                    "line {}: {line:?} is not depth,prefill_tok_s,G,step_ms",
                    n + 1
                )
            })?;
            if g > 0 {
                anyhow::ensure!(ms > 0.0, "line {}: a step takes some time", n + 1);
                rows.push((depth, g, ms));
            }
        }
        anyhow::ensure!(!rows.is_empty(), "no G > 0 rows: not a cost curve");
        Ok(Self { rows })
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the cost curve {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// The depths measured, smallest first.
    pub fn depths(&self) -> Vec<usize> {
        let mut d: Vec<usize> = self.rows.iter().map(|r| r.0).collect();
        d.sort_unstable();
        d.dedup();
        d
    }

    fn at_measured(&self, depth: usize, largest: usize) -> Result<CostCurve> {
        let spec: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.0 == depth)
            .map(|r| format!("{}:{}", r.1, r.2))
            .collect();
        CostCurve::parse(&spec.join(","), largest)
            .with_context(|| format!("the curve at depth {depth}"))
    }

    /// The curve at `depth` tokens of context: a measured depth, or linear between the two
    /// measured around it. Sizes up to `largest` (past the measured ones: the last slope).
    pub fn at(&self, depth: usize, largest: usize) -> Result<CostCurve> {
        let depths = self.depths();
        if let Some(&d) = depths.iter().find(|&&d| d == depth) {
            return self.at_measured(d, largest);
        }
        let above = depths.iter().position(|&d| d > depth);
        let (lo, hi) = match above {
            Some(i) if i > 0 => (depths[i - 1], depths[i]),
            _ => bail!(
                "depth {depth} is outside the curve's measured depths {depths:?}: measure it \
                 (rapid-chat cost-curve --depths {depth})"
            ),
        };
        let (a, b) = (
            self.at_measured(lo, largest)?,
            self.at_measured(hi, largest)?,
        );
        let w = (depth - lo) as f64 / (hi - lo) as f64;
        let times = (1..=largest.max(1))
            .map(|g| a.t(g) * (1.0 - w) + b.t(g) * w)
            .collect();
        CostCurve::new(times).context("an interpolated curve must be positive")
    }
}

/// One question's projection.
#[derive(Debug, Clone, Serialize)]
pub struct Projected {
    pub question: String,
    pub speedup: f64,
    /// The bound: what a policy knowing the answer could reach with the same lookups and drafts
    /// (`replay::best_speedup`; none with fixed shapes).
    pub best_speedup: Option<f64>,
    /// Whether the answer is mostly repetition (counted apart from the headline figures).
    #[serde(rename = "loop")]
    pub looped: bool,
    /// Whether the answer kept the floor: at most the larger of 1.05 times plain steps' time and
    /// that time plus 8 plain steps.
    pub floor_held: bool,
    /// The tokens the bound takes from the drafter.
    pub best_from_drafter: Option<usize>,
    #[serde(flatten)]
    pub projection: Projection,
}

/// The projections of a set of traces, answered in order by one engine (its estimates carry
/// over from answer to answer, as in `bench`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub questions: Vec<Projected>,
    /// Over the answers that do not loop: the median and worst question, and time-weighted (the
    /// plain steps' time of them all over the projected time of them all).
    pub median: f64,
    pub worst: f64,
    pub total: f64,
    /// The bound's median, worst question and time-weighted figure, over the same answers.
    pub best_median: Option<f64>,
    pub best_worst: Option<f64>,
    pub best_total: Option<f64>,
    /// The policy's share of the bound, time-weighted.
    pub share_of_bound: Option<f64>,
    /// Answers that loop, left out of the figures above, and their time-weighted speed-up.
    pub loops: usize,
    pub loops_total: Option<f64>,
    /// Answers within the floor, of all.
    pub floor_held: (usize, usize),
    /// The bound's share of the tokens from the drafter, over the same answers (None: no
    /// bound).
    pub best_drafter_share: Option<f64>,
    /// Shares of the answers' tokens from lookups, the drafter and the target's own steps.
    pub lookup_share: f64,
    pub drafter_share: f64,
    pub target_share: f64,
    pub target_depth: Option<usize>,
    pub drafter_depth: Option<usize>,
    pub what: &'static str,
}

pub const WHAT: &str = "projected: costs from the curves, acceptance from the real model's greedy \
                        answers (traces recorded on this machine)";

/// Projects every trace. `target_depth` / `drafter_depth`: the depth each curve is read at
/// (None: each trace's own prompt length).
pub fn project_all(
    traces: &[Trace],
    target: &CurveTable,
    target_depth: Option<usize>,
    drafter: Option<(&CurveTable, Option<usize>)>,
    r: &Replaying,
) -> Result<Report> {
    let largest = r
        .gamma
        .max(r.lookup_max)
        .max(r.verify_shapes)
        .max(r.verify_batch)
        + 2;
    let shaped = r.verify_shapes > 1 || r.verify_batch > 1;
    let mut costs: Option<Costs> = None;
    let mut questions = Vec::new();
    for t in traces {
        let tc = target.at(target_depth.unwrap_or(t.prompt.len()), largest)?;
        let dc = match drafter {
            Some((table, depth)) => Some(table.at(depth.unwrap_or(t.draft_prompt.len()), largest)?),
            None => None,
        };
        // The engine calibrates once, before its first answer.
        let start = costs.take().unwrap_or_else(|| {
            let switch_s = if shaped { 0.0 } else { r.switch_s };
            replay::calibrated(&tc, r.gamma, r.lookup_max, switch_s)
        });
        let costing = replay::Costing::Curves {
            target: &tc,
            drafter: dc.as_ref(),
        };
        let case = tokens(t);
        let (p, next) = replay::project(&case.case(), costing, r, start);
        costs = Some(next);
        let bound = (!shaped).then(|| replay::best(&case.case(), &tc, dc.as_ref(), r));
        let best = bound.map(|b| b.speedup);
        let own = p.verify_s + p.draft_s;
        let floor = crate::speculative::floor_s(p.plain_s, tc.t(1));
        questions.push(Projected {
            question: t.question.clone(),
            speedup: p.speedup(),
            best_speedup: best,
            looped: crate::speculative::looping(&t.answer),
            floor_held: own <= floor + 1e-12,
            best_from_drafter: bound.map(|b| b.from_drafter),
            projection: p,
        });
    }
    Ok(report(
        questions,
        target_depth,
        drafter.and_then(|d| d.1),
        r.drafter,
    ))
}

/// The figures of `questions`: the headline ones over prose, loops apart.
fn report(
    questions: Vec<Projected>,
    target_depth: Option<usize>,
    drafter_depth: Option<usize>,
    drafter: bool,
) -> Report {
    let prose: Vec<&Projected> = questions.iter().filter(|q| !q.looped).collect();
    let loops: Vec<&Projected> = questions.iter().filter(|q| q.looped).collect();
    let mut speedups: Vec<f64> = prose.iter().map(|q| q.speedup).collect();
    let worst = speedups.iter().copied().fold(f64::INFINITY, f64::min);
    let mut bests: Vec<f64> = prose.iter().filter_map(|q| q.best_speedup).collect();
    let time = |qs: &[&Projected]| -> Option<f64> {
        let plain: f64 = qs.iter().map(|q| q.projection.plain_s).sum();
        let own: f64 = qs
            .iter()
            .map(|q| q.projection.verify_s + q.projection.draft_s)
            .sum();
        (own > 0.0).then(|| plain / own)
    };
    let best_total = (bests.len() == prose.len() && !prose.is_empty()).then(|| {
        let plain: f64 = prose.iter().map(|q| q.projection.plain_s).sum();
        let best: f64 = prose
            .iter()
            .map(|q| q.projection.plain_s / q.best_speedup.unwrap_or(1.0).max(1e-12))
            .sum();
        plain / best.max(1e-12)
    });
    let total_tokens = prose
        .iter()
        .map(|q| q.projection.tokens)
        .sum::<usize>()
        .max(1);
    let share = |f: fn(&Projection) -> usize| {
        prose.iter().map(|q| f(&q.projection)).sum::<usize>() as f64 / total_tokens as f64
    };
    let total = time(&prose).unwrap_or(0.0);
    Report {
        median: median(&mut speedups).unwrap_or(0.0),
        worst: if worst.is_finite() { worst } else { 0.0 },
        total,
        best_median: median(&mut bests),
        best_worst: bests.iter().copied().reduce(f64::min),
        share_of_bound: best_total.map(|b| total / b),
        best_total,
        loops: loops.len(),
        loops_total: time(&loops),
        floor_held: (
            questions.iter().filter(|q| q.floor_held).count(),
            questions.len(),
        ),
        best_drafter_share: (drafter && prose.iter().all(|q| q.best_from_drafter.is_some())).then(
            || {
                prose
                    .iter()
                    .filter_map(|q| q.best_from_drafter)
                    .sum::<usize>() as f64
                    / total_tokens as f64
            },
        ),
        lookup_share: share(|p| p.from_lookup),
        drafter_share: share(|p| p.from_drafter),
        target_share: share(|p| p.from_target),
        target_depth,
        drafter_depth,
        what: WHAT,
        questions,
    }
}

/// The report as a Markdown table.
pub fn markdown(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| question | tokens | projected speed-up | bound (knowing the answer) | rounds: plain / \
         lookup / drafter | tokens from lookups / drafter / target | floor |\n\
         |---|---|---|---|---|---|---|"
    );
    let x = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
    for q in &report.questions {
        let p = &q.projection;
        let _ = writeln!(
            s,
            "| {}{} | {} | {:.2}x | {} | {} / {} / {} | {} / {} / {} | {} |",
            q.question.chars().take(48).collect::<String>(),
            if q.looped { " (loop)" } else { "" },
            p.tokens,
            q.speedup,
            x(q.best_speedup),
            p.plain_rounds,
            p.lookup_rounds,
            p.drafter_rounds,
            p.from_lookup,
            p.from_drafter,
            p.from_target,
            if q.floor_held { "held" } else { "BROKEN" }
        );
    }
    let _ = writeln!(
        s,
        "\ntime-weighted {:.2}x (the bound {}, the policy's share {}), median {:.2}x, worst \
         question {:.2}x (the bound: {} and {}); floor held by {} of {} answers; tokens from \
         lookups {:.0}%, drafter {:.0}%, target steps {:.0}%{}\n{}",
        report.total,
        x(report.best_total),
        report
            .share_of_bound
            .map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
        report.median,
        report.worst,
        x(report.best_median),
        x(report.best_worst),
        report.floor_held.0,
        report.floor_held.1,
        100.0 * report.lookup_share,
        100.0 * report.drafter_share,
        100.0 * report.target_share,
        if report.loops > 0 {
            format!(
                "; {} answers loop, left out (over them {})",
                report.loops,
                x(report.loops_total)
            )
        } else {
            String::new()
        },
        report.what
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = "depth,prefill_tok_s,G,step_ms\n1000,500,0,0\n1000,500,1,10\n1000,500,2,12\n\
                       1000,500,4,16\n3000,400,0,0\n3000,400,1,20\n3000,400,2,24\n3000,400,4,32\n";

    #[test]
    fn a_curve_is_read_at_a_measured_depth_and_between_two() {
        let t = CurveTable::parse(CSV).unwrap();
        assert_eq!(t.depths(), vec![1000, 3000]);
        let c = t.at(1000, 4).unwrap();
        assert!((c.t(1) - 0.010).abs() < 1e-12 && (c.t(3) - 0.014).abs() < 1e-12);
        let mid = t.at(2000, 4).unwrap();
        assert!((mid.t(1) - 0.015).abs() < 1e-12, "{}", mid.t(1));
        assert!((mid.t(4) - 0.024).abs() < 1e-12);
        let e = t.at(5000, 4).unwrap_err().to_string();
        assert!(e.contains("outside") && e.contains("cost-curve"), "{e}");
        assert!(CurveTable::parse("depth,prefill_tok_s,G,step_ms\n1,2,x,4\n").is_err());
    }
}
