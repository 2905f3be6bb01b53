//! Bucketed look-back series for one key.
//!
//! Event time is cut into buckets of `window / 60`; a series keeps one small
//! record per non-empty bucket, so a key that pays twice in ten minutes
//! costs two records, not sixty. The window at an event in bucket `i` is
//! buckets `i - span + 1 ..= i`: its edge moves in bucket steps. Updating
//! and reading never rescan raw events.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::VecDeque;

/// Count, sum, min and max of amounts over a range of buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Number of events.
    pub count: u64,
    /// Sum of amounts.
    pub sum: i64,
    /// Smallest amount (`i64::MAX` when empty).
    pub min: i64,
    /// Largest amount (`i64::MIN` when empty).
    pub max: i64,
}

impl Default for Totals {
    fn default() -> Self {
        Self { count: 0, sum: 0, min: i64::MAX, max: i64::MIN }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct NumBucket {
    idx: i64,
    count: u32,
    sum: i64,
    min: i64,
    max: i64,
}

/// Amounts per bucket, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumSeries {
    // Inline for the common key with one bucket in its window: no heap.
    buckets: SmallVec<[NumBucket; 1]>,
}

impl NumSeries {
    /// Adds an amount in bucket `idx`; drops buckets that left a window of
    /// `span` buckets ending at the newest bucket. An event older than that
    /// window is not recorded.
    pub fn add(&mut self, idx: i64, amount: i64, span: i64) {
        let newest = self.buckets.last().map_or(idx, |b| b.idx.max(idx));
        if idx <= newest - span {
            return;
        }
        match self.buckets.binary_search_by_key(&idx, |b| b.idx) {
            Ok(i) => {
                let b = &mut self.buckets[i];
                b.count = b.count.saturating_add(1);
                b.sum = b.sum.saturating_add(amount);
                b.min = b.min.min(amount);
                b.max = b.max.max(amount);
            }
            Err(i) => {
                // Most keys hold one or two buckets: grow exactly, not by doubling.
                self.buckets.reserve_exact(1);
                self.buckets.insert(i, NumBucket { idx, count: 1, sum: amount, min: amount, max: amount });
            }
        }
        let stale = self.buckets.iter().take_while(|b| b.idx <= newest - span).count();
        if stale > 0 {
            self.buckets.drain(..stale);
        }
    }

    /// Totals over buckets `idx - span + 1 ..= idx`.
    pub fn totals(&self, idx: i64, span: i64) -> Totals {
        let mut t = Totals::default();
        for b in self.buckets.iter().rev() {
            if b.idx > idx {
                continue;
            }
            if b.idx <= idx - span {
                break;
            }
            t.count += u64::from(b.count);
            t.sum = t.sum.saturating_add(b.sum);
            t.min = t.min.min(b.min);
            t.max = t.max.max(b.max);
        }
        t
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Distinct values up to which counts are exact; beyond, a sketch.
pub const EXACT_DISTINCT: usize = 256;

/// HyperLogLog registers per bucket (2^8: about 6.5% standard error).
const REGISTERS: usize = 256;

/// Distinct values per key over the window: exact (value hash and newest
/// bucket seen) for up to [`EXACT_DISTINCT`] values, then one HyperLogLog
/// sketch per bucket, merged over the window's buckets when read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DistinctSeries {
    /// Every value with the newest bucket it was seen in.
    Exact {
        /// (value hash, newest bucket).
        seen: SmallVec<[(u64, i64); 1]>,
        /// The newest bucket.
        newest: i64,
    },
    /// Registers per bucket, oldest first.
    Sketch {
        /// (bucket, registers).
        buckets: VecDeque<(i64, Vec<u8>)>,
    },
}

impl Default for DistinctSeries {
    fn default() -> Self {
        DistinctSeries::Exact { seen: SmallVec::new(), newest: i64::MIN }
    }
}

fn hll_add(registers: &mut [u8], value: u64) {
    // xxh3 output is well mixed; the low bits pick the register, the rest
    // give the rank.
    let index = (value as usize) & (REGISTERS - 1);
    let rest = value >> 8;
    let rank = (rest.trailing_zeros().min(56) + 1) as u8;
    registers[index] = registers[index].max(rank);
}

fn hll_estimate(registers: &[u8]) -> f64 {
    let m = REGISTERS as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = registers.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
    let estimate = alpha * m * m / sum;
    let zeros = registers.iter().filter(|&&r| r == 0).count();
    if estimate <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { estimate }
}

impl DistinctSeries {
    /// Records `value` seen in bucket `idx`, forgetting what left a window
    /// of `span` buckets ending at the newest bucket.
    pub fn add(&mut self, idx: i64, value: u64, span: i64) {
        match self {
            DistinctSeries::Exact { seen, newest } => {
                *newest = (*newest).max(idx);
                if idx <= *newest - span {
                    return;
                }
                match seen.iter_mut().find(|(v, _)| *v == value) {
                    Some((_, last)) => *last = (*last).max(idx),
                    None => {
                        seen.reserve_exact(1);
                        seen.push((value, idx));
                    }
                }
                let cutoff = *newest - span;
                seen.retain(|(_, last)| *last > cutoff);
                if seen.len() > EXACT_DISTINCT {
                    let mut sketch = DistinctSeries::Sketch { buckets: VecDeque::new() };
                    for &(v, last) in seen.iter() {
                        sketch.add(last, v, span);
                    }
                    *self = sketch;
                }
            }
            DistinctSeries::Sketch { buckets } => {
                let newest = buckets.back().map_or(idx, |b| b.0.max(idx));
                if idx <= newest - span {
                    return;
                }
                let at = match buckets.binary_search_by_key(&idx, |b| b.0) {
                    Ok(i) => i,
                    Err(i) => {
                        buckets.insert(i, (idx, vec![0; REGISTERS]));
                        i
                    }
                };
                hll_add(&mut buckets[at].1, value);
                while buckets.front().is_some_and(|b| b.0 <= newest - span) {
                    buckets.pop_front();
                }
            }
        }
    }

