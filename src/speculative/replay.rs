//! Replaying the drafting policy on a known greedy answer under a given cost curve: how many
//! rounds and how much verification time rapid mode's lookups would take on hardware where
//! verifying `g` tokens costs `t(g)`. Greedy RAPID produces the target's own answer, so which
//! lookups are accepted depends only on the tokens, not on the machine; what the machine changes
//! is the cost curve, and with it the policy's choices. This lets the policy be studied for a GPU
//! on a machine without one (the cost curve measured there by `bench`), and compared with the
//! best any policy could do with the same lookups (chosen knowing the answer). It models the
//! decode loop's lookup rounds and plain steps; the drafter model is not part of it. Speed claims
//! still come from `bench` on the hardware itself.

use std::time::Duration;

use super::Flow;
use super::TokenKind;
use super::adaptive::{self, Costs, DraftSource, Policy};
use super::emit::{self, Emitted, Stop};
use super::lookup::Lookup;
use super::round::{self, Backend as _, Drafted, Played};
use super::verify::Verified;
use crate::llm::Token;

/// Verification time per batch size: `times[g - 1]` is `t(g)` in seconds, for `g` from 1.
#[derive(Debug, Clone, PartialEq)]
pub struct CostCurve {
    times: Vec<f64>,
}

impl CostCurve {
    /// From `t(1), t(2), ...` in seconds (at least one, all positive).
    pub fn new(times: Vec<f64>) -> Option<Self> {
        (!times.is_empty() && times.iter().all(|&t| t > 0.0 && t.is_finite()))
            .then_some(Self { times })
    }

    /// Parses `g:ms,g:ms,...` (at least size 1), filling the sizes between by linear
    /// interpolation and holding the last slope past the largest.
    pub fn parse(spec: &str, largest: usize) -> anyhow::Result<Self> {
        let mut points: Vec<(usize, f64)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (g, ms) = part
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("cost {part:?}: write SIZE:MILLISECONDS"))?;
            let g: usize = g.trim().parse()?;
            let ms: f64 = ms.trim().parse()?;
            anyhow::ensure!(g >= 1 && ms > 0.0, "cost {part:?}: size ≥ 1, time > 0");
            points.push((g, ms / 1000.0));
        }
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        anyhow::ensure!(
            points.first().is_some_and(|p| p.0 == 1),
            "the cost curve needs the time of size 1 (a plain step)"
        );
        let at = |g: usize| -> f64 {
            let above = points.iter().position(|p| p.0 >= g);
            let (a, b) = match above {
                Some(i) if points[i].0 == g => return points[i].1,
                Some(i) => (points[i - 1], points[i]),
                None if points.len() == 1 => return points[0].1,
                None => (points[points.len() - 2], points[points.len() - 1]),
            };
            let slope = (b.1 - a.1) / (b.0 - a.0) as f64;
            (a.1 + slope * (g - a.0) as f64).max(1e-9)
        };
        let n = largest.max(points.last().map_or(1, |p| p.0));
        Self::new((1..=n).map(at).collect())
            .ok_or_else(|| anyhow::anyhow!("the cost curve must be positive"))
    }

    /// `t(g)` in seconds (sizes past the curve's end: its last time and slope).
    pub fn t(&self, g: usize) -> f64 {
        let n = self.times.len();
        if g == 0 {
            return 0.0;
        }
        if g <= n {
            return self.times[g - 1];
        }
        let slope = if n >= 2 {
            self.times[n - 1] - self.times[n - 2]
        } else {
            0.0
        };
        self.times[n - 1] + slope * (g - n) as f64
    }

    fn duration(&self, g: usize) -> Duration {
        Duration::from_secs_f64(self.t(g))
    }
}

/// What a replay of one answer gives.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Replay {
    pub tokens: usize,
    pub rounds: usize,
    pub lookup_rounds: usize,
    pub drafted: usize,
    pub accepted: usize,
    /// Total verification time, seconds.
    pub seconds: f64,
}

impl Replay {
    /// Speed-up over plain steps (`tokens · t(1)`).
    pub fn speedup(&self, curve: &CostCurve) -> f64 {
        self.tokens as f64 * curve.t(1) / self.seconds.max(1e-12)
    }
}

/// The lookup proposals at every position of the answer: what [`Lookup::propose`] offers after
/// `answer[..i]` (up to `lookup_max` tokens, never past the answer's end; with `filled`, what
/// [`Lookup::propose_filled`] offers, as a batch of a fixed size drafts), with how many of its
/// tokens the answer confirms.
pub fn proposals(
    extra: &[Token],
    prompt: &[Token],
    answer: &[Token],
    lookup_max: usize,
    filled: bool,
) -> Vec<Option<(super::lookup::Proposal, usize)>> {
    let mut lookup = Lookup::new(extra, prompt);
    let mut out = Vec::with_capacity(answer.len());
    for i in 0..answer.len() {
        let max = lookup_max.min(answer.len() - i - 1);
        let proposal = if filled {
            lookup.propose_filled(max)
        } else {
            lookup.propose(max)
        };
        let p = proposal.map(|p| {
            let agree = p.agreement(&answer[i..]);
            (p, agree)
        });
        out.push(p);
        lookup.push(answer[i]);
    }
    out
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
    /// Fixed verification shapes: 1, 2, 4, … up to this many tokens, the policy choosing (0:
    /// off); or every round in one shape of `verify_batch` tokens (0 or 1: off; a replay does
    /// not apply the engine's GPU default). Lookups only.
    pub verify_shapes: usize,
    pub verify_batch: usize,
    /// The extra time of the two rounds after a change of batch shape, seconds (on a GPU: the
    /// batch run without a CUDA graph, then the capture of a new one; 0: a CPU). With fixed
    /// shapes, paid at their changes; with each round at its own length, at every change of
    /// length, and the policy prices it unless `verify_batch` is 1 (as the engine does on a
    /// GPU, where `verify_batch = 1` skips the shapes' timing).
    pub switch_s: f64,
}

