//! A busy key's series: its events kept in time order with the totals of
//! its latest window, moved as the window slides.
//!
//! A series with a few events reads a window by walking them (see
//! [`super::lookback`]). Past [`SMALL`] events that walk would grow with
//! the key, so a [`Sliding`] series keeps what its newest window holds (an
//! [`Aggregate`]) and moves it as events come: each event is added to it
//! once and taken out once, so a read in time order costs the same however
//! many events the window has. A read at an earlier time than the window's
//! (an event that came late) walks the events in its own window instead;
//! an event that comes late but inside the window is added where it
//! belongs.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Events past which a series keeps its window's totals instead of
/// walking its events on each read.
pub const SMALL: usize = 32;

/// What a window holds, kept as events enter and leave it.
pub trait Aggregate: Default + Clone {
    /// One event: its time and what the aggregate takes from it.
    type Item: Copy;

    /// The time of `item` (ms).
    fn time(item: &Self::Item) -> i64;

    /// Adds an item no older than any added.
    fn push(&mut self, item: Self::Item);

    /// Adds an item older than some added, within the window.
    fn insert(&mut self, item: Self::Item);

    /// Takes out `item`, the oldest in the window, whose edge is now `edge`
    /// (items at or before it are out).
    fn pop(&mut self, item: Self::Item, edge: i64);
}

/// The events of one key in time order, and the aggregate of the latest
/// window read.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "A::Item: Serialize", deserialize = "A::Item: Deserialize<'de>"))]
pub struct Sliding<A: Aggregate> {
    items: VecDeque<A::Item>,
    /// Rebuilt on the first read after a restore.
    #[serde(skip)]
    window: Option<Window<A>>,
}

/// The aggregate of the items in `(at − window_ms, at]`: `items[lo..hi]`.
#[derive(Debug, Clone)]
struct Window<A> {
    window_ms: i64,
    at: i64,
    lo: usize,
    hi: usize,
    agg: A,
}

