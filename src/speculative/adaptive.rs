//! Choosing each round's draft: where it comes from (a lookup in the text, the drafter model, or
//! nowhere: a plain target step) and how long it is. A draft of `k` tokens accepted token by token
//! with probability `α` yields `E(k) = (1 − α^(k+1)) / (1 − α)` tokens per round (the target's own
//! token included) and costs `k·t_draft + t_verify(k+1)`; the policy picks the draft with the most
//! tokens per second, where a plain step yields 1 token in `t_verify(1)`. The rates and costs are
//! measured as the answer goes (acceptance per source, and for lookups per match length, since a
//! long match is a better guess than a short one; a lookup the policy declined is scored against
//! the tokens the round produced anyway, so its estimate keeps learning for free). A drafter that
//! sat out some rounds must first catch up on the tokens emitted meanwhile: that batch is part of
//! its cost. So when drafting does not pay, as on a CPU where verifying `G` tokens costs a good
//! share of `G` steps, the policy falls back to plain steps.
//!
//! The estimates carry over from earlier answers, and a new answer may not be like them: a short
//! answer that quotes nothing can lose on lookups that paid in a repetitive one. So each answer
//! keeps the floor of plain decoding: its decoding time at most the larger of 1.05 times plain
//! steps' and plain steps' plus 8 of them. A draft is taken only if its worst case (every draft
//! rejected: one token for the round's whole cost) loses no more than what is left of that:
//! from the first round, a few plain steps' worth (so a short answer may try the drafter at
//! once), growing with the answer to a few percent of its plain-step time, plus half of what
//! this answer's drafts have gained; what they have lost comes off it. A lookup declined for
//! want of budget is followed along the answer, and half of what the policy would have gained by
//! taking it (the draft it would have chosen without a budget, its tokens the answer confirmed,
//! at that batch's cost) is added too. Losses are counted against the least recent plain step, so
//! a busy machine can only make drafts look worse than they are.
//!
//! On a GPU a batch of a new size runs without llama.cpp's CUDA graph and the next one captures
//! it anew (see [`super::shapes`]): a draft of another size than the last round's costs that
//! change, and the plain steps after it the change back. Where the shapes' costs were timed (a
//! GPU with the target as its own drafter) a draft is priced with the change back (the measured
//! extra of the two batches after a change) unless it keeps the last round's size, and a plain
//! step is the one-token shape's steady time. Where a batch of 2 costs over two steps and the
//! change back several more (Gemma 3 270M on an H100), only long lookups that hold pay.

use std::time::Duration;

use super::estimate::{DECAY, Mean, Samples};
use super::lookup::Proposal;
use super::shapes::{ShapeCosts, Shapes};
use crate::llm::Token;

pub use super::DraftSource;

/// A round's plan: the source and the most tokens to draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub source: DraftSource,
    pub k: usize,
}

impl Choice {
    /// A plain target step.
    pub const NONE: Self = Self {
        source: DraftSource::None,
        k: 0,
    };
}

/// A drafter not used for this many rounds is tried once with a short draft (when nearly worth
/// it), so that its estimate can recover when the text changes.
const EXPLORE_AFTER: usize = 32;
/// How much more a draft must promise than a plain step to be taken.
const MARGIN: f64 = 1.05;
/// Lookups whose match is shorter than this are not used without adaptation.
const FIXED_MIN_MATCH: usize = 3;
/// The floor of an answer (DESIGN.md's "How speed is judged"): its decoding time at most the
/// larger of 1.05 times plain steps' and plain steps' plus 8 of them. Drafts may lose what is left
/// of it, from the first round: the larger of `FLOOR_STEPS` plain steps and `FLOOR_SHARE` of the
/// plain-step time of the tokens so far (the floor's 8 and 5%, less a margin for a round that
/// costs more than its estimate), plus `RISK_GAINS` of what the drafts have gained.
const FLOOR_STEPS: f64 = 7.0;
const FLOOR_SHARE: f64 = 0.045;
const RISK_GAINS: f64 = 0.5;
/// With fixed shapes (a GPU's), a change of shape is paid for by the tokens it is expected to
/// save and is not counted against the floor: the budget there grows from nothing, by this share
/// of the plain-step time of the tokens so far, so that the answer is some way in before the
/// shape changes.
const SHAPES_RISK_SHARE: f64 = 0.03;

/// A decayed estimate of a per-token acceptance rate: successes and failures of a geometric
/// process (a round that accepts everything is censored: no failure).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Rate {
    s: f64,
    f: f64,
}

impl Rate {
    fn prior(alpha: f64) -> Self {
        // Worth two observations.
        Self {
            s: 2.0 * alpha,
            f: 2.0 * (1.0 - alpha),
        }
    }

    fn alpha(&self) -> f64 {
        (self.s / (self.s + self.f)).clamp(0.01, 0.99)
    }

    fn record(&mut self, accepted: usize, rejected: bool) {
        self.s = self.s * DECAY + accepted as f64;
        self.f = self.f * DECAY + f64::from(u8::from(rejected));
    }
}

/// The time to verify `g` tokens in one batch, measured per `g`; a size not measured yet is
/// interpolated linearly between its measured neighbours (extrapolated from the two largest).
#[derive(Debug, Clone, Default)]
struct VerifyCost {
    by_size: Vec<Samples>,
}

impl VerifyCost {
    fn record(&mut self, g: usize, t: f64) {
        if self.by_size.len() <= g {
            self.by_size.resize(g + 1, Samples::default());
        }
        self.by_size[g].record(t);
    }

    /// The least recent time of a batch of `g` (measured only).
    fn least(&self, g: usize) -> Option<f64> {
        self.by_size.get(g)?.least()
    }

    /// The estimated time of a batch of `g`, or None before any measurement.
    fn estimate(&self, g: usize) -> Option<f64> {
        let measured: Vec<(f64, f64)> = self
            .by_size
            .iter()
            .enumerate()
            .filter_map(|(s, m)| m.median().map(|t| (s as f64, t)))
            .collect();
        let x = g as f64;
        if let Some(&(_, t)) = measured.iter().find(|p| p.0 == x) {
            return Some(t);
        }
        let (p, q) = match measured.as_slice() {
            [] => return None,
            // One size measured: assume each extra token costs 40% of a step (a CPU-like
            // guess; measurements replace it).
            [(s, t)] => {
                let a = t / (1.0 + 0.4 * (s - 1.0));
                return Some(a * (1.0 + 0.4 * (x - 1.0)));
            }
            all => {
                let n = all.len();
                let above = all.iter().position(|p| p.0 > x).unwrap_or(n);
                match above {
                    0 => (all[0], all[1]),
                    a if a == n => (all[n - 2], all[n - 1]),
                    a => (all[a - 1], all[a]),
                }
            }
        };
        let slope = ((q.1 - p.1) / (q.0 - p.0)).max(0.0);
        Some((p.1 + slope * (x - p.0)).max(1e-6))
    }
}

