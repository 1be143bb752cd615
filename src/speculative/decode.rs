//! The decode loop, one for every mode. Invariant between rounds: the verifying context's cache
//! holds the sequence except its last token (`pending`), which the next verification batch
//! `[pending, d1..dk]` decodes together with the drafts. Each round's draft comes from where the
//! policy ([`super::adaptive`]) expects the most tokens per second: a lookup in the text, the
//! drafter model, or nowhere (a plain target step). The drafter's cache is brought to its own
//! sequence by prefix reuse when it drafts, which also rolls back its rejected drafts and catches
//! up on the rounds it sat out.
//!
//! A round is: [`choose`] the draft's source and length, [`draft_round`], [`verify_round`] (the
//! batch here, the acceptance in [`super::verify`]), emit the tokens ([`super::emit`]), and
//! account for it ([`super::account`], whose snapshot goes out with every round).

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::account::{Gauges, Tally};
use super::adaptive::{self, Costs, DraftSource, Policy};
use super::emit::{self, Stop};
use super::lookup::{Lookup, Proposal};
use super::sampling::{argmax_margin, max_prob, sample, softmax, top_p};
use super::shapes;
use super::verify::{self, Settings, Verified};
use super::{Event, Flow, GenToken, Stats, TokenKind};
use crate::config::EngineConfig;
use crate::llm::context::common_prefix;
use crate::llm::{Context, Detokenizer, Model, Token, token};

/// How the target verifies a round whose draft the policy chose from `source`. Lookups carry no
/// drafter distribution: their rounds verify against the target's own p (no transfer), with the
/// draft as a point mass where sampling needs a q.
fn round_settings(params: &EngineConfig, source: DraftSource) -> Settings {
    Settings {
        temp: params.temp,
        eta: if source == DraftSource::Lookup {
            0.0
        } else {
            params.eta
        },
        top_p: params.top_p,
    }
}

/// A finished (or cancelled) answer.
#[derive(Debug, Clone)]
pub struct Output {
    pub tokens: Vec<GenToken>,
    /// The target's margin where it chose end-of-generation, if it did.
    pub end_margin: Option<f32>,
    pub text: String,
    pub stats: Stats,
}

/// The drafter and the prompt it sees.
pub struct Drafter<'a> {
    pub ctx: &'a mut Context,
    pub prompt: &'a [Token],
    /// A drafter step's cost relative to a target step, guessed (e.g. from the models' sizes)
    /// until measured.
    pub cost_hint: f64,
    /// Whether it is the target model itself (self-speculation on the retrieved chunks).
    pub same_model: bool,
}

