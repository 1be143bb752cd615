//! Verification in a few fixed batch shapes, for GPUs. llama.cpp replays a captured CUDA graph
//! only while the batch keeps its shape, and the llama.cpp we build on keeps one graph per
//! context: a batch of a new shape runs without a graph, the next one captures it anew, and only
//! the third is replayed. A loop whose batch follows each draft's length pays that at nearly
//! every round (a step without its graph costs most of a step more).
//!
//! So every round is padded up to one of a few shapes (1, 2, 4, … up to the largest), and the
//! shape changes only when another one promises clearly less time per token over the tokens to
//! come than the change costs. What each shape would cost per token is replayed on the recent
//! text: after each round, every token it produced is marked as one the round's lookup had right
//! or not, and each shape counts the rounds it would have needed for those tokens (a round takes
//! the lookup's right tokens, up to its size less one, and one more). A lookup that keeps being
//! right in plain steps thus shows what a larger shape would have made of it, and one that fails
//! at once counts for nothing in any shape. The rounds per token, decayed over the recent tokens
//! (of this answer and the ones before), times each shape's time give its time per token.
//!
//! An answer starts in the shape that promises most: after the prefill every shape pays the
//! change anyway. The answer's loss budget holds as for other drafts, with a fifth of a step to spare:
//! a shape larger than one is taken and kept only while a wasted round in it fits; once the
//! answer has lost more, it goes back to plain steps (unless what is left of the answer is too
//! short to pay for the change back). A change's own cost (several steps on a GPU) is paid for
//! by the tokens it is expected to save, and does not count against the budget.

use super::estimate::Mean;

/// How much more tokens per second another shape must promise before the loop changes to it.
const MARGIN: f64 = 1.10;
/// The weight of the earlier tokens in the replayed rounds per token, per token: the estimates
/// rest on about the last `1 / (1 - TOKEN_DECAY)` tokens.
const TOKEN_DECAY: f64 = 0.97;
/// A change must save this many times its cost over the tokens to come: one change up is
/// mostly followed by one back.
const ROUND_TRIP: f64 = 2.0;
/// The fewest tokens to come a change is weighed over.
const MIN_HORIZON: f64 = 16.0;
/// Beyond the answer's budget, a round in a larger shape may lose this share of a plain step (so
/// an answer can start in a shape a little larger than one).
const SPARE: f64 = 0.2;

/// A shape's rounds replayed on the recent tokens.
#[derive(Debug, Clone, Copy, Default)]
struct Replayed {
    /// Rounds needed, decayed per token.
    rounds: f64,
    /// The lookup tokens the open round has taken (None: no round open).
    open: Option<usize>,
}

/// The sizes of the shapes up to `largest`: 1, 2, 4, … `largest` (a power of two).
pub fn sizes(largest: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |s| Some(s * 2))
        .take_while(|&s| s <= largest.max(1))
        .collect()
}

/// The default fixed shape's limits: the shape is the largest whose batch costs at most
/// `MAX_PADDED` plain steps, and none where that holds fewer than `MIN_FIXED` tokens. Every
/// round then costs that batch, a round of prose too (about 1.5 tokens a round with the filled
/// padding): it pays only where loops make up for it with long drafts. A model with a small
/// vocabulary (SmolLM2's 49K tokens) verifies 8 tokens within two steps on an H100 and gains
/// from a fixed 8; one whose every position returns a large vocabulary's logits (Gemma 3's 262K)
/// does not, and verifies each round at its own length. The limits are on 8, not on 2 or 4,
/// whose share of a step varies from run to run (docs/benchmarks.md, "H100: fixed verification
/// shapes").
const MAX_PADDED: f64 = 2.0;
const MIN_FIXED: usize = 8;

/// The fixed shape a GPU verifies in when the target is its own drafter (`verify_batch = 0`),
/// from the steady times of the shapes 1, 2, 4, … (see [`MAX_PADDED`], [`MIN_FIXED`]); 1: none.
pub fn default_fixed(costs: &ShapeCosts) -> usize {
    let Some(t1) = costs.steady(1) else {
        return 1;
    };
    costs
        .curve()
        .into_iter()
        .filter(|&(size, t)| size.is_power_of_two() && t <= MAX_PADDED * t1)
        .map(|(size, _)| size)
        .max()
        .filter(|&size| size >= MIN_FIXED)
        .unwrap_or(1)
}

