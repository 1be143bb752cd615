//! The decode loop, one for every mode. Invariant between rounds: the verifying context's cache
//! holds the sequence except its last token (`pending`), which the next verification batch
//! `[pending, d1..dk]` decodes together with the drafts. Each round's draft comes from where the
//! policy ([`super::adaptive`]) expects the most tokens per second: a lookup in the text, the
//! drafter model, or nowhere (a plain target step). The drafter's cache is brought to its own
//! sequence by prefix reuse when it drafts, which also rolls back its rejected drafts and catches
//! up on the rounds it sat out.

use std::time::{Duration, Instant};

use anyhow::Result;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::adaptive::{self, Costs, Policy, Source};
use super::lookup::Lookup;
use super::sampling::{
    accept, argmax_margin, max_prob, residual, sample, softmax, target_distribution, top_p,
};
use super::{Event, Flow, GenToken, Stats, TokenKind};
use crate::llm::Context;

/// Decoding settings of one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Largest draft per round.
    pub gamma: usize,
    /// The drafter stops when its top probability falls below this.
    pub draft_confidence: f32,
    pub eta: f32,
    /// 0 is greedy.
    pub temp: f32,
    pub top_p: f32,
    pub seed: u64,
    pub max_tokens: usize,
    /// Draft from lookups in the text as well as from the drafter.
    pub lookup: bool,
    /// Longest lookup draft.
    pub lookup_max: usize,
    /// Choose each round's draft source and length from measured costs and acceptance;
    /// otherwise lookups of 3+ matching tokens, else the drafter's `gamma` tokens.
    pub adaptive: bool,
    /// Never end at end-of-generation: the target's choice is the best other token, so every
    /// answer runs to `max_tokens` (for timing models whose text means nothing; `bench`).
    pub ignore_eos: bool,
    /// With lookups: every round decodes exactly this many tokens (the lookup's draft, padded),
    /// plain rounds included, so the batch shape never changes (0: each round decodes its draft
    /// alone). On a GPU, llama.cpp rebuilds its CUDA graph whenever the shape changes, which
    /// costs more than a small fixed batch; with a fixed shape the longest draft is free.
    pub verify_batch: usize,
}

