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
    /// Not a distinct count: the times of a key's latest events, for the
    /// recency features (`since_last`, `first_seen`). Kept in this slot so a
    /// key pays for recency only when a feature reads it.
    Recent(Recency),
}

/// When a key's events happened, as far as recency needs: milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recency {
    /// The newest event time.
    pub newest: i64,
    /// The newest time before it (`i64::MIN`: none).
    pub before: i64,
    /// The first time seen.
    pub first: i64,
    /// For the event added last: the time since the event before it
    /// (`i64::MIN`: none).
    pub gap: i64,
}

impl Recency {
    fn new(t: i64) -> Self {
        Recency { newest: t, before: i64::MIN, first: t, gap: i64::MIN }
    }

    /// The time from the latest event at or before `t` that is not the
    /// event itself, as far as the two newest times tell: exact for events
    /// in order, and for an event later than one newer event.
    fn gap_to(&self, t: i64) -> Option<i64> {
        if t >= self.newest {
            Some(t - self.newest)
        } else if self.before != i64::MIN && t >= self.before {
            Some(t - self.before)
        } else {
            None
        }
    }
}

impl DistinctSeries {
    /// Adds an event at `t` (ms) to a recency series, first making the
    /// slot one; the gap to the event before it is kept for
    /// [`DistinctSeries::since_last`]. A series whose newest event is
    /// before `cutoff` starts again, as if its key had expired (whether the
    /// sweep got to it yet or not, so values do not depend on when it does).
    pub fn seen_at(&mut self, t: i64, cutoff: i64) {
        let DistinctSeries::Recent(r) = self else {
            *self = DistinctSeries::Recent(Recency::new(t));
            return;
        };
        if r.newest < cutoff {
            *r = Recency::new(t);
            return;
        }
        r.gap = r.gap_to(t).unwrap_or(i64::MIN);
        if t >= r.newest {
            r.before = r.newest;
            r.newest = t;
        } else if t > r.before {
            r.before = t;
        }
        r.first = r.first.min(t);
    }

    /// Milliseconds from the key's previous event to one at `t`: for an
    /// event just added ([`DistinctSeries::seen_at`], `added`), to the
    /// event before it; for another, to the latest one before it.
    pub fn since_last(&self, t: i64, added: bool, cutoff: i64) -> Option<i64> {
        let DistinctSeries::Recent(r) = self else { return None };
        if !added && r.newest < cutoff {
            return None;
        }
        match added {
            true => (r.gap != i64::MIN).then_some(r.gap),
            false => r.gap_to(t),
        }
    }

    /// The first event time of a recency series whose newest event is not
    /// before `cutoff`.
    pub fn first_seen(&self, cutoff: i64) -> Option<i64> {
        match self {
            DistinctSeries::Recent(r) if r.newest >= cutoff => Some(r.first),
            _ => None,
        }
    }
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
            // Recency is kept through `seen_at`.
            DistinctSeries::Recent(_) => {}
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
            DistinctSeries::Recent(_) => 0,
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
    fn recency_gives_the_time_since_the_previous_event_in_order_and_one_late() {
        let mut s = DistinctSeries::default();
        s.seen_at(1_000, 0);
        assert_eq!((s.since_last(1_000, true, 0), s.first_seen(0)), (None, Some(1_000)), "the first event has none");
        s.seen_at(4_000, 0);
        assert_eq!(s.since_last(4_000, true, 0), Some(3_000));
        assert_eq!(s.since_last(9_000, false, 0), Some(5_000), "an event not added: to the newest");
        s.seen_at(3_500, 0);
        assert_eq!(s.since_last(3_500, true, 0), Some(2_500), "late, after 1000: to it");
        s.seen_at(5_000, 0);
        assert_eq!(s.since_last(5_000, true, 0), Some(1_000));
        assert_eq!(s.first_seen(0), Some(1_000));
        assert_eq!(s.first_seen(5_001), None, "idle past the cutoff: as if expired");
        s.seen_at(500, 0);
        assert_eq!((s.since_last(500, true, 0), s.first_seen(0)), (None, Some(500)));
        s.seen_at(90_000, 60_000);
        assert_eq!((s.since_last(90_000, true, 60_000), s.first_seen(60_000)), (None, Some(90_000)), "starts again");
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
