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
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::config::EngineConfig;
use crate::corpus::CorpusIndex;
use crate::llm::Token;
use crate::session::Engine;
use crate::speculative::adaptive::{self, Costs, DraftSource, Policy};
use crate::speculative::replay::{self, CostCurve};
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
    /// At each position `i` of the answer: the drafter's greedy continuation after its prompt and
    /// `answer[..i]`, each token with the drafter's probability for it.
    pub drafts: Vec<Vec<(i32, f32)>>,
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
    let tokens: Vec<Token> = answer
        .output
        .tokens
        .iter()
        .map(|t| Token::new(t.id))
        .collect();
    let drafts = engine.drafter_continuations(&prompts.draft, &tokens, max_draft)?;
    let ids = |v: &[Token]| v.iter().map(|t| t.0).collect::<Vec<_>>();
    Ok(Trace {
        question: question.to_string(),
        prompt: ids(&prompts.target),
        draft_prompt: ids(&prompts.draft),
        answer: ids(&tokens),
        drafts: drafts
            .into_iter()
            .map(|c| c.into_iter().map(|(t, p)| (t.0, p)).collect())
            .collect(),
    })
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

/// The policy's settings in a replay (rapid mode's, from the engine settings).
#[derive(Debug, Clone, Copy)]
pub struct Replaying {
    pub gamma: usize,
    pub lookup: bool,
    pub lookup_max: usize,
    pub adaptive: bool,
    pub draft_confidence: f32,
    /// Whether the drafter model drafts at all (else lookups and plain steps only).
    pub drafter: bool,
}

impl Replaying {
    pub fn of(e: &EngineConfig) -> Self {
        Self {
            gamma: e.gamma,
            lookup: e.lookup,
            lookup_max: e.lookup_max,
            adaptive: e.adaptive,
            draft_confidence: e.draft_confidence,
            drafter: true,
        }
    }
}

/// What a replay of one answer projects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Projection {
    pub tokens: usize,
    pub rounds: usize,
    pub plain_rounds: usize,
    pub lookup_rounds: usize,
    pub drafter_rounds: usize,
    /// Tokens that came as accepted lookup drafts, accepted drafter drafts, and from the target
    /// itself (one per round).
    pub from_lookup: usize,
    pub from_drafter: usize,
    pub from_target: usize,
    /// Seconds verifying (target) and drafting (drafter).
    pub verify_s: f64,
    pub draft_s: f64,
    /// The same tokens in plain target steps.
    pub plain_s: f64,
}

impl Projection {
    pub fn speedup(&self) -> f64 {
        self.plain_s / (self.verify_s + self.draft_s).max(1e-12)
    }
}

/// How many of `draft`'s tokens `answer` confirms.
fn agreement(draft: &[Token], answer: &[Token]) -> usize {
    draft.iter().zip(answer).take_while(|(a, b)| a == b).count()
}