impl Params {
    fn greedy(&self) -> bool {
        self.temp <= 0.0
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
    pub prompt: &'a [LlamaToken],
    /// A drafter step's cost relative to a target step, guessed (e.g. from the models' sizes)
    /// until measured.
    pub cost_hint: f64,
}

/// Generates an answer: the verifying context `target` reads `prompt`; with a drafter, each
/// round drafts up to γ tokens and verifies them in one batch; without one, each round is one
/// target step. Events go to `sink`, which can cancel.
pub fn generate(
    model: &LlamaModel,
    target: &mut Context,
    prompt: &[LlamaToken],
    mut drafter: Option<Drafter<'_>>,
    params: &Params,
    costs: &mut Costs,
    sink: &mut dyn FnMut(Event) -> Flow,
) -> Result<Output> {
    anyhow::ensure!(!prompt.is_empty(), "empty prompt");
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut cancelled = false;

    // A drafter whose context cannot hold its prompt and a draft sits this answer out (the
    // target still answers, one token per round).
    if drafter
        .as_ref()
        .is_some_and(|d| d.prompt.len() + 1 >= d.ctx.n_ctx())
    {
        tracing::warn!("the drafter's prompt fills its context: decoding without drafts");
        drafter = None;
    }

    // Prefill both contexts (reusing what their caches already hold).
    let todo = |ctx: &Context, p: &[LlamaToken]| {
        let head = &p[..p.len() - 1];
        head.len() - crate::llm::context::common_prefix(ctx.tokens(), head)
    };
    let total = todo(target, prompt) + drafter.as_ref().map_or(0, |d| todo(d.ctx, d.prompt));
    let done_before = std::cell::Cell::new(0);
    let stopped = std::cell::Cell::new(false);
    let mut prefill_progress = |done: usize, _: usize| {
        let flow = sink(Event::Prefill {
            done: done_before.get() + done,
            total,
        });
        stopped.set(stopped.get() || flow == Flow::Cancel);
        !stopped.get()
    };
    let n = target.prefill(&prompt[..prompt.len() - 1], &mut prefill_progress)?;
    done_before.set(n);
    stats.prefill_tokens += n;
    stats.target_prefill_tokens += n;
    if let Some(d) = drafter.as_mut().filter(|_| !stopped.get()) {
        stats.prefill_tokens += d
            .ctx
            .prefill(&d.prompt[..d.prompt.len() - 1], &mut prefill_progress)?;
    }
    cancelled |= stopped.get();
    let mut lookup = params
        .lookup
        .then(|| Lookup::new(drafter.as_ref().map_or(&[][..], |d| d.prompt), prompt));
    let mut policy = Policy::new(
        params.adaptive,
        drafter.as_ref().map_or(1.0, |d| d.cost_hint),
    )
    .with_costs(std::mem::take(costs));
    let fixed_shape = params.lookup && params.verify_batch > 1;
    // Once per engine; counted with the prefill (before the first token), not the decoding.
    if params.adaptive && !fixed_shape && !cancelled && !policy.costs().calibrated() {
        calibrate(target, prompt[prompt.len() - 1], params, &mut policy)?;
    }
    stats.prefill_s = started.elapsed().as_secs_f64();
    let decode_started = Instant::now();
    let busy_before = target.busy() + drafter.as_ref().map_or(Duration::ZERO, |d| d.ctx.busy());
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let mut generated: Vec<LlamaToken> = Vec::new();
    let mut out_tokens: Vec<GenToken> = Vec::new();
    let mut text = TextDecoder::default();
    let mut pending = prompt[prompt.len() - 1];
    let mut end_margin = None;
    let mut ended_by_eog = false;
    let mut draft_seq: Vec<LlamaToken> = drafter
        .as_ref()
        .map(|d| d.prompt.to_vec())
        .unwrap_or_default();
    let (mut draft_time, mut verify_time) = (Duration::ZERO, Duration::ZERO);
    let mut plain_steps: Vec<f64> = Vec::new();
    // With `ignore_eos`: the end-of-generation tokens, masked out of the target's logits.
    let eog: Vec<usize> = if params.ignore_eos {
        (0..target.n_vocab())
            .filter(|&i| model.vocab().is_eog(index_token(i)))
            .collect()
    } else {
        Vec::new()
    };
    let mut masked: Vec<f32> = Vec::new();

    'rounds: while !cancelled && generated.len() < params.max_tokens {
        // Draft.
        let t0 = Instant::now();
        let left = params.max_tokens - generated.len();
        // The fixed batch shape, while the context has room for it.
        let fixed = Some(params.verify_batch)
            .filter(|&g| fixed_shape && target.tokens().len() + g <= target.n_ctx());
        let lookup_max = fixed.map_or(params.lookup_max, |g| g - 1);
        let proposal = lookup
            .as_ref()
            .and_then(|l| l.propose(lookup_max.min(left - 1)));
        // Room for the drafts (and the decode of the last one) in the drafter's context.
        let model_max = drafter.as_ref().map_or(0, |d| {
            let room = d.ctx.n_ctx().saturating_sub(draft_seq.len() + 1);
            params.gamma.min(left - 1).min(room)
        });
        let model_behind = drafter.as_ref().map_or(0, |d| {
            draft_seq.len() - crate::llm::context::common_prefix(d.ctx.tokens(), &draft_seq)
        });
        let choice = match (fixed, proposal.as_ref()) {
            // The batch costs the same whatever it holds: the whole lookup, or nothing.
            (Some(_), Some(p)) => adaptive::Choice {
                source: Source::Lookup,
                k: p.tokens.len(),
            },
            (Some(_), None) => adaptive::Choice::NONE,
            (None, _) => policy.choose(adaptive::Options {
                lookup: proposal.as_ref().map(|p| (p.match_len, p.tokens.len())),
                model_max,
                model_behind,
                lookup_in_answer: proposal.as_ref().is_some_and(|p| p.in_answer),
            }),
        };
        // Lookups carry no drafter distribution: their rounds verify against the target's own
        // p (no transfer), with the draft as a point mass where sampling needs a q.
        let round_params = Params {
            eta: if choice.source == Source::Lookup {
                0.0
            } else {
                params.eta
            },
            ..params.clone()
        };
        let params = &round_params;
        let mut t_draft_step = None;
        let (drafts, qs) = match (choice.source, drafter.as_mut(), proposal.as_ref()) {
            (Source::Model, Some(d), _) if choice.k > 0 => {
                let out = draft(d.ctx, &draft_seq, params, choice.k, &mut rng)?;
                t_draft_step = out.step;
                (out.tokens, out.qs)
            }
            (Source::Lookup, _, Some(p)) => {
                let drafts = p.tokens[..choice.k.min(p.tokens.len())].to_vec();
                let qs = if params.greedy() {
                    Vec::new()
                } else {
                    drafts
                        .iter()
                        .map(|&d| point_mass(target.n_vocab(), d))
                        .collect()
                };
                (drafts, qs)
            }
            _ => (Vec::new(), Vec::new()),
        };
        let source = if drafts.is_empty() {
            Source::None
        } else {
            choice.source
        };
        let t_draft = t0.elapsed();

        // Verify [pending, d1..dk] in one batch.
        let t1 = Instant::now();
        let base = target.tokens().len();
        let mut batch = Vec::with_capacity(drafts.len().max(params.verify_batch) + 1);
        batch.push(pending);
        batch.extend_from_slice(&drafts);
        if let Some(g) = fixed {
            // Padding after the drafts: causal attention keeps it out of their logits, and the
            // rollback below removes it with the rejected drafts. Its logits are asked for too:
            // the number of outputs is part of the graph's shape.
            batch.resize(g.max(batch.len()), pending);
        }
        target.decode_all(&batch)?;
        let mut emitted: Vec<(LlamaToken, TokenKind, f32)> = Vec::with_capacity(batch.len());
        let mut accepted = 0;
        for i in 0..=drafts.len() {
            let mut z = target.logits(i);
            if !eog.is_empty() {
                masked.clear();
                masked.extend_from_slice(z);
                for &e in &eog {
                    if let Some(x) = masked.get_mut(e) {
                        *x = f32::NEG_INFINITY;
                    }
                }
                z = &masked;
            }
            let (argmax, margin) = argmax_margin(z);
            let q = qs.get(i).map(Vec::as_slice);
            // Greedy without transfer takes the argmax just computed.
            let plain_greedy =
                params.greedy() && (params.eta <= 0.0 || q.is_none_or(<[f32]>::is_empty));
            if i == drafts.len() {
                let kind = if drafts.is_empty() {
                    TokenKind::Target
                } else {
                    TokenKind::Bonus
                };
                let choice = if plain_greedy {
                    index_token(argmax)
                } else {
                    pick(z, q, params, &mut rng)
                };
                emitted.push((choice, kind, margin));
                break;
            }
            let d = drafts[i];
            let q = q.unwrap_or(&[]);
            let ok = if params.greedy() {
                let choice = if plain_greedy {
                    index_token(argmax)
                } else {
                    pick(z, Some(q), params, &mut rng)
                };
                if choice == d {
                    true
                } else {
                    emitted.push((choice, TokenKind::Corrected, margin));
                    false
                }
            } else {
                let mut p_hat = target_distribution(z, params.temp, Some(q), params.eta);
                top_p(&mut p_hat, params.top_p);
                let di = token_index(d);
                if accept(&p_hat, q, di, rng.random()) {
                    true
                } else {
                    let t = sample(&residual(&p_hat, q), rng.random());
                    emitted.push((index_token(t), TokenKind::Corrected, margin));
                    false
                }
            };
            if !ok {
                break;
            }
            emitted.push((d, TokenKind::Accepted, margin));
            accepted += 1;
        }
        // Roll the target back to [.., pending, accepted drafts]; the last emitted token becomes
        // the next pending one.
        target.truncate(base + 1 + accepted)?;
        let t_verify = t1.elapsed();
        draft_time += t_draft;
        verify_time += t_verify;
        if drafts.is_empty() {
            plain_steps.push(t_verify.as_secs_f64());
        }
        stats.rounds += 1;
        tracing::trace!(
            ?source,
            proposed = proposal.as_ref().map_or(0, |p| p.tokens.len()),
            match_len = proposal.as_ref().map_or(0, |p| p.match_len),
            k = drafts.len(),
            accepted,
            verify_ms = t_verify.as_secs_f64() * 1e3,
            "round"
        );
        // (A fixed shape's times are not those of its drafts' sizes.)
        if fixed.is_none() {
            policy.record(adaptive::Round {
                source,
                match_len: proposal.as_ref().map_or(0, |p| p.match_len),
                lookup_in_answer: proposal.as_ref().is_some_and(|p| p.in_answer),
                drafted: drafts.len(),
                accepted,
                rejected: accepted < drafts.len(),
                t_draft,
                t_draft_step,
                t_verify,
            });
        }

        // Emit up to end-of-generation or the token limit. The round's statistics count the
        // drafts verified up to there (an accepted end-of-generation draft included).
        let mut stop = false;
        let mut emitted_n = 0;
        let mut considered = 0;
        let mut accepted_used = 0;
        for (token, kind, margin) in emitted {
            considered += 1;
            if kind == TokenKind::Accepted {
                accepted_used += 1;
            }
            if model.vocab().is_eog(token) {
                end_margin = Some(margin);
                ended_by_eog = true;
                stop = true;
                break;
            }
            if generated.len() >= params.max_tokens {
                stop = true;
                break;
            }
            generated.push(token);
            emitted_n += 1;
            draft_seq.push(token);
            if let Some(l) = lookup.as_mut() {
                l.push(token);
            }
            pending = token;
            let g = GenToken {
                id: token.0,
                text: text.push(model, token),
                kind,
                margin,
            };
            if stats.ttft_s == 0.0 {
                stats.ttft_s = started.elapsed().as_secs_f64();
            }
            out_tokens.push(g.clone());
            if sink(Event::Token(g)) == Flow::Cancel {
                cancelled = true;
                stop = true;
                break;
            }
        }
        // A lookup the round did not use is scored against what the round produced.
        if let Some(p) = proposal
            .as_ref()
            .filter(|_| source != Source::Lookup && fixed.is_none())
        {
            let produced = &generated[generated.len() - emitted_n.min(generated.len())..];
            policy.observe_declined(p, produced);
        }
        let drafted = if stop {
            drafts.len().min(considered)
        } else {
            drafts.len()
        };
        let accepted = accepted.min(accepted_used);
        stats.drafted += drafted;
        stats.accepted += accepted;
        match source {
            Source::None => stats.plain_rounds += 1,
            Source::Lookup => {
                stats.lookup_drafted += drafted;
                stats.lookup_accepted += accepted;
            }
            Source::Model => {}
        }
        let round = Event::Round {
            source,
            drafted,
            accepted,
            t_draft,
            t_verify,
        };
        if sink(round) == Flow::Cancel {
            cancelled = true;
        }
        if stop {
            break 'rounds;
        }
    }
    let tail = text.finish();
    if let Some(last) = out_tokens.last_mut() {
        last.text.push_str(&tail);
    }

