//! Look-back series for one key.
//!
//! A window over `W` at an event at time `t` covers exactly the key's
//! events with a time in `(t − W, t]`, to the millisecond; events later
//! than `t` that arrived before it are left out, as SQL `RANGE … PRECEDING`
//! windows do. A series keeps each event (time and amount, 16 bytes) while
//! it can still be in a window — for [`LATE_MS`] past it, so an event that
//! comes up to that late still sees its whole window. A series of a few
//! events reads a window by walking them; past [`sliding::SMALL`] it keeps
//! the totals of its latest window and moves them as events come
//! ([`sliding`]), so an event in time order costs the same however busy its
//! key. A key with more than [`EXACT_EVENTS`] events kept switches to
//! buckets of `W / 60` (one record per non-empty bucket, whose window edge
//! moves in bucket steps), so a busy key's memory stays bounded.

use super::sliding::{self, Amounts, Sightings, Sliding};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::VecDeque;

/// How late an event may come and still see its whole window exactly:
/// events are kept this long past their window.
pub const LATE_MS: i64 = 10 * 60_000;

/// How much a busy key's series keeps exactly (`[state] exact-events`,
/// `exact-sightings`); beyond, buckets or a sketch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Events a numeric series keeps exactly (16 bytes each).
    pub events: usize,
    /// Sightings a distinct series keeps exactly (16 bytes each, and a
    /// counter per value in the window).
    pub sightings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { events: EXACT_EVENTS, sightings: EXACT_DISTINCT }
    }
}

impl From<&crate::config::StateConfig> for Limits {
    fn from(c: &crate::config::StateConfig) -> Self {
        Limits { events: c.exact_events, sightings: c.exact_sightings }
    }
}

/// Events a numeric series keeps exactly by default (16 bytes each:
/// 1 MiB); beyond, buckets.
pub const EXACT_EVENTS: usize = crate::config::DEFAULT_EXACT_EVENTS;

/// Adds `item`, at time `t`, to `kept` (in time order, `time` reading an
/// item's) and forgets the items a window of `span` buckets of `bucket_ms`
/// — and [`LATE_MS`] more — no longer reaches. False when `item` itself is
/// older than that and is not kept.
fn keep_in_time_order<T>(
    kept: &mut SmallVec<[T; 1]>,
    item: T,
    t: i64,
    time: impl Fn(&T) -> i64,
    bucket_ms: i64,
    span: i64,
) -> bool {
    let newest = kept.last().map_or(t, |e| time(e).max(t));
    let keep_after = newest - span * bucket_ms - LATE_MS;
    if t <= keep_after {
        return false;
    }
    // Most come in order: appended. Grown by doubling: a busy key adds
    // items all the time.
    let at = kept.iter().rposition(|e| time(e) <= t).map_or(0, |i| i + 1);
    kept.insert(at, item);
    let stale = kept.iter().take_while(|e| time(e) <= keep_after).count();
    if stale > 0 {
        kept.drain(..stale);
    }
    true
}

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

/// One bucket's amounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumBucket {
    idx: i64,
    count: u32,
    sum: i64,
    min: i64,
    max: i64,
}

/// The events of one key in time order, or, once there are many, their
/// amounts per bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NumSeries {
    /// (time, amount) of each event kept, oldest first. Inline for the
    /// common key with one event: no heap.
    Exact(SmallVec<[(i64, i64); 1]>),
    /// Amounts per bucket, oldest first.
    Buckets(Vec<NumBucket>),
    /// (time, amount) of each event kept, with the totals of the latest
    /// window: a busy key's, past [`sliding::SMALL`] events.
    Sliding(Box<Sliding<Amounts>>),
}

impl Default for NumSeries {
    fn default() -> Self {
        NumSeries::Exact(SmallVec::new())
    }
}

