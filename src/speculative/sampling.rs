//! The arithmetic of acceptance, on plain probability vectors: softmax with temperature and
//! top-p, the retrieval-augmented target distribution p̂ with tail protection, speculative
//! acceptance and the exact residual. Pure functions, tested statistically.

/// Index of the largest logit (the first, on ties) and its margin over the second largest.
/// Called for every verified position: the two largest are kept per lane without branches, so
/// the scan vectorizes (a GPU step costs about a millisecond; a branchy scan of 49K logits per
/// position was a noticeable share of it).
pub fn argmax_margin(logits: &[f32]) -> (usize, f32) {
    const LANES: usize = 16;
    let mut top1 = [f32::NEG_INFINITY; LANES];
    let mut top2 = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            top2[i] = top2[i].max(top1[i].min(c[i]));
            top1[i] = top1[i].max(c[i]);
        }
    }
    let (mut best, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &z in top1.iter().chain(&top2).chain(rest) {
        if z > best {
            second = best;
            best = z;
        } else if z > second {
            second = z;
        }
    }
    let index = logits.iter().position(|&z| z == best).unwrap_or(0);
    (
        index,
        if second.is_finite() {
            best - second
        } else {
            f32::INFINITY
        },
    )
}

/// softmax(z / temp); `temp` 0 is treated as 1 (greedy callers only take the argmax).
pub fn softmax(logits: &[f32], temp: f32) -> Vec<f32> {
    let t = if temp > 0.0 { temp } else { 1.0 };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut out: Vec<f32> = logits.iter().map(|&z| ((z - max) / t).exp()).collect();
    let sum: f32 = out.iter().sum();
    out.iter_mut().for_each(|p| *p /= sum);
    out
}

/// The largest probability of softmax(z), cheaply: tokens more than 30 logits below the top add
/// under e^-30 each to the normalizer, so their exponentials are skipped.
pub fn max_prob(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let floor = max - 30.0;
    let sum: f32 = logits
        .iter()
        .filter(|&&z| z > floor)
        .map(|&z| (z - max).exp())
        .sum();
    1.0 / sum
}

/// Keeps the smallest set of most likely tokens whose mass reaches `top_p`, renormalized.
pub fn top_p(probs: &mut [f32], top_p: f32) {
    if top_p >= 1.0 {
        return;
    }
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_unstable_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let mut mass = 0.0;
    let mut keep = order.len();
    for (rank, &i) in order.iter().enumerate() {
        mass += probs[i];
        if mass >= top_p {
            keep = rank + 1;
            break;
        }
    }
    for &i in &order[keep..] {
        probs[i] = 0.0;
    }
    let sum: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
}

/// The target distribution after knowledge transfer from the drafter:
/// `p̂ = softmax(z/T + η·(q − p))`, the shift applied only where `q ≥ 0.1·max q` (tail
/// protection). With `eta` 0 (or no `q`) it is `p = softmax(z/T)`.
pub fn target_distribution(z: &[f32], temp: f32, q: Option<&[f32]>, eta: f32) -> Vec<f32> {
    let p = softmax(z, temp);
    let Some(q) = q.filter(|_| eta > 0.0) else {
        return p;
    };
    let t = if temp > 0.0 { temp } else { 1.0 };
    let q_max = q.iter().copied().fold(0.0f32, f32::max);
    let shifted: Vec<f32> = z
        .iter()
        .zip(&p)
        .zip(q)
        .map(|((&zi, &pi), &qi)| {
            let base = zi / t;
            if qi >= 0.1 * q_max {
                base + eta * (qi - pi)
            } else {
                base
            }
        })
        .collect();
    softmax(&shifted, 1.0)
}

/// Whether the draft `d`, drawn from `q`, is accepted under `p_hat` with the uniform draw `u`:
/// `u < min(1, p̂(d)/q(d))`.
pub fn accept(p_hat: &[f32], q: &[f32], d: usize, u: f64) -> bool {
    let (p, q) = (f64::from(p_hat[d]), f64::from(q[d]));
    q <= 0.0 || u < (p / q).min(1.0)
}

/// The distribution to sample from after a rejection: `norm(max(p̂ − q, 0))`. With it the
/// output is distributed exactly as `p̂`. (When `p̂ = q` nothing is ever rejected; `p̂` is
/// returned for completeness.)
pub fn residual(p_hat: &[f32], q: &[f32]) -> Vec<f32> {
    let mut r: Vec<f32> = p_hat
        .iter()
        .zip(q)
        .map(|(&p, &q)| (p - q).max(0.0))
        .collect();
    let sum: f32 = r.iter().sum();
    if sum <= 0.0 {
        return p_hat.to_vec();
    }
    r.iter_mut().for_each(|x| *x /= sum);
    r
}