    let decode_s = decode_started.elapsed().as_secs_f64();
    let busy_after = target.busy() + drafter.as_ref().map_or(Duration::ZERO, |d| d.ctx.busy());
    stats.generated_tokens = out_tokens.len();
    stats.acceptance_rate = ratio(stats.accepted, stats.drafted);
    // Tokens the target produced per round, the hidden end-of-generation token included.
    stats.mean_accepted_len = ratio(
        stats.generated_tokens + usize::from(ended_by_eog),
        stats.rounds,
    );
    stats.decode_s = decode_s;
    stats.decode_tok_s = if decode_s > 0.0 {
        out_tokens.len() as f64 / decode_s
    } else {
        0.0
    };
    stats.target_ctx_tokens = target.tokens().len() + 1;
    stats.draft_ctx_tokens = drafter.as_ref().map_or(0, |d| d.ctx.tokens().len());
    stats.target_n_ctx = target.n_ctx();
    stats.draft_n_ctx = drafter.as_ref().map_or(0, |d| d.ctx.n_ctx());
    stats.draft_s = draft_time.as_secs_f64();
    stats.verify_s = verify_time.as_secs_f64();
    stats.overhead_s = (decode_started
        .elapsed()
        .saturating_sub(busy_after - busy_before))
    .as_secs_f64();
    stats.cancelled = cancelled;
    stats.ceiling = policy.ceiling().unwrap_or(0.0);
    stats.verify_curve = policy.costs().verify_curve();
    stats.plain_step_s = super::median(&mut plain_steps).unwrap_or(0.0);
    *costs = policy.costs().clone();
    let answer: String = out_tokens.iter().map(|t| t.text.as_str()).collect();
    sink(Event::Done(stats.clone()));
    Ok(Output {
        tokens: out_tokens,
        end_margin,
        text: answer,
        stats,
    })
}