/// What the policy measured, kept across answers (the engine holds it): the verification time
/// per batch size, the drafter's step time, and the acceptance rates of the drafter and of
/// lookups by match length (a session's text keeps its character from one answer to the next).
#[derive(Debug, Clone)]
pub struct Costs {
    verify: VerifyCost,
    draft_step: Mean,
    model: Rate,
    /// By match length, for matches in the prompt, then for matches in the answer.
    lookup: [Rate; 10],
    /// The drafter's tokens' acceptance by its own probability for them (see [`confidence`]).
    confidence: [Rate; CONFIDENCE_BUCKETS],
    /// With fixed verification shapes: theirs.
    shapes: ShapeCosts,
}

/// The acceptance rates a policy has learned, kept across runs for a pair of models (the times
/// are the machine's of the moment, and are measured anew).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Learned {
    model: Rate,
    lookup: [Rate; 10],
    confidence: [Rate; CONFIDENCE_BUCKETS],
}

/// The drafter's probability for its token, in buckets: `[0, 0.3)`, `[0.3, 0.5)`, `[0.5, 0.7)`,
/// `[0.7, 0.85)`, `[0.85, 0.95)` and `[0.95, 1]`. Its acceptance in each is learned as answers go
/// (a small model's probabilities are not calibrated; the bucket's rate is).
const CONFIDENCE_BUCKETS: usize = 6;
const CONFIDENCE_EDGES: [f32; CONFIDENCE_BUCKETS - 1] = [0.3, 0.5, 0.7, 0.85, 0.95];

fn confidence(p: f32) -> usize {
    CONFIDENCE_EDGES.iter().take_while(|&&e| p >= e).count()
}

impl Default for Costs {
    fn default() -> Self {
        Self {
            verify: VerifyCost::default(),
            draft_step: Mean::default(),
            model: Rate::prior(0.6),
            lookup: [0.3, 0.5, 0.6, 0.75, 0.8, 0.4, 0.6, 0.8, 0.9, 0.95].map(Rate::prior),
            // Until measured: the probability itself, the bucket's middle.
            confidence: [0.15, 0.4, 0.6, 0.78, 0.9, 0.97].map(Rate::prior),
            shapes: ShapeCosts::default(),
        }
    }
}

impl Costs {
    /// The acceptance rates learned, to keep for the next run.
    pub fn learned(&self) -> Learned {
        Learned {
            model: self.model,
            lookup: self.lookup,
            confidence: self.confidence,
        }
    }

    /// Starts from what an earlier run learned.
    pub fn with_learned(mut self, learned: Learned) -> Self {
        self.model = learned.model;
        self.lookup = learned.lookup;
        self.confidence = learned.confidence;
        self
    }

    /// Whether enough batch sizes are measured to choose drafts (else: calibrate first).
    pub fn calibrated(&self) -> bool {
        self.verify.by_size.iter().filter(|m| m.measured()).count() >= 3
    }

    /// Records the time of a verification of `g` tokens.
    pub fn record_verify(&mut self, g: usize, t: Duration) {
        self.verify.record(g, t.as_secs_f64());
    }

    /// Records a calibration of a fixed verification shape: its steady time, and the extra
    /// time of the two batches after a change to it.
    pub fn record_shape(&mut self, size: usize, steady: Duration, switch: Duration) {
        self.shapes.record_steady(size, steady.as_secs_f64());
        self.shapes.record_switch(switch.as_secs_f64());
    }

    /// Whether every one of the fixed shapes `sizes` has been timed.
    pub fn shapes_calibrated(&self, sizes: &[usize]) -> bool {
        self.shapes.calibrated(sizes)
    }

    /// The default fixed shape on a GPU, from the shapes' steady times
    /// ([`super::shapes::default_fixed`]; 1 until they are timed).
    pub fn default_fixed_shape(&self) -> usize {
        super::shapes::default_fixed(&self.shapes)
    }

    /// The one-token shape's steady time and the extra time of a change of shape, where the
    /// shapes were timed (see [`Policy::with_graphs`]).
    pub fn graph_costs(&self) -> Option<(f64, f64)> {
        Some((self.shapes.steady(1)?, self.shapes.measured_switch()?))
    }

    /// The fixed shapes' steady times as (size, seconds), smallest first.
    pub fn shape_curve(&self) -> Vec<(usize, f64)> {
        self.shapes.curve()
    }

    /// The verification time per batch size measured so far, as (size, seconds), smallest first.
    pub fn verify_curve(&self) -> Vec<(usize, f64)> {
        self.verify
            .by_size
            .iter()
            .enumerate()
            .filter_map(|(g, m)| m.median().map(|t| (g, t)))
            .collect()
    }
}

/// The batch sizes timed once per engine before its first adaptive answer: a spread, the
/// drafter's longest verification and, with lookups, theirs.
pub fn calibration_sizes(gamma: usize, lookup_max: Option<usize>) -> Vec<usize> {
    let mut sizes = vec![1, 2, 4, 8, 16, gamma + 1];
    sizes.extend(lookup_max.map(|m| m + 1));
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Expected tokens per round of a `k`-token draft with per-token acceptance `alpha`.
pub fn expected_tokens(alpha: f64, k: usize) -> f64 {
    if alpha >= 1.0 {
        return (k + 1) as f64;
    }
    (1.0 - alpha.powi(i32::try_from(k + 1).unwrap_or(i32::MAX))) / (1.0 - alpha)
}

/// Lookup acceptance is tracked per match length (2, 3, 4-7, 8-15, 16 and more tokens) and by
/// where the match is: the prompt's documents, or the answer itself (a model repeating itself
/// keeps doing so, a quote may end any time).
fn bucket(match_len: usize, in_answer: bool) -> usize {
    let by_len = match match_len {
        0..=2 => 0,
        3 => 1,
        4..=7 => 2,
        8..=15 => 3,
        _ => 4,
    };
    by_len + 5 * usize::from(in_answer)
}

/// What a round will draft.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The batch shape it is verified in (None: its own length).
    pub fixed: Option<usize>,
    /// Whether that shape is one the policy chose among several (else the rules' fixed shape).
    pub shaped: bool,
    pub proposal: Option<Proposal>,
    pub choice: Choice,
}

/// What a round may draft from, as the decoder offers it.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// The lookup's proposal after the answer so far, if it has one.
    pub proposal: Option<Proposal>,
    /// The most tokens the drafter model may draft (0: no drafter this round).
    pub model_max: usize,
    /// Tokens the drafter must decode before its first draft (1 when it is caught up).
    pub model_behind: usize,
}

/// What a round may draft from: the candidates the policy chooses among.
#[derive(Debug, Clone, Copy, Default)]
struct Candidates {
    /// The lookup's match length and how many tokens it can propose.
    pub lookup: Option<(usize, usize)>,
    /// The most tokens the drafter model may draft (0: no drafter this round).
    pub model_max: usize,
    /// Tokens the drafter must decode before its first draft (1 when it is caught up).
    pub model_behind: usize,
    /// Whether the lookup's match is in the answer itself.
    pub lookup_in_answer: bool,
}

