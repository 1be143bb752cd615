//! The decode loop, one for every mode, on llama.cpp's contexts: the live backend of
//! [`super::round`]. Invariant between rounds: the verifying context's cache holds the sequence
//! except its last token (`pending`), which the next verification batch `[pending, d1..dk]`
//! decodes together with the drafts. The drafter's cache is brought to its own sequence by prefix
//! reuse when it drafts, which also rolls back its rejected drafts and catches up on the rounds
//! it sat out. Each round's tokens go out as events (a model without a chat template's own next
//! turn held back and cut), and the answer's statistics go with every round.

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::account::{Gauges, Tally};
use super::adaptive::{Costs, DraftSource, Policy};
use super::calibrate;
use super::emit::{self, Emitted, Stop};
use super::lookup::{Lookup, Proposal};
use super::round::{self, Backend, Drafted, Played};
use super::sampling::{argmax_margin, max_prob, sample, softmax, top_p};
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
    /// Every token the rounds produced, in order (ids): the answer's, those of a turn marker it
    /// was cut at, and the end-of-generation token that ended it. What a replay of the answer
    /// must produce.
    pub produced: Vec<i32>,
    /// Whether `produced` ends with the end-of-generation token.
    pub eog: bool,
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
    let cancelled = prefill(target, prompt, drafter.as_mut(), &mut tally, sink)?;
    let self_spec = drafter.as_ref().is_some_and(|d| d.same_model);
    let hint = drafter.as_ref().map_or(1.0, |d| d.cost_hint);
    let policy = Policy::new(params.adaptive, hint).with_costs(std::mem::take(costs));
    // Calibrations: once per engine; counted with the prefill (before the first token).
    let (mut policy, rules) =
        calibrate::prepare(target, prompt, params, self_spec, policy, cancelled)?;
    // The lookup's index of the prompt is built with the prefill, before the first token.
    let answer = Answer::new(model, prompt, drafter.as_ref(), params.lookup);
    tally.prefill_done(started.elapsed().as_secs_f64());
    let clock = Clock {
        decode_started: Instant::now(),
        busy_before: busy(target, drafter.as_ref()),
        verify_shape: rules
            .fixed_shape
            .map_or(0, |g| u32::try_from(g).unwrap_or(u32::MAX)),
    };
    let eog = masked_eog(model, target.n_vocab(), params);
    let mut live = Live {
        model,
        target,
        drafter,
        answer,
        params,
        rng: ChaCha8Rng::seed_from_u64(params.seed),
        eog,
        // A model without a chat template answers in the plain layout and goes on with a turn
        // of its own: the answer ends where that turn starts, and its text is never shown.
        guard: crate::llm::chat::turn_marker(model)
            .filter(|_| !params.ignore_eos)
            .map(emit::TurnGuard::new),
        tally,
        sink,
        started,
        cancelled,
    };
    while !live.cancelled && live.left() > 0 {
        let t0 = Instant::now();
        let played = round::play(&mut live, &mut policy, &rules)?;
        if live.account_round(&played, &policy, &clock, t0) {
            break;
        }
    }
    let output = live.finish(&policy, &clock);
    *costs = policy.costs().clone();
    Ok(output)
}

/// With `ignore_eos`: the end-of-generation tokens, masked out of the target's logits.
fn masked_eog(model: &Model, n_vocab: usize, params: &EngineConfig) -> Vec<usize> {
    if !params.ignore_eos {
        return Vec::new();
    }
    (0..n_vocab)
        .filter(|&i| token::is_eog(model, token::from_index(i)))
        .collect()
}

/// An answer being decoded on llama.cpp's contexts: the live backend of the round driver.
struct Live<'a> {
    model: &'a Model,
    target: &'a mut Context,
    drafter: Option<Drafter<'a>>,
    answer: Answer<'a>,
    params: &'a EngineConfig,
    rng: ChaCha8Rng,
    eog: Vec<usize>,
    guard: Option<emit::TurnGuard>,
    tally: Tally,
    sink: &'a mut dyn FnMut(Event) -> Flow,
    started: Instant,
    cancelled: bool,
}