/// Replays rapid's policy on `trace` with the target's verification costs `target` and the
/// drafter's step costs `drafter` (None: no drafter model, lookups only), starting from `costs`
/// (the estimates an engine carries from answer to answer). Mirrors the decode loop: the
/// policy chooses each round from the lookup's proposal and the drafter's room, the drafter
/// decodes the tokens it is behind in one batch then one step per further draft (the last draft
/// is not decoded), stops drafting below `draft_confidence`, and keeps its accepted drafts.
pub fn project(
    trace: &Trace,
    target: &CostCurve,
    drafter: Option<&CostCurve>,
    r: &Replaying,
    costs: Costs,
) -> (Projection, Costs) {
    let toks = |v: &[i32]| v.iter().map(|&t| Token::new(t)).collect::<Vec<_>>();
    let (prompt, draft_prompt, answer) = (
        toks(&trace.prompt),
        toks(&trace.draft_prompt),
        toks(&trace.answer),
    );
    let n = answer.len();
    let props = if r.lookup {
        replay::proposals(&draft_prompt, &prompt, &answer, r.lookup_max)
    } else {
        vec![None; n]
    };
    let drafter = drafter.filter(|_| r.drafter);
    let hint = drafter.map_or(1.0, |d| d.t(1) / target.t(1));
    let mut policy = Policy::new(r.adaptive, hint).with_costs(costs);
    let mut p = Projection {
        tokens: n,
        plain_s: n as f64 * target.t(1),
        ..Projection::default()
    };
    // The drafter's cache holds its prompt but the last token (prefilled), then what it decoded.
    let base = draft_prompt.len();
    let mut cached = base.saturating_sub(1);
    let mut i = 0;
    while i < n {
        let left = n - i;
        let prop = props[i].as_ref();
        let seq_len = base + i;
        let choice = policy.choose(adaptive::Candidates {
            lookup: prop.map(|(q, _)| (q.match_len, q.tokens.len())),
            model_max: drafter.map_or(0, |_| r.gamma.min(left - 1)),
            model_behind: seq_len - cached.min(seq_len),
            lookup_in_answer: prop.is_some_and(|(q, _)| q.in_answer),
        });
        let (mut source, mut k, mut accepted, mut t_draft, mut step) =
            (choice.source, 0, 0, 0.0, None);
        match (choice.source, prop, drafter) {
            (DraftSource::Lookup, Some((q, agree)), _) => {
                k = choice.k.min(q.tokens.len());
                accepted = (*agree).min(k);
            }
            (DraftSource::Model, _, Some(d)) => {
                let cont = &trace.drafts[i];
                let max = choice.k.min(cont.len());
                // The decode loop's draft(): stop at `max` or below the confidence threshold.
                k = cont[..max]
                    .iter()
                    .position(|&(_, prob)| prob < r.draft_confidence)
                    .unwrap_or(max);
                let by_confidence = k < max;
                let behind = (seq_len - cached.min(seq_len)).max(1);
                let steps = if by_confidence {
                    k
                } else {
                    k.saturating_sub(1)
                };
                t_draft = d.t(behind) + steps as f64 * d.t(1);
                step = (steps > 0).then(|| Duration::from_secs_f64(d.t(1)));
                let drafted = toks(&cont[..k].iter().map(|c| c.0).collect::<Vec<_>>());
                accepted = agreement(&drafted, &answer[i..]);
                cached = seq_len + accepted.min(steps);
            }
            _ => source = DraftSource::None,
        }
        if k == 0 {
            source = DraftSource::None;
        }
        let produced = (accepted + 1).min(left);
        let t_verify = target.t(k + 1);
        policy.record(adaptive::Round {
            source,
            match_len: prop.map_or(0, |(q, _)| q.match_len),
            lookup_in_answer: prop.is_some_and(|(q, _)| q.in_answer),
            drafted: k,
            accepted,
            rejected: accepted < k,
            t_draft: Duration::from_secs_f64(t_draft),
            t_draft_step: step,
            t_verify: Duration::from_secs_f64(t_verify),
        });
        if let Some((q, _)) = prop.filter(|_| source != DraftSource::Lookup) {
            policy.observe_declined(q, &answer[i..i + produced]);
        }
        p.rounds += 1;
        p.verify_s += t_verify;
        p.draft_s += t_draft;
        match source {
            DraftSource::None => p.plain_rounds += 1,
            DraftSource::Lookup => {
                p.lookup_rounds += 1;
                p.from_lookup += accepted.min(produced);
            }
            DraftSource::Model => {
                p.drafter_rounds += 1;
                p.from_drafter += accepted.min(produced);
            }
        }
        p.from_target += produced - accepted.min(produced);
        i += produced;
    }
    (p, policy.costs().clone())
}

/// One question's projection.
#[derive(Debug, Clone, Serialize)]
pub struct Projected {
    pub question: String,
    pub speedup: f64,
    #[serde(flatten)]
    pub projection: Projection,
}

/// The projections of a set of traces, answered in order by one engine (its estimates carry
/// over from answer to answer, as in `bench`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub questions: Vec<Projected>,
    pub median: f64,
    pub worst: f64,
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
    let largest = r.gamma.max(r.lookup_max) + 2;
    let mut costs: Option<Costs> = None;
    let mut questions = Vec::new();
    for t in traces {
        let tc = target.at(target_depth.unwrap_or(t.prompt.len()), largest)?;
        let dc = match drafter {
            Some((table, depth)) => Some(table.at(depth.unwrap_or(t.draft_prompt.len()), largest)?),
            None => None,
        };
        // The engine calibrates once, before its first answer.
        let start = costs
            .take()
            .unwrap_or_else(|| replay::calibrated(&tc, r.gamma, r.lookup_max));
        let (p, next) = project(t, &tc, dc.as_ref(), r, start);
        costs = Some(next);
        questions.push(Projected {
            question: t.question.clone(),
            speedup: p.speedup(),
            projection: p,
        });
    }
    let mut speedups: Vec<f64> = questions.iter().map(|q| q.speedup).collect();
    let worst = speedups.iter().copied().fold(f64::INFINITY, f64::min);
    let total: usize = questions
        .iter()
        .map(|q| q.projection.tokens)
        .sum::<usize>()
        .max(1);
    let share = |f: fn(&Projection) -> usize| {
        questions.iter().map(|q| f(&q.projection)).sum::<usize>() as f64 / total as f64
    };
    Ok(Report {
        median: median(&mut speedups).unwrap_or(0.0),
        worst: if worst.is_finite() { worst } else { 0.0 },
        lookup_share: share(|p| p.from_lookup),
        drafter_share: share(|p| p.from_drafter),
        target_share: share(|p| p.from_target),
        target_depth,
        drafter_depth: drafter.and_then(|d| d.1),
        what: WHAT,
        questions,
    })
}

