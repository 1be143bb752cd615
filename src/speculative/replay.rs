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

use super::adaptive::{self, Costs, DraftSource, Policy};
use super::lookup::Lookup;
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
/// `answer[..i]` (up to `lookup_max` tokens, never past the answer's end), with how many of its
/// tokens the answer confirms.
pub fn proposals(
    extra: &[Token],
    prompt: &[Token],
    answer: &[Token],
    lookup_max: usize,
) -> Vec<Option<(super::lookup::Proposal, usize)>> {
    let mut lookup = Lookup::new(extra, prompt);
    let mut out = Vec::with_capacity(answer.len());
    for i in 0..answer.len() {
        let left = answer.len() - i;
        let p = lookup.propose(lookup_max.min(left - 1)).map(|p| {
            let agree = p
                .tokens
                .iter()
                .zip(&answer[i..])
                .take_while(|(a, b)| a == b)
                .count();
            (p, agree)
        });
        out.push(p);
        lookup.push(answer[i]);
    }
    out
}

/// Replays the adaptive policy (starting from `costs`, e.g. a calibration with `curve`) on the
/// greedy `answer` to a `prompt` whose drafter saw `extra`: each round it chooses between the
/// lookup and a plain step as rapid mode does, and its estimates learn from the outcomes. Returns
/// the replay and the costs it ends with (for the next answer).
pub fn replay_policy(
    extra: &[Token],
    prompt: &[Token],
    answer: &[Token],
    lookup_max: usize,
    curve: &CostCurve,
    costs: Costs,
) -> (Replay, Costs) {
    let props = proposals(extra, prompt, answer, lookup_max);
    let mut policy = Policy::new(true, 1.0).with_costs(costs);
    let mut r = Replay {
        tokens: answer.len(),
        ..Replay::default()
    };
    let mut i = 0;
    while i < answer.len() {
        let prop = props[i].as_ref();
        let choice = policy.choose(adaptive::Candidates {
            lookup: prop.map(|(p, _)| (p.match_len, p.tokens.len())),
            model_max: 0,
            model_behind: 0,
            lookup_in_answer: prop.is_some_and(|(p, _)| p.in_answer),
        });
        let (source, k, accepted) = match (choice.source, prop) {
            (DraftSource::Lookup, Some((p, agree))) => {
                let k = choice.k.min(p.tokens.len());
                (DraftSource::Lookup, k, (*agree).min(k))
            }
            _ => (DraftSource::None, 0, 0),
        };
        let produced = (accepted + 1).min(answer.len() - i);
        policy.record(adaptive::Round {
            source,
            match_len: prop.map_or(0, |(p, _)| p.match_len),
            lookup_in_answer: prop.is_some_and(|(p, _)| p.in_answer),
            drafted: k,
            accepted,
            rejected: accepted < k,
            t_draft: Duration::ZERO,
            t_draft_step: None,
            t_verify: curve.duration(k + 1),
        });
        if let Some((p, _)) = prop.filter(|_| source != DraftSource::Lookup) {
            policy.observe_declined(p, &answer[i..i + produced]);
        }
        r.rounds += 1;
        r.seconds += curve.t(k + 1);
        if source == DraftSource::Lookup {
            r.lookup_rounds += 1;
            r.drafted += k;
            r.accepted += accepted;
        }
        i += produced;
    }
    (r, policy.costs().clone())
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
    let props = proposals(extra, prompt, answer, lookup_max);
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
    let props = proposals(extra, prompt, answer, g.saturating_sub(1));
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

/// Costs as a calibration on `curve` leaves them (the sizes the decode loop calibrates).
pub fn calibrated(curve: &CostCurve, gamma: usize, lookup_max: usize) -> Costs {
    let mut costs = Costs::default();
    for g in adaptive::calibration_sizes(gamma, Some(lookup_max)) {
        costs.record_verify(g, curve.duration(g));
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
    fn a_repetitive_answer_is_fast_and_the_best_bounds_the_policy() {
        // A prompt, then an answer that repeats a 5-token phrase: lookups find the loop.
        let prompt = toks(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let mut answer = toks(&[20, 21]);
        for _ in 0..30 {
            answer.extend(toks(&[30, 31, 32, 33, 34]));
        }
        // GPU-like: a batch of up to 8 costs little more than a step.
        let curve = CostCurve::parse("1:1.0, 8:1.3, 9:3.0, 17:3.8", 17).unwrap();
        let costs = calibrated(&curve, 6, 16);
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

    #[test]
    fn nothing_to_look_up_is_plain_steps() {
        let prompt = toks(&[1, 2, 3]);
        let answer: Vec<Token> = (100..140).map(Token::new).collect();
        let curve = CostCurve::parse("1:1, 17:5", 17).unwrap();
        let costs = calibrated(&curve, 6, 16);
        let (r, _) = replay_policy(&[], &prompt, &answer, 16, &curve, costs);
        assert_eq!(r.rounds, answer.len());
        assert_eq!(r.lookup_rounds, 0);
        assert!((r.speedup(&curve) - 1.0).abs() < 1e-9);
        let best = replay_best(&[], &prompt, &answer, 16, &curve);
        assert_eq!(best.rounds, answer.len());
    }
}
