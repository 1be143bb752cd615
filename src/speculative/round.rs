//! One decode round, whatever decodes it: the policy plans the round from what the backend
//! offers (a lookup's proposal, the drafter's room), the backend drafts, verifies and takes the
//! tokens into the answer, and the policy learns from what the round cost and produced. The live
//! loop ([`super::decode`]) plays rounds on llama.cpp's contexts; the replay
//! ([`super::replay`]) on a recorded answer, with cost curves or with the costs a live answer
//! measured. Both run this code, so `simulate` projects the policy that runs.

use std::time::Duration;

use anyhow::Result;

use super::DraftSource;
use super::TokenKind;
pub use super::adaptive::Plan;
use super::adaptive::{Choice, Policy};
use super::emit::Emitted;
use super::lookup::Proposal;
use super::verify::Verified;
use crate::llm::Token;

/// The rules of an answer's rounds, from the engine's settings.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// The drafter model's longest draft (γ).
    pub gamma: usize,
    /// Whether lookups draft, and their longest draft.
    pub lookup: bool,
    pub lookup_max: usize,
    /// Every round verified in a batch of this many tokens, padded (None: each round its own
    /// length, or the policy's shapes).
    pub fixed_shape: Option<usize>,
}

/// Whether the drafter's next token is worth drafting: given its index in the draft, the
/// drafter's probability for it and the chance that the target takes the draft so far, the
/// chance past it (None: stop before it). The policy's rule ([`Policy::worth_drafting`]).
pub type Worth<'a> = dyn Fn(usize, f32, f64) -> Option<f64> + 'a;

/// A round's draft and what drafting it cost.
#[derive(Debug, Default, Clone)]
pub struct Drafted {
    pub tokens: Vec<Token>,
    /// The drafter's probability for each of its tokens (empty for lookups).
    pub probs: Vec<f32>,
    /// The drafter's distribution at each draft (and after the last where transfer needs it);
    /// empty in greedy mode without transfer, where only the argmax matters, and for lookups.
    pub qs: Vec<Vec<f32>>,
    /// The mean time of a drafter step after its first decode (which also catches up).
    pub step: Option<Duration>,
    pub time: Duration,
}

/// What decodes the rounds: llama.cpp's contexts, or a recorded answer.
pub trait Backend {
    /// The tokens the answer may still have.
    fn left(&self) -> usize;
    /// The lookup's proposal of at most `max` tokens after the answer so far (`filled`: a fixed
    /// batch's padding guessed where no pair matches).
    fn propose(&self, max: usize, filled: bool) -> Option<Proposal>;
    /// The drafter model's room for drafts now, and the tokens it must decode before its first
    /// (None: no drafter this answer).
    fn drafter(&self) -> Option<(usize, usize)>;
    /// Whether the verifying context has room for a batch of `g` tokens.
    fn fits(&self, g: usize) -> bool;
    /// Drafts up to `k` tokens with the drafter model: fewer where its confidence falls below
    /// the settings' threshold or `worth` stops it.
    fn draft(&mut self, k: usize, worth: &Worth<'_>) -> Result<Drafted>;
    /// Verifies `[pending, draft..]` in one batch (padded to `shape`), the round's draft chosen
    /// from `source`: the accepted drafts and the target's own token, and the time it took.
    fn verify(
        &mut self,
        draft: &Drafted,
        shape: Option<usize>,
        source: DraftSource,
    ) -> Result<(Vec<Verified>, Duration)>;
    /// Takes `verified` into the answer in order, to the end of generation, the token limit or
    /// a cancellation; `drafted` drafts were verified.
    fn emit(&mut self, verified: &[Verified], drafted: usize) -> Emitted;
    /// The answer's last `n` tokens.
    fn last(&self, n: usize) -> &[Token];
}

/// A round as it went.
#[derive(Debug)]
pub struct Played {
    pub plan: Plan,
    /// Where the draft came from (`None`: nothing was drafted, a plain step or padding only).
    pub source: DraftSource,
    pub draft: Drafted,
    pub verified: Vec<Verified>,
    pub t_verify: Duration,
    pub emitted: Emitted,
}

impl Played {
    /// Whether it was a plain step: no draft, and no padding to a larger shape.
    pub fn plain(&self) -> bool {
        self.draft.tokens.is_empty() && self.plan.fixed.is_none_or(|g| g == 1)
    }