/// The per-answer drafting policy.
#[derive(Debug, Clone)]
pub struct Policy {
    adaptive: bool,
    costs: Costs,
    /// A drafter step's cost relative to a target step until one is measured.
    draft_cost_hint: f64,
    /// Rounds since the drafter was last used.
    idle: usize,
    /// This answer's tokens so far.
    tokens: usize,
    /// The time this answer's drafted rounds saved over plain steps for the same tokens, in
    /// seconds (negative: lost).
    gained: f64,
    /// With fixed verification shapes: the answer's shape as it goes.
    shapes: Option<Shapes>,
    /// A lookup declined at a round's start, followed along the tokens produced since.
    shadow: Option<Shadow>,
    /// What the declined lookups followed to their end would have gained in this answer, in
    /// seconds (negative: lost).
    shadow_gained: f64,
    /// On a GPU (see the module's doc): the one-token step's steady time and the extra time of
    /// the two batches after a change of shape, in seconds.
    graphs: Option<(f64, f64)>,
    /// The size of the last round's batch (1: a plain step).
    last_batch: usize,
}

/// A declined lookup's tokens and how many of them the answer has confirmed so far.
#[derive(Debug, Clone)]
struct Shadow {
    tokens: Vec<Token>,
    agreed: usize,
}

impl Policy {
    /// With `adaptive` false: a lookup when its match is long enough, else the drafter model's
    /// longest draft, else a plain step (the paper's fixed γ). `draft_cost_hint` guesses a drafter
    /// step's cost relative to a target step (e.g. the ratio of the models' sizes) until measured.
    pub fn new(adaptive: bool, draft_cost_hint: f64) -> Self {
        Self {
            adaptive,
            costs: Costs::default(),
            draft_cost_hint: draft_cost_hint.clamp(0.01, 1.0),
            idle: 0,
            tokens: 0,
            gained: 0.0,
            shapes: None,
            shadow: None,
            shadow_gained: 0.0,
            graphs: None,
            last_batch: 1,
        }
    }

    /// Prices drafts for a GPU whose batch shapes were timed: `t1` a one-token step's steady
    /// time, `switch` the extra time of the two batches after a change of shape.
    pub fn with_graphs(mut self, t1: f64, switch: f64) -> Self {
        self.graphs = Some((t1, switch));
        self
    }

    /// A plain step's time (see [`Self::with_graphs`]), as drafts are compared with it.
    fn t1(&self) -> Option<f64> {
        self.graphs
            .map(|(t1, _)| t1)
            .or_else(|| self.costs.verify.estimate(1))
    }

    /// A plain step's time as the answer's gains and losses are counted against it: its least
    /// recent time. Counted so, a busy machine (a calibration caught in another program's burst,
    /// rounds slowed by it) can only make drafts look worse than they are, never better: the
    /// answer's floor does not rest on clean measurements.
    fn t1_least(&self) -> Option<f64> {
        self.graphs
            .map(|(t1, _)| t1)
            .or_else(|| self.costs.verify.least(1))
            .or_else(|| self.t1())
    }

    /// What a batch of `g` costs beyond its own time: on a GPU, a change from the last round's
    /// size is paid back by the plain steps after it.
    fn change_cost(&self, g: usize) -> f64 {
        match self.graphs {
            Some((_, switch)) if g != self.last_batch && g > 1 => switch,
            _ => 0.0,
        }
    }

    /// Verifies in fixed shapes of 1, 2, 4, … `largest` tokens (see [`super::shapes`]).
    pub fn with_shapes(mut self, largest: usize) -> Self {
        self.shapes = Some(Shapes::new(largest));
        self
    }

    /// The fixed shapes' sizes (empty without them).
    pub fn shape_sizes(&self) -> &[usize] {
        self.shapes.as_ref().map_or(&[], |s| s.sizes())
    }

    /// The largest of the fixed shapes (None without them).
    pub fn largest_shape(&self) -> Option<usize> {
        self.shape_sizes().last().copied()
    }

    /// The plan of the next round from `offer`: under the engine's `fixed` batch shape (where the
    /// context has room for it) the whole lookup or nothing, since the batch costs the same
    /// whatever it holds; with the policy's own shapes, the shape of the round and as much of
    /// the lookup as it holds; else the draft with the most tokens per second. `left`: the
    /// tokens the answer may still have; `fits`: whether the context has room for a batch.
    pub fn plan(
        &mut self,
        offer: Offer,
        fixed: Option<usize>,
        left: usize,
        fits: &dyn Fn(usize) -> bool,
    ) -> Plan {
        let Offer {
            proposal,
            model_max,
            model_behind,
        } = offer;
        let lookup_choice = |k: usize| match k {
            0 => Choice::NONE,
            k => Choice {
                source: DraftSource::Lookup,
                k,
            },
        };
        if fixed.is_none()
            && self.shapes.is_some()
            && let Some(s) = self.shape(left).filter(|&s| fits(s))
        {
            let k = proposal.as_ref().map_or(0, |p| p.tokens.len().min(s - 1));
            return Plan {
                fixed: Some(s),
                shaped: true,
                proposal,
                choice: lookup_choice(k),
            };
        }
        let choice = match fixed {
            Some(_) => lookup_choice(proposal.as_ref().map_or(0, |p| p.tokens.len())),
            None => self.choose(Candidates {
                lookup: proposal.as_ref().map(|p| (p.match_len, p.tokens.len())),
                model_max,
                model_behind,
                lookup_in_answer: proposal.as_ref().is_some_and(|p| p.in_answer),
            }),
        };
        Plan {
            fixed,
            shaped: false,
            proposal,
            choice,
        }
    }

    /// Learns from a round of `plan`: what it cost and how much of its draft the target took
    /// (`round`), and the tokens it `produced` (a lookup it declined is scored against them,
    /// and followed along the answer). A round in the engine's fixed shape teaches nothing: its
    /// time is not that of its draft's size.
    /// `probs`: the drafter's probability for each of its drafts (empty for lookups).
    pub fn learn(&mut self, plan: &Plan, round: &Round, produced: &[Token], probs: &[f32]) {
        if round.source == DraftSource::Model {
            self.observe_confidence(probs, round.accepted);
        }
        if plan.shaped {
            self.record_shaped(*round);
            self.observe_shapes(plan.proposal.as_ref(), produced);
        } else if plan.fixed.is_none() {
            self.record(*round);
        }
        if plan.fixed.is_none() || plan.shaped {
            let declined = plan
                .proposal
                .as_ref()
                .filter(|_| round.source != DraftSource::Lookup);
            self.observe_round(declined, produced);
        }
    }

    /// Records a calibration of the fixed shape `size` (see [`Costs::record_shape`]).
    pub fn calibrate_shape(&mut self, size: usize, steady: Duration, switch: Duration) {
        self.costs.record_shape(size, steady, switch);
    }

    /// Whether every fixed shape of this answer has been timed.
    pub fn shapes_calibrated(&self) -> bool {
        self.costs.shapes_calibrated(self.shape_sizes())
    }

    /// The changes of shape in this answer.
    pub fn shape_switches(&self) -> usize {
        self.shapes.as_ref().map_or(0, |s| s.switches)
    }