/// Generates an answer: the verifying context `target` reads `prompt`; with a drafter, each
/// round drafts up to γ tokens and verifies them in one batch; without one, each round is one
/// target step. Events go to `sink`, which can cancel.
pub fn generate(
    model: &Model,
    target: &mut Context,
    prompt: &[Token],
    mut drafter: Option<Drafter<'_>>,
    params: &EngineConfig,
    costs: &mut Costs,
    sink: &mut dyn FnMut(Event) -> Flow,
) -> Result<Output> {
    anyhow::ensure!(!prompt.is_empty(), "empty prompt");
    let started = Instant::now();
    let mut tally = Tally::default();

    // A drafter whose context cannot hold its prompt and a draft sits this answer out (the
    // target still answers, one token per round).
    if drafter
        .as_ref()
        .is_some_and(|d| d.prompt.len() + 1 >= d.ctx.n_ctx())
    {
        tracing::warn!("the drafter's prompt fills its context: decoding without drafts");
        drafter = None;
    }

    let mut cancelled = prefill(target, prompt, drafter.as_mut(), &mut tally, sink)?;
    let mut policy = Policy::new(
        params.adaptive,
        drafter.as_ref().map_or(1.0, |d| d.cost_hint),
    )
    .with_costs(std::mem::take(costs));
    let shaped = params.lookup && params.adaptive && params.verify_shapes > 1;
    if shaped {
        policy = policy.with_shapes(params.verify_shapes);
    }
    let self_spec = drafter.as_ref().is_some_and(|d| d.same_model);
    // Calibrations: once per engine; counted with the prefill (before the first token), not the
    // decoding.
    let pending = prompt[prompt.len() - 1];
    let by_costs = params.verify_batch == 0 && target.on_gpu() && self_spec;
    let to_time = shapes_to_time(params);
    if (shaped || (by_costs && params.lookup))
        && !cancelled
        && !policy.costs().shapes_calibrated(&to_time)
    {
        calibrate_shapes(target, pending, &to_time, &mut policy)?;
        if by_costs && !shaped {
            tracing::info!(
                shape = policy.costs().default_fixed_shape(),
                "the fixed verification shape from the calibrated costs (1: none)"
            );
        }
    }
    let fixed_shape = Some(verify_batch(
        params,
        target.on_gpu(),
        self_spec,
        policy.costs(),
    ))
    .filter(|&g| !shaped && params.lookup && g > 1);
    // Under a fixed shape no round is a plain step: the answer's speed-up is over the one-token
    // step, timed as a shape of 1 (already, where the shapes were calibrated).
    if fixed_shape.is_some() && !cancelled && !policy.costs().shapes_calibrated(&[1]) {
        calibrate_shapes(target, pending, &[1], &mut policy)?;
    }
    if params.adaptive
        && !shaped
        && fixed_shape.is_none()
        && !cancelled
        && !policy.costs().calibrated()
    {
        calibrate(target, pending, params, &mut policy)?;
    }
    // On a GPU whose shapes were timed, a draft of a changing size pays for llama.cpp's graphs.
    if target.on_gpu()
        && !shaped
        && fixed_shape.is_none()
        && let Some((t1, switch)) = policy.costs().graph_costs()
    {
        policy = policy.with_graphs(t1, switch);
    }
    // The lookup's index of the prompt is built with the prefill, before the first token.
    let mut answer = Answer::new(model, prompt, drafter.as_ref(), params.lookup);
    tally.prefill_done(started.elapsed().as_secs_f64());
    let clock = Clock {
        decode_started: Instant::now(),
        busy_before: busy(target, drafter.as_ref()),
        verify_shape: fixed_shape.map_or(0, |g| u32::try_from(g).unwrap_or(u32::MAX)),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    // With `ignore_eos`: the end-of-generation tokens, masked out of the target's logits.
    let eog: Vec<usize> = if params.ignore_eos {
        (0..target.n_vocab())
            .filter(|&i| token::is_eog(model, token::from_index(i)))
            .collect()
    } else {
        Vec::new()
    };

    // A model without a chat template answers in the plain layout and goes on with a turn of
    // its own: the answer ends where that turn starts, and its text is never shown.
    // (`ignore_eos` runs every answer to its limit.)
    let mut guard = crate::llm::chat::turn_marker(model)
        .filter(|_| !params.ignore_eos)
        .map(emit::TurnGuard::new);

    while !cancelled && answer.generated.len() < params.max_tokens {
        let t0 = Instant::now();
        let plan = choose(
            params,
            fixed_shape,
            target,
            drafter.as_ref(),
            &answer,
            &mut policy,
        );
        let (source, draft) =
            draft_round(&plan, drafter.as_mut(), &answer.draft_seq, params, &mut rng)?;
        let t_draft = t0.elapsed();

        let t1 = Instant::now();
        let verified = verify_round(
            target,
            answer.pending,
            &draft,
            plan.fixed,
            &round_settings(params, plan.choice.source),
            &eog,
            &mut rng,
        )?;
        let t_verify = t1.elapsed();
        // (A round padded to a larger shape is no plain step, even without a draft: under a
        // fixed shape the answer's speed-up is then over the calibrated one-token step.)
        let plain = draft.tokens.is_empty() && plan.fixed.is_none_or(|g| g == 1);
        tally.timed(t_draft, t_verify, plain);
        let measured = measured(&plan, source, &draft, &verified, t_draft, t_verify);
        // (A fixed shape's times are not those of its drafts' sizes.)
        if plan.shaped {
            policy.record_shaped(measured);
        } else if plan.fixed.is_none() {
            policy.record(measured);
        }

        let mut turn_ended = None;
        let emitted = emit::emit(
            &verified,
            draft.tokens.len(),
            params.max_tokens - answer.generated.len(),
            |t| token::is_eog(model, t),
            |v| {
                let g = answer.push(v);
                tally.token(|| started.elapsed().as_secs_f64());
                let Some(guard) = guard.as_mut() else {
                    return sink(Event::Token(g));
                };
                match guard.push(g) {
                    emit::Guarded::Deliver(tokens) => deliver(sink, tokens),
                    emit::Guarded::End {
                        deliver: tokens,
                        dropped,
                    } => {
                        let kept = answer.tokens.len() - dropped;
                        turn_ended = Some(answer.tokens[kept].margin);
                        answer.tokens.truncate(kept);
                        tally.dropped(dropped);
                        deliver(sink, tokens);
                        Flow::Cancel
                    }
                }
            },
        );
        let emitted = match turn_ended {
            Some(margin) => emit::Emitted {
                stop: Some(Stop::EndOfGeneration { margin }),
                ..emitted
            },
            None => emitted,
        };
        match emitted.stop {
            Some(Stop::EndOfGeneration { margin }) => {
                answer.end_margin = Some(margin);
                // (A turn marker's tokens are counted as dropped: no hidden token beyond them.)
                if turn_ended.is_none() {
                    tally.ended_by_eog();
                }
            }
            Some(Stop::Cancelled) => cancelled = true,
            Some(Stop::Limit) | None => {}
        }
        if plan.shaped {
            let produced = &answer.generated[answer.generated.len() - emitted.emitted..];
            policy.observe_shapes(plan.proposal.as_ref(), produced);
        }
        // A lookup the round did not use is scored against what the round produced.
        if plan.fixed.is_none() || plan.shaped {
            let produced = &answer.generated[answer.generated.len() - emitted.emitted..];
            let declined = plan
                .proposal
                .as_ref()
                .filter(|_| source != DraftSource::Lookup);
            policy.observe_round(declined, produced);
        }
        tally.drafts(source, emitted.drafted, emitted.accepted);
        let round = Event::Round {
            source,
            drafted: emitted.drafted,
            accepted: emitted.accepted,
            t_draft,
            t_verify,
            stats: Box::new(account(
                &tally,
                target,
                drafter.as_ref(),
                &policy,
                &clock,
                cancelled,
            )),
        };
        if sink(round) == Flow::Cancel {
            cancelled = true;
        }
        tally.round_ended(t0.elapsed(), plain);
        if emitted.stop.is_some() {
            break;
        }
    }
    if let Some(guard) = guard.as_mut()
        && !cancelled
    {
        deliver(sink, guard.flush());
    }
    let tail = answer.text.finish();
    if let Some(last) = answer.tokens.last_mut() {
        last.text.push_str(&tail);
    }

    let stats = account(&tally, target, drafter.as_ref(), &policy, &clock, cancelled);
    *costs = policy.costs().clone();
    let text: String = answer.tokens.iter().map(|t| t.text.as_str()).collect();
    sink(Event::Done(stats.clone()));
    Ok(Output {
        tokens: answer.tokens,
        end_margin: answer.end_margin,
        text,
        stats,
    })
}

/// Prefills both contexts with their prompts but the last token (reusing what their caches
/// already hold), reporting progress over both. Returns whether the sink cancelled.
fn prefill(
    target: &mut Context,
    prompt: &[Token],
    drafter: Option<&mut Drafter<'_>>,
    tally: &mut Tally,
    sink: &mut dyn FnMut(Event) -> Flow,
) -> Result<bool> {
    let todo = |ctx: &Context, p: &[Token]| {
        let head = &p[..p.len() - 1];
        head.len() - common_prefix(ctx.tokens(), head)
    };
    let total = todo(target, prompt) + drafter.as_ref().map_or(0, |d| todo(d.ctx, d.prompt));
    let done_before = std::cell::Cell::new(0);
    let stopped = std::cell::Cell::new(false);
    let started = Instant::now();
    let mut progress = |done: usize, _: usize| {
        let flow = sink(Event::Prefill {
            done: done_before.get() + done,
            total,
            seconds: started.elapsed().as_secs_f64(),
        });
        stopped.set(stopped.get() || flow == Flow::Cancel);
        !stopped.get()
    };
    let n = target.prefill(&prompt[..prompt.len() - 1], &mut progress)?;
    done_before.set(n);
    tally.prefilled(n, true);
    if let Some(d) = drafter.filter(|_| !stopped.get()) {
        let n = d
            .ctx
            .prefill(&d.prompt[..d.prompt.len() - 1], &mut progress)?;
        tally.prefilled(n, false);
    }
    Ok(stopped.get())
}

/// Sends `tokens` to `sink` in order, until it cancels.
fn deliver(sink: &mut dyn FnMut(Event) -> Flow, tokens: Vec<GenToken>) -> Flow {
    for t in tokens {
        if sink(Event::Token(t)) == Flow::Cancel {
            return Flow::Cancel;
        }
    }
    Flow::Continue
}

/// The answer as it grows, and the sequences that follow it.
struct Answer<'m> {
    generated: Vec<Token>,
    tokens: Vec<GenToken>,
    text: Detokenizer<'m>,
    /// The last token of the sequence: not yet in the verifying context's cache.
    pending: Token,
    /// The drafter's sequence: its prompt, then the answer.
    draft_seq: Vec<Token>,
    lookup: Option<Lookup>,
    /// The target's margin where it chose end-of-generation, if it did.
    end_margin: Option<f32>,
}