impl Replaying {
    pub fn of(e: &crate::config::EngineConfig) -> Self {
        Self {
            gamma: e.gamma,
            lookup: e.lookup,
            lookup_max: e.lookup_max,
            adaptive: e.adaptive,
            draft_confidence: e.draft_confidence,
            drafter: true,
            verify_shapes: e.verify_shapes,
            verify_batch: e.verify_batch,
            switch_s: 0.0,
        }
    }
}

/// What a replay of one answer projects.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Projection {
    pub tokens: usize,
    pub rounds: usize,
    pub plain_rounds: usize,
    pub lookup_rounds: usize,
    pub drafter_rounds: usize,
    /// Draft tokens verified, and accepted, whatever their source.
    pub drafted: usize,
    pub accepted: usize,
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
    /// Changes of verification shape (with fixed shapes).
    pub shape_switches: usize,
}

impl Projection {
    pub fn speedup(&self) -> f64 {
        self.plain_s / (self.verify_s + self.draft_s).max(1e-12)
    }

    /// Counts a round: `k` tokens drafted from `source` (None: a plain step), `accepted` of
    /// them, `produced` tokens in all, and its times.
    fn add_round(
        &mut self,
        source: DraftSource,
        k: usize,
        accepted: usize,
        produced: usize,
        t_verify: f64,
        t_draft: f64,
    ) {
        self.rounds += 1;
        self.drafted += k;
        self.accepted += accepted;
        self.verify_s += t_verify;
        self.draft_s += t_draft;
        let from_drafts = accepted.min(produced);
        match source {
            DraftSource::None => self.plain_rounds += 1,
            DraftSource::Lookup => {
                self.lookup_rounds += 1;
                self.from_lookup += from_drafts;
            }
            DraftSource::Model => {
                self.drafter_rounds += 1;
                self.from_drafter += from_drafts;
            }
        }
        self.from_target += produced - from_drafts;
    }
}

/// What a replay reads: the prompts, what the target produced and, at each position of it, the
/// drafter's own greedy continuation with its probability for each token (empty: no drafter).
#[derive(Debug, Clone, Copy)]
pub struct Case<'a> {
    /// What the drafter saw (the retrieved chunks), looked in by lookups.
    pub draft_prompt: &'a [Token],
    pub prompt: &'a [Token],
    /// The tokens the rounds produce, in order: the answer's, those of a turn marker it was cut
    /// at, and (with `eog`) the end-of-generation token that ended it (not emitted).
    pub answer: &'a [Token],
    pub drafts: &'a [Vec<(Token, f32)>],
    /// Whether `answer`'s last token is the end-of-generation token.
    pub eog: bool,
    /// The answer's token limit as the decode loop had it (None: the answer's own length, as
    /// if the policy knew where it ends).
    pub max_tokens: Option<usize>,
}

impl Case<'_> {
    /// The tokens a plain decode emits (the end-of-generation token is produced, not emitted).
    fn emitted(&self) -> usize {
        self.answer.len() - usize::from(self.eog)
    }

    /// The lookup proposals along the answer that rounds of their own lengths draft (none with
    /// lookups off).
    fn lookups(&self, r: &Replaying) -> Vec<Option<(super::lookup::Proposal, usize)>> {
        if r.lookup {
            proposals(
                self.draft_prompt,
                self.prompt,
                self.answer,
                r.lookup_max,
                false,
            )
        } else {
            vec![None; self.answer.len()]
        }
    }
}

/// What a round cost, as the decode loop measured it (its `Round` event).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundCost {
    pub t_draft: Duration,
    pub t_draft_step: Option<Duration>,
    pub t_verify: Duration,
}

/// Where a replay's costs come from.
#[derive(Debug, Clone, Copy)]
pub enum Costing<'a> {
    /// Cost curves: the target's verification by batch size, and the drafter's (None: no
    /// drafter model, lookups only).
    Curves {
        target: &'a CostCurve,
        drafter: Option<&'a CostCurve>,
    },
    /// The costs a live answer measured, round by round, and its guess of a drafter step's cost
    /// relative to a target step: a replay of that answer makes the live loop's choices.
    Measured { rounds: &'a [RoundCost], hint: f64 },
}

/// Replays rapid's policy on `case` with the costs of `costing`, starting from `costs` (the
/// estimates an engine carries from answer to answer), through the round driver the decode loop
/// runs ([`super::round`]): the policy plans each round from the lookup's proposal and the
/// drafter's room, the drafter decodes the tokens it is behind in one batch then one step per
/// further draft (the last draft is not decoded), stops drafting below `draft_confidence`, and
/// keeps its accepted drafts. With `verify_shapes` (the policy choosing among shapes of 1, 2, 4,
/// … tokens, see [`super::shapes`]) or `verify_batch` (every round in one shape), each round
/// verifies as much of the lookup as its shape holds, padded, lookups only.
pub fn project(
    case: &Case<'_>,
    costing: Costing<'_>,
    r: &Replaying,
    costs: Costs,
) -> (Projection, Costs) {
    project_logged(case, costing, r, costs, &mut Vec::new())
}

/// A round of a replay, as `Round` events tell the decode loop's: where its draft came from,
/// how many tokens it drafted, and how many of them the target accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    pub source: DraftSource,
    pub drafted: usize,
    pub accepted: usize,
}

