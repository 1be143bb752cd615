//! What the engine measures for `simulate` and `cost-curve` rather than for answers: the
//! drafter's own continuations along an answer (a trace), and the decode time of batches at a
//! depth (a cost curve).

use anyhow::Result;

use super::Engine;
use crate::llm::{Context, ContextSettings, Token};

impl Engine {
    /// The drafter's own greedy continuation, up to `max` tokens with its top probability at
    /// each, after `draft_prompt` followed by `answer[..i]`, for every position `i` of `answer`
    /// (for `rapid-chat simulate`). A continuation whose first token the answer confirms serves
    /// the next position too, so mostly one drafter step is decoded per position.
    pub fn drafter_continuations(
        &mut self,
        draft_prompt: &[Token],
        answer: &[Token],
        max: usize,
    ) -> Result<Vec<Vec<(Token, f32)>>> {
        use crate::speculative::sampling::{argmax_margin, max_prob};
        let n_ctx = self.drafter.n_ctx();
        let base = draft_prompt.len();
        // The prompt, answer[..i], then the continuation `next` at position i.
        let mut seq = draft_prompt.to_vec();
        let mut next: Vec<(Token, f32)> = Vec::new();
        let mut all = Vec::with_capacity(answer.len());
        for i in 0..answer.len() {
            if i > 0 {
                let confirmed = next.first().is_some_and(|d| d.0 == answer[i - 1]);
                if confirmed {
                    next.remove(0);
                } else {
                    next.clear();
                    seq.truncate(base + i - 1);
                    seq.push(answer[i - 1]);
                }
            }
            while next.len() < max && seq.len() + 1 < n_ctx {
                self.drafter.sync(&seq, &mut |_, _| true)?;
                let z = self.drafter.logits(0);
                let d = crate::llm::token::from_index(argmax_margin(z).0);
                next.push((d, max_prob(z)));
                seq.push(d);
            }
            all.push(next.clone());
        }
        Ok(all)
    }

    /// The target's (or with `drafter`, the drafter model's) decode time for a batch of each of
    /// `sizes` tokens after `depth` tokens, as `step_cost.cpp` measures it (made-up tokens, the
    /// batch rolled back and repeated `repeats` times after two untimed runs), plus the argmax at
    /// every position as a verification does; in a context of its own with this engine's
    /// settings. Returns the prefill rate (tokens/s) and the milliseconds per size.
    pub fn cost_curve(
        &self,
        drafter: bool,
        depth: usize,
        sizes: &[usize],
        repeats: usize,
    ) -> Result<(f64, Vec<(usize, f64)>)> {
        let model = if drafter {
            self.models.drafter
        } else {
            self.models.target
        };
        let largest = sizes.iter().copied().max().unwrap_or(1);
        let n_ctx = u32::try_from(depth + largest + 8)
            .map_err(|_| anyhow::anyhow!("a depth of {depth} tokens is too large"))?;
        let mut ctx = Context::new(
            model,
            ContextSettings {
                n_ctx,
                ..self.contexts
            },
        )?;
        let n_vocab = i32::try_from(ctx.n_vocab()).unwrap_or(i32::MAX);
        let made_up = |p: usize| {
            let p = i32::try_from(p % 1_000_000).unwrap_or(0);
            crate::llm::token::from_index(
                usize::try_from(100 + (p * 7919) % (n_vocab - 200)).unwrap_or(0),
            )
        };
        let prompt: Vec<Token> = (0..depth.max(1)).map(made_up).collect();
        let started = std::time::Instant::now();
        ctx.prefill(&prompt, &mut |_, _| true)?;
        let prefill_rate = depth as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let mut curve = Vec::with_capacity(sizes.len());
        for &g in sizes {
            let batch: Vec<Token> = (depth..depth + g).map(made_up).collect();
            let mut total = 0.0;
            // Two untimed: on a GPU the first batch of a shape runs without a CUDA graph and the
            // second captures one; the timed ones replay it.
            for r in 0..repeats + 2 {
                let t = crate::speculative::calibrate::timed_verification(&mut ctx, &batch)?;
                if r > 1 {
                    total += t.as_secs_f64();
                }
            }
            curve.push((g, total / repeats.max(1) as f64 * 1e3));
        }
        Ok((prefill_rate, curve))
    }
}