impl<'m> Answer<'m> {
    fn new(
        model: &'m Model,
        prompt: &[Token],
        drafter: Option<&Drafter<'_>>,
        lookup: bool,
    ) -> Self {
        let draft_prompt = drafter.map_or(&[][..], |d| d.prompt);
        Self {
            generated: Vec::new(),
            tokens: Vec::new(),
            text: Detokenizer::new(model),
            pending: prompt[prompt.len() - 1],
            draft_seq: draft_prompt.to_vec(),
            lookup: lookup.then(|| Lookup::new(draft_prompt, prompt)),
            end_margin: None,
        }
    }

    /// Appends a verified token; returns it as generated.
    fn push(&mut self, v: &Verified) -> GenToken {
        self.generated.push(v.token);
        self.draft_seq.push(v.token);
        if let Some(l) = self.lookup.as_mut() {
            l.push(v.token);
        }
        self.pending = v.token;
        let g = GenToken {
            id: v.token.0,
            text: self.text.push(v.token),
            kind: v.kind,
            margin: v.margin,
        };
        self.tokens.push(g.clone());
        g
    }
}

/// What a round will draft.
struct Plan {
    /// The fixed batch shape, while the context has room for it.
    fixed: Option<usize>,
    /// Whether that shape is one the policy chose among several (else `verify_batch`).
    shaped: bool,
    proposal: Option<Proposal>,
    choice: adaptive::Choice,
}