/// [`project`], with each round written to `log`.
pub fn project_logged(
    case: &Case<'_>,
    costing: Costing<'_>,
    r: &Replaying,
    costs: Costs,
    log: &mut Vec<Logged>,
) -> (Projection, Costs) {
    let shaped = r.verify_shapes > 1;
    let fixed = (!shaped && r.verify_batch > 1).then_some(r.verify_batch);
    let (mut policy, drafter) = replay_policy_for(costing, r, costs, shaped || fixed.is_some());
    if shaped {
        policy = policy.with_shapes(r.verify_shapes);
        if let Costing::Curves { target, .. } = costing
            && !policy.shapes_calibrated()
        {
            for s in super::shapes::sizes(r.verify_shapes) {
                policy.calibrate_shape(s, target.duration(s), Duration::from_secs_f64(r.switch_s));
            }
        }
    }
    let rules = round::Rules {
        gamma: r.gamma,
        lookup: r.lookup || shaped || fixed.is_some(),
        lookup_max: r.lookup_max,
        fixed_shape: fixed,
    };
    let mut b = Replayed::new(case, costing, r, drafter, shaped || fixed.is_some());
    while b.left() > 0 && b.i < case.answer.len() {
        let Ok(played) = round::play(&mut b, &mut policy, &rules) else {
            break;
        };
        b.account(&played);
        log.push(Logged {
            source: played.source,
            drafted: played.emitted.drafted,
            accepted: played.emitted.accepted,
        });
        if played.emitted.stop.is_some() {
            break;
        }
    }
    b.p.shape_switches = policy.shape_switches();
    (b.p, policy.costs().clone())
}

/// The policy a replay starts with (from `costs`), and whether the drafter model drafts: with
/// fixed shapes (`shaped`), lookups only and a policy that always adapts; else priced for a
/// GPU's changes of batch shape where `r` says they cost.
fn replay_policy_for(
    costing: Costing<'_>,
    r: &Replaying,
    costs: Costs,
    shaped: bool,
) -> (Policy, bool) {
    match costing {
        Costing::Curves { .. } if shaped => (Policy::new(true, 1.0).with_costs(costs), false),
        Costing::Curves { target, drafter } => {
            let drafter = drafter.filter(|_| r.drafter);
            let hint = drafter.map_or(1.0, |d| d.t(1) / target.t(1));
            let mut p = Policy::new(r.adaptive, hint).with_costs(costs);
            if r.switch_s > 0.0 && r.verify_batch != 1 {
                p = p.with_graphs(target.t(1), r.switch_s);
            }
            (p, drafter.is_some())
        }
        Costing::Measured { hint, .. } => {
            (Policy::new(r.adaptive, hint).with_costs(costs), r.drafter)
        }
    }
}

/// An answer being replayed: the backend of the round driver on a recorded answer.
struct Replayed<'a> {
    case: &'a Case<'a>,
    costing: Costing<'a>,
    r: &'a Replaying,
    drafter: bool,
    /// The tokens produced so far, and the lookup's index of the text.
    i: usize,
    lookup: Lookup,
    /// The drafter's cache: its prompt but the last token (prefilled), then what it decoded;
    /// and the steps of the round under way's draft, where the drafter drafted (it caught up
    /// first, whatever it then drafted).
    cached: usize,
    steps: Option<usize>,
    /// Rounds played (with measured costs, the next one's index).
    rounds: usize,
    /// Rounds at fixed shapes start in their first shape, paid for with the prefill; rounds of
    /// their own lengths in plain steps.
    shaped: bool,
    graph: Option<Graph>,
    /// The round's times in seconds as the curves give them (the policy sees them in whole
    /// nanoseconds, as a clock would; the projection adds them up unrounded).
    t_draft: f64,
    t_verify: f64,
    p: Projection,
}

impl<'a> Replayed<'a> {
    fn new(
        case: &'a Case<'a>,
        costing: Costing<'a>,
        r: &'a Replaying,
        drafter: bool,
        shaped: bool,
    ) -> Self {
        let t1 = match costing {
            Costing::Curves { target, .. } => target.t(1),
            Costing::Measured { .. } => 0.0,
        };
        Self {
            case,
            costing,
            r,
            drafter,
            i: 0,
            lookup: Lookup::new(case.draft_prompt, case.prompt),
            cached: case.draft_prompt.len().saturating_sub(1),
            steps: None,
            rounds: 0,
            shaped,
            graph: None,
            t_draft: 0.0,
            t_verify: 0.0,
            p: Projection {
                tokens: case.emitted(),
                // Plain decoding pays a step for the end-of-generation token too.
                plain_s: case.answer.len() as f64 * t1,
                ..Projection::default()
            },
        }
    }

    fn measured(&self) -> Option<&RoundCost> {
        match self.costing {
            Costing::Measured { rounds, .. } => rounds.get(self.rounds),
            Costing::Curves { .. } => None,
        }
    }

    /// Counts a played round into the projection.
    fn account(&mut self, played: &Played) {
        self.rounds += 1;
        let ended = matches!(played.emitted.stop, Some(Stop::EndOfGeneration { .. }));
        self.p.add_round(
            played.source,
            played.draft.tokens.len(),
            played.accepted(),
            played.emitted.emitted + usize::from(ended),
            self.t_verify,
            self.t_draft,
        );
        // The next round's drafter time is its own (none unless the drafter drafts).
        self.t_draft = 0.0;
    }
}