    /// With fixed shapes: the shape of the next round, given the tokens the answer may still
    /// have.
    fn shape(&mut self, left: usize) -> Option<usize> {
        let t1 = self.costs.shapes.steady(1)?;
        let risk = SHAPES_RISK_SHARE * self.tokens as f64 * t1 + self.gains();
        let tokens = self.tokens;
        let shapes = self.shapes.as_mut()?;
        Some(shapes.choose(&self.costs.shapes, risk, tokens, left))
    }

    /// With fixed shapes: replays on them the tokens a round `produced`, given its lookup `p`
    /// (if any).
    fn observe_shapes(&mut self, p: Option<&Proposal>, produced: &[Token]) {
        let Some(shapes) = self.shapes.as_ref() else {
            return;
        };
        let agreed = p.map_or(0, |p| p.agreement(produced));
        shapes.observe(
            &mut self.costs.shapes,
            (0..produced.len()).map(|j| j < agreed),
        );
    }

    /// Records a round verified in the current fixed shape (padded): the shape's time, the
    /// lookup's acceptance, and what the round gained or lost over plain steps.
    fn record_shaped(&mut self, round: Round) {
        let produced = round.accepted + 1;
        self.tokens += produced;
        // Every round counts: a padded round without a draft loses. The two rounds after a
        // change count at the shape's steady time: the change paid for itself by the tokens it
        // was expected to save (and the answer's first two pay the prefill's, as plain steps do).
        if let Some(shapes) = self.shapes.as_ref()
            && let Some(t1) = self.costs.shapes.steady(1)
        {
            let steady = self.costs.shapes.steady(shapes.size());
            let t = match steady {
                Some(t) if shapes.changing() => t,
                _ => (round.t_draft + round.t_verify).as_secs_f64(),
            };
            self.gained += produced as f64 * t1 - t;
        }
        if let Some(shapes) = self.shapes.as_mut() {
            shapes.record(&mut self.costs.shapes, round.t_verify.as_secs_f64());
        }
        if round.source == DraftSource::Lookup && round.drafted > 0 {
            self.costs.lookup[bucket(round.match_len, round.lookup_in_answer)]
                .record(round.accepted, round.rejected);
        }
    }

    /// The verification times the policy works with, as (size, seconds): the fixed shapes'
    /// steady times with them, else the time per batch size.
    pub fn curve(&self) -> Vec<(usize, f64)> {
        if self.shapes.is_some() {
            self.costs.shapes.curve()
        } else {
            self.costs.verify_curve()
        }
    }

    /// Starts from costs measured before (by an earlier answer or a calibration).
    pub fn with_costs(mut self, costs: Costs) -> Self {
        self.costs = costs;
        self
    }

    /// The costs, to keep for the next answer.
    pub fn costs(&self) -> &Costs {
        &self.costs
    }

    /// After a round that `produced` these tokens: scores the lookup proposal it did not use
    /// (`declined`, if any) against them, and follows a declined lookup along the answer to
    /// learn what taking it would have gained (see [`Self::risk`]).
    fn observe_round(&mut self, declined: Option<&Proposal>, produced: &[Token]) {
        if let Some(p) = declined {
            let agreed = p.agreement(produced);
            let disagreed = agreed < produced.len().min(p.tokens.len());
            self.observe_lookup(p.match_len, p.in_answer, agreed, disagreed);
            if self.shadow.is_none()
                && let Some(k) = self.unbudgeted_lookup(p)
            {
                self.shadow = Some(Shadow {
                    tokens: p.tokens[..k].to_vec(),
                    agreed: 0,
                });
            }
        }
        let Some(shadow) = self.shadow.as_mut() else {
            return;
        };
        for t in produced {
            if shadow.agreed < shadow.tokens.len() && shadow.tokens[shadow.agreed] == *t {
                shadow.agreed += 1;
                continue;
            }
            // Its end: the round it would have been gives its confirmed tokens and the
            // target's own, for the batch of all its tokens.
            let (k, agreed) = (shadow.tokens.len(), shadow.agreed);
            self.shadow = None;
            if let (Some(t1), Some(t)) = (self.t1_least(), self.costs.verify.estimate(k + 1)) {
                self.shadow_gained += (agreed + 1) as f64 * t1 - t - self.change_cost(k + 1);
            }
            break;
        }
    }

    /// Records a calibration measurement: `g` tokens verified in `t`.
    pub fn calibrate(&mut self, g: usize, t: Duration) {
        self.costs.record_verify(g, t);
    }

    /// The plan for the next round.
    fn choose(&mut self, opts: Candidates) -> Choice {
        let lookup = opts.lookup.filter(|&(_, avail)| avail > 0);
        let choice = if self.adaptive {
            self.best(
                lookup,
                opts.lookup_in_answer,
                opts.model_max,
                opts.model_behind.max(1),
            )
        } else if let Some((_, avail)) = lookup.filter(|&(len, _)| len >= FIXED_MIN_MATCH) {
            Choice {
                source: DraftSource::Lookup,
                k: avail,
            }
        } else if opts.model_max > 0 {
            Choice {
                source: DraftSource::Model,
                k: opts.model_max,
            }
        } else {
            Choice::NONE
        };
        self.idle = if choice.source == DraftSource::Model {
            0
        } else {
            self.idle + 1
        };
        choice
    }

    fn best(
        &self,
        lookup: Option<(usize, usize)>,
        in_answer: bool,
        model_max: usize,
        behind: usize,
    ) -> Choice {
        // Until a plain step has been timed there is nothing to compare with: take one.
        let Some(t1) = self.t1() else {
            return Choice::NONE;
        };
        // A draft must promise clearly more than a plain step: the estimates are noisy, and a
        // wrong guess costs more than a plain step.
        let plain = MARGIN / t1;
        // Losses are counted against the least plain step (see `t1_least`).
        let t1_least = self.t1_least().unwrap_or(t1);
        let risk = self.risk(t1_least);
        let mut best = (plain, Choice::NONE);
        // The drafter's best rate and its longest draft within the budget.
        let (mut model_best, mut model_k) = (0.0f64, 0);
        // A draft that costs `cost` loses `cost - t1` at worst (one token, as a plain step).
        let mut consider = |rate: f64, cost: f64, choice: Choice| {
            if cost - t1_least > risk {
                return;
            }
            if choice.source == DraftSource::Model {
                model_best = model_best.max(rate);
                model_k = model_k.max(choice.k);
            }
            if rate > best.0 {
                best = (rate, choice);
            }
        };
        if let Some((len, avail)) = lookup {
            for (k, rate, t) in self.lookup_drafts(len, in_answer, avail) {
                let choice = Choice {
                    source: DraftSource::Lookup,
                    k,
                };
                consider(rate, t, choice);
            }
        }
        if model_max > 0 {
            let alpha = self.costs.model.alpha();
            let td = self
                .costs
                .draft_step
                .get()
                .unwrap_or(t1 * self.draft_cost_hint);
            // The first draft comes with the catch-up batch, which costs like a verification of
            // that size on the drafter; each further draft is one drafter step.
            let catch_up = td * self.costs.verify.estimate(behind).map_or(1.0, |t| t / t1);
            for k in 1..=model_max {
                if let Some(t) = self.costs.verify.estimate(k + 1) {
                    let choice = Choice {
                        source: DraftSource::Model,
                        k,
                    };
                    let cost = catch_up + (k - 1) as f64 * td + t + self.change_cost(k + 1);
                    consider(expected_tokens(alpha, k) / cost, cost, choice);
                }
            }
        }
        let (rate, best) = best;
        // Try the idle drafter now and then with a short draft when it is nearly worth it: its
        // estimate may be stale. (Lookups are scored even when not used.)
        if best.source == DraftSource::None
            && model_k > 0
            && self.idle >= EXPLORE_AFTER
            && model_best >= 0.8 * rate
        {
            return Choice {
                source: DraftSource::Model,
                k: model_k.min(2),
            };
        }
        best
    }