    /// The drafts the target accepted.
    pub fn accepted(&self) -> usize {
        self.verified
            .iter()
            .filter(|v| v.kind == TokenKind::Accepted)
            .count()
    }
}

/// Plays one round on `backend`.
pub fn play(backend: &mut impl Backend, policy: &mut Policy, rules: &Rules) -> Result<Played> {
    let plan = plan(backend, policy, rules);
    let Choice { source, k } = plan.choice;
    let draft = match (source, plan.proposal.as_ref()) {
        (DraftSource::Model, _) if k > 0 => {
            let p: &Policy = policy;
            backend.draft(k, &|j, prob, reach| p.worth_drafting(j, prob, reach))?
        }
        (DraftSource::Lookup, Some(p)) => Drafted {
            tokens: p.tokens[..k.min(p.tokens.len())].to_vec(),
            ..Drafted::default()
        },
        _ => Drafted::default(),
    };
    let drafted_from = if draft.tokens.is_empty() {
        DraftSource::None
    } else {
        source
    };
    let (verified, t_verify) = backend.verify(&draft, plan.fixed, source)?;
    let emitted = backend.emit(&verified, draft.tokens.len());
    let played = Played {
        plan,
        source: drafted_from,
        draft,
        verified,
        t_verify,
        emitted,
    };
    let produced = backend.last(played.emitted.emitted);
    policy.learn(
        &played.plan,
        &measured(&played),
        produced,
        &played.draft.probs,
    );
    Ok(played)
}

/// The round's plan: the lookup's proposal (if any) and the drafter's room are the options; the
/// policy picks, except under a fixed batch shape, where the lookup is free.
fn plan(backend: &impl Backend, policy: &mut Policy, rules: &Rules) -> Plan {
    let left = backend.left();
    let fixed = rules.fixed_shape.filter(|&g| backend.fits(g));
    let largest = policy.largest_shape();
    let reach = match (fixed, largest) {
        (Some(g), _) => g - 1,
        (None, Some(s)) => rules.lookup_max.min(s - 1),
        (None, None) => rules.lookup_max,
    };
    // In a batch of a fixed size the padding is free: filled with a guess where no pair matches.
    let filled = fixed.is_some() || largest.is_some();
    let proposal = rules
        .lookup
        .then(|| backend.propose(reach.min(left - 1), filled))
        .flatten();
    let (model_max, model_behind) = backend.drafter().map_or((0, 0), |(room, behind)| {
        (rules.gamma.min(left - 1).min(room), behind)
    });
    policy.plan(
        super::adaptive::Offer {
            proposal,
            model_max,
            model_behind,
        },
        fixed,
        left,
        &|g| backend.fits(g),
    )
}

/// What a round tells the policy: its source, how much of the draft the target accepted, and
/// what it cost (also traced).
fn measured(p: &Played) -> super::adaptive::Round {
    let accepted = p.accepted();
    let round = super::adaptive::Round {
        source: p.source,
        match_len: p.plan.proposal.as_ref().map_or(0, |q| q.match_len),
        lookup_in_answer: p.plan.proposal.as_ref().is_some_and(|q| q.in_answer),
        drafted: p.draft.tokens.len(),
        accepted,
        rejected: accepted < p.draft.tokens.len(),
        t_draft: p.draft.time,
        t_draft_step: p.draft.step,
        t_verify: p.t_verify,
    };
    tracing::trace!(
        source = ?p.source,
        proposed = p.plan.proposal.as_ref().map_or(0, |q| q.tokens.len()),
        match_len = round.match_len,
        k = round.drafted,
        accepted,
        verify_ms = p.t_verify.as_secs_f64() * 1e3,
        "round"
    );
    round
}