impl round::Backend for Replayed<'_> {
    fn left(&self) -> usize {
        let limit = self.case.max_tokens.unwrap_or(self.case.emitted());
        limit.saturating_sub(self.i)
    }

    fn propose(&self, max: usize, filled: bool) -> Option<super::lookup::Proposal> {
        if filled {
            self.lookup.propose_filled(max)
        } else {
            self.lookup.propose(max)
        }
    }

    fn drafter(&self) -> Option<(usize, usize)> {
        let seq_len = self.case.draft_prompt.len() + self.i;
        self.drafter
            .then(|| (usize::MAX / 2, seq_len - self.cached.min(seq_len)))
    }

    fn fits(&self, _: usize) -> bool {
        true
    }

    fn draft(&mut self, k: usize, worth: &round::Worth<'_>) -> anyhow::Result<Drafted> {
        let cont = self.case.drafts.get(self.i).map_or(&[][..], Vec::as_slice);
        let max = k.min(cont.len());
        // The decode loop's draft(): stop at `max`, below the confidence threshold, or where
        // the policy says the next token is not worth it.
        let mut reach = 1.0;
        let n = cont[..max]
            .iter()
            .enumerate()
            .position(|(j, &(_, prob))| {
                let next = (prob >= self.r.draft_confidence)
                    .then(|| worth(j, prob, reach))
                    .flatten();
                match next {
                    Some(r) => {
                        reach = r;
                        false
                    }
                    None => true,
                }
            })
            .unwrap_or(max);
        let steps = if n < max { n } else { n.saturating_sub(1) };
        let seq_len = self.case.draft_prompt.len() + self.i;
        let behind = (seq_len - self.cached.min(seq_len)).max(1);
        self.steps = Some(steps);
        let (time, step) = match (self.measured(), self.costing) {
            (Some(m), _) => (m.t_draft.as_secs_f64(), m.t_draft_step),
            (
                None,
                Costing::Curves {
                    drafter: Some(d), ..
                },
            ) => (
                d.t(behind) + steps as f64 * d.t(1),
                (steps > 0).then(|| d.duration(1)),
            ),
            _ => (0.0, None),
        };
        self.t_draft = time;
        let time = Duration::from_secs_f64(time);
        Ok(Drafted {
            tokens: cont[..n].iter().map(|d| d.0).collect(),
            probs: cont[..n].iter().map(|d| d.1).collect(),
            qs: Vec::new(),
            step,
            time,
        })
    }

    fn verify(
        &mut self,
        draft: &Drafted,
        shape: Option<usize>,
        _: DraftSource,
    ) -> anyhow::Result<(Vec<Verified>, Duration)> {
        let rest = &self.case.answer[self.i..];
        let accepted = (draft.tokens.iter().zip(rest))
            .take_while(|(d, a)| d == a)
            .count();
        if let Some(steps) = self.steps.take() {
            let seq_len = self.case.draft_prompt.len() + self.i;
            self.cached = seq_len + accepted.min(steps);
        }
        let mut out: Vec<Verified> = rest[..accepted]
            .iter()
            .map(|&token| Verified {
                token,
                kind: TokenKind::Accepted,
                margin: 0.0,
            })
            .collect();
        if let Some(&token) = rest.get(accepted) {
            let kind = match (draft.tokens.len(), accepted == draft.tokens.len()) {
                (0, _) => TokenKind::Target,
                (_, true) => TokenKind::Bonus,
                (_, false) => TokenKind::Corrected,
            };
            out.push(Verified {
                token,
                kind,
                margin: 0.0,
            });
        }
        let g = shape.unwrap_or(draft.tokens.len() + 1);
        self.t_verify = match (self.measured().copied(), self.costing) {
            (Some(m), _) => m.t_verify.as_secs_f64(),
            (None, Costing::Curves { target, .. }) => {
                let shaped = self.shaped;
                let graph = self.graph.get_or_insert_with(|| {
                    if shaped {
                        Graph { size: g, calls: 2 }
                    } else {
                        Graph::default()
                    }
                });
                target.t(g) + graph.extra(g, self.r.switch_s)
            }
            _ => 0.0,
        };
        Ok((out, Duration::from_secs_f64(self.t_verify)))
    }

    fn emit(&mut self, verified: &[Verified], drafted: usize) -> Emitted {
        let answer = self.case.answer;
        let eog = self.case.eog.then(|| answer[answer.len() - 1]);
        let room = self.left();
        emit::emit(
            verified,
            drafted,
            room,
            |t| Some(t) == eog,
            |v| {
                self.lookup.push(v.token);
                self.i += 1;
                // The end of what the target produced: the turn marker it was cut at, or the end of
                // an answer recorded without its ending.
                if self.i == answer.len() {
                    Flow::Cancel
                } else {
                    Flow::Continue
                }
            },
        )
    }

    fn last(&self, n: usize) -> &[Token] {
        &self.case.answer[self.i - n..self.i]
    }
}

/// The share of a change of batch shape's extra time that its first batch, run without a CUDA
/// graph, pays (as an H100 measured it); the next batch, which captures the graph, pays the rest.
const WITHOUT_GRAPH: f64 = 0.4;

/// llama.cpp's CUDA graph of a context, as a replay meets it: a batch of a new size runs
/// without one, the next of that size captures it, and the ones after replay it (see
/// [`WITHOUT_GRAPH`]). Rounds at their own lengths start in plain steps that replay theirs
/// (plain decoding pays its first two steps too).
struct Graph {
    size: usize,
    calls: usize,
}

impl Default for Graph {
    fn default() -> Self {
        Self { size: 1, calls: 2 }
    }
}

impl Graph {
    /// The extra time of a batch of `g`, the change costing `switch_s` over two batches.
    fn extra(&mut self, g: usize, switch_s: f64) -> f64 {
        if g != self.size {
            self.size = g;
            self.calls = 0;
        }
        self.calls += 1;
        match self.calls {
            1 => WITHOUT_GRAPH * switch_s,
            2 => (1.0 - WITHOUT_GRAPH) * switch_s,
            _ => 0.0,
        }
    }
}