impl<A: Aggregate> PartialEq for Sliding<A>
where
    A::Item: PartialEq,
{
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

impl<A: Aggregate> Eq for Sliding<A> where A::Item: Eq {}

impl<A: Aggregate> Sliding<A> {
    /// A series of `items`, in time order.
    pub fn new(items: impl IntoIterator<Item = A::Item>) -> Self {
        Sliding { items: items.into_iter().collect(), window: None }
    }

    /// Number of events kept.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether no event is kept.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The events kept, oldest first.
    pub fn items(&self) -> impl Iterator<Item = &A::Item> {
        self.items.iter()
    }

    /// Adds `item` where its time puts it and forgets the events older than
    /// `reach_ms` before the newest. False when `item` itself is that old
    /// and is not kept.
    pub fn add(&mut self, item: A::Item, reach_ms: i64) -> bool {
        let t = A::time(&item);
        let newest = self.items.back().map_or(t, |e| A::time(e).max(t));
        let keep_after = newest - reach_ms;
        if t <= keep_after {
            return false;
        }
        let at = self.items.partition_point(|e| A::time(e) <= t);
        self.items.insert(at, item);
        if let Some(w) = &mut self.window {
            if t <= w.at - w.window_ms {
                (w.lo, w.hi) = (w.lo + 1, w.hi + 1);
            } else if t <= w.at {
                w.agg.insert(item);
                w.hi += 1;
            }
        }
        let stale = self.items.partition_point(|e| A::time(e) <= keep_after);
        if stale > 0 {
            self.items.drain(..stale);
            match &mut self.window {
                Some(w) if stale <= w.lo => (w.lo, w.hi) = (w.lo - stale, w.hi - stale),
                _ => self.window = None,
            }
        }
        true
    }

    /// The aggregate of `(t − window_ms, t]` when `t` is no earlier than the
    /// latest window read (moved there), or than every event (made); `None`
    /// for an earlier read, which walks [`Sliding::in_window`] instead. The
    /// first window length read is the one kept.
    pub fn running(&mut self, t: i64, window_ms: i64) -> Option<&A> {
        let Sliding { items, window } = self;
        match window {
            Some(w) if w.window_ms == window_ms && t >= w.at => {
                while w.hi < items.len() && A::time(&items[w.hi]) <= t {
                    w.agg.push(items[w.hi]);
                    w.hi += 1;
                }
                let edge = t - window_ms;
                while w.lo < w.hi && A::time(&items[w.lo]) <= edge {
                    w.agg.pop(items[w.lo], edge);
                    w.lo += 1;
                }
                w.at = t;
            }
            None if items.back().is_none_or(|e| A::time(e) <= t) => {
                let lo = items.partition_point(|e| A::time(e) <= t - window_ms);
                let mut agg = A::default();
                for &item in items.range(lo..) {
                    agg.push(item);
                }
                *window = Some(Window { window_ms, at: t, lo, hi: items.len(), agg });
            }
            _ => return None,
        }
        window.as_ref().map(|w| &w.agg)
    }

    /// The events in `(t − window_ms, t]`, oldest first.
    pub fn in_window(&self, t: i64, window_ms: i64) -> impl Iterator<Item = &A::Item> {
        let lo = self.items.partition_point(|e| A::time(e) <= t - window_ms);
        let hi = self.items.partition_point(|e| A::time(e) <= t).max(lo);
        self.items.range(lo..hi)
    }
}

/// Count, sum, smallest and largest amount of a window: the extremes as
/// monotonic queues (each amount kept while no later one beats it).
#[derive(Debug, Clone, Default)]
pub struct Amounts {
    /// Events in the window.
    pub count: u64,
    /// Their amounts added (wide: taken out again as they leave).
    pub sum: i128,
    /// (time, amount), amounts rising: the front is the smallest.
    mins: VecDeque<(i64, i64)>,
    /// (time, amount), amounts falling: the front is the largest.
    maxs: VecDeque<(i64, i64)>,
}

impl Amounts {
    /// The smallest amount, if any.
    pub fn min(&self) -> Option<i64> {
        self.mins.front().map(|m| m.1)
    }

    /// The largest amount, if any.
    pub fn max(&self) -> Option<i64> {
        self.maxs.front().map(|m| m.1)
    }
}

/// Puts `item` into a monotonic queue at its time: dropped if a later
/// entry already beats it, else dropping the earlier ones it beats.
/// `beats(a, b)`: amount `a` is at least as good as `b`.
fn enqueue(queue: &mut VecDeque<(i64, i64)>, item: (i64, i64), beats: impl Fn(i64, i64) -> bool) {
    let at = queue.partition_point(|q| q.0 <= item.0);
    if queue.get(at).is_some_and(|q| beats(q.1, item.1)) {
        return;
    }
    let mut from = at;
    while from > 0 && beats(item.1, queue[from - 1].1) {
        from -= 1;
    }
    queue.drain(from..at);
    queue.insert(from, item);
}

impl Aggregate for Amounts {
    type Item = (i64, i64);

    fn time(item: &(i64, i64)) -> i64 {
        item.0
    }

    fn push(&mut self, item: (i64, i64)) {
        self.count += 1;
        self.sum += i128::from(item.1);
        while self.mins.back().is_some_and(|m| m.1 >= item.1) {
            self.mins.pop_back();
        }
        self.mins.push_back(item);
        while self.maxs.back().is_some_and(|m| m.1 <= item.1) {
            self.maxs.pop_back();
        }
        self.maxs.push_back(item);
    }

    fn insert(&mut self, item: (i64, i64)) {
        self.count += 1;
        self.sum += i128::from(item.1);
        enqueue(&mut self.mins, item, |a, b| a <= b);
        enqueue(&mut self.maxs, item, |a, b| a >= b);
    }

    fn pop(&mut self, item: (i64, i64), edge: i64) {
        self.count -= 1;
        self.sum -= i128::from(item.1);
        while self.mins.front().is_some_and(|m| m.0 <= edge) {
            self.mins.pop_front();
        }
        while self.maxs.front().is_some_and(|m| m.0 <= edge) {
            self.maxs.pop_front();
        }
    }
}

/// How many times each value (hash) was seen in a window.
#[derive(Debug, Clone, Default)]
pub struct Sightings {
    counts: hashbrown::HashMap<u64, u32>,
}

impl Sightings {
    /// Distinct values in the window.
    pub fn distinct(&self) -> u64 {
        self.counts.len() as u64
    }
}

impl Aggregate for Sightings {
    /// (value hash, time), as exact distinct series keep sightings.
    type Item = (u64, i64);

    fn time(item: &(u64, i64)) -> i64 {
        item.1
    }

    fn push(&mut self, item: (u64, i64)) {
        *self.counts.entry(item.0).or_default() += 1;
    }

    fn insert(&mut self, item: (u64, i64)) {
        self.push(item);
    }

    fn pop(&mut self, item: (u64, i64), _edge: i64) {
        if let hashbrown::hash_map::Entry::Occupied(mut e) = self.counts.entry(item.0) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Events in any order, reads at every event and at times in
        /// between, some windows read late: the running totals are what a
        /// walk of the window gives.
        #[test]
        fn running_totals_match_a_walk(
            events in proptest::collection::vec((0i64..5_000, 0i64..20_000, -50i64..50, 0u8..4), 1..400),
            window_ms in 1i64..30_000,
        ) {
            let reach = window_ms + 20_000;
            let mut s: Sliding<Amounts> = Sliding::new([]);
            let mut clock = 0;
            for (step, late, amount, how) in events {
                clock += step;
                let t = if how == 0 { clock - late } else { clock };
                s.add((t, amount), reach);
                let read = if how == 3 { t + step } else { t };
                let walk: Vec<i64> = s.in_window(read, window_ms).map(|e| e.1).collect();
                if let Some(a) = s.running(read, window_ms) {
                    prop_assert_eq!(a.count, walk.len() as u64);
                    prop_assert_eq!(a.sum, walk.iter().map(|&x| i128::from(x)).sum::<i128>());
                    prop_assert_eq!(a.min(), walk.iter().copied().min());
                    prop_assert_eq!(a.max(), walk.iter().copied().max());
                }
            }
        }

        #[test]
        fn running_distinct_counts_match_a_walk(
            events in proptest::collection::vec((0i64..5_000, 0i64..20_000, 0u64..12, 0u8..4), 1..400),
            window_ms in 1i64..30_000,
        ) {
            let reach = window_ms + 20_000;
            let mut s: Sliding<Sightings> = Sliding::new([]);
            let mut clock = 0;
            for (step, late, value, how) in events {
                clock += step;
                let t = if how == 0 { clock - late } else { clock };
                s.add((value, t), reach);
                let mut walk: Vec<u64> = s.in_window(t, window_ms).map(|e| e.0).collect();
                walk.sort_unstable();
                walk.dedup();
                if let Some(a) = s.running(t, window_ms) {
                    prop_assert_eq!(a.distinct(), walk.len() as u64);
                }
            }
        }
    }

    #[test]
    fn an_in_order_read_is_served_by_the_running_window_a_late_one_is_not() {
        let mut s: Sliding<Amounts> = Sliding::new([]);
        for t in 0..100 {
            s.add((t * 10, t), 10_000);
            assert!(s.running(t * 10, 100).is_some());
        }
        let a = s.running(990, 100).expect("in order");
        assert_eq!((a.count, a.sum, a.min(), a.max()), (10, (90..100).sum::<i64>().into(), Some(90), Some(99)));
        s.add((985, -7), 10_000);
        let a = s.running(990, 100).expect("a late event inside the window is added to it");
        assert_eq!((a.count, a.min()), (11, Some(-7)));
        assert!(s.running(500, 100).is_none(), "earlier than the window: walked");
        assert!(s.running(990, 200).is_none(), "another length than the one kept: walked");
    }
}
