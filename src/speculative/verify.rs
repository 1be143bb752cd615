//! Verification of one round, as arithmetic: from the target's logits at every position of the
//! batch `[pending, d1..dk]`, the drafts and the drafter's distributions, which drafts the target
//! accepts and which token it adds: a correction where it rejects one, a bonus after a fully
//! accepted draft, its own token when nothing was drafted. Greedy decoding compares each draft
//! with the target's argmax (of p̂ under transfer); sampling accepts `d` with probability
//! `min(1, p̂(d)/q(d))` and otherwise samples the exact residual `norm(max(p̂ − q, 0))`, so the
//! output is distributed as p̂. No llama.cpp here: the decode loop hands its logits over.

use rand::Rng;

use super::TokenKind;
use super::sampling::{accept, argmax_margin, residual, sample, target_distribution, top_p};
use crate::llm::{Token, token};

/// How the target chooses its tokens in a round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// 0 is greedy.
    pub temp: f32,
    /// Knowledge-transfer strength η (0: none).
    pub eta: f32,
    pub top_p: f32,
}

impl Settings {
    pub fn greedy(&self) -> bool {
        self.temp <= 0.0
    }
}

/// A token a round produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verified {
    pub token: Token,
    pub kind: TokenKind,
    /// The target's top-1 minus top-2 logit at this position.
    pub margin: f32,
}

/// Verifies `drafts` against the target's logits: `logits(i)` is the row after the batch's
/// `i`-th token (`i` in `0..=drafts.len()`; rows after a rejection are not read). `qs[i]` is the
/// drafter's distribution at draft `i` (and `qs[drafts.len()]` the one after the last, for the
/// bonus token's transfer); it may be missing or empty: greedy decoding without transfer needs
/// none, and when sampling a draft without one (a lookup's) is a point mass. Tokens at
/// `masked_out` are never the target's choice (end-of-generation, when answers must run to their
/// limit). Returns the accepted drafts, then the correction or the bonus token, or the target's
/// own token when there are no drafts.
pub fn verify<'z>(
    logits: impl Fn(usize) -> &'z [f32],
    drafts: &[Token],
    qs: &[Vec<f32>],
    settings: &Settings,
    masked_out: &[usize],
    rng: &mut impl Rng,
) -> Vec<Verified> {
    let mut out = Vec::with_capacity(drafts.len() + 1);
    let mut masked: Vec<f32> = Vec::new();
    for i in 0..=drafts.len() {
        let z = without(logits(i), masked_out, &mut masked);
        let (argmax, margin) = argmax_margin(z);
        let q = qs.get(i).map(Vec::as_slice);
        // Greedy without transfer takes the argmax just computed.
        let plain_greedy =
            settings.greedy() && (settings.eta <= 0.0 || q.is_none_or(<[f32]>::is_empty));
        let Some(&d) = drafts.get(i) else {
            let kind = if drafts.is_empty() {
                TokenKind::Target
            } else {
                TokenKind::Bonus
            };
            let token = if plain_greedy {
                token::from_index(argmax)
            } else {
                pick(z, q, settings, rng)
            };
            out.push(Verified {
                token,
                kind,
                margin,
            });
            break;
        };
        let correction = if plain_greedy {
            let choice = token::from_index(argmax);
            (choice != d).then_some(choice)
        } else if settings.greedy() {
            let choice = pick(z, q, settings, rng);
            (choice != d).then_some(choice)
        } else {
            sampled_correction(z, q, d, settings, rng)
        };
        if let Some(token) = correction {
            out.push(Verified {
                token,
                kind: TokenKind::Corrected,
                margin,
            });
            break;
        }
        out.push(Verified {
            token: d,
            kind: TokenKind::Accepted,
            margin,
        });
    }
    out
}

/// `z` with the tokens at `masked_out` made impossible (in `buffer`), or `z` itself.
fn without<'z>(z: &'z [f32], masked_out: &[usize], buffer: &'z mut Vec<f32>) -> &'z [f32] {
    if masked_out.is_empty() {
        return z;
    }
    buffer.clear();
    buffer.extend_from_slice(z);
    for &e in masked_out {
        if let Some(x) = buffer.get_mut(e) {
            *x = f32::NEG_INFINITY;
        }
    }
    buffer
}

/// Speculative sampling at a draft `d`: accepted with probability `min(1, p̂(d)/q(d))` (None),
/// else the token sampled from the exact residual `norm(max(p̂ − q, 0))`. A draft without the
/// drafter's distribution (a lookup's) is a point mass.
fn sampled_correction(
    z: &[f32],
    q: Option<&[f32]>,
    d: Token,
    settings: &Settings,
    rng: &mut impl Rng,
) -> Option<Token> {
    let q = q.filter(|q| !q.is_empty());
    let mut p_hat = target_distribution(z, settings.temp, q, settings.eta);
    top_p(&mut p_hat, settings.top_p);
    let di = token::index(d);
    let point;
    let q = match q {
        Some(q) => q,
        None => {
            point = point_mass(z.len(), di);
            &point
        }
    };
    if accept(&p_hat, q, di, rng.random()) {
        None
    } else {
        Some(token::from_index(sample(
            &residual(&p_hat, q),
            rng.random(),
        )))
    }
}

