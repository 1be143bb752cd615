//! The statistics of an answer: the counts and times kept as the rounds go ([`Tally`]), and the
//! one function that turns them, with the contexts' and the policy's state at that moment
//! ([`Gauges`]), into [`Stats`]: the running snapshot of every round and the final statistics
//! are the same computation.

use std::time::Duration;

use super::Stats;
use super::adaptive::DraftSource;

/// Counts and times of the answer so far.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The fields counted as the answer goes (prefill, time to first token, rounds, drafts);
    /// the others are filled in by [`Tally::stats`].
    counts: Stats,
    generated: usize,
    /// Whether the target chose end-of-generation (a token of the last round, not emitted).
    ended_by_eog: bool,
    /// Emitted tokens taken back (a turn marker): the rounds produced them all the same.
    dropped: usize,
    draft_time: Duration,
    verify_time: Duration,
    /// The times of the rounds without drafts: llama.cpp's step ...
    plain_steps: Vec<f64>,
    /// ... and the whole round, the loop's own work included.
    plain_rounds: Vec<f64>,
}

/// The state, outside the tally, that the statistics report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gauges {
    /// Time since decoding started (after prefill).
    pub decode: Duration,
    /// Of `decode`: the time spent inside llama.cpp.
    pub busy: Duration,
    pub target_ctx_tokens: usize,
    pub draft_ctx_tokens: usize,
    pub target_n_ctx: usize,
    pub draft_n_ctx: usize,
    pub ceiling: f64,
    pub verify_curve: Vec<(usize, f64)>,
    /// Changes of the verification shape (with fixed shapes).
    pub shape_switches: usize,
    /// The fixed batch shape of the rounds (0: none).
    pub verify_shape: u32,
    pub cancelled: bool,
}

impl Tally {
    /// Tokens decoded during prefill; `target` says whether into the verifying context.
    pub fn prefilled(&mut self, tokens: usize, target: bool) {
        self.counts.prefill_tokens += tokens;
        if target {
            self.counts.target_prefill_tokens += tokens;
        }
    }

    /// Prefill (and calibration) ended after `seconds`.
    pub fn prefill_done(&mut self, seconds: f64) {
        self.counts.prefill_s = seconds;
    }

    /// A token was emitted, `since_start` seconds after the answer started.
    pub fn token(&mut self, since_start: impl FnOnce() -> f64) {
        self.generated += 1;
        if self.counts.ttft_s == 0.0 {
            self.counts.ttft_s = since_start();
        }
    }

    /// `n` emitted tokens were taken back: the turn marker a model without a chat template
    /// started, which is not part of the answer.
    pub fn dropped(&mut self, n: usize) {
        let n = n.min(self.generated);
        self.generated -= n;
        self.dropped += n;
    }

    /// The times of a round; `plain` when it verified no draft.
    pub fn timed(&mut self, t_draft: Duration, t_verify: Duration, plain: bool) {
        self.draft_time += t_draft;
        self.verify_time += t_verify;
        if plain {
            self.plain_steps.push(t_verify.as_secs_f64());
        }
        self.counts.rounds += 1;
    }

    /// A round ended, `wall` after it began (everything it did, events included).
    pub fn round_ended(&mut self, wall: Duration, plain: bool) {
        if plain {
            self.plain_rounds.push(wall.as_secs_f64());
        }
    }

    /// What a round's drafts counted for (see [`super::emit`]).
    pub fn drafts(&mut self, source: DraftSource, drafted: usize, accepted: usize) {
        self.counts.drafted += drafted;
        self.counts.accepted += accepted;
        match source {
            DraftSource::None => self.counts.plain_rounds += 1,
            DraftSource::Lookup => {
                self.counts.lookup_drafted += drafted;
                self.counts.lookup_accepted += accepted;
            }
            DraftSource::Model => {}
        }
    }

    /// The target chose end-of-generation.
    pub fn ended_by_eog(&mut self) {
        self.ended_by_eog = true;
    }