/// Measures the target's verification time for a few batch sizes, once per engine, so that the
/// policy's first choices rest on this machine's costs rather than a guess (on a GPU a batch
/// shape's first decode is slow: each is run once before it is timed). The batches are rolled
/// back: the cache is as before.
fn calibrate(
    target: &mut Context,
    pending: LlamaToken,
    params: &Params,
    policy: &mut Policy,
) -> Result<()> {
    let mut sizes =
        adaptive::calibration_sizes(params.gamma, params.lookup.then_some(params.lookup_max));
    let base = target.tokens().len();
    sizes.retain(|&g| base + g <= target.n_ctx());
    let passes = if target.on_gpu() { 2 } else { 1 };
    for pass in 0..passes {
        for &g in &sizes {
            // Timed as a round verifies: the batch, then the argmax at every position.
            let started = Instant::now();
            target.decode_all(&vec![pending; g])?;
            for i in 0..g {
                std::hint::black_box(argmax_margin(target.logits(i)));
            }
            let t = started.elapsed();
            target.truncate(base)?;
            if pass + 1 == passes {
                policy.record_verify(g, t);
            }
        }
    }
    tracing::debug!(?sizes, passes, "verification costs calibrated");
    Ok(())
}

/// A model draft.
struct Drafted {
    tokens: Vec<LlamaToken>,
    /// The drafter's distribution at each draft (and after the last where transfer needs it);
    /// empty in greedy mode without transfer, where only the argmax matters.
    qs: Vec<Vec<f32>>,
    /// The mean time of a drafter step after the first decode (which also catches up).
    step: Option<Duration>,
}

