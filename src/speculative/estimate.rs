//! Running estimates of what decoding costs, shared by the drafting policy and the fixed shapes:
//! a decayed mean, and the recent samples of one quantity with their median and least.

/// Old observations fade: each new one multiplies the weight of the earlier ones by this.
pub const DECAY: f64 = 0.95;

/// A decayed running mean.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mean {
    value: f64,
    n: f64,
}

impl Mean {
    pub fn record(&mut self, x: f64) {
        // One slow outlier (a GPU's first batch of a new shape, a busy machine) must not decide
        // for long: it counts as at most three times the current value.
        let x = if self.n > 0.0 {
            x.min(3.0 * self.value)
        } else {
            x
        };
        self.n = self.n * DECAY + 1.0;
        self.value += (x - self.value) / self.n;
    }

    pub fn get(&self) -> Option<f64> {
        (self.n > 0.0).then_some(self.value)
    }
}

/// The last few times of one batch size: their median is its estimate (one slow batch, a GPU's
/// first of a new shape or a busy machine's, does not decide), their least what it costs when
/// nothing else takes the machine.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    recent: std::collections::VecDeque<f64>,
    /// The median of `recent`, kept as they change: the policy reads it many times a round.
    median: Option<f64>,
}

/// Times kept per batch size.
const SAMPLES: usize = 9;

impl Samples {
    pub fn record(&mut self, t: f64) {
        if self.recent.len() == SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(t);
        let mut v = [0.0; SAMPLES];
        for (slot, &t) in v.iter_mut().zip(&self.recent) {
            *slot = t;
        }
        self.median = super::median(&mut v[..self.recent.len()]);
    }

    pub fn median(&self) -> Option<f64> {
        self.median
    }

    pub fn least(&self) -> Option<f64> {
        self.recent.iter().copied().reduce(f64::min)
    }

    pub fn measured(&self) -> bool {
        !self.recent.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mean_fades_and_clips_an_outlier() {
        let mut m = Mean::default();
        assert_eq!(m.get(), None);
        m.record(10.0);
        m.record(100.0);
        let v = m.get().unwrap();
        assert!(
            (v - (10.0 + 20.0 / 1.95)).abs() < 1e-9,
            "{v}: the outlier counts as 30"
        );
    }

    #[test]
    fn samples_keep_the_recent_ones() {
        let mut s = Samples::default();
        for t in [5.0, 1.0, 3.0] {
            s.record(t);
        }
        assert_eq!(s.median(), Some(3.0));
        assert_eq!(s.least(), Some(1.0));
        for _ in 0..SAMPLES {
            s.record(2.0);
        }
        assert_eq!(s.least(), Some(2.0), "the old ones are gone");
    }
}
