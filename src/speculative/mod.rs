//! Speculative decoding: the decode loop shared by every mode, acceptance (greedy and
//! η-transfer sampling), the events it emits and the statistics it keeps. It speaks to
//! llama.cpp only through [`crate::llm`].

pub mod account;
pub mod adaptive;
pub mod calibrate;
pub mod decode;
pub mod emit;
pub mod estimate;
pub mod lookup;
pub mod replay;
pub mod round;
pub mod sampling;
pub mod shapes;
pub mod verify;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::config::Mode;

#[cfg(test)]
mod tests {
    use super::looping;

    #[test]
    fn a_loop_is_mostly_repeated_four_grams() {
        let prose: Vec<i32> = (0..200).collect();
        assert!(!looping(&prose));
        let lo: Vec<i32> = (0..200).map(|i| i % 17).collect();
        assert!(looping(&lo));
        let short: Vec<i32> = (0..20).map(|i| i % 2).collect();
        assert!(!looping(&short), "too short to judge");
        // Half prose, half a loop of 5: still more than a third distinct.
        let mixed: Vec<i32> = (0..100).chain((0..100).map(|i| 1000 + i % 5)).collect();
        assert!(!looping(&mixed));
    }
}

/// Where a round's draft came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DraftSource {
    /// No draft: one target step.
    None,
    /// The continuation of an earlier occurrence of the recent tokens.
    Lookup,
    /// The drafter model.
    Model,
}

/// Where a generated token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A drafted token the target accepted.
    Accepted,
    /// The target's token where it rejected a draft.
    Corrected,
    /// The target's extra token after a fully accepted draft.
    Bonus,
    /// A token produced without drafting.
    Target,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenToken {
    #[serde(skip_serializing, default)]
    pub id: i32,
    /// Its text (may be empty while a multi-byte character is incomplete).
    pub text: String,
    pub kind: TokenKind,
    /// The verifying model's top-1 minus top-2 logit at this position.
    pub margin: f32,
}

/// What the decode loop reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Tokens of the prompt read so far, of `total`, `seconds` after this reading began.
    Prefill {
        done: usize,
        total: usize,
        seconds: f64,
    },
    Token(GenToken),
    Round {
        /// Where the draft came from (`None`: a plain target step).
        source: DraftSource,
        drafted: usize,
        accepted: usize,
        t_draft: Duration,
        /// The mean time of the drafter's steps after its first (catch-up) decode, if it made
        /// any.
        t_draft_step: Option<Duration>,
        t_verify: Duration,
        /// The statistics of the answer so far (computed as those of `Done` are; boxed to keep
        /// every event as small as `Done`).
        stats: Box<Stats>,
    },
    Done(Stats),
}

/// Whether the loop should go on (the sink's answer to each event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Cancel,
}

/// Whether an answer is mostly repetition (a small model's loop, which lookups copy at will):
/// fewer than a third of its 4-grams of tokens distinct. Speed-ups over such answers say nothing
/// about prose, so the measurements count them apart. Answers under 32 tokens are never loops.
pub fn looping(ids: &[i32]) -> bool {
    if ids.len() < 32 {
        return false;
    }
    let grams: Vec<&[i32]> = ids.windows(4).collect();
    let distinct: std::collections::HashSet<&[i32]> = grams.iter().copied().collect();
    distinct.len() * 3 < grams.len()
}

/// The floor of an answer against AR's to the same question (DESIGN.md's "How speed is
/// judged"): at most the larger of 1.05 times AR's decoding time and AR's plus 8 plain steps (a
/// short answer may spend a few steps trying a draft; a long one may not lose more than 5%).
pub fn floor_s(ar_decode_s: f64, plain_step_s: f64) -> f64 {
    (1.05 * ar_decode_s).max(ar_decode_s + 8.0 * plain_step_s)
}

/// The median of `v` (sorted in place), or None when it is empty.
pub fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// Statistics of one answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub generated_tokens: usize,
    /// Tokens the drafter proposed and the target verified.
    pub drafted: usize,
    pub accepted: usize,
    pub acceptance_rate: f64,
    /// Tokens emitted per verification round (accepted drafts + the target's own token).
    pub mean_accepted_len: f64,
    /// Rounds: verifications of a draft, or single target steps.
    pub rounds: usize,
    /// Rounds without a draft (single target steps).
    pub plain_rounds: usize,
    /// Of `drafted` and `accepted`: the tokens that came from lookups in the text.
    pub lookup_drafted: usize,
    pub lookup_accepted: usize,
    /// Tokens decoded before the first answer token (both contexts; reused prefixes not counted).
    pub prefill_tokens: usize,
    /// Of `prefill_tokens`: those decoded into the verifying context (the target).
    pub target_prefill_tokens: usize,
    /// Tokens of the target's documents restored from the corpus KV cache instead.
    pub restored_tokens: usize,
    pub prefill_s: f64,
    pub ttft_s: f64,
    /// From the end of prefill to the last token.
    pub decode_s: f64,
    pub decode_tok_s: f64,
    pub target_ctx_tokens: usize,
    pub draft_ctx_tokens: usize,
    /// The sizes of those contexts (0: no drafter, or an answer saved before they were kept).
    pub target_n_ctx: usize,
    pub draft_n_ctx: usize,
    /// Time spent drafting, verifying, and outside llama.cpp during decoding.
    pub draft_s: f64,
    pub verify_s: f64,
    pub overhead_s: f64,
    /// The median time of a plain target step (a round without drafts; 0: none): the
    /// steady-state step time, where the mean would include a first step's warm-up.
    pub plain_step_s: f64,
    /// The answer's speed over plain target steps at the same depth, in the same conversation:
    /// its tokens times a plain round's time (the mean round without drafts, the loop's own work
    /// included; else the calibrated one-token verification) over the decoding time. About 1 when no draft was accepted, below 1 when
    /// drafts cost time; 0 when no plain step was measured.
    pub speedup: f64,
    /// The speed-up free, always-accepted drafts could give here: the most of
    /// `g · t(1) / t(g)` over the verification sizes measured (0: none measured).
    pub ceiling: f64,
    /// The verification time per batch size the policy had measured by the end of the answer
    /// (calibration and rounds, recent ones weighing more), as (size, seconds).
    pub verify_curve: Vec<(usize, f64)>,
    /// Changes of the verification shape (with fixed shapes: `verify_shapes`), each of which
    /// makes llama.cpp capture a CUDA graph anew.
    pub shape_switches: usize,
    /// The batch every round was verified in, padded (`verify_batch`, or on a GPU the shape the
    /// calibrated costs call for); 0: none, each round its own length (or the policy's shapes).
    pub verify_shape: u32,
    /// Whether the answer was cut short by cancellation.
    pub cancelled: bool,
}
