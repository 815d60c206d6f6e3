//! A latency histogram with constant relative precision (log-linear buckets, like
//! HdrHistogram): exact below 128 ns, then 64 buckets per power of two, so any percentile is
//! within 1.6 % of the true value. Recording is an index computation and an increment.
//!
//! [`Histogram`] is a thread's own (the benchmark merges one per load thread);
//! [`SharedHistogram`] is written by one thread while others read it (a queue's request
//! latencies, read by the control socket).

use std::sync::atomic::{AtomicU64, Ordering};

use super::bump;

const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: u64 = 1 << SUB_BUCKET_BITS;
/// Enough buckets for any u64 value.
const BUCKETS: usize = (64 - SUB_BUCKET_BITS as usize + 1) << SUB_BUCKET_BITS;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u128,
    max: u64,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            max: 0,
        }
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "a bucket index is below BUCKETS (960)"
)]
fn bucket_of(v: u64) -> usize {
    if v < 2 * SUB_BUCKETS {
        return v as usize;
    }
    let shift = 63 - v.leading_zeros() - SUB_BUCKET_BITS;
    (u64::from(shift) * SUB_BUCKETS + (v >> shift)) as usize
}

/// The range of values `[low, high]` that land in bucket `b`.
fn bucket_range(b: usize) -> (u64, u64) {
    let b = b as u64;
    if b < 2 * SUB_BUCKETS {
        return (b, b);
    }
    let shift = b / SUB_BUCKETS - 1;
    let low = (b - shift * SUB_BUCKETS) << shift;
    (low, low + (1 << shift) - 1)
}

/// A histogram one thread records into while others take snapshots.
pub struct SharedHistogram {
    counts: Box<[AtomicU64]>,
    /// Saturating: a sum of nanoseconds overflows only after centuries of requests.
    sum: AtomicU64,
    max: AtomicU64,
}

impl Default for SharedHistogram {
    fn default() -> Self {
        SharedHistogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl SharedHistogram {
    /// Records `value`. Only one thread may record into a histogram.
    pub fn record(&self, value: u64) {
        bump(&self.counts[bucket_of(value)], 1);
        bump(&self.sum, value);
        if value > self.max.load(Ordering::Relaxed) {
            self.max.store(value, Ordering::Relaxed);
        }
    }

    /// What was recorded so far (a recording in progress may be half in it).
    pub fn snapshot(&self) -> Histogram {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        Histogram {
            total: counts.iter().sum(),
            counts,
            sum: u128::from(self.sum.load(Ordering::Relaxed)),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[bucket_of(value)] += 1;
        self.total += 1;
        self.sum += u128::from(value);
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// How many recorded values are at most `value` (to the bucket holding it: within the
    /// histogram's precision).
    pub fn count_below(&self, value: u64) -> u64 {
        self.counts[..=bucket_of(value)].iter().sum()
    }

    /// The value below which `p` percent of the recorded values fall (the midpoint of the
    /// bucket holding that rank, never more than the maximum seen).
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "the rank is clamped to 1..=total before the cast"
    )]
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64)
            .ceil()
            .clamp(1.0, self.total as f64) as u64;
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (low, high) = bucket_range(b);
                return (low + (high - low) / 2).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_histogram_snapshots_what_was_recorded() {
        let shared = SharedHistogram::default();
        for v in [100, 200, 300, 10_000] {
            shared.record(v);
        }
        let h = shared.snapshot();
        assert_eq!(h.count(), 4);
        assert_eq!(h.max(), 10_000);
        assert_eq!(h.percentile(50.0), 200);
        assert!((h.mean() - 2650.0).abs() < 1e-9);
    }

    #[test]
    fn buckets_tile_the_number_line() {
        let mut expected_low = 0;
        for b in 0..bucket_of(u64::MAX) {
            let (low, high) = bucket_range(b);
            assert_eq!(low, expected_low, "bucket {b}");
            assert!(high >= low);
            assert_eq!(bucket_of(low), b);
            assert_eq!(bucket_of(high), b);
            expected_low = high + 1;
        }
        assert!(bucket_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.percentile(100.0), 100);
        assert_eq!(h.mean(), 50.5);
    }

    #[test]
    fn percentiles_are_within_two_percent() {
        let mut h = Histogram::default();
        // 1 µs .. 10 ms, uniformly.
        let values: Vec<u64> = (0..100_000u64).map(|i| 1_000 + i * 100).collect();
        for &v in &values {
            h.record(v);
        }
        for (p, rank) in [
            (50.0, 50_000),
            (90.0, 90_000),
            (99.0, 99_000),
            (99.9, 99_900),
        ] {
            let exact = values[rank - 1] as f64;
            let got = h.percentile(p) as f64;
            assert!((got - exact).abs() / exact < 0.02, "p{p}: {got} vs {exact}");
        }
        assert_eq!(h.max(), *values.last().unwrap());
    }

    #[test]
    fn merging_adds_counts() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        (0..10).for_each(|_| a.record(1_000));
        (0..30).for_each(|_| b.record(1_000_000));
        a.merge(&b);
        assert_eq!(a.count(), 40);
        assert!(a.percentile(20.0) < 1_100);
        assert!(a.percentile(50.0) > 900_000);
        assert_eq!(a.max(), 1_000_000);
    }

    #[test]
    fn empty_histogram_reports_zero() {
        let h = Histogram::default();
        assert_eq!((h.count(), h.percentile(99.0), h.mean()), (0, 0, 0.0));
    }
}