/// What the shapes cost on this machine, kept across answers (part of the policy's costs).
#[derive(Debug, Clone, Default)]
pub struct ShapeCosts {
    /// The steady time of a batch of each size, by size.
    steady: Vec<(usize, Mean)>,
    /// The extra time of the two rounds after a change of shape (their time less two steady
    /// rounds of the new shape).
    switch: Mean,
    /// Each shape's rounds replayed on the recent tokens, by size, and those tokens (decayed).
    replayed: Vec<(usize, Replayed)>,
    tokens: f64,
}

impl ShapeCosts {
    /// The steady time of a batch of `size`, if measured.
    pub fn steady(&self, size: usize) -> Option<f64> {
        self.steady
            .iter()
            .find(|(s, _)| *s == size)
            .and_then(|(_, m)| m.get())
    }

    /// Records a steady round of `size` taking `t` seconds.
    pub fn record_steady(&mut self, size: usize, t: f64) {
        match self.steady.iter_mut().find(|(s, _)| *s == size) {
            Some((_, m)) => m.record(t),
            None => {
                let mut m = Mean::default();
                m.record(t);
                self.steady.push((size, m));
                self.steady.sort_by_key(|(s, _)| *s);
            }
        }
    }

    /// Records the extra time of the two rounds after a change of shape.
    pub fn record_switch(&mut self, extra: f64) {
        self.switch.record(extra.max(0.0));
    }

    /// The extra time of a change of shape, if measured.
    pub fn measured_switch(&self) -> Option<f64> {
        self.switch.get()
    }

    /// The extra time of a change of shape (a plain step's worth until measured).
    pub fn switch(&self) -> f64 {
        self.measured_switch()
            .or_else(|| self.steady(1))
            .unwrap_or(0.0)
    }

    /// Replays a produced token on every one of `sizes`: `right` says whether the lookup had it
    /// right.
    fn replay(&mut self, sizes: &[usize], right: bool) {
        self.tokens = self.tokens * TOKEN_DECAY + 1.0;
        for &size in sizes {
            let at = match self.replayed.iter().position(|(s, _)| *s == size) {
                Some(at) => at,
                None => {
                    self.replayed.push((size, Replayed::default()));
                    self.replayed.len() - 1
                }
            };
            let r = &mut self.replayed[at].1;
            r.rounds *= TOKEN_DECAY;
            let taken = match r.open {
                Some(taken) => taken,
                None => {
                    r.rounds += 1.0;
                    0
                }
            };
            // A right token is a draft while the round has room for one; else the round's own
            // token, which closes it.
            r.open = (right && taken + 1 < size).then_some(taken + 1);
        }
    }

    /// The rounds per token a shape of `size` would have needed on the recent tokens (one
    /// before any).
    fn rounds_per_token(&self, size: usize) -> f64 {
        self.replayed
            .iter()
            .find(|(s, _)| *s == size)
            .filter(|_| self.tokens > 0.0)
            .map_or(1.0, |(_, r)| (r.rounds / self.tokens).clamp(1e-3, 1.0))
    }

    /// Whether every one of `sizes` has a steady time.
    pub fn calibrated(&self, sizes: &[usize]) -> bool {
        sizes.iter().all(|&s| self.steady(s).is_some())
    }

    /// The steady times as (size, seconds), smallest first.
    pub fn curve(&self) -> Vec<(usize, f64)> {
        self.steady
            .iter()
            .filter_map(|(s, m)| m.get().map(|t| (*s, t)))
            .collect()
    }
}

/// The shape of an answer's rounds, as it goes.
#[derive(Debug, Clone)]
pub struct Shapes {
    sizes: Vec<usize>,
    /// The current shape's index in `sizes`.
    current: usize,
    /// Rounds verified in the current shape since it was taken.
    rounds_in: usize,
    /// The time of the rounds since the change (the first two pay it).
    since_switch: f64,
    /// Whether the answer's first shape has been chosen.
    started: bool,
    /// Changes of shape in this answer (the first shape not counted).
    pub switches: usize,
}

