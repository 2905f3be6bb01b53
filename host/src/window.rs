//! Windowed aggregates per key in event time: tumbling, hopping and
//! session windows, closed by the watermark.
//!
//! Each worker keeps the open windows of the keys it owns. Its watermark is
//! the newest event time of the stream so far (every worker sees every
//! event's time) minus `out-of-orderness`. A window is emitted once, on the
//! aggregates output, when the watermark passes its end plus
//! `allowed-lateness`, and then forgotten. An event whose window has already
//! been emitted goes to the late output with the reason; it is still decided
//! by the rules.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::config::WatermarkConfig;
use crate::event::KeyField;
use crate::event::Payment;

/// The kind of window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Fixed, non-overlapping windows of `size`.
    Tumbling {
        /// Window length, ms.
        size: i64,
    },
    /// Windows of `size` starting every `hop`.
    Hopping {
        /// Window length, ms.
        size: i64,
        /// Distance between starts, ms.
        hop: i64,
    },
    /// Activity periods separated by at least `gap` of silence.
    Session {
        /// Silence that ends a session, ms.
        gap: i64,
    },
}

impl Shape {
    /// The `[start, end)` windows of a fixed shape that hold `ts`, oldest first.
    pub fn windows_of(self, ts: i64) -> Vec<(i64, i64)> {
        match self {
            Shape::Tumbling { size } => {
                let start = ts.div_euclid(size) * size;
                vec![(start, start + size)]
            }
            Shape::Hopping { size, hop } => {
                let last = ts.div_euclid(hop) * hop;
                let mut out = Vec::new();
                let mut start = last;
                while start > ts - size {
                    out.push((start, start + size));
                    start -= hop;
                }
                out.reverse();
                out
            }
            Shape::Session { gap } => vec![(ts, ts + gap)],
        }
    }
}

/// A configured window definition.
#[derive(Debug, Clone)]
pub struct WindowDef {
    /// Its name, from `[windows.NAME]`.
    pub name: String,
    /// Kept per this key.
    pub key: KeyField,
    /// Its shape.
    pub shape: Shape,
}

/// Aggregates of one open window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acc {
    /// Start, ms (inclusive).
    pub start: i64,
    /// End, ms (exclusive).
    pub end: i64,
    /// Events.
    pub count: u64,
    /// Sum of amounts.
    pub sum: i64,
    /// Smallest amount.
    pub min: i64,
    /// Largest amount.
    pub max: i64,
}

impl Acc {
    fn new(start: i64, end: i64) -> Self {
        Self { start, end, count: 0, sum: 0, min: i64::MAX, max: i64::MIN }
    }

    fn add(&mut self, amount: i64) {
        self.count += 1;
        self.sum = self.sum.saturating_add(amount);
        self.min = self.min.min(amount);
        self.max = self.max.max(amount);
    }

    fn merge(&mut self, other: &Acc) {
        self.start = self.start.min(other.start);
        self.end = self.end.max(other.end);
        self.count += other.count;
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// A closed window, as written to the aggregates output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Closed<'a> {
    /// The window definition's name.
    pub window: &'a str,
    /// The key.
    pub key: &'a str,
    /// Start, epoch ms.
    pub start_ms: i64,
    /// End, epoch ms (exclusive).
    pub end_ms: i64,
    /// Events in the window.
    pub count: u64,
    /// Sum of amounts (minor units).
    pub sum: i64,
    /// Smallest amount.
    pub min: i64,
    /// Largest amount.
    pub max: i64,
    /// Mean amount.
    pub avg: f64,
}

/// An event too late for a window, as written to the late output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Late<'a> {
    /// Transaction id.
    pub id: &'a str,
    /// The window definition's name.
    pub window: &'a str,
    /// The key.
    pub key: &'a str,
    /// The event's time.
    pub event_ts_ms: i64,
    /// The watermark when it arrived.
    pub watermark_ms: i64,
    /// Why it was not counted.
    pub reason: String,
}

/// One key's open windows of one definition.
#[derive(Debug, Default)]
struct Keyed {
    /// Oldest first.
    windows: Vec<Acc>,
    /// The input partition whose event last touched them (0 for files).
    partition: u32,
    /// Changed since the last delta, and listed in `Windows::dirty`.
    dirty: bool,
}