/// The target's token at a position: greedy takes the argmax (of p̂ when transferring), else a
/// sample of top-p(p̂).
fn pick(z: &[f32], q: Option<&[f32]>, settings: &Settings, rng: &mut impl Rng) -> Token {
    let q = q.filter(|q| !q.is_empty());
    if settings.greedy() {
        if settings.eta > 0.0 && q.is_some() {
            let p_hat = target_distribution(z, 1.0, q, settings.eta);
            return token::from_index(argmax_margin(&p_hat).0);
        }
        return token::from_index(argmax_margin(z).0);
    }
    let mut p_hat = target_distribution(z, settings.temp, q, settings.eta);
    top_p(&mut p_hat, settings.top_p);
    token::from_index(sample(&p_hat, rng.random()))
}

/// The distribution that proposes the token at `index` for sure.
fn point_mass(n_vocab: usize, index: usize) -> Vec<f32> {
    let mut q = vec![0.0; n_vocab];
    if let Some(x) = q.get_mut(index) {
        *x = 1.0;
    }
    q
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::speculative::sampling::softmax;
    use crate::speculative::sampling::tests::chi_square;

    const GREEDY: Settings = Settings {
        temp: 0.0,
        eta: 0.0,
        top_p: 1.0,
    };

    /// A row of 8 logits whose argmax is `top`, 1.5 above the runner-up.
    fn row(top: usize) -> Vec<f32> {
        let mut z = vec![0.0, 0.5, -1.0, 1.0, -0.5, 0.25, -2.0, 0.75];
        z[top] = 2.5;
        z
    }

    fn t(i: i32) -> Token {
        Token::new(i)
    }

    fn run(rows: &[Vec<f32>], drafts: &[i32], qs: &[Vec<f32>], s: &Settings) -> Vec<Verified> {
        let drafts: Vec<Token> = drafts.iter().map(|&d| t(d)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        verify(|i| rows[i].as_slice(), &drafts, qs, s, &[], &mut rng)
    }

    fn kinds(v: &[Verified]) -> Vec<(i32, TokenKind)> {
        v.iter().map(|v| (v.token.0, v.kind)).collect()
    }

    use TokenKind::{Accepted, Bonus, Corrected, Target};

    #[test]
    fn greedy_accepts_a_draft_equal_to_the_argmax_and_adds_the_bonus_token() {
        let rows = [row(4), row(1), row(6), row(2)];
        let v = run(&rows, &[4, 1, 6], &[], &GREEDY);
        assert_eq!(
            kinds(&v),
            [(4, Accepted), (1, Accepted), (6, Accepted), (2, Bonus)]
        );
        assert!(v.iter().all(|v| (v.margin - 1.5).abs() < 1e-6));
    }

    #[test]
    fn greedy_rejecting_the_first_draft_emits_only_the_correction() {
        let rows = [row(4), row(1)];
        let v = run(&rows, &[5, 1], &[], &GREEDY);
        assert_eq!(kinds(&v), [(4, Corrected)]);
    }

    #[test]
    fn a_rejection_in_the_middle_keeps_the_drafts_before_it_and_corrects_to_the_argmax() {
        // The rows after the rejection are never read.
        let rows = [row(4), row(1), row(6), row(2)];
        let read = std::cell::Cell::new(0);
        let logits = |i: usize| {
            read.set(read.get().max(i + 1));
            rows[i].as_slice()
        };
        let drafts = [t(4), t(1), t(3)];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let v = verify(logits, &drafts, &[], &GREEDY, &[], &mut rng);
        assert_eq!(kinds(&v), [(4, Accepted), (1, Accepted), (6, Corrected)]);
        assert_eq!(read.get(), 3);
    }

    #[test]
    fn without_drafts_the_round_is_one_target_token() {
        let v = run(&[row(2)], &[], &[], &GREEDY);
        assert_eq!(kinds(&v), [(2, Target)]);
        assert!((v[0].margin - 1.5).abs() < 1e-6);
    }

    #[test]
    fn a_masked_out_token_is_never_chosen() {
        let rows = [row(3)];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let v = verify(|i| rows[i].as_slice(), &[], &[], &GREEDY, &[3], &mut rng);
        // The target's choice is its runner-up, 0.75 at token 7.
        assert_eq!(kinds(&v), [(7, Target)]);
    }

    /// Logits where token 0 leads token 1 by 0.1, and a drafter sure of token 1 but giving
    /// token 0 the probability `q0` (the rest on token 2, unlikely for the target).
    fn transfer_case(q0: f32) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let z = vec![1.0, 0.9, -5.0, -5.0, -5.0, -5.0, -5.0, -5.0];
        let mut q = vec![0.0; 8];
        q[0] = q0;
        q[1] = 0.5;
        q[2] = 0.5 - q0;
        (vec![z, row(5)], vec![q])
    }

    #[test]
    fn greedy_with_transfer_takes_the_argmax_of_p_hat() {
        // Without transfer the target's argmax (token 0) corrects the draft; with η = 1 the
        // drafter's confidence in token 1 moves p̂'s argmax there (q0 is above the tail).
        let (rows, qs) = transfer_case(0.06);
        assert_eq!(kinds(&run(&rows, &[1], &qs, &GREEDY)), [(0, Corrected)]);
        let eta = Settings { eta: 1.0, ..GREEDY };
        assert_eq!(
            kinds(&run(&rows, &[1], &qs, &eta)),
            [(1, Accepted), (5, Bonus)]
        );
    }

    #[test]
    fn tail_protection_keeps_a_token_the_drafter_finds_unlikely_unshifted() {
        // q0 = 0.04 is below 0.1 · max q = 0.05: token 0's logit is not pushed down by
        // η·(q0 − p0), so it stays ahead of token 1 and corrects the draft.
        let (rows, qs) = transfer_case(0.04);
        let eta = Settings { eta: 1.0, ..GREEDY };
        assert_eq!(kinds(&run(&rows, &[1], &qs, &eta)), [(0, Corrected)]);
    }

    /// 99.9th percentile of chi-square with 7 degrees of freedom.
    const CHI2_7_999: f64 = 24.322;
    const Z_TARGET: [f32; 8] = [2.0, 1.5, 0.3, -0.5, 1.0, -2.0, 0.0, 0.7];
    const Z_DRAFT: [f32; 8] = [0.5, 2.2, 1.0, 0.0, -1.0, 0.2, 1.4, -0.3];

    /// The first token of many sampled rounds of one draft drawn from the drafter's q.
    fn first_tokens(s: &Settings, seed: u64) -> Vec<u64> {
        let q = softmax(&Z_DRAFT, s.temp);
        let rows = [Z_TARGET.to_vec(), Z_TARGET.to_vec()];
        let qs = [q.clone()];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut counts = vec![0u64; 8];
        for _ in 0..100_000 {
            let d = token::from_index(sample(&q, rng.random()));
            let v = verify(|i| rows[i].as_slice(), &[d], &qs, s, &[], &mut rng);
            counts[token::index(v[0].token)] += 1;
        }
        counts
    }

    #[test]
    fn sampled_verification_outputs_exactly_p_without_transfer() {
        let s = Settings {
            temp: 0.8,
            eta: 0.0,
            top_p: 1.0,
        };
        let counts = first_tokens(&s, 7);
        let p = softmax(&Z_TARGET, 0.8);
        let chi = chi_square(&counts, &p);
        assert!(
            chi < CHI2_7_999,
            "chi-square {chi:.1} against p: {counts:?}"
        );
        // The test has power: the drafter's own distribution is rejected.
        assert!(chi_square(&counts, &softmax(&Z_DRAFT, 0.8)) > 1000.0);
    }

    #[test]
    fn sampled_verification_with_transfer_outputs_p_hat() {
        let s = Settings {
            temp: 1.0,
            eta: 2.0,
            top_p: 1.0,
        };
        let counts = first_tokens(&s, 11);
        let q = softmax(&Z_DRAFT, 1.0);
        let p_hat = target_distribution(&Z_TARGET, 1.0, Some(&q), 2.0);
        let chi = chi_square(&counts, &p_hat);
        assert!(
            chi < CHI2_7_999,
            "chi-square {chi:.1} against p̂: {counts:?}"
        );
        assert!(
            chi_square(&counts, &softmax(&Z_TARGET, 1.0)) > 100.0,
            "and not p"
        );
    }

    #[test]
    fn a_draft_without_a_distribution_is_verified_as_a_point_mass() {
        let s = Settings {
            temp: 1.0,
            eta: 0.0,
            top_p: 0.9,
        };
        let rows = [Z_TARGET.to_vec(), Z_DRAFT.to_vec()];
        let point = |d: usize| {
            let mut q = vec![0.0; 8];
            q[d] = 1.0;
            q
        };
        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(5), ChaCha8Rng::seed_from_u64(5));
        for d in (0..8).cycle().take(400) {
            let drafts = [token::from_index(d)];
            let implicit = verify(|i| rows[i].as_slice(), &drafts, &[], &s, &[], &mut a);
            let explicit = verify(
                |i| rows[i].as_slice(),
                &drafts,
                &[point(d)],
                &s,
                &[],
                &mut b,
            );
            assert_eq!(implicit, explicit);
        }
    }
}