    /// The lookup draft of `p` the policy would take without a loss budget (its length), if
    /// any.
    fn unbudgeted_lookup(&self, p: &Proposal) -> Option<usize> {
        let plain = MARGIN / self.t1()?;
        self.lookup_drafts(p.match_len, p.in_answer, p.tokens.len())
            .filter(|&(_, rate, _)| rate > plain)
            .reduce(|best, d| if d.1 > best.1 { d } else { best })
            .map(|(k, _, _)| k)
    }

    /// The lookup drafts of up to `avail` tokens from a match of `len` (in the answer or the
    /// prompt), as (tokens, expected tokens per second, verification time).
    fn lookup_drafts(
        &self,
        len: usize,
        in_answer: bool,
        avail: usize,
    ) -> impl Iterator<Item = (usize, f64, f64)> + '_ {
        let alpha = self.costs.lookup[bucket(len, in_answer)].alpha();
        (1..=avail).filter_map(move |k| {
            let t = self.costs.verify.estimate(k + 1)? + self.change_cost(k + 1);
            Some((k, expected_tokens(alpha, k) / t, t))
        })
    }

    /// How much more than plain steps a draft may still lose in this answer, in seconds (`t1`: a
    /// plain step's time). The floor grows with the answer, so what a draft may lose at a token
    /// never breaks the floor of the whole answer.
    fn risk(&self, t1: f64) -> f64 {
        (FLOOR_STEPS * t1).max(FLOOR_SHARE * self.tokens as f64 * t1) + self.gains()
    }

    /// What the answer's drafts have lost (all of it), and half of what they and the declined
    /// lookups followed along the answer have gained.
    fn gains(&self) -> f64 {
        self.gained.min(0.0) + RISK_GAINS * (self.gained.max(0.0) + self.shadow_gained.max(0.0))
    }

    /// Learns the acceptance of the drafter's tokens by its probability for them: the first
    /// `accepted` were taken, the one after (if any) was not.
    fn observe_confidence(&mut self, probs: &[f32], accepted: usize) {
        for (i, &p) in probs.iter().enumerate() {
            let rate = &mut self.costs.confidence[confidence(p)];
            if i < accepted {
                rate.record(1, false);
            } else {
                rate.record(0, true);
                break;
            }
        }
    }

    /// Whether the drafter's `j`-th token (0 the first), which it gives probability `p`, is worth
    /// drafting when the target takes the draft so far with probability `reach`: what it is
    /// expected to add (`reach` times its learned acceptance, in plain steps' time) against what
    /// it adds to the round's cost (a drafter step, but for the first, which comes with the
    /// catch-up, and one more verified position). Returns the chance past it, or None to stop
    /// the draft before it. Without adaptation every token is.
    pub fn worth_drafting(&self, j: usize, p: f32, reach: f64) -> Option<f64> {
        let next = reach * self.costs.confidence[confidence(p)].alpha();
        if !self.adaptive {
            return Some(next);
        }
        let (Some(t1), Some(after), Some(before)) = (
            self.t1(),
            self.costs.verify.estimate(j + 2),
            self.costs.verify.estimate(j + 1),
        ) else {
            return Some(next);
        };
        let step = if j == 0 {
            0.0
        } else {
            self.costs
                .draft_step
                .get()
                .unwrap_or(t1 * self.draft_cost_hint)
        };
        (next * t1 >= step + (after - before).max(0.0)).then_some(next)
    }

    /// Records a finished round: `drafted` tokens from `source` (with the lookup's match length),
    /// `accepted` of them, whether one was rejected, and the measured times.
    fn record(&mut self, round: Round) {
        let g = round.drafted + 1;
        let produced = round.accepted + 1;
        self.tokens += produced;
        if round.drafted > 0
            && let Some(t1) = self.t1_least()
        {
            let t = (round.t_draft + round.t_verify).as_secs_f64();
            self.gained += produced as f64 * t1 - t - self.change_cost(g);
        }
        self.last_batch = g;
        self.costs.verify.record(g, round.t_verify.as_secs_f64());
        match round.source {
            DraftSource::None => {}
            DraftSource::Lookup => {
                self.costs.lookup[bucket(round.match_len, round.lookup_in_answer)]
                    .record(round.accepted, round.rejected);
            }
            DraftSource::Model => {
                if let Some(step) = round.t_draft_step {
                    self.costs.draft_step.record(step.as_secs_f64());
                }
                if round.drafted > 0 {
                    self.costs.model.record(round.accepted, round.rejected);
                }
            }
        }
    }

    /// Scores a lookup proposal the round did not use against the tokens it produced: how many
    /// of its first tokens agreed, and whether one disagreed.
    fn observe_lookup(
        &mut self,
        match_len: usize,
        in_answer: bool,
        agreed: usize,
        disagreed: bool,
    ) {
        self.costs.lookup[bucket(match_len, in_answer)].record(agreed, disagreed);
    }

    /// The best speed-up over plain steps that drafts could give if they were free and always
    /// accepted: the most of `g · t(1) / t(g)` over the batch sizes measured.
    pub fn ceiling(&self) -> Option<f64> {
        let curve = self.curve();
        let &(_, t1) = curve.iter().find(|p| p.0 == 1)?;
        curve
            .iter()
            .map(|&(g, t)| g as f64 * t1 / t)
            .reduce(f64::max)
    }
}