impl NumSeries {
    /// Adds an amount at `t` (ms) to a series of windows of `span` buckets
    /// of `bucket_ms`; forgets what no window can need any more. An event
    /// older than that is not recorded. Past `limit` events kept, buckets.
    pub fn add(&mut self, t: i64, amount: i64, bucket_ms: i64, span: i64, limit: usize) {
        match self {
            NumSeries::Exact(events) => {
                if !keep_in_time_order(events, (t, amount), t, |e| e.0, bucket_ms, span) {
                    return;
                }
                if events.len() > limit {
                    let kept = std::mem::take(events);
                    *self = NumSeries::bucketed(kept, bucket_ms, span);
                } else if events.len() > sliding::SMALL {
                    *self = NumSeries::Sliding(Box::new(Sliding::new(events.drain(..))));
                }
            }
            NumSeries::Sliding(events) => {
                if events.add((t, amount), span * bucket_ms + LATE_MS) && events.len() > limit {
                    let kept: Vec<(i64, i64)> = events.items().copied().collect();
                    *self = NumSeries::bucketed(kept, bucket_ms, span);
                }
            }
            NumSeries::Buckets(buckets) => {
                let idx = t.div_euclid(bucket_ms);
                let newest = buckets.last().map_or(idx, |b| b.idx.max(idx));
                if idx <= newest - span {
                    return;
                }
                match buckets.binary_search_by_key(&idx, |b| b.idx) {
                    Ok(i) => {
                        let b = &mut buckets[i];
                        b.count = b.count.saturating_add(1);
                        b.sum = b.sum.saturating_add(amount);
                        b.min = b.min.min(amount);
                        b.max = b.max.max(amount);
                    }
                    Err(i) => buckets.insert(i, NumBucket { idx, count: 1, sum: amount, min: amount, max: amount }),
                }
                let stale = buckets.iter().take_while(|b| b.idx <= newest - span).count();
                if stale > 0 {
                    buckets.drain(..stale);
                }
            }
        }
    }

    /// `events` (time, amount) in buckets.
    fn bucketed(events: impl IntoIterator<Item = (i64, i64)>, bucket_ms: i64, span: i64) -> Self {
        let mut buckets = NumSeries::Buckets(Vec::new());
        for (t, amount) in events {
            buckets.add(t, amount, bucket_ms, span, 0);
        }
        buckets
    }

    /// Totals over the window `(t − window_ms, t]`; in buckets, over the
    /// `span` buckets ending at `t`'s.
    pub fn totals(&mut self, t: i64, window_ms: i64, bucket_ms: i64, span: i64) -> Totals {
        let mut total = Totals::default();
        // Wide, and clamped once: the same window gives the same sum
        // however it is read.
        let mut sum: i128 = 0;
        let mut take = |amount: i128, count: u64, min: i64, max: i64| {
            total.count += count;
            sum += amount;
            total.min = total.min.min(min);
            total.max = total.max.max(max);
        };
        match self {
            NumSeries::Exact(events) => {
                for &(ts, amount) in events.iter().rev() {
                    if ts > t {
                        continue;
                    }
                    if ts <= t - window_ms {
                        break;
                    }
                    take(amount.into(), 1, amount, amount);
                }
            }
            NumSeries::Sliding(events) => match events.running(t, window_ms) {
                Some(a) => take(a.sum, a.count, a.min().unwrap_or(i64::MAX), a.max().unwrap_or(i64::MIN)),
                None => {
                    for &(_, amount) in events.in_window(t, window_ms) {
                        take(amount.into(), 1, amount, amount);
                    }
                }
            },
            NumSeries::Buckets(buckets) => {
                let idx = t.div_euclid(bucket_ms);
                for b in buckets.iter().rev() {
                    if b.idx > idx {
                        continue;
                    }
                    if b.idx <= idx - span {
                        break;
                    }
                    take(b.sum.into(), u64::from(b.count), b.min, b.max);
                }
            }
        }
        total.sum = sum.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        total
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        match self {
            NumSeries::Exact(e) => e.is_empty(),
            NumSeries::Buckets(b) => b.is_empty(),
            NumSeries::Sliding(e) => e.is_empty(),
        }
    }
}

/// Sightings a distinct series keeps exactly by default; beyond, a
/// sketch.
pub const EXACT_DISTINCT: usize = crate::config::DEFAULT_EXACT_SIGHTINGS;

/// HyperLogLog registers per bucket (2^8: about 6.5% standard error).
const REGISTERS: usize = 256;