/// The fixed batch shape of every round (1: none): `verify_batch`, where 0 on a GPU with the
/// target as its own drafter is the shape the calibrated costs call for (a changing shape
/// costs a CUDA graph capture, and such a drafter did not pay there:
/// [`shapes::default_fixed`], 8 for SmolLM2 on an H100, none for Gemma 3 270M), else 1: a fixed
/// shape drafts only lookups, and a drafter model of its own (or a CPU) needs the rounds' own
/// lengths.
pub fn verify_batch(
    params: &EngineConfig,
    on_gpu: bool,
    self_spec: bool,
    costs: &adaptive::Costs,
) -> usize {
    match params.verify_batch {
        0 if on_gpu && self_spec => costs.default_fixed_shape(),
        0 => 1,
        g => g,
    }
}

/// The shapes timed before the first answer: the policy's (`verify_shapes`), else 1, 2, 4, 8
/// and 16 for the default fixed shape.
fn shapes_to_time(params: &EngineConfig) -> Vec<usize> {
    shapes::sizes(if params.verify_shapes > 1 {
        params.verify_shapes
    } else {
        16
    })
}

/// Chooses the round's draft: the lookup's proposal (if any) and the drafter's room are the
/// options; the policy picks, except under a fixed batch shape, where the lookup is free.
fn choose(
    params: &EngineConfig,
    fixed_shape: Option<usize>,
    target: &Context,
    drafter: Option<&Drafter<'_>>,
    answer: &Answer<'_>,
    policy: &mut Policy,
) -> Plan {
    let left = params.max_tokens - answer.generated.len();
    let room = |g: usize| target.tokens().len() + g <= target.n_ctx();
    let fixed = fixed_shape.filter(|&g| room(g));
    let largest = policy.shape_sizes().last().copied();
    let lookup_max = match (fixed, largest) {
        (Some(g), _) => g - 1,
        (None, Some(s)) => params.lookup_max.min(s - 1),
        (None, None) => params.lookup_max,
    };
    // In a batch of a fixed size the padding is free: filled with a guess where no pair matches.
    let filled = fixed.is_some() || largest.is_some();
    let proposal = answer.lookup.as_ref().and_then(|l| {
        let max = lookup_max.min(left - 1);
        if filled {
            l.propose_filled(max)
        } else {
            l.propose(max)
        }
    });
    // Room for the drafts (and the decode of the last one) in the drafter's context.
    let model_max = drafter.map_or(0, |d| {
        let room = d.ctx.n_ctx().saturating_sub(answer.draft_seq.len() + 1);
        params.gamma.min(left - 1).min(room)
    });
    let model_behind = drafter.map_or(0, |d| {
        answer.draft_seq.len() - common_prefix(d.ctx.tokens(), &answer.draft_seq)
    });
    if largest.is_some()
        && let Some(s) = policy.shape(left).filter(|&s| room(s))
    {
        // The batch costs the same whatever it holds: as much of the lookup as fits.
        let k = proposal.as_ref().map_or(0, |p| p.tokens.len().min(s - 1));
        let choice = match k {
            0 => adaptive::Choice::NONE,
            k => adaptive::Choice {
                source: DraftSource::Lookup,
                k,
            },
        };
        return Plan {
            fixed: Some(s),
            shaped: true,
            proposal,
            choice,
        };
    }
    let choice = match (fixed, proposal.as_ref()) {
        // The batch costs the same whatever it holds: the whole lookup, or nothing.
        (Some(_), Some(p)) => adaptive::Choice {
            source: DraftSource::Lookup,
            k: p.tokens.len(),
        },
        (Some(_), None) => adaptive::Choice::NONE,
        (None, _) => policy.choose(adaptive::Candidates {
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

/// Drafts as planned: from the drafter model, or the lookup's tokens. The source is `None` when
/// nothing was drafted.
fn draft_round(
    plan: &Plan,
    drafter: Option<&mut Drafter<'_>>,
    seq: &[Token],
    params: &EngineConfig,
    rng: &mut ChaCha8Rng,
) -> Result<(DraftSource, Drafted)> {
    let adaptive::Choice { source, k } = plan.choice;
    let drafted = match (source, drafter, plan.proposal.as_ref()) {
        (DraftSource::Model, Some(d), _) if k > 0 => draft(d.ctx, seq, params, k, rng)?,
        (DraftSource::Lookup, _, Some(p)) => Drafted {
            tokens: p.tokens[..k.min(p.tokens.len())].to_vec(),
            ..Drafted::default()
        },
        _ => Drafted::default(),
    };
    let source = if drafted.tokens.is_empty() {
        DraftSource::None
    } else {
        source
    };
    Ok((source, drafted))
}

/// Decodes `[pending, d1..dk]` in one batch (padded to the fixed shape), verifies the drafts
/// and rolls the target back to `[.., pending, accepted drafts]`: the last verified token
/// becomes the next pending one.
fn verify_round(
    target: &mut Context,
    pending: Token,
    draft: &Drafted,
    fixed: Option<usize>,
    settings: &Settings,
    masked_out: &[usize],
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Verified>> {
    let base = target.tokens().len();
    let mut batch = Vec::with_capacity(draft.tokens.len().max(fixed.unwrap_or(0)) + 1);
    batch.push(pending);
    batch.extend_from_slice(&draft.tokens);
    if let Some(g) = fixed {
        // Padding after the drafts: causal attention keeps it out of their logits, and the
        // rollback below removes it with the rejected drafts. Its logits are asked for too:
        // the number of outputs is part of the graph's shape.
        batch.resize(g.max(batch.len()), pending);
    }
    target.decode_all(&batch)?;
    let logits: &Context = target;
    let verified = verify::verify(
        |i| logits.logits(i),
        &draft.tokens,
        &draft.qs,
        settings,
        masked_out,
        rng,
    );
    let accepted = verified
        .iter()
        .filter(|v| v.kind == TokenKind::Accepted)
        .count();
    target.truncate(base + 1 + accepted)?;
    Ok(verified)
}

/// What a round tells the policy: its source, how much of the draft the target accepted, and
/// what it cost (also traced).
fn measured(
    plan: &Plan,
    source: DraftSource,
    draft: &Drafted,
    verified: &[Verified],
    t_draft: Duration,
    t_verify: Duration,
) -> adaptive::Round {
    let accepted = verified
        .iter()
        .filter(|v| v.kind == TokenKind::Accepted)
        .count();
    let round = adaptive::Round {
        source,
        match_len: plan.proposal.as_ref().map_or(0, |p| p.match_len),
        lookup_in_answer: plan.proposal.as_ref().is_some_and(|p| p.in_answer),
        drafted: draft.tokens.len(),
        accepted,
        rejected: accepted < draft.tokens.len(),
        t_draft,
        t_draft_step: draft.step,
        t_verify,
    };
    tracing::trace!(
        ?source,
        proposed = plan.proposal.as_ref().map_or(0, |p| p.tokens.len()),
        match_len = round.match_len,
        k = round.drafted,
        accepted,
        verify_ms = t_verify.as_secs_f64() * 1e3,
        "round"
    );
    round
}

/// When decoding started, how long the contexts had been busy in llama.cpp by then, and the
/// fixed batch shape of the rounds (0: none), for the statistics.
struct Clock {
    decode_started: Instant,
    busy_before: Duration,
    verify_shape: u32,
}

/// Time spent inside llama.cpp by both contexts.
fn busy(target: &Context, drafter: Option<&Drafter<'_>>) -> Duration {
    target.busy() + drafter.map_or(Duration::ZERO, |d| d.ctx.busy())
}

/// The statistics of the answer so far: the running snapshot and the final statistics alike.
fn account(
    tally: &Tally,
    target: &Context,
    drafter: Option<&Drafter<'_>>,
    policy: &Policy,
    clock: &Clock,
    cancelled: bool,
) -> Stats {
    tally.stats(Gauges {
        verify_shape: clock.verify_shape,
        decode: clock.decode_started.elapsed(),
        busy: busy(target, drafter).saturating_sub(clock.busy_before),
        target_ctx_tokens: target.tokens().len() + 1,
        draft_ctx_tokens: drafter.map_or(0, |d| d.ctx.tokens().len()),
        target_n_ctx: target.n_ctx(),
        draft_n_ctx: drafter.map_or(0, |d| d.ctx.n_ctx()),
        ceiling: policy.ceiling().unwrap_or(0.0),
        verify_curve: if clock.verify_shape > 0 {
            policy.costs().shape_curve()
        } else {
            policy.curve()
        },
        shape_switches: policy.shape_switches(),
        cancelled,
    })
}

/// Measures the target's verification time for a few batch sizes, once per engine, so that the
/// policy's first choices rest on this machine's costs rather than a guess (on a GPU a batch
/// shape's first decode is slow: each is run once before it is timed). The batches are rolled
/// back: the cache is as before.
fn calibrate(
    target: &mut Context,
    pending: Token,
    params: &EngineConfig,
    policy: &mut Policy,
) -> Result<()> {
    let mut sizes =
        adaptive::calibration_sizes(params.gamma, params.lookup.then_some(params.lookup_max));
    let base = target.tokens().len();
    sizes.retain(|&g| base + g <= target.n_ctx());
    let passes = if target.on_gpu() { 2 } else { 1 };
    for pass in 0..passes {
        for &g in &sizes {
            // The plain step is what every draft is judged against: timed three times, so that
            // one burst of another program's work cannot set it.
            let times = if g == 1 { 3 } else { 1 };
            for _ in 0..times {
                let t = timed_verification(target, &vec![pending; g])?;
                if pass + 1 == passes {
                    policy.record_verify(g, t);
                }
            }
        }
    }
    let ms: Vec<String> = policy
        .costs()
        .verify_curve()
        .iter()
        .map(|(g, t)| format!("{g}:{:.1}", t * 1e3))
        .collect();
    tracing::debug!(
        ?sizes,
        passes,
        ms = ms.join(" "),
        "verification costs calibrated"
    );
    Ok(())
}

/// Decodes `batch` after the cache and takes the argmax at every position, as a round verifies,
/// then rolls the cache back; returns the time.
pub fn timed_verification(target: &mut Context, batch: &[Token]) -> Result<Duration> {
    let base = target.tokens().len();
    let started = Instant::now();
    target.decode_all(batch)?;
    for i in 0..batch.len() {
        std::hint::black_box(argmax_margin(target.logits(i)));
    }
    let t = started.elapsed();
    target.truncate(base)?;
    Ok(t)
}

/// Times each fixed verification shape, once per engine: five batches in a row, where on a GPU
/// the first runs without a CUDA graph, the second captures one and the others replay it (their
/// median is the steady time; the first two's extra is what a change of shape costs). On a GPU
/// the whole is run twice and the second pass kept (a shape's very first batch pays one-time
/// set-up). The batches are rolled back: the cache is as before.
fn calibrate_shapes(
    target: &mut Context,
    pending: Token,
    sizes: &[usize],
    policy: &mut Policy,
) -> Result<()> {
    let base = target.tokens().len();
    let sizes: Vec<usize> = sizes
        .iter()
        .copied()
        .filter(|&g| base + g <= target.n_ctx())
        .collect();
    let passes = if target.on_gpu() { 2 } else { 1 };
    let mut seen = Vec::with_capacity(sizes.len());
    for pass in 0..passes {
        for &g in &sizes {
            let mut times = [Duration::ZERO; 5];
            for t in &mut times {
                *t = timed_verification(target, &vec![pending; g])?;
            }
            if pass + 1 == passes {
                // The steady time: the median of the three replays (one may catch a hiccup).
                let mut replays = [times[2], times[3], times[4]];
                replays.sort_unstable();
                let steady = replays[1];
                let switch = (times[0] + times[1]).saturating_sub(steady * 2);
                policy.record_shape(g, steady, switch);
                seen.push((g, times.map(|t| (t.as_secs_f64() * 1e5).round() / 1e2)));
            }
        }
    }
    tracing::info!(
        ?seen,
        passes,
        "verification shapes calibrated (size, ms of five batches in a row)"
    );
    Ok(())
}

/// A round's draft.
#[derive(Default)]
struct Drafted {
    tokens: Vec<Token>,
    /// The drafter's distribution at each draft (and after the last where transfer needs it);
    /// empty in greedy mode without transfer, where only the argmax matters, and for lookups.
    qs: Vec<Vec<f32>>,
    /// The mean time of a drafter step after the first decode (which also catches up).
    step: Option<Duration>,
}

/// Drafts up to `max` tokens after `seq` with the drafter. Stops early when the drafter's
/// confidence falls below the threshold.
fn draft(
    ctx: &mut Context,
    seq: &[Token],
    params: &EngineConfig,
    max: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Drafted> {
    ctx.sync(seq, &mut |_, _| true)?;
    let steps_started = Instant::now();
    let mut steps = 0u32;
    let need_q = !params.greedy() || params.eta > 0.0;
    let mut drafts = Vec::with_capacity(max);
    let mut qs = Vec::with_capacity(max + 1);
    loop {
        let z = ctx.logits(0);
        // The full distribution only where acceptance needs it (sampling, transfer).
        let mut q = if need_q {
            softmax(z, params.temp)
        } else {
            Vec::new()
        };
        let confidence = if need_q {
            q.iter().copied().fold(0.0f32, f32::max)
        } else {
            max_prob(z)
        };
        if params.greedy() && drafts.len() == max {
            // The distribution after the last draft serves the bonus token's transfer.
            if need_q {
                qs.push(q);
            }
            break;
        }
        if drafts.len() == max || confidence < params.draft_confidence {
            if need_q {
                top_p(&mut q, params.top_p);
                qs.push(q);
            }
            break;
        }
        let d = if params.greedy() {
            token::from_index(argmax_margin(z).0)
        } else {
            top_p(&mut q, params.top_p);
            token::from_index(sample(&q, rng.random()))
        };
        drafts.push(d);
        qs.push(q);
        // The last draft is decoded only when its successor's distribution is needed.
        if drafts.len() < max || need_q {
            ctx.decode_last(&[d])?;
            steps += 1;
        } else {
            break;
        }
    }
    Ok(Drafted {
        tokens: drafts,
        qs,
        step: (steps > 0).then(|| steps_started.elapsed() / steps),
    })
}