/// One key's open windows that changed, or went away (`windows: None`),
/// for a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowDelta {
    /// The window definition's name.
    pub window: String,
    /// The key.
    pub key: String,
    /// The worker that owns it.
    pub worker: u16,
    /// The input partition whose event last touched it (0 for files).
    pub partition: u32,
    /// Its open windows, serialised ([`check_stored`] reads them), or
    /// `None` when it has none left.
    pub windows: Option<Vec<u8>>,
}

/// One worker's windows.
#[derive(Debug)]
pub struct Windows {
    defs: Vec<WindowDef>,
    out_of_orderness: i64,
    lateness: i64,
    /// Per definition index: key → its open windows.
    open: Vec<BTreeMap<String, Keyed>>,
    /// Newest event time seen.
    newest_ms: Option<i64>,
    /// The input partition the next events come from.
    partition: u32,
    /// Keys changed since the last delta: (definition index, key, its
    /// partition when it changed). A key gone from `open` is deleted.
    dirty: Vec<(usize, String, u32)>,
}

/// Marks `keyed` changed, listing it once per delta.
fn mark(dirty: &mut Vec<(usize, String, u32)>, def: usize, key: &str, keyed: &mut Keyed) {
    if !keyed.dirty {
        keyed.dirty = true;
        dirty.push((def, key.to_owned(), keyed.partition));
    }
}

impl Windows {
    /// Windows for `defs`.
    pub fn new(defs: Vec<WindowDef>, config: &WatermarkConfig) -> Self {
        let open = defs.iter().map(|_| BTreeMap::new()).collect();
        Self {
            defs,
            out_of_orderness: config.out_of_orderness.as_millis() as i64,
            lateness: config.allowed_lateness.as_millis() as i64,
            open,
            newest_ms: None,
            partition: 0,
            dirty: Vec::new(),
        }
    }

    /// The watermark: newest event time minus out-of-orderness.
    pub fn watermark(&self) -> Option<i64> {
        self.newest_ms.map(|t| t.saturating_sub(self.out_of_orderness))
    }

    /// The newest event time seen, kept with a checkpoint.
    pub fn newest(&self) -> Option<i64> {
        self.newest_ms
    }

    /// Raises the newest event time the watermark follows, e.g. to the
    /// source's while this worker is idle.
    pub fn observe(&mut self, ts: i64) {
        self.newest_ms = Some(self.newest_ms.map_or(ts, |n| n.max(ts)));
    }

    /// Sets the input partition the next events come from; the keys they
    /// touch are then that partition's.
    pub fn set_partition(&mut self, partition: u32) {
        self.partition = partition;
    }