    /// The statistics of the answer so far.
    pub fn stats(&self, gauges: Gauges) -> Stats {
        let c = &self.counts;
        let decode_s = gauges.decode.as_secs_f64();
        let plain_step_s = super::median(&mut self.plain_steps.clone()).unwrap_or(0.0);
        // What a token costs without drafts: a whole plain round of this answer on average (the
        // first one's warm-up included, as plain decoding would pay it), else the calibrated
        // one-token verification (the loop's own work then not counted).
        let plain_round_s = if self.plain_rounds.is_empty() {
            0.0
        } else {
            self.plain_rounds.iter().sum::<f64>() / self.plain_rounds.len() as f64
        };
        let step = if plain_round_s > 0.0 {
            plain_round_s
        } else {
            gauges
                .verify_curve
                .iter()
                .find(|(g, _)| *g == 1)
                .map_or(0.0, |&(_, t)| t)
        };
        // The tokens the rounds produced: the answer's, the hidden end-of-generation token and a
        // dropped turn marker's (plain decoding pays a step for each as well).
        let produced = self.generated + self.dropped + usize::from(self.ended_by_eog);
        Stats {
            generated_tokens: self.generated,
            acceptance_rate: ratio(c.accepted, c.drafted),
            mean_accepted_len: ratio(produced, c.rounds),
            decode_s,
            decode_tok_s: if decode_s > 0.0 {
                self.generated as f64 / decode_s
            } else {
                0.0
            },
            target_ctx_tokens: gauges.target_ctx_tokens,
            draft_ctx_tokens: gauges.draft_ctx_tokens,
            target_n_ctx: gauges.target_n_ctx,
            draft_n_ctx: gauges.draft_n_ctx,
            draft_s: self.draft_time.as_secs_f64(),
            verify_s: self.verify_time.as_secs_f64(),
            overhead_s: gauges.decode.saturating_sub(gauges.busy).as_secs_f64(),
            plain_step_s,
            speedup: if decode_s > 0.0 {
                produced as f64 * step / decode_s
            } else {
                0.0
            },
            ceiling: gauges.ceiling,
            verify_curve: gauges.verify_curve,
            shape_switches: gauges.shape_switches,
            verify_shape: gauges.verify_shape,
            cancelled: gauges.cancelled,
            ..c.clone()
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn marker the answer drops (a model without a chat template starting a turn of its
    /// own) was produced by plain steps all the same: answering without drafts is 1x plain.
    #[test]
    fn a_dropped_turn_marker_counts_as_produced_by_its_rounds() {
        let mut t = Tally::default();
        for _ in 0..10 {
            t.timed(Duration::ZERO, Duration::from_millis(10), true);
            t.round_ended(Duration::from_millis(10), true);
            t.drafts(DraftSource::None, 0, 0);
            t.token(|| 0.1);
        }
        t.dropped(2);
        let s = t.stats(Gauges {
            decode: Duration::from_millis(100),
            ..Gauges::default()
        });
        assert_eq!(s.generated_tokens, 8);
        assert!((s.mean_accepted_len - 1.0).abs() < 1e-12, "{s:?}");
        assert!((s.speedup - 1.0).abs() < 1e-9, "{s:?}");
        assert!((s.decode_tok_s - 80.0).abs() < 1e-9);
    }

    #[test]
    fn rounds_add_up_and_the_hidden_end_of_generation_counts_per_round() {
        let mut t = Tally::default();
        t.prefilled(100, true);
        t.prefilled(40, false);
        // A lookup round: 4 drafted, 3 accepted, a correction (4 tokens).
        t.timed(Duration::ZERO, Duration::from_millis(20), false);
        t.drafts(DraftSource::Lookup, 4, 3);
        // A plain step, then a model round of 2 accepted drafts whose bonus is end-of-generation.
        t.timed(Duration::ZERO, Duration::from_millis(10), true);
        t.drafts(DraftSource::None, 0, 0);
        t.timed(Duration::from_millis(5), Duration::from_millis(30), false);
        t.drafts(DraftSource::Model, 2, 2);
        for _ in 0..7 {
            t.token(|| 0.5);
        }
        t.ended_by_eog();
        let s = t.stats(Gauges {
            decode: Duration::from_millis(100),
            busy: Duration::from_millis(60),
            ..Gauges::default()
        });
        assert_eq!((s.prefill_tokens, s.target_prefill_tokens), (140, 100));
        assert_eq!((s.rounds, s.plain_rounds), (3, 1));
        assert_eq!((s.drafted, s.accepted), (6, 5));
        assert_eq!((s.lookup_drafted, s.lookup_accepted), (4, 3));
        assert_eq!(s.generated_tokens, 7);
        assert!((s.mean_accepted_len - 8.0 / 3.0).abs() < 1e-12);
        assert!((s.acceptance_rate - 5.0 / 6.0).abs() < 1e-12);
        assert!((s.decode_tok_s - 70.0).abs() < 1e-9);
        assert!((s.overhead_s - 0.04).abs() < 1e-9);
        assert!((s.plain_step_s - 0.01).abs() < 1e-12);
        assert_eq!(s.ttft_s, 0.5);
    }

    #[test]
    fn a_snapshot_leaves_the_tally_as_it_was() {
        let mut t = Tally::default();
        for ms in [30, 10, 20] {
            t.timed(Duration::ZERO, Duration::from_millis(ms), true);
        }
        let first = t.stats(Gauges::default());
        assert_eq!(first, t.stats(Gauges::default()));
        assert!((first.plain_step_s - 0.02).abs() < 1e-12);
        assert_eq!(t.stats(Gauges::default()).decode_tok_s, 0.0);
    }

    #[test]
    fn the_speed_up_is_over_plain_rounds_of_the_same_answer() {
        // 10 plain rounds of 22 ms (20 in llama.cpp), the first of 49 (warm-up): plain decoding
        // reads 1.00x.
        let mut t = Tally::default();
        for i in 0..10 {
            t.timed(Duration::ZERO, Duration::from_millis(20), true);
            t.drafts(DraftSource::None, 0, 0);
            t.token(|| 0.0);
            t.round_ended(Duration::from_millis(if i == 0 { 49 } else { 22 }), true);
        }
        let s = t.stats(Gauges {
            decode: Duration::from_millis(247),
            ..Gauges::default()
        });
        assert!((s.speedup - 1.0).abs() < 1e-9, "{}", s.speedup);
        assert!(
            (s.plain_step_s - 0.02).abs() < 1e-12,
            "llama.cpp's step alone"
        );

        // Drafts that all failed: 2 plain rounds of 20 ms and 4 rounds of one token at 30 ms
        // each cost time, so the answer reads below 1.
        let mut t = Tally::default();
        for _ in 0..2 {
            t.timed(Duration::ZERO, Duration::from_millis(20), true);
            t.token(|| 0.0);
            t.round_ended(Duration::from_millis(20), true);
        }
        for _ in 0..4 {
            t.timed(Duration::from_millis(5), Duration::from_millis(25), false);
            t.drafts(DraftSource::Lookup, 3, 0);
            t.token(|| 0.0);
            t.round_ended(Duration::from_millis(30), false);
        }
        let s = t.stats(Gauges {
            decode: Duration::from_millis(160),
            ..Gauges::default()
        });
        assert!(
            (s.speedup - 6.0 * 0.02 / 0.16).abs() < 1e-9,
            "{}",
            s.speedup
        );
        assert!(s.speedup < 1.0);

        // No plain round in the answer: the calibrated one-token verification stands in.
        let mut t = Tally::default();
        for _ in 0..12 {
            t.token(|| 0.0);
        }
        t.timed(Duration::ZERO, Duration::from_millis(60), false);
        t.round_ended(Duration::from_millis(60), false);
        let s = t.stats(Gauges {
            decode: Duration::from_millis(60),
            verify_curve: vec![(1, 0.01), (16, 0.05)],
            ..Gauges::default()
        });
        assert!((s.speedup - 2.0).abs() < 1e-9, "{}", s.speedup);
        // A plain answer whose last round chose end-of-generation (a round, no token shown).
        let mut t = Tally::default();
        for i in 0..3 {
            t.timed(Duration::ZERO, Duration::from_millis(20), true);
            if i < 2 {
                t.token(|| 0.0);
            }
            t.round_ended(Duration::from_millis(20), true);
        }
        t.ended_by_eog();
        let s = t.stats(Gauges {
            decode: Duration::from_millis(60),
            ..Gauges::default()
        });
        assert!((s.speedup - 1.0).abs() < 1e-9, "{}", s.speedup);
        // Nothing measured: no claim.
        assert_eq!(Tally::default().stats(Gauges::default()).speedup, 0.0);
    }
}