impl Shapes {
    /// An answer's shapes up to `largest`.
    pub fn new(largest: usize) -> Self {
        Self {
            sizes: sizes(largest),
            current: 0,
            rounds_in: 0,
            since_switch: 0.0,
            started: false,
            switches: 0,
        }
    }

    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The current shape's size.
    pub fn size(&self) -> usize {
        self.sizes[self.current]
    }

    /// Whether the next round is one of the two after a change of shape (or the answer's first
    /// two, after the prefill's), which pay for it.
    pub fn changing(&self) -> bool {
        self.rounds_in < 2
    }

    /// Replays the tokens a round produced on every shape: `right[j]` says whether the
    /// round's lookup had its `j`-th token right.
    pub fn observe(&self, costs: &mut ShapeCosts, right: impl IntoIterator<Item = bool>) {
        for r in right {
            costs.replay(&self.sizes, r);
        }
    }

    /// The shape to verify this round in. `risk`: what the answer's drafts may still lose
    /// (seconds); `tokens`: the answer's tokens so far; `left`: the tokens it may still have.
    pub fn choose(&mut self, costs: &ShapeCosts, risk: f64, tokens: usize, left: usize) -> usize {
        let times: Option<Vec<f64>> = self.sizes.iter().map(|&s| costs.steady(s)).collect();
        let Some(times) = times else {
            return self.sizes[self.current];
        };
        let t1 = times[0];
        // Tokens per second.
        let rate = |i: usize| 1.0 / (costs.rounds_per_token(self.sizes[i]) * times[i]);
        // A round in a larger shape loses `t - t1` at worst (one token): it may while that fits
        // the budget with a little to spare.
        let fits = |i: usize| i == 0 || times[i] - t1 <= risk + SPARE * t1;
        let switch = costs.switch();
        // The tokens to come: as many as so far, within what the estimates rest on.
        let memory = 1.0 / (1.0 - TOKEN_DECAY);
        let horizon = (tokens as f64).clamp(MIN_HORIZON, memory).min(left as f64);
        let cur = self.current;
        let next = if !self.started {
            // After the prefill every shape costs the same change: the best one, if clearly.
            self.started = true;
            self.current = (1..self.sizes.len())
                .filter(|&i| fits(i) && rate(i) > MARGIN * rate(0))
                .max_by(|&a, &b| rate(a).total_cmp(&rate(b)))
                .unwrap_or(0);
            return self.sizes[self.current];
        } else if self.rounds_in < 2 {
            // The change has not been paid for yet (nor the new shape measured).
            cur
        } else if !fits(cur) {
            // The answer has lost its budget: its drafts are not trusted any more. Plain steps,
            // unless a wasted round in this shape for the rest of the answer costs less than
            // the change back.
            if horizon * (times[cur] - t1) > switch {
                0
            } else {
                cur
            }
        } else {
            let saved =
                |i: usize| horizon * (1.0 / rate(cur) - 1.0 / rate(i)) - ROUND_TRIP * switch;
            (0..self.sizes.len())
                .filter(|&i| i != cur && fits(i))
                .filter(|&i| rate(i) > MARGIN * rate(cur) && saved(i) > 0.0)
                .max_by(|&a, &b| rate(a).total_cmp(&rate(b)))
                .unwrap_or(cur)
        };
        if next != cur {
            self.current = next;
            self.rounds_in = 0;
            self.since_switch = 0.0;
            self.switches += 1;
        }
        self.sizes[self.current]
    }