    /// Adds an event to its windows; calls `late` for each window it is too
    /// late for.
    pub fn add(&mut self, p: &Payment, late: impl FnMut(Late<'_>)) {
        self.add_owned(p, |_| true, late);
    }

    /// Adds an event to the windows of the keys for whose field `owns`
    /// holds (those of its keys this worker owns), and moves the watermark
    /// by its time in any case: every worker sees every event's time, so
    /// all close the same windows at the same point of the stream.
    pub fn add_owned(&mut self, p: &Payment, owns: impl Fn(KeyField) -> bool, mut late: impl FnMut(Late<'_>)) {
        if self.defs.is_empty() {
            return;
        }
        let watermark = self.watermark();
        let Self { defs, open, dirty, partition, lateness, .. } = self;
        for (i, (def, open)) in defs.iter().zip(open.iter_mut()).enumerate() {
            if !owns(def.key) {
                continue;
            }
            let Some(key) = p.key(def.key) else {
                continue;
            };
            for (start, end) in def.shape.windows_of(p.ts_ms) {
                if let Some(wm) = watermark
                    && end.saturating_add(*lateness) <= wm
                {
                    late(Late {
                        id: &p.id,
                        window: &def.name,
                        key,
                        event_ts_ms: p.ts_ms,
                        watermark_ms: wm,
                        reason: format!(
                            "window [{start}, {end}) closed: the watermark {wm} passed its end plus the allowed lateness"
                        ),
                    });
                    continue;
                }
                if !open.contains_key(key) {
                    open.insert(key.to_owned(), Keyed::default());
                }
                let Some(keyed) = open.get_mut(key) else { continue };
                keyed.partition = *partition;
                mark(dirty, i, key, keyed);
                let windows = &mut keyed.windows;
                match def.shape {
                    Shape::Session { .. } => add_to_session(windows, start, end, p.amount),
                    _ => {
                        let at = windows.partition_point(|w| w.start < start);
                        if windows.get(at).is_none_or(|w| w.start != start) {
                            windows.insert(at, Acc::new(start, end));
                        }
                        windows[at].add(p.amount);
                    }
                }
            }
        }
        self.observe(p.ts_ms);
    }

    /// Emits and forgets every window the watermark has passed (all of
    /// them with `flush_all`, at the end of the input).
    pub fn close(&mut self, flush_all: bool, mut emit: impl FnMut(Closed<'_>)) {
        let wm = self.watermark();
        if wm.is_none() && !flush_all {
            return;
        }
        let Self { defs, open, dirty, lateness, .. } = self;
        for (i, (def, open)) in defs.iter().zip(open.iter_mut()).enumerate() {
            open.retain(|key, keyed| {
                let before = keyed.windows.len();
                keyed.windows.retain(|w| {
                    let due = flush_all || wm.is_some_and(|wm| w.end.saturating_add(*lateness) <= wm);
                    if due {
                        emit(Closed {
                            window: &def.name,
                            key,
                            start_ms: w.start,
                            end_ms: w.end,
                            count: w.count,
                            sum: w.sum,
                            min: w.min,
                            max: w.max,
                            avg: w.sum as f64 / w.count.max(1) as f64,
                        });
                    }
                    !due
                });
                if keyed.windows.len() != before {
                    mark(dirty, i, key, keyed);
                }
                !keyed.windows.is_empty()
            });
        }
    }

    /// Forgets every key last touched from one of `partitions` (moved to
    /// another daemon), with its pending changes.
    pub fn drop_partitions(&mut self, partitions: &[u32]) {
        for open in &mut self.open {
            open.retain(|_, k| !partitions.contains(&k.partition));
        }
        let open = &self.open;
        self.dirty.retain(|(def, key, p)| open[*def].contains_key(key) || !partitions.contains(p));
    }

    /// The changes since the last call, for a checkpoint: the open windows
    /// of every key that changed, and the keys left with none.
    pub fn take_delta(&mut self, worker: u16) -> Vec<WindowDelta> {
        let mut out = Vec::with_capacity(self.dirty.len());
        for (def, key, partition) in self.dirty.drain(..) {
            let windows = match self.open[def].get_mut(&key) {
                // Listed twice (deleted, then opened again): sent once.
                Some(k) if !k.dirty => continue,
                Some(k) => {
                    k.dirty = false;
                    // Serialising plain data into a Vec cannot fail.
                    Some((k.partition, postcard::to_allocvec(&k.windows).unwrap_or_default()))
                }
                None => None,
            };
            out.push(WindowDelta {
                window: self.defs[def].name.clone(),
                key,
                worker,
                partition: windows.as_ref().map_or(partition, |(p, _)| *p),
                windows: windows.map(|(_, w)| w),
            });
        }
        out
    }

    /// Loads one key's open windows of the definition named `window`, as a
    /// [`WindowDelta`] or the changelog holds them, for `partition`.
    /// `changed` lists them in the next delta (when they were stored in
    /// another form). A definition no longer configured is skipped.
    ///
    /// # Errors
    /// A message when the bytes are not open windows.
    pub fn restore_key(
        &mut self,
        window: &str,
        key: &str,
        partition: u32,
        bytes: &[u8],
        changed: bool,
    ) -> Result<(), BadWindowState> {
        let windows: Vec<Acc> = postcard::from_bytes(bytes)?;
        let Some(def) = self.defs.iter().position(|d| d.name == window) else {
            return Ok(());
        };
        let keyed = self.open[def].entry(key.to_owned()).or_default();
        keyed.partition = partition;
        keyed.windows = windows;
        if changed {
            mark(&mut self.dirty, def, key, keyed);
        }
        Ok(())
    }
}

/// Stored bytes that are not a key's open windows.
#[derive(Debug, thiserror::Error)]
#[error("bad window state")]
pub struct BadWindowState(#[from] postcard::Error);

/// Checks that `bytes` is one key's open windows.
///
/// # Errors
/// [`BadWindowState`] when it is not.
pub fn check_stored(bytes: &[u8]) -> Result<(), BadWindowState> {
    postcard::from_bytes::<Vec<Acc>>(bytes).map(drop).map_err(BadWindowState)
}

/// Adds an event at `[ts, ts + gap)` to a key's sessions, merging every
/// session it touches.
fn add_to_session(sessions: &mut Vec<Acc>, start: i64, end: i64, amount: i64) {
    let mut acc = Acc::new(start, end);
    acc.add(amount);
    sessions.retain(|s| {
        let touches = s.start <= end && start <= s.end;
        if touches {
            acc.merge(s);
        }
        !touches
    });
    let at = sessions.partition_point(|s| s.start < acc.start);
    sessions.insert(at, acc);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Party;
    use proptest::prelude::*;
    use std::time::Duration;
    use vigil_abi::{Channel, Kind};

    proptest! {
        /// Fixed windows holding `ts` are exactly those a scan of every
        /// aligned start finds.
        #[test]
        fn fixed_windows_match_a_scan(ts in -10_000i64..10_000, size in 1i64..500, hop_div in 1i64..6) {
            let hop = (size / hop_div).max(1);
            for shape in [Shape::Tumbling { size }, Shape::Hopping { size, hop }] {
                let step = if let Shape::Hopping { hop, .. } = shape { hop } else { size };
                let want: Vec<(i64, i64)> = ((ts - size - step)..=ts)
                    .filter(|s| s.rem_euclid(step) == 0 && *s <= ts && ts < s + size)
                    .map(|s| (s, s + size))
                    .collect();
                prop_assert_eq!(shape.windows_of(ts), want);
            }
        }

        /// Sessions built event by event equal sessions from sorting all
        /// events and splitting at gaps of `gap` or more.
        #[test]
        fn sessions_match_a_sort_and_split(ts in proptest::collection::vec(0i64..2_000, 1..60), gap in 1i64..200) {
            let mut sessions = Vec::new();
            for &t in &ts {
                add_to_session(&mut sessions, t, t + gap, 1);
            }
            let mut sorted = ts.clone();
            sorted.sort_unstable();
            let mut want: Vec<(i64, i64, u64)> = Vec::new();
            for t in sorted {
                match want.last_mut() {
                    Some(last) if t <= last.1 => { last.1 = last.1.max(t + gap); last.2 += 1; }
                    _ => want.push((t, t + gap, 1)),
                }
            }
            let got: Vec<(i64, i64, u64)> = sessions.iter().map(|s| (s.start, s.end, s.count)).collect();
            prop_assert_eq!(got, want);
        }
    }

    fn pay(merchant: &str, ts_ms: i64, amount: i64) -> Payment {
        Payment {
            id: format!("{merchant}-{ts_ms}").into(),
            ts_ms,
            channel: Channel::Card,
            kind: Kind::Purchase,
            amount,
            currency: *b"USD",
            account: "a".into(),
            card: None,
            merchant: Some(Party { id: merchant.into(), mcc: None, country: None }),
            counterparty: None,
            device: None,
            ip: None,
            geo: None,
            attrs: Vec::new(),
        }
    }

    fn windows(ooo_ms: u64, lateness_ms: u64) -> Windows {
        let def = WindowDef { name: "m1".into(), key: KeyField::Merchant, shape: Shape::Tumbling { size: 60_000 } };
        let cfg = WatermarkConfig {
            out_of_orderness: Duration::from_millis(ooo_ms),
            allowed_lateness: Duration::from_millis(lateness_ms),
        };
        Windows::new(vec![def], &cfg)
    }

    #[test]
    fn a_window_closes_when_the_watermark_passes_end_plus_lateness() {
        let mut w = windows(5_000, 10_000);
        let mut closed = Vec::new();
        w.add(&pay("m", 1_000, 10), |_| panic!("not late"));
        w.add(&pay("m", 30_000, 20), |_| panic!("not late"));
        w.add(&pay("m", 74_000, 5), |_| panic!("not late"));
        // Watermark 69,000 < 60,000 + 10,000: still open.
        w.close(false, |c| closed.push((c.start_ms, c.count, c.sum)));
        assert!(closed.is_empty());
        w.add(&pay("m", 75_000, 5), |_| panic!("not late"));
        w.close(false, |c| closed.push((c.start_ms, c.count, c.sum)));
        assert_eq!(closed, [(0, 2, 30)]);
        // An event for the emitted window is late, with a reason.
        let mut late = Vec::new();
        w.add(&pay("m", 59_000, 1), |l| late.push(l.reason.clone()));
        assert_eq!(late.len(), 1);
        assert!(late[0].contains("closed"), "{late:?}");
        // Within lateness: still counted.
        w.add(&pay("m", 61_000, 1), |_| panic!("not late"));
    }

    /// Replays `deltas` onto `model` as a store or the changelog would.
    fn apply(model: &mut BTreeMap<(String, String), (u32, Vec<u8>)>, deltas: Vec<WindowDelta>) {
        for d in deltas {
            match d.windows {
                Some(w) => model.insert((d.window, d.key), (d.partition, w)),
                None => model.remove(&(d.window, d.key)),
            };
        }
    }

    fn restored(model: &BTreeMap<(String, String), (u32, Vec<u8>)>) -> Windows {
        let mut r = windows(0, 0);
        for ((window, key), (partition, bytes)) in model {
            r.restore_key(window, key, *partition, bytes, false).expect("restore");
        }
        r
    }

    fn drain(w: &mut Windows) -> Vec<(String, i64, u64, i64)> {
        let mut out = Vec::new();
        w.close(true, |c| out.push((c.key.to_owned(), c.start_ms, c.count, c.sum)));
        out
    }

    proptest! {
        /// The deltas taken between steps of adding, closing and dropping
        /// partitions, applied in order as the changelog would, restore
        /// exactly the open windows of the partitions held; a partition
        /// that comes back is restored from them first, as on assignment.
        #[test]
        fn deltas_restore_the_open_windows(
            steps in proptest::collection::vec(
                (proptest::collection::vec((0u8..6, 0u32..3, 0i64..400_000, 1i64..100), 0..12),
                 proptest::option::of(0u32..3)),
                1..10),
        ) {
            let mut w = windows(0, 0);
            let mut model: BTreeMap<(String, String), (u32, Vec<u8>)> = BTreeMap::new();
            let mut away = std::collections::BTreeSet::new();
            let mut newest = 0;
            for (events, drop) in steps {
                for (m, partition, ts, amount) in events {
                    // A key stays in one partition.
                    let (m, partition) = (m + 6 * partition as u8, partition);
                    if away.remove(&partition) {
                        for ((window, key), (p, bytes)) in model.iter().filter(|(_, (p, _))| *p == partition) {
                            w.restore_key(window, key, *p, bytes, false).expect("restore");
                        }
                    }
                    // In order, so nothing is late.
                    newest = newest.max(ts);
                    w.set_partition(partition);
                    w.add(&pay(&format!("m{m}"), newest, amount), |_| panic!("not late"));
                }
                w.close(false, |_| {});
                if let Some(p) = drop {
                    w.drop_partitions(&[p]);
                    away.insert(p);
                }
                apply(&mut model, w.take_delta(0));
                let stored: Vec<(&String, u32)> =
                    model.iter().filter(|(_, (p, _))| !away.contains(p)).map(|((_, key), (p, _))| (key, *p)).collect();
                let held: Vec<(&String, u32)> = w.open[0].iter().map(|(key, k)| (key, k.partition)).collect();
                prop_assert_eq!(stored, held);
                // The same open windows, compared by closing copies of both.
                let mut want = windows(0, 0);
                for (key, keyed) in &w.open[0] {
                    let bytes = postcard::to_allocvec(&keyed.windows).expect("encode");
                    want.restore_key("m1", key, keyed.partition, &bytes, false).expect("restore");
                }
                let here: BTreeMap<_, _> = model.clone().into_iter().filter(|(_, (p, _))| !away.contains(p)).collect();
                prop_assert_eq!(drain(&mut restored(&here)), drain(&mut want));
            }
        }
    }

    #[test]
    fn a_key_closed_is_deleted_and_a_moved_key_is_not() {
        let mut w = windows(0, 0);
        w.set_partition(1);
        w.add(&pay("a", 1_000, 10), |_| {});
        w.set_partition(2);
        w.add(&pay("b", 1_000, 20), |_| {});
        let first = w.take_delta(3);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|d| d.worker == 3 && d.windows.is_some()), "{first:?}");
        // Nothing changed: nothing to send.
        assert!(w.take_delta(3).is_empty());
        // `b` moves away with its partition; `a`'s window closes.
        w.add(&pay("b", 2_000, 5), |_| {});
        w.drop_partitions(&[2]);
        w.observe(200_000);
        let mut closed = Vec::new();
        w.close(false, |c| closed.push(c.key.to_owned()));
        assert_eq!(closed, ["a"], "a moved key is not emitted by its old owner");
        let second = w.take_delta(3);
        assert_eq!(
            second,
            [WindowDelta { window: "m1".into(), key: "a".into(), worker: 3, partition: 1, windows: None }],
            "the closed key is deleted; the moved one is left to its new owner"
        );
    }

    #[test]
    fn stored_windows_that_are_not_window_state_are_refused() {
        assert!(check_stored(b"\xff\xff\xff").is_err());
    }
}