/// Draws an index from `probs` with the uniform draw `u` (inverse CDF).
pub fn sample(probs: &[f32], u: f64) -> usize {
    let mut acc = 0.0f64;
    let mut last_nonzero = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            acc += f64::from(p);
            last_nonzero = i;
            if u < acc {
                return i;
            }
        }
    }
    last_nonzero
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A residual rule: (p̂, q) -> the distribution sampled after a rejection.
    type ResidualFn<'a> = &'a dyn Fn(&[f32], &[f32]) -> Vec<f32>;

    /// One speculative step: draft from q, accept or take the residual. Returns the token.
    fn spec_step(
        p_hat: &[f32],
        q: &[f32],
        rng: &mut impl Rng,
        residual_of: ResidualFn<'_>,
    ) -> usize {
        let d = sample(q, rng.random());
        if accept(p_hat, q, d, rng.random()) {
            d
        } else {
            sample(&residual_of(p_hat, q), rng.random())
        }
    }

    /// Pearson's chi-square statistic of `counts` against `expected` probabilities.
    pub(crate) fn chi_square(counts: &[u64], expected: &[f32]) -> f64 {
        let n: u64 = counts.iter().sum();
        counts
            .iter()
            .zip(expected)
            .filter(|(_, e)| **e > 0.0)
            .map(|(&c, &e)| {
                let exp = n as f64 * f64::from(e);
                (c as f64 - exp).powi(2) / exp
            })
            .sum()
    }

    const Z_TARGET: [f32; 6] = [2.0, 1.5, 0.3, -0.5, 1.0, -2.0];
    const Z_DRAFT: [f32; 6] = [0.5, 2.2, 1.0, 0.0, -1.0, 0.2];
    /// 99.9th percentile of chi-square with 5 degrees of freedom.
    const CHI2_5_999: f64 = 20.515;

    fn histogram(p_hat: &[f32], q: &[f32], seed: u64, residual_of: ResidualFn<'_>) -> Vec<u64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut counts = vec![0u64; p_hat.len()];
        for _ in 0..200_000 {
            counts[spec_step(p_hat, q, &mut rng, residual_of)] += 1;
        }
        counts
    }

    #[test]
    fn with_eta_zero_speculative_sampling_outputs_exactly_p() {
        let q = softmax(&Z_DRAFT, 0.8);
        let p = target_distribution(&Z_TARGET, 0.8, Some(&q), 0.0);
        assert_eq!(p, softmax(&Z_TARGET, 0.8));
        let counts = histogram(&p, &q, 7, &residual);
        let chi = chi_square(&counts, &p);
        assert!(
            chi < CHI2_5_999,
            "chi-square {chi:.1} against p: {counts:?}"
        );
        // The test has power: the drafter's own distribution is rejected.
        assert!(chi_square(&counts, &q) > 1000.0);
    }

    #[test]
    fn with_eta_positive_the_output_is_p_hat_and_p_hat_moves_toward_q() {
        let q = softmax(&Z_DRAFT, 1.0);
        let p = softmax(&Z_TARGET, 1.0);
        let p_hat = target_distribution(&Z_TARGET, 1.0, Some(&q), 2.0);
        // Token 1 is the drafter's favourite: its probability rises; sums stay 1.
        assert!(p_hat[1] > p[1]);
        assert!((p_hat.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        let counts = histogram(&p_hat, &q, 11, &residual);
        let chi = chi_square(&counts, &p_hat);
        assert!(
            chi < CHI2_5_999,
            "chi-square {chi:.1} against p̂: {counts:?}"
        );
        assert!(chi_square(&counts, &p) > 100.0, "and not p");
        // A residual taken against the wrong distribution is detected (the test can fail).
        let wrong = |_: &[f32], q: &[f32]| residual(&p, q);
        let biased = histogram(&p_hat, &q, 11, &wrong);
        assert!(chi_square(&biased, &p_hat) > CHI2_5_999);
    }

    #[test]
    fn tail_protection_leaves_tokens_the_drafter_finds_unlikely_unshifted() {
        let q = [0.65f32, 0.30, 0.03, 0.02];
        let z = [0.0f32, 0.0, 0.0, 0.0];
        let shifted = target_distribution(&z, 1.0, Some(&q), 1.0);
        // Tokens 2 and 3 are below 0.1 * max q: same logit, so same probability.
        assert!((shifted[2] - shifted[3]).abs() < 1e-7);
        assert!(shifted[0] > shifted[1] && shifted[1] > shifted[2]);
    }

    #[test]
    fn argmax_margin_top_p_and_sample_basics() {
        assert_eq!(argmax_margin(&[0.1, 3.0, 2.5]), (1, 0.5));
        assert_eq!(argmax_margin(&[2.0]), (0, f32::INFINITY));
        // Against a plain scan, on sizes around the lane width and a vocabulary's, with ties.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for n in (1..70).chain([49_152, 49_153]) {
            let z: Vec<f32> = (0..n)
                .map(|_| f32::from(rng.random_range(0u8..40)) / 4.0)
                .collect();
            let (mut best, mut t1, mut t2) = (0, f32::NEG_INFINITY, f32::NEG_INFINITY);
            for (i, &x) in z.iter().enumerate() {
                if x > t1 {
                    (best, t2, t1) = (i, t1, x);
                } else if x > t2 {
                    t2 = x;
                }
            }
            let margin = if t2.is_finite() {
                t1 - t2
            } else {
                f32::INFINITY
            };
            assert_eq!(argmax_margin(&z), (best, margin), "n = {n}");
        }
        let z = [1.0f32, 3.0, 2.5, -40.0, 0.0];
        let exact = softmax(&z, 1.0).into_iter().fold(0.0f32, f32::max);
        assert!((max_prob(&z) - exact).abs() < 1e-6);
        let mut p = vec![0.5, 0.3, 0.15, 0.05];
        top_p(&mut p, 0.8);
        assert_eq!(p[2], 0.0);
        assert!((p[0] - 0.625).abs() < 1e-6);
        assert_eq!(sample(&[0.0, 1.0, 0.0], 0.99), 1);
        assert_eq!(sample(&[0.2, 0.8], 0.1), 0);
    }
}