/// Replays the adaptive policy (starting from `costs`, e.g. a calibration with `curve`) on the
/// greedy `answer` to a `prompt` whose drafter saw `extra`, with lookups and plain steps only
/// (see [`project`]). Returns the replay and the costs it ends with (for the next answer).
pub fn replay_policy(
    extra: &[Token],
    prompt: &[Token],
    answer: &[Token],
    lookup_max: usize,
    curve: &CostCurve,
    costs: Costs,
) -> (Replay, Costs) {
    let case = Case {
        draft_prompt: extra,
        prompt,
        answer,
        drafts: &[],
        eog: false,
        max_tokens: None,
    };
    let lookups_only = Replaying {
        gamma: 1,
        lookup: true,
        lookup_max,
        adaptive: true,
        draft_confidence: 0.0,
        drafter: false,
        verify_shapes: 0,
        verify_batch: 0,
        switch_s: 0.0,
    };
    let costing = Costing::Curves {
        target: curve,
        drafter: None,
    };
    let (p, costs) = project(&case, costing, &lookups_only, costs);
    let replay = Replay {
        tokens: p.tokens,
        rounds: p.rounds,
        lookup_rounds: p.lookup_rounds,
        drafted: p.drafted,
        accepted: p.accepted,
        seconds: p.verify_s,
    };
    (replay, costs)
}

/// The least verification time any policy could spend on `answer` with the same lookups,
/// choosing each round's draft length knowing which tokens will be accepted (dynamic
/// programming over positions): the bound the policy is measured against.
pub fn replay_best(
    extra: &[Token],
    prompt: &[Token],
    answer: &[Token],
    lookup_max: usize,
    curve: &CostCurve,
) -> Replay {
    let props = proposals(extra, prompt, answer, lookup_max, false);
    let n = answer.len();
    // best[i]: (seconds, rounds, drafted, accepted, lookup rounds) to produce answer[i..].
    let mut best = vec![(0.0f64, 0usize, 0usize, 0usize, 0usize); n + 1];
    for i in (0..n).rev() {
        let plain = best[i + 1];
        let mut b = (plain.0 + curve.t(1), plain.1 + 1, plain.2, plain.3, plain.4);
        if let Some((p, agree)) = props[i].as_ref() {
            for k in 1..=p.tokens.len() {
                let acc = (*agree).min(k);
                let next = (i + acc + 1).min(n);
                let rest = best[next];
                let t = curve.t(k + 1) + rest.0;
                if t < b.0 {
                    b = (t, rest.1 + 1, rest.2 + k, rest.3 + acc, rest.4 + 1);
                }
            }
        }
        best[i] = b;
    }
    let (seconds, rounds, drafted, accepted, lookup_rounds) = best[0];
    Replay {
        tokens: n,
        rounds,
        lookup_rounds,
        drafted,
        accepted,
        seconds,
    }
}

/// The bound of an answer: the least time any policy could spend on it with its lookups and its
/// drafter's drafts (see [`best`]), and where that best path takes its tokens from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bound {
    pub speedup: f64,
    pub seconds: f64,
    pub from_lookup: usize,
    pub from_drafter: usize,
}

/// The least time any policy could spend on `case` with its lookups and its drafter's drafts,
/// choosing each round knowing which tokens will be accepted: a plain step, a lookup of `k`
/// tokens, the drafter's first `k` (up to γ), or both (the lookup's confirmed tokens continued
/// by the drafter's). A bound no policy reaches: the drafter's catch-up is counted as one step
/// whatever it is behind, and it drafts past its confidence threshold. Returns the speed-up over
/// plain steps.
pub fn best_speedup(
    case: &Case<'_>,
    target: &CostCurve,
    drafter: Option<&CostCurve>,
    r: &Replaying,
) -> f64 {
    best(case, target, drafter, r).speedup
}

/// The bound of `case` (see [`best_speedup`]), with the sources of its tokens.
pub fn best(
    case: &Case<'_>,
    target: &CostCurve,
    drafter: Option<&CostCurve>,
    r: &Replaying,
) -> Bound {
    let Case { answer, drafts, .. } = *case;
    let n = answer.len();
    let props = case.lookups(r);
    let drafter = drafter.filter(|_| r.drafter);
    // How many of the drafter's tokens at `i` the answer confirms, and how many it offers.
    let drafted = |i: usize| -> (usize, usize) {
        drafts.get(i).map_or((0, 0), |d| {
            let agree = (d.iter().zip(&answer[i..]))
                .take_while(|(d, a)| d.0 == **a)
                .count();
            (agree, d.len().min(r.gamma))
        })
    };
    // best[i]: the least time to produce answer[i..], and the tokens it takes from lookups and
    // from the drafter.
    let mut best = vec![(0.0f64, 0usize, 0usize); n + 1];
    for i in (0..n).rev() {
        let left = n - i;
        let after = |produced: usize| best[(i + produced).min(n)];
        let plain = after(1);
        let mut b = (target.t(1) + plain.0, plain.1, plain.2);
        let mut consider = |t: f64, produced: usize, lookup: usize, drafter: usize| {
            let rest = after(produced);
            if t + rest.0 < b.0 {
                b = (t + rest.0, rest.1 + lookup, rest.2 + drafter);
            }
        };
        let lookup = props[i].as_ref().map(|(p, agree)| (*agree, p.tokens.len()));
        if let Some((agree, len)) = lookup {
            for k in 1..=len.min(left - 1) {
                let acc = agree.min(k);
                consider(target.t(k + 1), acc + 1, acc, 0);
            }
        }
        if let Some(d) = drafter {
            // Drafting from `j` after `lead` confirmed lookup tokens (0: the drafter alone).
            let mut from = |lead: usize| {
                let (agree, offered) = drafted(i + lead);
                for k in 1..=offered.min(left - 1 - lead) {
                    let t = k as f64 * d.t(1) + target.t(lead + k + 1);
                    let acc = agree.min(k);
                    consider(t, lead + acc + 1, lead, acc);
                }
            };
            from(0);
            if let Some((agree, _)) = lookup.filter(|&(agree, _)| agree > 0 && agree < left - 1) {
                from(agree);
            }
        }
        best[i] = b;
    }
    let (seconds, from_lookup, from_drafter) = best[0];
    Bound {
        speedup: n as f64 * target.t(1) / seconds.max(1e-12),
        seconds,
        from_lookup,
        from_drafter,
    }
}

