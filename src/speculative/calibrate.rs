//! Timing the target's batches before an answer, once per engine: the costs the policy's first
//! choices rest on, and on a GPU the fixed verification shape they call for.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::adaptive::{self, Policy};
use super::round::Rules;
use super::sampling::argmax_margin;
use super::shapes;
use crate::config::EngineConfig;
use crate::llm::{Context, Token};

/// Calibrates what `policy` still needs for an answer with `params` (each once per engine,
/// skipped when the prefill was `cancelled`), gives it the GPU's graph costs where they were
/// timed, and returns it with the rounds' rules. `self_spec`: the target drafts for itself.
pub fn prepare(
    target: &mut Context,
    prompt: &[Token],
    params: &EngineConfig,
    self_spec: bool,
    mut policy: Policy,
    cancelled: bool,
) -> Result<(Policy, Rules)> {
    let pending = prompt[prompt.len() - 1];
    let shaped = params.lookup && params.adaptive && params.verify_shapes > 1;
    if shaped {
        policy = policy.with_shapes(params.verify_shapes);
    }
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
    let rules = Rules {
        gamma: params.gamma,
        lookup: params.lookup,
        lookup_max: params.lookup_max,
        fixed_shape,
    };
    Ok((policy, rules))
}

/// The fixed batch shape of every round (1: none): `verify_batch`, where 0 on a GPU with the
/// target as its own drafter is the shape the calibrated costs call for (a changing shape
/// costs a CUDA graph capture, and such a drafter did not pay there:
/// [`shapes::default_fixed`]), else 1: a fixed
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
                    policy.calibrate(g, t);
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
                policy.calibrate_shape(g, steady, switch);
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