/// Distinct values per key over the window: exact (each sighting's value
/// hash and time, kept as numeric series keep events) for up to
/// [`EXACT_DISTINCT`] sightings, then one HyperLogLog sketch per bucket of
/// `W / 60`, merged over the window's buckets when read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DistinctSeries {
    /// Every sighting kept, oldest first.
    Exact {
        /// (value hash, time).
        seen: SmallVec<[(u64, i64); 1]>,
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
    /// Every sighting kept, with how often each value is in the latest
    /// window: a busy key's, past [`sliding::SMALL`] sightings.
    Sliding(Box<Sliding<Sightings>>),
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
        DistinctSeries::Exact { seen: SmallVec::new() }
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
    /// Records `value` seen at `t` (ms) in a series of windows of `span`
    /// buckets of `bucket_ms`, forgetting what no window can need any more.
    /// Past `limit` sightings kept, a sketch.
    pub fn add(&mut self, t: i64, value: u64, bucket_ms: i64, span: i64, limit: usize) {
        match self {
            DistinctSeries::Exact { seen } => {
                if !keep_in_time_order(seen, (value, t), t, |s| s.1, bucket_ms, span) {
                    return;
                }
                if seen.len() > limit {
                    let kept = std::mem::take(seen);
                    *self = DistinctSeries::sketched(kept, bucket_ms, span);
                } else if seen.len() > sliding::SMALL {
                    *self = DistinctSeries::Sliding(Box::new(Sliding::new(seen.drain(..))));
                }
            }
            DistinctSeries::Sliding(seen) => {
                if seen.add((value, t), span * bucket_ms + LATE_MS) && seen.len() > limit {
                    let kept: Vec<(u64, i64)> = seen.items().copied().collect();
                    *self = DistinctSeries::sketched(kept, bucket_ms, span);
                }
            }
            // Recency is kept through `seen_at`.
            DistinctSeries::Recent(_) => {}
            DistinctSeries::Sketch { buckets } => {
                let idx = t.div_euclid(bucket_ms);
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

    /// `seen` (value hash, time) in a sketch.
    fn sketched(seen: impl IntoIterator<Item = (u64, i64)>, bucket_ms: i64, span: i64) -> Self {
        let mut sketch = DistinctSeries::Sketch { buckets: VecDeque::new() };
        for (v, t) in seen {
            sketch.add(t, v, bucket_ms, span, 0);
        }
        sketch
    }

    /// Distinct values seen in `(t − window_ms, t]`; in a sketch, in the
    /// `span` buckets ending at `t`'s (values seen only after `t` count
    /// there too).
    pub fn count(&mut self, t: i64, window_ms: i64, bucket_ms: i64, span: i64) -> u64 {
        let distinct = |values: &mut SmallVec<[u64; 16]>| {
            values.sort_unstable();
            values.dedup();
            values.len() as u64
        };
        match self {
            DistinctSeries::Exact { seen } => distinct(
                &mut seen
                    .iter()
                    .rev()
                    .skip_while(|s| s.1 > t)
                    .take_while(|s| s.1 > t - window_ms)
                    .map(|s| s.0)
                    .collect(),
            ),
            DistinctSeries::Sliding(seen) => match seen.running(t, window_ms) {
                Some(s) => s.distinct(),
                None => distinct(&mut seen.in_window(t, window_ms).map(|s| s.0).collect()),
            },
            DistinctSeries::Recent(_) => 0,
            DistinctSeries::Sketch { buckets } => {
                let idx = t.div_euclid(bucket_ms);
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

    /// A window's bucket width and span as a feature spec gives them.
    fn shape(window_ms: i64) -> (i64, i64) {
        let b = (window_ms / 60).max(1);
        (b, (window_ms + b - 1) / b)
    }

    proptest! {
        /// Events in any order up to [`LATE_MS`] late: every read is what
        /// a rescan of every raw event in `(t − W, t]` gives.
        #[test]
        fn numeric_series_are_exact_against_a_rescan(
            events in proptest::collection::vec((0i64..120_000, 0i64..LATE_MS, 0i64..10_000, proptest::bool::ANY), 1..300),
            window_ms in 1i64..3_600_000,
        ) {
            let (bucket_ms, span) = shape(window_ms);
            let mut series = NumSeries::default();
            let mut raw: Vec<(i64, i64)> = Vec::new();
            let mut clock = 0;
            for (step, late, amount, is_late) in events {
                clock += step;
                let t = if is_late { clock - late } else { clock };
                series.add(t, amount, bucket_ms, span, EXACT_EVENTS);
                raw.push((t, amount));
                let window: Vec<i64> = raw.iter().filter(|(ts, _)| *ts > t - window_ms && *ts <= t).map(|(_, a)| *a).collect();
                let got = series.totals(t, window_ms, bucket_ms, span);
                prop_assert_eq!(got.count, window.len() as u64);
                prop_assert_eq!(got.sum, window.iter().sum::<i64>());
                prop_assert_eq!(got.min, window.iter().copied().min().unwrap_or(i64::MAX));
                prop_assert_eq!(got.max, window.iter().copied().max().unwrap_or(i64::MIN));
            }
        }

        #[test]
        fn distinct_series_are_exact_against_a_rescan(
            events in proptest::collection::vec((0i64..120_000, 0i64..LATE_MS, 0u64..8, proptest::bool::ANY), 1..300),
            window_ms in 1i64..3_600_000,
        ) {
            let (bucket_ms, span) = shape(window_ms);
            let mut series = DistinctSeries::default();
            let mut raw: Vec<(i64, u64)> = Vec::new();
            let mut clock = 0;
            for (step, late, value, is_late) in events {
                clock += step;
                let t = if is_late { clock - late } else { clock };
                series.add(t, value, bucket_ms, span, EXACT_DISTINCT);
                raw.push((t, value));
                let window: HashSet<u64> = raw.iter().filter(|(ts, _)| *ts > t - window_ms && *ts <= t).map(|(_, v)| *v).collect();
                prop_assert_eq!(series.count(t, window_ms, bucket_ms, span), window.len() as u64);
            }
        }
    }

    #[test]
    fn a_busy_key_stays_exact_then_switches_to_buckets_and_stays_bounded() {
        let (bucket_ms, span) = shape(600_000);
        let mut s = NumSeries::default();
        for i in 0..10_000i64 {
            s.add(i * 10, i % 7, bucket_ms, span, EXACT_EVENTS);
        }
        assert!(matches!(s, NumSeries::Sliding(_)), "exact, its window kept as it slides");
        let t = s.totals(99_990, 50_000, bucket_ms, span);
        assert_eq!((t.count, t.min, t.max), (5_000, 0, 6), "exactly the events in (49 990, 99 990]");
        for i in 10_000..(EXACT_EVENTS as i64 + 1) {
            s.add(100_000 + i, 1, bucket_ms, span, EXACT_EVENTS);
        }
        let NumSeries::Buckets(buckets) = &s else { panic!("still exact past {EXACT_EVENTS} events") };
        assert!(buckets.len() as i64 <= span, "{} buckets", buckets.len());
        let t = s.totals(100_000 + EXACT_EVENTS as i64, 600_000, bucket_ms, span);
        assert_eq!(t.count, EXACT_EVENTS as u64 + 1, "all within the window");
    }

    #[test]
    fn large_distinct_counts_switch_to_a_sketch_within_its_error() {
        use xxhash_rust::xxh3::xxh3_64;
        let (bucket_ms, span) = shape(3_600_000);
        let mut s = DistinctSeries::default();
        for i in 0..20_000u64 {
            s.add(i as i64 * 100, xxh3_64(&i.to_le_bytes()), bucket_ms, span, EXACT_DISTINCT);
        }
        assert!(matches!(s, DistinctSeries::Sketch { .. }));
        let n = s.count(1_999_900, 3_600_000, bucket_ms, span) as f64;
        assert!((n - 20_000.0).abs() / 20_000.0 < 0.15, "estimate {n}");
    }

    #[test]
    fn events_too_late_for_any_window_are_not_recorded() {
        let mut s = NumSeries::default();
        let (bucket_ms, span) = shape(60_000);
        s.add(10_000_000, 5, bucket_ms, span, EXACT_EVENTS);
        s.add(10_000_000 - 60_000 - LATE_MS, 7, bucket_ms, span, EXACT_EVENTS);
        s.add(9_999_000, 9, bucket_ms, span, EXACT_EVENTS);
        assert_eq!(s.totals(10_000_000, 60_000, bucket_ms, span), Totals { count: 2, sum: 14, min: 5, max: 9 });
        let NumSeries::Exact(events) = &s else { panic!("exact") };
        assert_eq!(events.len(), 2);
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
}