/// The report as a Markdown table.
pub fn markdown(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| question | tokens | projected speed-up | rounds: plain / lookup / drafter | tokens from \
         lookups / drafter / target |\n|---|---|---|---|---|"
    );
    for q in &report.questions {
        let p = &q.projection;
        let _ = writeln!(
            s,
            "| {} | {} | {:.2}x | {} / {} / {} | {} / {} / {} |",
            q.question.chars().take(48).collect::<String>(),
            p.tokens,
            q.speedup,
            p.plain_rounds,
            p.lookup_rounds,
            p.drafter_rounds,
            p.from_lookup,
            p.from_drafter,
            p.from_target
        );
    }
    let _ = writeln!(
        s,
        "\nmedian {:.2}x, worst question {:.2}x; tokens from lookups {:.0}%, drafter {:.0}%, \
         target steps {:.0}%\n{}",
        report.median,
        report.worst,
        100.0 * report.lookup_share,
        100.0 * report.drafter_share,
        100.0 * report.target_share,
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

    fn trace(answer: &[i32], drafts: Vec<Vec<(i32, f32)>>) -> Trace {
        Trace {
            question: "q".into(),
            prompt: vec![1, 2, 3],
            draft_prompt: vec![1, 2, 3],
            answer: answer.to_vec(),
            drafts,
        }
    }

    fn replaying(drafter: bool) -> Replaying {
        Replaying {
            gamma: 6,
            lookup: true,
            lookup_max: 16,
            adaptive: true,
            draft_confidence: 0.0,
            drafter,
        }
    }

    #[test]
    fn a_drafter_that_is_always_right_and_cheap_pays_and_one_that_is_wrong_is_dropped() {
        let answer: Vec<i32> = (100..400).collect();
        // GPU-like target (a batch of 7 costs 1.2 steps), a drafter at a tenth of a step.
        let target = CostCurve::parse("1:10,7:12,17:20", 17).unwrap();
        let drafter = CostCurve::parse("1:1,17:3", 17).unwrap();
        let right: Vec<Vec<(i32, f32)>> = (0..answer.len())
            .map(|i| answer[i..].iter().take(6).map(|&t| (t, 0.9)).collect())
            .collect();
        let costs = replay::calibrated(&target, 6, 16);
        let (p, _) = project(
            &trace(&answer, right),
            &target,
            Some(&drafter),
            &replaying(true),
            costs.clone(),
        );
        assert_eq!(p.from_lookup + p.from_drafter + p.from_target, answer.len());
        assert!(p.speedup() > 2.5, "{p:?}: {:.2}x", p.speedup());
        assert!(p.from_drafter > answer.len() / 2, "{p:?}");
        // Always wrong: the policy stops drafting; the loss stays within the answer's budget.
        let wrong: Vec<Vec<(i32, f32)>> = (0..answer.len()).map(|_| vec![(7, 0.9); 6]).collect();
        let (w, _) = project(
            &trace(&answer, wrong),
            &target,
            Some(&drafter),
            &replaying(true),
            costs,
        );
        assert_eq!(w.from_drafter, 0);
        assert!(w.speedup() > 0.95 && w.speedup() <= 1.0, "{w:?}");
        assert!(w.plain_rounds > answer.len() * 9 / 10, "{w:?}");
    }

    #[test]
    fn without_a_drafter_the_projection_is_the_lookup_replay() {
        // A repetitive answer: lookups find the loop; no drafter model.
        let mut answer = vec![20, 21];
        for _ in 0..30 {
            answer.extend([30, 31, 32, 33, 34]);
        }
        let target = CostCurve::parse("1:1.0, 8:1.3, 9:3.0, 17:3.8", 17).unwrap();
        let costs = replay::calibrated(&target, 6, 16);
        let t = trace(&answer, vec![Vec::new(); answer.len()]);
        let (p, _) = project(&t, &target, None, &replaying(false), costs.clone());
        let toks = |v: &[i32]| v.iter().map(|&t| Token::new(t)).collect::<Vec<_>>();
        let (r, _) = replay::replay_policy(
            &toks(&t.draft_prompt),
            &toks(&t.prompt),
            &toks(&answer),
            16,
            &target,
            costs,
        );
        assert_eq!(p.rounds, r.rounds);
        assert_eq!(p.lookup_rounds, r.lookup_rounds);
        assert!((p.verify_s - r.seconds).abs() < 1e-12);
        assert!((p.speedup() - r.speedup(&target)).abs() < 1e-9);
    }
}