/// What a round did, for [`Policy::record`].
#[derive(Debug, Clone, Copy)]
pub struct Round {
    pub source: DraftSource,
    pub match_len: usize,
    pub lookup_in_answer: bool,
    pub drafted: usize,
    pub accepted: usize,
    pub rejected: bool,
    pub t_draft: Duration,
    /// The mean time of the drafter's steps after its first (catch-up) decode, if it made any.
    pub t_draft_step: Option<Duration>,
    pub t_verify: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: f64) -> Duration {
        Duration::from_secs_f64(x / 1000.0)
    }

    fn round(source: DraftSource, len: usize, drafted: usize, accepted: usize, t: f64) -> Round {
        Round {
            source,
            match_len: len,
            lookup_in_answer: false,
            drafted,
            accepted,
            rejected: accepted < drafted,
            t_draft: ms(0.0),
            t_draft_step: None,
            t_verify: ms(t),
        }
    }

    #[test]
    fn expected_tokens_matches_the_formula() {
        assert!((expected_tokens(0.5, 1) - 1.5).abs() < 1e-9);
        assert!((expected_tokens(0.5, 3) - 1.875).abs() < 1e-9);
        assert_eq!(expected_tokens(1.0, 4), 5.0);
        assert!((expected_tokens(0.0, 4) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn verify_cost_interpolates_between_measured_sizes() {
        let mut v = VerifyCost::default();
        assert_eq!(v.estimate(3), None);
        v.record(1, 0.030);
        // One size: the 40% guess.
        assert!((v.estimate(3).unwrap() - 0.030 * 1.8).abs() < 1e-9);
        for _ in 0..3 {
            v.record(1, 0.030);
            v.record(5, 0.070);
        }
        // Linear between 30 ms at 1 and 70 ms at 5: 10 ms a token.
        assert!((v.estimate(3).unwrap() - 0.050).abs() < 1e-6);
        assert!((v.estimate(9).unwrap() - 0.110).abs() < 1e-6);
        assert!((v.estimate(5).unwrap() - 0.070).abs() < 1e-6);
    }

    /// The drafter's tokens are drafted while they are expected to pay: its probability for a
    /// token, calibrated by what the target took, against a drafter step and one more verified
    /// position. A token it is unsure of ends the draft; one of a kind the target keeps taking
    /// does not.
    #[test]
    fn a_draft_is_cut_where_the_drafters_calibrated_confidence_stops_paying() {
        let mut p = Policy::new(true, 0.1);
        for (g, t) in [(1, 10.0), (2, 11.0), (4, 13.0), (8, 17.0)] {
            p.calibrate(g, ms(t));
        }
        // Unsure tokens (p 0.4) the target took only 1 time in 5.
        for _ in 0..20 {
            p.observe_confidence(&[0.4], 0);
            p.observe_confidence(&[0.97, 0.4], 1);
        }
        let keep = |j, prob, reach| p.worth_drafting(j, prob, reach);
        let after_sure = keep(0, 0.97, 1.0).expect("a sure first token is drafted");
        assert!(after_sure > 0.9);
        assert!(
            keep(1, 0.4, after_sure).is_none(),
            "an unsure one ends the draft"
        );
        assert!(keep(1, 0.97, after_sure).is_some());
        // Learned: the same unsure tokens, taken every time, are drafted.
        for _ in 0..40 {
            p.observe_confidence(&[0.4, 0.4], 2);
        }
        assert!(p.worth_drafting(1, 0.4, after_sure).is_some());
        // What is learned carries to another run.
        let again = Costs::default().with_learned(p.costs().learned());
        assert_eq!(again.learned(), p.costs().learned());
    }

    /// A calibration caught in another program's burst (one plain step timed at 5x, the batch
    /// sizes cheap) must not let drafts that lose pass for gains: counted against the least
    /// plain step, the loss shows, and the answer stays within its floor.
    #[test]
    fn a_calibration_caught_in_a_burst_does_not_open_the_floor() {
        let mut p = Policy::new(true, 1.0);
        let t1 = 110.0;
        p.calibrate(1, ms(5.0 * t1));
        p.calibrate(1, ms(t1));
        p.calibrate(1, ms(5.0 * t1));
        for (g, t) in [(2, 120.0), (4, 130.0), (8, 150.0), (17, 200.0)] {
            p.calibrate(g, ms(t));
        }
        // What rounds really cost on the busy machine: drafts of 2 tokens take 300 ms, and the
        // target accepts one of them (2 tokens a round, where plain steps give 2 in 220 ms).
        let (mut spent, mut tokens) = (0.0, 0usize);
        for _ in 0..200 {
            let c = p.choose(Candidates {
                lookup: Some((8, 2)),
                ..Candidates::default()
            });
            let r = if c.source == DraftSource::Lookup {
                round(DraftSource::Lookup, 8, c.k, 1.min(c.k), 300.0)
            } else {
                round(DraftSource::None, 0, 0, 0, t1)
            };
            spent += r.t_verify.as_secs_f64() * 1e3;
            tokens += r.accepted + 1;
            p.record(r);
        }
        let plain = tokens as f64 * t1;
        let floor = (1.05 * plain).max(plain + 8.0 * t1);
        assert!(
            spent <= floor,
            "{spent:.0} ms for {tokens} tokens, floor {floor:.0} ms"
        );
    }

    /// The CPU case (DESIGN.md's table at 4K: 31 ms a step, 74 ms for 4, 124 ms for 8) with a
    /// drafter step of 15 ms: drafting with the model does not pay at 89% acceptance, a long
    /// lookup match that is usually right does.
    #[test]
    fn cpu_costs_fall_back_to_plain_steps_unless_the_lookup_is_good() {
        let mut p = Policy::new(true, 1.0);
        for _ in 0..5 {
            p.record(round(DraftSource::None, 0, 0, 0, 31.0));
            p.record(round(DraftSource::Lookup, 8, 3, 3, 74.0));
            p.record(round(DraftSource::Lookup, 8, 7, 7, 124.0));
            let mut r = round(DraftSource::Model, 0, 6, 5, 140.0);
            r.t_draft = ms(90.0);
            r.t_draft_step = Some(ms(15.0));
            p.record(r);
        }
        // Model acceptance: 5 of 6 with a rejection each round: about 0.8.
        let c = p.choose(Candidates {
            lookup: None,
            model_max: 6,
            model_behind: 1,
            lookup_in_answer: false,
        });
        assert_eq!(c.source, DraftSource::None);
        let c = p.choose(Candidates {
            lookup: Some((9, 16)),
            model_max: 6,
            model_behind: 1,
            lookup_in_answer: false,
        });
        assert_eq!(c.source, DraftSource::Lookup);
        assert!(c.k >= 3, "{c:?}");
    }

    /// On a GPU a batch of a new size runs without its CUDA graph and the plain steps after it
    /// pay the change back: a short lookup that pays at the batches' own times is declined there,
    /// while a loop's long lookups are taken and keep their size.
    #[test]
    fn on_a_gpu_a_draft_pays_for_the_change_of_shape() {
        let measure = |p: &mut Policy| {
            for _ in 0..300 {
                p.record(round(DraftSource::None, 0, 0, 0, 1.3));
            }
            p.calibrate(5, ms(2.0));
            p.calibrate(17, ms(4.0));
            // Lookups of 5-token matches in the prompt: 3 of 4 right.
            for _ in 0..20 {
                p.observe_lookup(5, false, 3, true);
            }
        };
        let short = Candidates {
            lookup: Some((5, 4)),
            ..Candidates::default()
        };
        let mut cpu = Policy::new(true, 1.0);
        measure(&mut cpu);
        assert_eq!(cpu.choose(short).source, DraftSource::Lookup);

        let mut gpu = Policy::new(true, 1.0).with_graphs(1.3e-3, 4.5e-3);
        measure(&mut gpu);
        assert_eq!(gpu.choose(short), Choice::NONE);
        let long = Candidates {
            lookup: Some((20, 16)),
            lookup_in_answer: true,
            ..Candidates::default()
        };
        let first = gpu.choose(long);
        assert_eq!((first.source, first.k), (DraftSource::Lookup, 16));
        let mut r = round(DraftSource::Lookup, 20, 16, 16, 4.0);
        r.lookup_in_answer = true;
        gpu.record(r);
        // The next batch of the same size replays its graph: no change to pay for.
        assert_eq!(gpu.change_cost(17), 0.0);
        assert_eq!(gpu.choose(long).k, 16);
        // After a plain step, a draft pays the change again.
        gpu.record(round(DraftSource::None, 0, 0, 0, 1.3));
        assert!((gpu.change_cost(17) - 4.5e-3).abs() < 1e-12);
    }

    /// The next answer's policy: the same estimates, a new loss budget.
    fn next_answer(p: &Policy, draft_cost_hint: f64) -> Policy {
        Policy::new(true, draft_cost_hint).with_costs(p.costs().clone())
    }

    /// The next answer's policy after `n` plain steps of `t1` ms (its budget grown by them).
    fn next_answer_after(p: &Policy, draft_cost_hint: f64, n: usize, t1: f64) -> Policy {
        let mut p = next_answer(p, draft_cost_hint);
        for _ in 0..n {
            p.record(round(DraftSource::None, 0, 0, 0, t1));
        }
        p
    }

    #[test]
    fn a_lookup_that_keeps_failing_is_dropped_and_taken_again_once_it_would_have_been_right() {
        let mut p = Policy::new(true, 1.0);
        p.record(round(DraftSource::None, 0, 0, 0, 30.0));
        for _ in 0..10 {
            p.record(round(DraftSource::Lookup, 5, 2, 0, 50.0));
        }
        let opts = Candidates {
            lookup: Some((5, 4)),
            ..Candidates::default()
        };
        assert_eq!(p.choose(opts).source, DraftSource::None);
        // Some way into the next answer, whose loss budget is its own.
        let mut p = next_answer_after(&p, 1.0, 16, 30.0);
        assert_eq!(p.choose(opts).source, DraftSource::None);
        // Plain steps that produced what the declined lookups proposed.
        for _ in 0..20 {
            p.observe_lookup(5, false, 1, false);
        }
        assert_eq!(p.choose(opts).source, DraftSource::Lookup);
    }

    #[test]
    fn the_drafter_is_retried_after_a_while_only_when_nearly_worth_it() {
        let opts = Candidates {
            model_max: 4,
            model_behind: 1,
            lookup_in_answer: false,
            ..Candidates::default()
        };
        let count = |p: &mut Policy| {
            (0..EXPLORE_AFTER * 2)
                .filter(|_| p.choose(opts).source == DraftSource::Model)
                .count()
        };
        // Nearly worth it: a cheap drafter whose acceptance fell.
        let mut p = Policy::new(true, 0.1);
        p.record(round(DraftSource::None, 0, 0, 0, 30.0));
        p.record(round(DraftSource::Lookup, 3, 4, 0, 40.0));
        for _ in 0..30 {
            p.record(round(DraftSource::Model, 0, 4, 0, 40.0));
        }
        // (This answer's drafts lost: its floor allows no more. The next one's does.)
        assert_eq!(count(&mut p), 0);
        let mut p = next_answer_after(&p, 0.1, 16, 30.0);
        assert!((1..=3).contains(&count(&mut p)));
        // Far from it: a drafter as slow as the target at 10% acceptance, never retried.
        let mut p = Policy::new(true, 1.0);
        p.record(round(DraftSource::None, 0, 0, 0, 30.0));
        p.record(round(DraftSource::Lookup, 3, 4, 0, 90.0));
        for _ in 0..5 {
            p.record(round(DraftSource::Model, 0, 4, 0, 90.0));
        }
        assert_eq!(count(&mut p), 0);
    }

    #[test]
    fn launch_bound_gpu_costs_take_long_lookups() {
        // DESIGN.md's H200 SmolLM2 figures: 1.3 ms a step, 3.5 ms for 11 tokens.
        let mut p = Policy::new(true, 1.0);
        for _ in 0..4 {
            p.record(round(DraftSource::None, 0, 0, 0, 1.3));
            p.record(round(DraftSource::Lookup, 8, 10, 10, 3.5));
        }
        let c = p.choose(Candidates {
            lookup: Some((10, 16)),
            ..Candidates::default()
        });
        assert_eq!(c.source, DraftSource::Lookup);
        assert!(c.k >= 10, "{c:?}");
    }

    /// A small drafter for a large target (an 8B on a GPU: 5 ms a step, 6 ms to verify 5): the
    /// drafter pays when it is caught up, not after sitting out 200 tokens on a CPU-like curve.
    #[test]
    fn a_cheap_drafter_pays_unless_it_must_catch_up_a_long_way() {
        let mut p = Policy::new(true, 0.05);
        for _ in 0..4 {
            p.record(round(DraftSource::None, 0, 0, 0, 5.0));
            p.record(round(DraftSource::Lookup, 3, 4, 0, 6.0));
        }
        let mut p = next_answer_after(&p, 0.05, 16, 5.0);
        let opts = |behind| Candidates {
            lookup: None,
            model_max: 6,
            model_behind: behind,
            lookup_in_answer: false,
        };
        let c = p.choose(opts(1));
        assert_eq!(c.source, DraftSource::Model, "{c:?}");
        assert!(c.k >= 3, "{c:?}");
        let mut cpu = Policy::new(true, 0.5);
        for _ in 0..4 {
            cpu.record(round(DraftSource::None, 0, 0, 0, 31.0));
            cpu.record(round(DraftSource::Lookup, 3, 7, 0, 124.0));
        }
        assert_eq!(cpu.choose(opts(200)).source, DraftSource::None);
        assert!(cpu.ceiling().unwrap() > 1.9);
    }

    #[test]
    fn without_adaptation_lookup_then_model() {
        let mut p = Policy::new(false, 1.0);
        let c = p.choose(Candidates {
            lookup: Some((5, 4)),
            model_max: 6,
            model_behind: 1,
            lookup_in_answer: false,
        });
        assert_eq!(
            c,
            Choice {
                source: DraftSource::Lookup,
                k: 4
            }
        );
        let c = p.choose(Candidates {
            lookup: Some((2, 4)),
            model_max: 6,
            model_behind: 1,
            lookup_in_answer: false,
        });
        assert_eq!(
            c,
            Choice {
                source: DraftSource::Model,
                k: 6
            }
        );
        let c = p.choose(Candidates::default());
        assert_eq!(c, Choice::NONE);
    }

    /// This machine's CPU curve at 4K (bench's calibration), in ms by batch size.
    const CPU: [(usize, f64); 9] = [
        (1, 25.2),
        (2, 36.7),
        (3, 55.8),
        (4, 63.9),
        (5, 69.8),
        (6, 80.1),
        (8, 108.3),
        (16, 200.9),
        (17, 194.8),
    ];

    /// A 16-token lookup of a 9-token match in the prompt.
    const LONG_LOOKUP: Candidates = Candidates {
        lookup: Some((9, 16)),
        model_max: 0,
        model_behind: 0,
        lookup_in_answer: false,
    };

    /// A policy that measured the CPU curve and saw long lookups right every time (an answer
    /// that repeats itself), starting a new answer.
    fn after_a_repetitive_answer() -> Policy {
        let mut p = Policy::new(true, 1.0);
        for (g, t) in CPU {
            p.calibrate(g, ms(t));
        }
        for _ in 0..30 {
            p.record(round(DraftSource::Lookup, 9, 15, 15, 194.8));
        }
        next_answer(&p, 1.0)
    }

    #[test]
    fn a_new_answer_may_draft_at_once_within_its_floor() {
        let mut p = after_a_repetitive_answer();
        // The estimates say a 16-token lookup is right, and the floor leaves a few plain steps
        // to lose from the first round: a draft whose failure fits them.
        let first = p.choose(LONG_LOOKUP);
        assert_eq!(first.source, DraftSource::Lookup);
        assert!(
            cpu_t(first.k + 1) - CPU[0].1 <= FLOOR_STEPS * CPU[0].1 + 1e-9,
            "{first:?}"
        );
        // Drafts that pay keep it open.
        let mut ks = vec![first.k];
        for _ in 0..8 {
            let k = *ks.last().unwrap();
            p.record(round(DraftSource::Lookup, 9, k, k, cpu_t(k + 1)));
            let c = p.choose(LONG_LOOKUP);
            assert!(
                c.source == DraftSource::Lookup && c.k >= k.min(8),
                "{ks:?} then {c:?}"
            );
            ks.push(c.k);
        }
    }

    /// A policy that, after a repetitive answer, lost drafts in a new one until the floor left
    /// no room; and how many rounds that took.
    fn closed_by_losses() -> (Policy, usize) {
        let mut p = after_a_repetitive_answer();
        let mut lost = 0;
        loop {
            let c = p.choose(LONG_LOOKUP);
            if c == Choice::NONE {
                return (p, lost);
            }
            p.record(round(DraftSource::Lookup, 9, c.k, 0, cpu_t(c.k + 1)));
            lost += 1;
            assert!(lost < 50, "drafting never closed");
        }
    }

    #[test]
    fn losing_drafts_close_drafting_until_the_floor_has_room_again() {
        let (mut p, lost) = closed_by_losses();
        assert!(lost >= 1);
        // The floor grows by a share of each plain step: drafting reopens once it covers what
        // was lost.
        let mut steps = 0;
        while p.choose(LONG_LOOKUP) == Choice::NONE {
            p.record(round(DraftSource::None, 0, 0, 0, CPU[0].1));
            steps += 1;
            assert!(steps < 1000, "drafting never reopened");
        }
        assert!(steps >= 20, "reopened after {steps} plain steps");
    }

    /// `t(g)` of the CPU curve, interpolated.
    fn cpu_t(g: usize) -> f64 {
        let mut v = VerifyCost::default();
        for (s, t) in CPU {
            v.record(s, t);
        }
        v.estimate(g).unwrap()
    }

    /// However wrong the estimates, an answer ends at most the budget slower than plain steps:
    /// every lookup fails here, after an answer where every one was right.
    #[test]
    fn an_answer_whose_lookups_all_fail_loses_at_most_its_budget() {
        for tokens in [25, 76, 256] {
            let mut p = after_a_repetitive_answer();
            let (mut n, mut time, mut drafted) = (0, 0.0, 0);
            while n < tokens {
                let c = p.choose(LONG_LOOKUP);
                let t = cpu_t(c.k + 1);
                p.record(round(c.source, 9, c.k, 0, t));
                time += t;
                drafted += c.k;
                n += 1;
            }
            let plain = tokens as f64 * CPU[0].1;
            let bound =
                plain + (FLOOR_STEPS * CPU[0].1).max(FLOOR_SHARE * tokens as f64 * CPU[0].1);
            assert!(drafted > 0, "{tokens}: it never tried");
            assert!(time <= bound + 1e-6, "{tokens}: {time} ms > {bound} ms");
            let floor = (1.05 * plain).max(plain + 8.0 * CPU[0].1);
            assert!(
                time <= floor,
                "{tokens}: {time} ms over the floor {floor} ms"
            );
        }
    }

    /// Plain steps until the policy drafts the long lookup, when each plain step declined a
    /// 4-token lookup, right or wrong about the tokens that followed (None: none declined).
    fn plain_steps_before_drafting(declined: Option<bool>) -> Option<usize> {
        let (mut p, _) = closed_by_losses();
        let proposal = |at: i32, right: bool| Proposal {
            match_len: 9,
            in_answer: false,
            tokens: (0..4)
                .map(|j| {
                    crate::llm::token::from_index((at + j + if right { 0 } else { 1000 }) as usize)
                })
                .collect(),
        };
        let mut steps = 0;
        while p.choose(LONG_LOOKUP) == Choice::NONE {
            p.record(round(DraftSource::None, 0, 0, 0, CPU[0].1));
            // The answer counts up by one token a step.
            let at = i32::try_from(steps).unwrap();
            let produced = [crate::llm::token::from_index(at as usize)];
            let q = declined.map(|right| proposal(at, right));
            p.observe_round(q.as_ref(), &produced);
            steps += 1;
            if steps == 1000 {
                return None;
            }
        }
        Some(steps)
    }

    /// A lookup declined for want of room under the floor is followed along the answer: once the
    /// answer has confirmed what taking it would have gained, half of that may be risked, so
    /// drafting reopens sooner than the floor alone allows. Wrong ones give no credit.
    #[test]
    fn declined_lookups_the_answer_confirms_open_drafting_sooner() {
        let alone = plain_steps_before_drafting(None).expect("the floor reopens drafting");
        let confirmed = plain_steps_before_drafting(Some(true)).expect("sooner");
        assert!(confirmed < alone, "{confirmed} vs {alone}");
        // Refuted lookups give no credit (and teach that the lookup is wrong).
        let refuted = plain_steps_before_drafting(Some(false));
        assert!(refuted.is_none_or(|r| r >= alone), "{refuted:?} vs {alone}");
    }

    /// A model repeating 32 tokens of its answer goes on more surely than a 10-token echo: their
    /// acceptance is learned apart, so echoes that keep failing do not close long repetitions.
    #[test]
    fn matches_of_sixteen_tokens_and_more_are_judged_apart() {
        let mut p = Policy::new(true, 1.0);
        for (g, t) in CPU {
            p.calibrate(g, ms(t));
        }
        for _ in 0..200 {
            p.record(round(DraftSource::None, 0, 0, 0, CPU[0].1));
        }
        for _ in 0..10 {
            p.observe_lookup(10, true, 1, true);
        }
        let choose = |p: &mut Policy, len| {
            p.choose(Candidates {
                lookup: Some((len, 16)),
                lookup_in_answer: true,
                ..Candidates::default()
            })
        };
        assert_eq!(choose(&mut p, 10), Choice::NONE);
        assert_eq!(choose(&mut p, 32).source, DraftSource::Lookup);
    }
}
