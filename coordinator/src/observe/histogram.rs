//! `Histogram`: counts of observations per bucket, their sum and their number, for a latency metric.
//!
//! Owns the arithmetic only (no locking, no formatting). Must never lose an observation: a value above
//! every bound still counts (in `+Inf`, which is the total count).

/// Request latency bounds in seconds: from a millisecond (a cached read) to ten seconds (a write that
/// waited for an election).
pub const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram with fixed upper bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative): `counts[i]` holds values in `(bounds[i-1], bounds[i]]`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram; `bounds` must be increasing.
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    pub fn bounds(&self) -> &[f64] {
        self.bounds
    }

    /// Observations per bucket, not cumulative.
    pub fn bucket_counts(&self) -> &[u64] {
        &self.counts
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_on_a_bound_falls_in_that_bucket_and_above_all_in_none() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(1.0);
        h.observe(2.5);
        assert_eq!(h.bucket_counts(), &[1, 0]);
        assert_eq!(h.count(), 2);
        assert_eq!(h.sum(), 3.5);
    }
}