/// Drafts up to `max` tokens after `seq` with the drafter. Stops early when the drafter's
/// confidence falls below the threshold.
fn draft(
    ctx: &mut Context,
    seq: &[LlamaToken],
    params: &Params,
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
            index_token(argmax_margin(z).0)
        } else {
            top_p(&mut q, params.top_p);
            index_token(sample(&q, rng.random()))
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

/// The target's token at a position: greedy takes the argmax (of p̂ when transferring), else a
/// sample of top-p(p̂).
fn pick(z: &[f32], q: Option<&[f32]>, params: &Params, rng: &mut ChaCha8Rng) -> LlamaToken {
    let q = q.filter(|q| !q.is_empty());
    if params.greedy() {
        if params.eta > 0.0 && q.is_some() {
            let p_hat = target_distribution(z, 1.0, q, params.eta);
            return index_token(argmax_margin(&p_hat).0);
        }
        return index_token(argmax_margin(z).0);
    }
    let mut p_hat = target_distribution(z, params.temp, q, params.eta);
    top_p(&mut p_hat, params.top_p);
    index_token(sample(&p_hat, rng.random()))
}

/// The distribution that proposes `d` for sure.
fn point_mass(n_vocab: usize, d: LlamaToken) -> Vec<f32> {
    let mut q = vec![0.0; n_vocab];
    if let Some(x) = q.get_mut(token_index(d)) {
        *x = 1.0;
    }
    q
}

fn token_index(t: LlamaToken) -> usize {
    usize::try_from(t.0).unwrap_or(0)
}

fn index_token(i: usize) -> LlamaToken {
    LlamaToken(i32::try_from(i).unwrap_or(0))
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Turns token pieces into text, holding back bytes of a character split across tokens.
#[derive(Default)]
struct TextDecoder {
    bytes: Vec<u8>,
}

impl TextDecoder {
    fn push(&mut self, model: &LlamaModel, token: LlamaToken) -> String {
        self.bytes
            .extend(model.vocab().token_to_piece(token, false, None));
        let valid = match std::str::from_utf8(&self.bytes) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(e) => e.valid_up_to() + e.error_len().unwrap_or(1),
        };
        let out = String::from_utf8_lossy(&self.bytes[..valid]).into_owned();
        self.bytes.drain(..valid);
        out
    }

    fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.bytes).into_owned();
        self.bytes.clear();
        out
    }
}