    /// Distinct values seen in buckets after `idx - span` (values seen
    /// only after `idx`, possible for out-of-order events, count too).
    pub fn count(&self, idx: i64, span: i64) -> u64 {
        match self {
            DistinctSeries::Exact { seen, .. } => seen.iter().filter(|(_, last)| *last > idx - span).count() as u64,
            DistinctSeries::Sketch { buckets } => {
                let mut merged = [0u8; REGISTERS];
                for (_, registers) in buckets.iter().filter(|b| b.0 > idx - span) {
                    for (m, r) in merged.iter_mut().zip(registers) {
                        *m = (*m).max(*r);
                    }
                }
                hll_estimate(&merged).round() as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    proptest! {
        /// In event-time order, the series agree with a model that keeps
        /// every raw event and rescans it.
        #[test]
        fn numeric_series_match_a_rescan(
            events in proptest::collection::vec((0i64..40, 0i64..10_000), 1..300),
            span in 1i64..12,
        ) {
            let mut series = NumSeries::default();
            let mut raw: Vec<(i64, i64)> = Vec::new();
            let mut idx = 0;
            for (step, amount) in events {
                idx += step / 10;
                series.add(idx, amount, span);
                raw.push((idx, amount));
                let window: Vec<i64> = raw.iter().filter(|(i, _)| *i > idx - span && *i <= idx).map(|(_, a)| *a).collect();
                let t = series.totals(idx, span);
                prop_assert_eq!(t.count, window.len() as u64);
                prop_assert_eq!(t.sum, window.iter().sum::<i64>());
                prop_assert_eq!(t.min, window.iter().copied().min().unwrap_or(i64::MAX));
                prop_assert_eq!(t.max, window.iter().copied().max().unwrap_or(i64::MIN));
                prop_assert!(series.buckets.len() as i64 <= span, "memory stays within the window");
            }
        }

        #[test]
        fn distinct_series_match_a_rescan(
            events in proptest::collection::vec((0i64..30, 0u64..8), 1..300),
            span in 1i64..12,
        ) {
            let mut series = DistinctSeries::default();
            let mut raw: Vec<(i64, u64)> = Vec::new();
            let mut idx = 0;
            for (step, value) in events {
                idx += step / 10;
                series.add(idx, value, span);
                raw.push((idx, value));
                let window: HashSet<u64> = raw.iter().filter(|(i, _)| *i > idx - span).map(|(_, v)| *v).collect();
                prop_assert_eq!(series.count(idx, span), window.len() as u64);
            }
        }

        /// Out-of-order events within the window land in their own bucket.
        #[test]
        fn late_events_within_the_window_are_counted(
            idxs in proptest::collection::vec(0i64..20, 1..100),
        ) {
            let span = 30;
            let mut series = NumSeries::default();
            for &i in &idxs {
                series.add(i, 1, span);
            }
            let newest = *idxs.iter().max().unwrap_or(&0);
            prop_assert_eq!(series.totals(newest, span).count, idxs.len() as u64);
        }
    }

    #[test]
    fn large_distinct_counts_switch_to_a_sketch_within_its_error() {
        use xxhash_rust::xxh3::xxh3_64;
        let mut s = DistinctSeries::default();
        for i in 0..20_000u64 {
            s.add(i as i64 / 1_000, xxh3_64(&i.to_le_bytes()), 60);
        }
        assert!(matches!(s, DistinctSeries::Sketch { .. }));
        let n = s.count(19, 60) as f64;
        assert!((n - 20_000.0).abs() / 20_000.0 < 0.15, "estimate {n}");
        // Ten buckets later the first ten thousand values have left a
        // ten-bucket window.
        let n = s.count(19, 10) as f64;
        assert!((n - 10_000.0).abs() / 10_000.0 < 0.15, "estimate {n}");
    }

    #[test]
    fn events_older_than_the_window_are_not_recorded() {
        let mut s = NumSeries::default();
        s.add(100, 5, 10);
        s.add(90, 7, 10);
        s.add(91, 9, 10);
        assert_eq!(s.totals(100, 10), Totals { count: 2, sum: 14, min: 5, max: 9 });
    }
}
