//! Counters the admin listener exposes ([`crate::admin`]), kept where the
//! work happens without slowing it: the pipeline adds to them once per
//! batch, never per event per rule.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets of a latency [`Histogram`], in ns.
pub type Bounds = &'static [u64];

/// A rule's time per event: 100 ns to 10 ms.
pub const RULE_NS: Bounds =
    &[100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 10_000_000];

/// An event's time from intake to its decision: 100 µs to 10 s.
pub const BATCH_NS: Bounds = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
];

/// Most buckets a histogram has (the longest [`Bounds`], and `+Inf`).
const MAX_BUCKETS: usize = 16;

/// A latency histogram in ns, added to from several threads: a bucket
/// count per bound (not cumulative) and one past the last.
#[derive(Debug)]
pub struct Histogram {
    bounds: Bounds,
    buckets: [AtomicU64; MAX_BUCKETS],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these bucket bounds (at most 15).
    pub fn new(bounds: Bounds) -> Self {
        assert!(bounds.len() < MAX_BUCKETS, "at most {} bounds", MAX_BUCKETS - 1);
        Self { bounds, buckets: Default::default(), sum_ns: AtomicU64::new(0), count: AtomicU64::new(0) }
    }

    /// Adds `n` observations of `ns` each.
    pub fn observe_n(&self, ns: u64, n: u64) {
        if n == 0 {
            return;
        }
        self.buckets[self.bucket(ns)].fetch_add(n, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds what `other` (with the same bounds) holds.
    pub fn add(&self, other: &Histogram) {
        for (b, o) in self.buckets.iter().zip(&other.buckets) {
            b.fetch_add(o.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(other.sum_ns.load(Ordering::Relaxed), Ordering::Relaxed);
        self.count.fetch_add(other.count.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Adds what `local` holds and empties it.
    pub fn merge(&self, local: &mut Local) {
        if local.count == 0 {
            return;
        }
        for (b, n) in self.buckets.iter().zip(&mut local.buckets) {
            if *n > 0 {
                b.fetch_add(std::mem::take(n), Ordering::Relaxed);
            }
        }
        self.sum_ns.fetch_add(std::mem::take(&mut local.sum_ns), Ordering::Relaxed);
        self.count.fetch_add(std::mem::take(&mut local.count), Ordering::Relaxed);
    }

    fn bucket(&self, ns: u64) -> usize {
        self.bounds.partition_point(|&b| b < ns)
    }

    /// A [`Local`] histogram with the same buckets, for one thread.
    pub fn local(&self) -> Local {
        Local { bounds: self.bounds, buckets: [0; MAX_BUCKETS], sum_ns: 0, count: 0 }
    }

    /// (sum in seconds, count, (upper bound in seconds, count) per bucket,
    /// the last at +Inf): the shape the exposition crate takes, which
    /// makes the counts cumulative itself.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut out = Vec::with_capacity(self.bounds.len() + 1);
        for (i, b) in self.buckets.iter().take(self.bounds.len() + 1).enumerate() {
            let n = b.load(Ordering::Relaxed);
            total += n;
            let le = self.bounds.get(i).map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
            out.push((le, n));
        }
        (self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9, total, out)
    }

    /// The bucket bound in ns at or below which `q` (0–1) of the
    /// observations fall: `None` before any, `u64::MAX` past the last bound.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let (_, count, buckets) = self.snapshot();
        if count == 0 {
            return None;
        }
        let want = (q * count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        let (le, _) = buckets.iter().find(|(_, n)| {
            seen += n;
            seen >= want
        })?;
        Some(if le.is_finite() { (le * 1e9).round() as u64 } else { u64::MAX })
    }
}

/// A histogram one thread adds to without atomics, merged into a shared
/// [`Histogram`] once per batch.
#[derive(Debug, Clone)]
pub struct Local {
    bounds: Bounds,
    buckets: [u64; MAX_BUCKETS],
    sum_ns: u64,
    count: u64,
}

impl Local {
    /// Adds one observation.
    pub fn observe(&mut self, ns: u64) {
        self.buckets[self.bounds.partition_point(|&b| b < ns)] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_their_own_observations_and_end_at_infinity() {
        let h = Histogram::new(&[10, 100]);
        h.observe_n(5, 2);
        h.observe_n(10, 1);
        h.observe_n(50, 1);
        h.observe_n(1_000, 1);
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 5);
        assert!((sum - 1_070e-9).abs() < 1e-12, "{sum}");
        assert_eq!(buckets, vec![(10e-9, 3), (100e-9, 1), (f64::INFINITY, 1)]);
        assert_eq!(h.quantile_ns(0.5), Some(10));
        assert_eq!(h.quantile_ns(0.8), Some(100));
        assert_eq!(h.quantile_ns(0.99), Some(u64::MAX));
    }

    #[test]
    fn a_local_histogram_merges_and_empties() {
        let h = Histogram::new(RULE_NS);
        let mut l = h.local();
        l.observe(120);
        l.observe(20_000_000);
        h.merge(&mut l);
        h.merge(&mut l);
        let (_, count, buckets) = h.snapshot();
        assert_eq!(count, 2);
        assert_eq!(buckets[1].1, 1, "120 ns is in the 250 ns bucket");
        assert_eq!(buckets.last().map(|b| b.1), Some(1), "20 ms is past the last bound");
    }
}