/// Replays verification at a fixed batch shape: every round, plain or not, decodes `g` tokens
/// (the lookup's first `g − 1`, padded), costing `t_g`, so the shape never changes (on a GPU,
/// llama.cpp's CUDA graph for it is kept rather than rebuilt when the batch size changes).
pub fn replay_fixed(
    extra: &[Token],
    prompt: &[Token],
    answer: &[Token],
    g: usize,
    t_g: f64,
) -> Replay {
    let props = proposals(extra, prompt, answer, g.saturating_sub(1), true);
    let mut r = Replay {
        tokens: answer.len(),
        ..Replay::default()
    };
    let mut i = 0;
    while i < answer.len() {
        let (k, accepted) = props[i]
            .as_ref()
            .map_or((0, 0), |(p, agree)| (p.tokens.len(), *agree));
        r.rounds += 1;
        r.seconds += t_g;
        if k > 0 {
            r.lookup_rounds += 1;
            r.drafted += k;
            r.accepted += accepted;
        }
        i += (accepted + 1).min(answer.len() - i);
    }
    r
}

/// Costs as a calibration on `curve` leaves them (the sizes the decode loop calibrates). On a
/// GPU whose change of batch shape costs `switch_s` (see [`Replaying`]; 0 on a CPU) each size
/// the calibration times follows another, so it runs without its CUDA graph.
pub fn calibrated(curve: &CostCurve, gamma: usize, lookup_max: usize, switch_s: f64) -> Costs {
    let mut costs = Costs::default();
    for g in adaptive::calibration_sizes(gamma, Some(lookup_max)) {
        costs.record_verify(
            g,
            curve.duration(g) + Duration::from_secs_f64(WITHOUT_GRAPH * switch_s),
        );
    }
    costs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(v: &[i32]) -> Vec<Token> {
        v.iter().map(|&t| Token::new(t)).collect()
    }

    #[test]
    fn the_curve_interpolates_and_extends() {
        let c = CostCurve::parse("1:1, 5:2, 9:6", 12).unwrap();
        assert!((c.t(1) - 0.001).abs() < 1e-12);
        assert!((c.t(3) - 0.0015).abs() < 1e-12);
        assert!((c.t(7) - 0.004).abs() < 1e-12);
        assert!((c.t(11) - 0.008).abs() < 1e-12);
        assert!((c.t(20) - 0.017).abs() < 1e-12);
        assert!(CostCurve::parse("2:1", 4).is_err());
        assert!(CostCurve::parse("1:x", 4).is_err());
    }

    #[test]
    fn a_change_of_batch_size_runs_without_its_graph_then_captures_it() {
        let mut g = Graph::default();
        let extras: Vec<f64> = [1, 1, 5, 5, 5, 1, 1, 1]
            .iter()
            .map(|&size| g.extra(size, 10.0))
            .collect();
        assert_eq!(extras, [0.0, 0.0, 4.0, 6.0, 0.0, 4.0, 6.0, 0.0]);
    }

    /// On a GPU the changes of batch size cost time: a loop's replay is slower with them, and
    /// the policy that prices them (as the engine does where the shapes were timed) drafts fewer
    /// tokens than one that does not.
    #[test]
    fn changes_of_batch_size_are_paid_and_priced() {
        let prompt = toks(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let mut answer = toks(&[20, 21, 22, 23, 24, 25]);
        for _ in 0..40 {
            answer.extend(toks(&[30, 31, 32, 33, 34, 35, 36]));
        }
        let curve = CostCurve::parse("1:1.0, 8:1.3, 9:3.0, 17:3.8", 17).unwrap();
        let case = Case {
            draft_prompt: &[],
            prompt: &prompt,
            answer: &answer,
            drafts: &[],
            eog: false,
            max_tokens: None,
        };
        let run = |switch_s: f64, verify_batch: usize| {
            let r = Replaying {
                gamma: 1,
                lookup: true,
                lookup_max: 16,
                adaptive: true,
                draft_confidence: 0.0,
                drafter: false,
                verify_shapes: 0,
                verify_batch,
                switch_s,
            };
            let costs = calibrated(&curve, 1, 16, switch_s);
            project(
                &case,
                Costing::Curves {
                    target: &curve,
                    drafter: None,
                },
                &r,
                costs,
            )
            .0
        };
        let free = run(0.0, 0);
        let unpriced = run(0.003, 1);
        let priced = run(0.003, 0);
        assert!(unpriced.speedup() < free.speedup(), "{unpriced:?} {free:?}");
        assert!(priced.drafted < unpriced.drafted, "{priced:?} {unpriced:?}");
        for p in [free, unpriced, priced] {
            assert_eq!(p.tokens, answer.len());
            assert!(p.speedup() > 1.0, "a loop still pays: {p:?}");
        }
    }

    #[test]
    fn a_repetitive_answer_is_fast_and_the_best_bounds_the_policy() {
        // A prompt, then an answer that repeats a 5-token phrase: lookups find the loop.
        let prompt = toks(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let mut answer = toks(&[20, 21]);
        for _ in 0..30 {
            answer.extend(toks(&[30, 31, 32, 33, 34]));
        }
        // GPU-like: a batch of up to 8 costs little more than a step.
        let curve = CostCurve::parse("1:1.0, 8:1.3, 9:3.0, 17:3.8", 17).unwrap();
        let costs = calibrated(&curve, 6, 16, 0.0);
        let (policy, _) = replay_policy(&[], &prompt, &answer, 16, &curve, costs);
        let best = replay_best(&[], &prompt, &answer, 16, &curve);
        assert_eq!(policy.tokens, answer.len());
        assert_eq!(best.tokens, answer.len());
        assert!(best.seconds <= policy.seconds + 1e-12);
        assert!(
            policy.speedup(&curve) > 2.0,
            "a loop must pay: {policy:?} ({:.2}x)",
            policy.speedup(&curve)
        );
        assert!(policy.accepted <= policy.drafted);
        // Every round a batch of 8 at 1.3 ms: at most 8 tokens a round, never fewer rounds than
        // that allows.
        let fixed = replay_fixed(&[], &prompt, &answer, 8, 0.0013);
        assert_eq!(fixed.tokens, answer.len());
        assert!(fixed.rounds >= answer.len().div_ceil(8));
        assert!((fixed.seconds - fixed.rounds as f64 * 0.0013).abs() < 1e-12);
        assert!(fixed.drafted <= 7 * fixed.lookup_rounds);
        assert!(
            fixed.tokens as f64 * curve.t(1) / fixed.seconds > 2.0,
            "{fixed:?}"
        );
    }

    /// Fixed shapes: one shape replays as `replay_fixed` does; the policy's shapes find the
    /// loop in a repetitive answer and pay for their changes, and stay plain steps (after a
    /// change back at most) where nothing is to be looked up.
    #[test]
    fn fixed_shapes_replay_the_batch_and_the_policy_pays_for_its_changes() {
        let prompt = toks(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let mut answer: Vec<Token> = (100..140).map(Token::new).collect();
        for _ in 0..40 {
            answer.extend(toks(&[30, 31, 32, 33, 34, 35, 36]));
        }
        let case = Case {
            draft_prompt: &[],
            prompt: &prompt,
            answer: &answer,
            drafts: &[],
            eog: false,
            max_tokens: None,
        };
        // An H100's SmolLM2 (ms): a change of shape costs about four steps.
        let curve = CostCurve::parse("1:1.3,2:1.45,4:1.81,8:2.13,16:4.06", 17).unwrap();
        let shaped = |verify_shapes, verify_batch, switch_s| Replaying {
            verify_shapes,
            verify_batch,
            switch_s,
            ..replaying(false)
        };
        let (one, _) = project(
            &case,
            Costing::Curves {
                target: &curve,
                drafter: None,
            },
            &shaped(0, 4, 0.005),
            Costs::default(),
        );
        let fixed = replay_fixed(&[], &prompt, &answer, 4, curve.t(4));
        assert_eq!((one.rounds, one.accepted), (fixed.rounds, fixed.accepted));
        assert!((one.verify_s - fixed.seconds).abs() < 1e-9);
        assert_eq!(one.shape_switches, 0);
        let (policy, costs) = project(
            &case,
            Costing::Curves {
                target: &curve,
                drafter: None,
            },
            &shaped(16, 0, 0.005),
            Costs::default(),
        );
        assert_eq!(policy.tokens, answer.len());
        assert!(policy.shape_switches >= 1, "{policy:?}");
        assert!(
            policy.speedup() > one.speedup(),
            "the loop pays for a larger shape: {:.2}x against {:.2}x",
            policy.speedup(),
            one.speedup()
        );
        // The next answer quotes nothing: it loses at most its budget's worth, and a change.
        let plain: Vec<Token> = (200..300).map(Token::new).collect();
        let case = Case {
            answer: &plain,
            ..case
        };
        let (p, _) = project(
            &case,
            Costing::Curves {
                target: &curve,
                drafter: None,
            },
            &shaped(16, 0, 0.005),
            costs,
        );
        assert!(p.shape_switches <= 1, "{p:?}");
        assert!(p.speedup() > 0.9, "{p:?}: {:.2}x", p.speedup());
    }

    #[test]
    fn nothing_to_look_up_is_plain_steps() {
        let prompt = toks(&[1, 2, 3]);
        let answer: Vec<Token> = (100..140).map(Token::new).collect();
        let curve = CostCurve::parse("1:1, 17:5", 17).unwrap();
        let costs = calibrated(&curve, 6, 16, 0.0);
        let (r, _) = replay_policy(&[], &prompt, &answer, 16, &curve, costs);
        assert_eq!(r.rounds, answer.len());
        assert_eq!(r.lookup_rounds, 0);
        assert!((r.speedup(&curve) - 1.0).abs() < 1e-9);
        let best = replay_best(&[], &prompt, &answer, 16, &curve);
        assert_eq!(best.rounds, answer.len());
    }

    /// A replay of `answer` after the prompt 1 2 3 (the drafter's too), with `drafts`.
    fn project_on(
        answer: &[i32],
        drafts: &[Vec<(i32, f32)>],
        target: &CostCurve,
        drafter: Option<&CostCurve>,
        r: &Replaying,
        costs: Costs,
    ) -> (Projection, Costs) {
        let drafts = draft_tokens(drafts);
        let (prompt, answer) = (toks(&[1, 2, 3]), toks(answer));
        let case = Case {
            draft_prompt: &prompt,
            prompt: &prompt,
            answer: &answer,
            drafts: &drafts,
            eog: false,
            max_tokens: None,
        };
        project(&case, Costing::Curves { target, drafter }, r, costs)
    }

    /// Each position's drafts, as (token, the drafter's probability).
    type Drafts = Vec<Vec<(i32, f32)>>;

    fn draft_tokens(drafts: &[Vec<(i32, f32)>]) -> Vec<Vec<(Token, f32)>> {
        drafts
            .iter()
            .map(|d| d.iter().map(|&(t, p)| (Token::new(t), p)).collect())
            .collect()
    }

    /// A 300-token answer on a GPU-like target (a batch of 7 costs 1.2 steps) with a drafter at
    /// a tenth of a step, and drafts of 6 that are always right.
    fn gpu_like() -> (Vec<i32>, CostCurve, CostCurve, Drafts) {
        let answer: Vec<i32> = (100..400).collect();
        let target = CostCurve::parse("1:10,7:12,17:20", 17).unwrap();
        let drafter = CostCurve::parse("1:1,17:3", 17).unwrap();
        let right = (0..answer.len())
            .map(|i| answer[i..].iter().take(6).map(|&t| (t, 0.9)).collect())
            .collect();
        (answer, target, drafter, right)
    }

    fn replaying(drafter: bool) -> Replaying {
        Replaying {
            gamma: 6,
            lookup: true,
            lookup_max: 16,
            adaptive: true,
            draft_confidence: 0.0,
            drafter,
            verify_shapes: 0,
            verify_batch: 0,
            switch_s: 0.0,
        }
    }

    #[test]
    fn a_drafter_that_is_always_right_and_cheap_pays_and_one_that_is_wrong_is_dropped() {
        let (answer, target, drafter, right) = gpu_like();
        let costs = calibrated(&target, 6, 16, 0.0);
        let (p, _) = project_on(
            &answer,
            &right,
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
        let (w, _) = project_on(
            &answer,
            &wrong,
            &target,
            Some(&drafter),
            &replaying(true),
            costs,
        );
        assert_eq!(w.from_drafter, 0);
        assert!(w.speedup() > 0.95 && w.speedup() <= 1.0, "{w:?}");
        assert!(w.plain_rounds > answer.len() * 9 / 10, "{w:?}");
    }

    /// The bound (choices made knowing the answer) is never below the policy, is plain steps
    /// where nothing is drafted right, and with a drafter that is always right, reaches what its
    /// drafts of γ allow.
    #[test]
    fn the_bound_knowing_the_answer_is_above_the_policy() {
        let (answer, target, drafter, right) = gpu_like();
        let bound = |drafts: &[Vec<(i32, f32)>], with_drafter: bool| {
            let (prompt, answer, drafts) = (toks(&[1, 2, 3]), toks(&answer), draft_tokens(drafts));
            let case = Case {
                draft_prompt: &prompt,
                prompt: &prompt,
                answer: &answer,
                drafts: &drafts,
                eog: false,
                max_tokens: None,
            };
            best_speedup(&case, &target, Some(&drafter), &replaying(with_drafter))
        };
        let (p, _) = project_on(
            &answer,
            &right,
            &target,
            Some(&drafter),
            &replaying(true),
            calibrated(&target, 6, 16, 0.0),
        );
        let best = bound(&right, true);
        assert!(
            best >= p.speedup(),
            "{best:.2}x against {:.2}x",
            p.speedup()
        );
        // Six drafts of 1 ms and a batch of 7 at 12 ms give 7 tokens for 18 ms, at best.
        let round = 7.0 * 10.0 / 18.0;
        assert!(best <= round + 1e-9 && best > 0.95 * round, "{best:.3}x");
        // Drafts always wrong, no lookups (all tokens new), or no drafter: plain steps.
        let wrong: Vec<Vec<(i32, f32)>> = (0..answer.len()).map(|_| vec![(7, 0.9); 6]).collect();
        assert!((bound(&wrong, true) - 1.0).abs() < 1e-9);
        assert!((bound(&right, false) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn with_the_drafter_off_the_projection_is_the_lookup_replay() {
        // A repetitive answer: lookups find the loop; no drafter model.
        let mut answer = vec![20, 21];
        for _ in 0..30 {
            answer.extend([30, 31, 32, 33, 34]);
        }
        let target = CostCurve::parse("1:1.0, 8:1.3, 9:3.0, 17:3.8", 17).unwrap();
        let costs = calibrated(&target, 6, 16, 0.0);
        // A drafter curve and drafts are given, but the drafter is off.
        let drafter = CostCurve::parse("1:0.1", 17).unwrap();
        let drafts: Vec<Vec<(i32, f32)>> = answer.iter().map(|&t| vec![(t, 1.0); 6]).collect();
        let (p, _) = project_on(
            &answer,
            &drafts,
            &target,
            Some(&drafter),
            &replaying(false),
            costs.clone(),
        );
        let (r, _) = replay_policy(
            &toks(&[1, 2, 3]),
            &toks(&[1, 2, 3]),
            &toks(&answer),
            16,
            &target,
            costs,
        );
        assert_eq!(p.drafter_rounds, 0);
        assert!(p.speedup() > 2.0, "the loop pays: {p:?}");
        assert_eq!(p.rounds, r.rounds);
        assert_eq!(p.lookup_rounds, r.lookup_rounds);
        assert!((p.verify_s - r.seconds).abs() < 1e-12);
        assert!((p.speedup() - r.speedup(&target)).abs() < 1e-9);
    }
}