impl Backend for Live<'_> {
    fn left(&self) -> usize {
        self.params.max_tokens - self.answer.generated.len()
    }

    fn propose(&self, max: usize, filled: bool) -> Option<Proposal> {
        let l = self.answer.lookup.as_ref()?;
        if filled {
            l.propose_filled(max)
        } else {
            l.propose(max)
        }
    }

    fn drafter(&self) -> Option<(usize, usize)> {
        let d = self.drafter.as_ref()?;
        let seq = &self.answer.draft_seq;
        // Room for the drafts (and the decode of the last one) in its context.
        let room = d.ctx.n_ctx().saturating_sub(seq.len() + 1);
        Some((room, seq.len() - common_prefix(d.ctx.tokens(), seq)))
    }

    fn fits(&self, g: usize) -> bool {
        self.target.tokens().len() + g <= self.target.n_ctx()
    }

    fn draft(&mut self, k: usize, worth: &round::Worth<'_>) -> Result<Drafted> {
        let Some(d) = self.drafter.as_mut() else {
            return Ok(Drafted::default());
        };
        let started = Instant::now();
        let seq = &self.answer.draft_seq;
        let mut drafted = draft(d.ctx, seq, self.params, k, worth, &mut self.rng)?;
        drafted.time = started.elapsed();
        Ok(drafted)
    }

    /// Decodes `[pending, d1..dk]` in one batch (padded to the shape), verifies the drafts and
    /// rolls the target back to `[.., pending, accepted drafts]`: the last verified token
    /// becomes the next pending one.
    fn verify(
        &mut self,
        draft: &Drafted,
        shape: Option<usize>,
        source: DraftSource,
    ) -> Result<(Vec<Verified>, Duration)> {
        let started = Instant::now();
        let base = self.target.tokens().len();
        let mut batch = Vec::with_capacity(draft.tokens.len().max(shape.unwrap_or(0)) + 1);
        batch.push(self.answer.pending);
        batch.extend_from_slice(&draft.tokens);
        if let Some(g) = shape {
            // Padding after the drafts: causal attention keeps it out of their logits, and the
            // rollback below removes it with the rejected drafts. Its logits are asked for too:
            // the number of outputs is part of the graph's shape.
            batch.resize(g.max(batch.len()), self.answer.pending);
        }
        self.target.decode_all(&batch)?;
        let logits: &Context = self.target;
        let verified = verify::verify(
            |i| logits.logits(i),
            &draft.tokens,
            &draft.qs,
            &round_settings(self.params, source),
            &self.eog,
            &mut self.rng,
        );
        let accepted = verified
            .iter()
            .filter(|v| v.kind == TokenKind::Accepted)
            .count();
        self.target.truncate(base + 1 + accepted)?;
        Ok((verified, started.elapsed()))
    }

    fn emit(&mut self, verified: &[Verified], drafted: usize) -> Emitted {
        let mut turn_ended = None;
        let left = self.left();
        let model = self.model;
        let emitted = emit::emit(
            verified,
            drafted,
            left,
            |t| token::is_eog(model, t),
            |v| self.deliver(v, &mut turn_ended),
        );
        let stop = match turn_ended {
            Some(margin) => Some(Stop::EndOfGeneration { margin }),
            None => emitted.stop,
        };
        match stop {
            Some(Stop::EndOfGeneration { margin }) => {
                self.answer.end_margin = Some(margin);
                // (A turn marker's tokens are counted as dropped: no hidden token beyond them.)
                if turn_ended.is_none() {
                    self.tally.ended_by_eog();
                    self.answer.end = verified.get(emitted.emitted).map(|v| v.token);
                }
            }
            Some(Stop::Cancelled) => self.cancelled = true,
            Some(Stop::Limit) | None => {}
        }
        Emitted { stop, ..emitted }
    }

    fn last(&self, n: usize) -> &[Token] {
        &self.answer.generated[self.answer.generated.len() - n..]
    }
}

