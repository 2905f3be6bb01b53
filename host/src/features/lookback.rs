//! Bucketed look-back series for one key.
//!
//! Event time is cut into buckets of `window / 60`; a series keeps one small
//! record per non-empty bucket, so a key that pays twice in ten minutes
//! costs two records, not sixty. The window at an event in bucket `i` is
//! buckets `i - span + 1 ..= i`: its edge moves in bucket steps. Updating
//! and reading never rescan raw events.

use serde::{Deserialize, Serialize};
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
        Self {
            count: 0,
            sum: 0,
            min: i64::MAX,
            max: i64::MIN,
        }
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
    buckets: VecDeque<NumBucket>,
}

impl NumSeries {
    /// Adds an amount in bucket `idx`; drops buckets that left a window of
    /// `span` buckets ending at the newest bucket. An event older than that
    /// window is not recorded.
    pub fn add(&mut self, idx: i64, amount: i64, span: i64) {
        let newest = self.buckets.back().map_or(idx, |b| b.idx.max(idx));
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
            Err(i) => self.buckets.insert(
                i,
                NumBucket {
                    idx,
                    count: 1,
                    sum: amount,
                    min: amount,
                    max: amount,
                },
            ),
        }
        while self.buckets.front().is_some_and(|b| b.idx <= newest - span) {
            self.buckets.pop_front();
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

    /// The newest bucket index, if any.
    pub fn newest(&self) -> Option<i64> {
        self.buckets.back().map(|b| b.idx)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Distinct values (as 64-bit hashes) with the newest bucket each was seen in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DistinctSeries {
    seen: Vec<(u64, i64)>,
    newest: i64,
}

impl DistinctSeries {
    /// Records `value` seen in bucket `idx`, forgetting values last seen
    /// before a window of `span` buckets ending at the newest bucket.
    pub fn add(&mut self, idx: i64, value: u64, span: i64) {
        if self.seen.is_empty() {
            self.newest = idx;
        }
        self.newest = self.newest.max(idx);
        if idx <= self.newest - span {
            return;
        }
        match self.seen.iter_mut().find(|(v, _)| *v == value) {
            Some((_, last)) => *last = (*last).max(idx),
            None => self.seen.push((value, idx)),
        }
        let cutoff = self.newest - span;
        self.seen.retain(|(_, last)| *last > cutoff);
    }

    /// Distinct values seen in buckets after `idx - span` (values seen
    /// only after `idx`, possible for out-of-order events, count too).
    pub fn count(&self, idx: i64, span: i64) -> u64 {
        self.seen
            .iter()
            .filter(|(_, last)| *last > idx - span)
            .count() as u64
    }

    /// The newest bucket index, if any.
    pub fn newest(&self) -> Option<i64> {
        (!self.seen.is_empty()).then_some(self.newest)
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
    fn events_older_than_the_window_are_not_recorded() {
        let mut s = NumSeries::default();
        s.add(100, 5, 10);
        s.add(90, 7, 10);
        s.add(91, 9, 10);
        assert_eq!(
            s.totals(100, 10),
            Totals {
                count: 2,
                sum: 14,
                min: 5,
                max: 9
            }
        );
    }
}