    /// Records a round verified in the current shape in `t` seconds: the third and later rounds
    /// after a change are steady; the first two tell what the change cost.
    pub fn record(&mut self, costs: &mut ShapeCosts, t: f64) {
        let size = self.sizes[self.current];
        self.rounds_in += 1;
        match self.rounds_in {
            1 => self.since_switch = t,
            2 => {
                if let Some(steady) = costs.steady(size) {
                    costs.record_switch(self.since_switch + t - 2.0 * steady);
                }
            }
            _ => costs.record_steady(size, t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default shape from the H100's steady times (ms, `rapid-chat cost-curve`, 4608 tokens).
    #[test]
    fn the_default_shape_follows_the_measured_costs() {
        let costs = |ms: &[(usize, f64)]| {
            let mut c = ShapeCosts::default();
            for &(size, t) in ms {
                c.record_steady(size, t / 1e3);
            }
            c
        };
        let smollm2 = [(1, 1.312), (2, 1.502), (4, 1.922), (8, 2.262), (16, 4.206)];
        assert_eq!(default_fixed(&costs(&smollm2)), 8);
        let gemma = [(1, 1.764), (2, 2.324), (4, 3.041), (8, 4.890), (16, 8.745)];
        assert_eq!(default_fixed(&costs(&gemma)), 1);
        // Gemma in another run (its calibration): 2 and 4 under the limits, 8 not.
        let gemma = [(1, 1.27), (2, 1.57), (4, 2.23), (8, 4.46), (16, 8.7)];
        assert_eq!(default_fixed(&costs(&gemma)), 1);
        // An 8B-shaped target at 131K tokens: a batch of 2 costs less than a step, 16 1.28 steps.
        let long = [
            (1, 11.547),
            (2, 9.715),
            (4, 10.865),
            (8, 12.973),
            (16, 14.773),
        ];
        assert_eq!(default_fixed(&costs(&long)), 16);
        // Not timed: none.
        assert_eq!(default_fixed(&ShapeCosts::default()), 1);
        assert_eq!(default_fixed(&costs(&[(1, 1.3)])), 1);
    }

    /// SmolLM2-like costs on a GPU: 1.3 ms a step, a batch of 2 1.4 ms, 4 1.5 ms, 8 1.8 ms, 16
    /// 2.6 ms; a change costs 1.5 ms.
    fn gpu() -> ShapeCosts {
        let mut c = ShapeCosts::default();
        for (s, t) in [(1, 1.3), (2, 1.4), (4, 1.5), (8, 1.8), (16, 2.6)] {
            c.record_steady(s, t / 1e3);
        }
        c.record_switch(1.5e-3);
        c
    }

    /// Text where the lookup has 7 tokens right in a row, then one wrong.
    fn runs(n: usize) -> impl Iterator<Item = bool> {
        (0..n).map(|i| i % 8 != 7)
    }

    /// A round: the shape chosen, its tokens replayed (plain steps produce one token, a larger
    /// shape as many as the text's lookup gets right, up to its size), and its time recorded as a
    /// GPU would take it (the first two rounds after a change 0.75 ms slower each).
    fn step(s: &mut Shapes, c: &mut ShapeCosts, text: &[bool], at: &mut usize, risk: f64) -> usize {
        let shape = s.choose(c, risk, *at, 200);
        let right = text[*at..]
            .iter()
            .take(shape - 1)
            .take_while(|&&r| r)
            .count();
        let produced = (right + 1).min(text.len() - *at);
        s.observe(c, text[*at..*at + produced].iter().copied());
        *at += produced;
        let extra = if s.rounds_in < 2 { 0.75e-3 } else { 0.0 };
        s.record(c, c.steady(shape).unwrap() + extra);
        shape
    }

    #[test]
    fn sizes_are_powers_of_two() {
        assert_eq!(sizes(16), [1, 2, 4, 8, 16]);
        assert_eq!(sizes(2), [1, 2]);
    }

    #[test]
    fn each_shape_replays_the_rounds_the_lookups_runs_would_need() {
        let mut c = ShapeCosts::default();
        let shapes = Shapes::new(16);
        shapes.observe(&mut c, runs(800));
        for (size, want) in [(1, 1.0), (2, 0.5), (4, 0.25), (8, 0.125), (16, 0.125)] {
            let got = c.rounds_per_token(size);
            assert!((got - want).abs() < 0.02, "size {size}: {got}");
        }
        // Text the lookups never get right: a round per token in every shape.
        shapes.observe(&mut c, std::iter::repeat_n(false, 400));
        assert!((c.rounds_per_token(16) - 1.0).abs() < 0.01);
    }

    #[test]
    fn an_answer_starts_in_the_shape_that_promises_most() {
        // Nothing seen yet: a plain step.
        let c = gpu();
        assert_eq!(Shapes::new(16).choose(&c, 0.0, 0, 200), 1);
        // After long runs of right lookups: the best shape a first wasted round in it can
        // afford (4 with no budget yet, 8 with one), no change counted.
        let mut c = gpu();
        Shapes::new(16).observe(&mut c, runs(200));
        let mut s = Shapes::new(16);
        assert_eq!(s.choose(&c, 0.0, 0, 200), 4);
        assert_eq!(s.switches, 0);
        assert_eq!(Shapes::new(16).choose(&c, 1.0, 0, 200), 8);
    }

    #[test]
    fn runs_of_right_lookups_move_to_a_large_shape_and_plain_text_back_to_one() {
        let mut c = gpu();
        let mut s = Shapes::new(16);
        let text: Vec<bool> = std::iter::repeat_n(false, 30)
            .chain(runs(400))
            .chain(std::iter::repeat_n(false, 200))
            .collect();
        let mut at = 0;
        let mut seen = Vec::new();
        while at < text.len() {
            seen.push((at, step(&mut s, &mut c, &text, &mut at, 1.0)));
        }
        let shape_at = |pos: usize| seen.iter().rev().find(|(a, _)| *a <= pos).unwrap().1;
        assert_eq!(shape_at(29), 1, "{seen:?}");
        assert_eq!(shape_at(400), 8, "{seen:?}");
        assert_eq!(shape_at(text.len() - 1), 1, "{seen:?}");
        // Up (through 4) and down (through 4): a plain token here and there does not undo a
        // change.
        assert!(s.switches <= 4, "{seen:?}");
    }

    #[test]
    fn a_change_that_cannot_pay_for_itself_is_not_made() {
        let mut c = gpu();
        let mut s = Shapes::new(16);
        s.observe(&mut c, std::iter::repeat_n(false, 40));
        for extra in [0.75e-3, 0.75e-3, 0.0] {
            assert_eq!(s.choose(&c, 1.0, 40, 200), 1);
            s.record(&mut c, 1.3e-3 + extra);
        }
        // Lookups that are right every other token: 2 tokens in 1.4 ms at shape 2 against 1
        // in 1.3 ms, but the change (twice, there and back) is 3 ms and 4 tokens are left.
        s.observe(&mut c, (0..40).map(|i| i % 2 == 0));
        assert_eq!(s.choose(&c, 1.0, 80, 4), 1);
        assert_eq!(s.switches, 0);
        // With the answer's usual length ahead, they pay for it.
        assert_eq!(s.choose(&c, 1.0, 80, 200), 2);
    }

    #[test]
    fn a_spent_budget_brings_back_plain_steps() {
        let mut c = gpu();
        Shapes::new(16).observe(&mut c, runs(200));
        // The answer has lost more than its budget and the spare: plain steps from the start.
        assert_eq!(Shapes::new(16).choose(&c, -1.0, 10, 200), 1);
        // A large shape is left as soon as the budget is spent, once the change is paid for...
        let mut s = Shapes::new(16);
        assert_eq!(s.choose(&c, 1.0, 0, 200), 8);
        s.record(&mut c, 3e-3);
        assert_eq!(s.choose(&c, -1.0, 1, 200), 8);
        s.record(&mut c, 3e-3);
        assert_eq!(s.choose(&c, -1.0, 2, 200), 1);
        assert_eq!(s.switches, 1);
        // ...unless the rest of the answer is too short to pay for the change back.
        let mut s = Shapes::new(16);
        assert_eq!(s.choose(&c, 1.0, 0, 200), 8);
        s.record(&mut c, 3e-3);
        s.record(&mut c, 3e-3);
        assert_eq!(s.choose(&c, -1.0, 2, 2), 8);
        assert_eq!(s.switches, 0);
    }

    #[test]
    fn the_rounds_after_a_change_measure_its_cost() {
        let mut c = gpu();
        let mut s = Shapes::new(16);
        // Shape 1, steady 1.3 ms: the first two rounds took 2.3 and 2.0 ms, 1.7 ms extra.
        s.record(&mut c, 2.3e-3);
        s.record(&mut c, 2.0e-3);
        s.record(&mut c, 1.3e-3);
        assert!((c.switch() - 1.6e-3).abs() < 1e-4, "{}", c.switch());
        assert!((c.steady(1).unwrap() - 1.3e-3).abs() < 1e-9);
        assert!(c.calibrated(&[1, 2, 4, 8, 16]));
        assert!(!c.calibrated(&[1, 32]));
    }
}