impl Live<'_> {
    /// Takes one verified token into the answer and out to the sink, through the turn guard
    /// where there is one (`turn_ended` is set to the margin where the guard ends the answer).
    fn deliver(&mut self, v: &Verified, turn_ended: &mut Option<f32>) -> Flow {
        let g = self.answer.push(v);
        let started = self.started;
        self.tally.token(|| started.elapsed().as_secs_f64());
        let Some(guard) = self.guard.as_mut() else {
            return (self.sink)(Event::Token(g));
        };
        match guard.push(g) {
            emit::Guarded::Deliver(tokens) => deliver(self.sink, tokens),
            emit::Guarded::End {
                deliver: tokens,
                dropped,
            } => {
                let kept = self.answer.tokens.len() - dropped;
                *turn_ended = Some(self.answer.tokens[kept].margin);
                self.answer.tokens.truncate(kept);
                self.tally.dropped(dropped);
                deliver(self.sink, tokens);
                Flow::Cancel
            }
        }
    }

    /// Counts a played round and sends its event; whether the answer ends with it.
    fn account_round(&mut self, p: &Played, policy: &Policy, clock: &Clock, t0: Instant) -> bool {
        let plain = p.plain();
        self.tally.timed(p.draft.time, p.t_verify, plain);
        self.tally
            .drafts(p.source, p.emitted.drafted, p.emitted.accepted);
        let round = Event::Round {
            source: p.source,
            drafted: p.emitted.drafted,
            accepted: p.emitted.accepted,
            t_draft: p.draft.time,
            t_draft_step: p.draft.step,
            t_verify: p.t_verify,
            stats: Box::new(self.stats(policy, clock)),
        };
        if (self.sink)(round) == Flow::Cancel {
            self.cancelled = true;
        }
        self.tally.round_ended(t0.elapsed(), plain);
        p.emitted.stop.is_some()
    }

    fn stats(&self, policy: &Policy, clock: &Clock) -> Stats {
        account(
            &self.tally,
            self.target,
            self.drafter.as_ref(),
            policy,
            clock,
            self.cancelled,
        )
    }

    /// The answer once its last round is played.
    fn finish(mut self, policy: &Policy, clock: &Clock) -> Output {
        if let Some(guard) = self.guard.as_mut()
            && !self.cancelled
        {
            deliver(self.sink, guard.flush());
        }
        let tail = self.answer.text.finish();
        if let Some(last) = self.answer.tokens.last_mut() {
            last.text.push_str(&tail);
        }
        let stats = self.stats(policy, clock);
        let text: String = self.answer.tokens.iter().map(|t| t.text.as_str()).collect();
        (self.sink)(Event::Done(stats.clone()));
        let produced = (self.answer.generated.iter().chain(&self.answer.end))
            .map(|t| t.0)
            .collect();
        Output {
            tokens: self.answer.tokens,
            end_margin: self.answer.end_margin,
            text,
            produced,
            eog: self.answer.end.is_some(),
            stats,
        }
    }
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
    /// The target's margin where it chose end-of-generation, if it did, and that token.
    end_margin: Option<f32>,
    end: Option<Token>,
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
            end: None,
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

/// Drafts up to `max` tokens after `seq` with the drafter. Stops early when the drafter's
/// confidence falls below the threshold.
fn draft(
    ctx: &mut Context,
    seq: &[Token],
    params: &EngineConfig,
    max: usize,
    worth: &round::Worth<'_>,
    rng: &mut ChaCha8Rng,
) -> Result<Drafted> {
    ctx.sync(seq, &mut |_, _| true)?;
    let steps_started = Instant::now();
    let mut steps = 0u32;
    let need_q = !params.greedy() || params.eta > 0.0;
    let mut drafts = Vec::with_capacity(max);
    let mut probs = Vec::with_capacity(max);
    let mut qs = Vec::with_capacity(max + 1);
    // The chance that the target takes the whole draft so far.
    let mut reach = 1.0;
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
        let next = (drafts.len() < max && confidence >= params.draft_confidence)
            .then(|| worth(drafts.len(), confidence, reach))
            .flatten();
        let Some(next) = next else {
            if need_q {
                top_p(&mut q, params.top_p);
                qs.push(q);
            }
            break;
        };
        reach = next;
        let d = if params.greedy() {
            token::from_index(argmax_margin(z).0)
        } else {
            top_p(&mut q, params.top_p);
            token::from_index(sample(&q, rng.random()))
        };
        drafts.push(d);
        probs.push(confidence);
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
        probs,
        qs,
        step: (steps > 0).then(|| steps_started.elapsed() / steps),
        time: Duration::ZERO,
    })
}
