//! Windowed aggregates per key in event time: tumbling, hopping and
//! session windows, closed by the watermark.
//!
//! Each worker keeps the open windows of the keys it owns. Its watermark is
//! the newest event time it has seen (or the source has seen, while the
//! worker is idle) minus `out-of-orderness`. A window is emitted once, on the
//! aggregates output, when the watermark passes its end plus
//! `allowed-lateness`, and then forgotten. An event whose window has already
//! been emitted goes to the late output with the reason; it is still decided
//! by the rules.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::config::WatermarkConfig;
use crate::event::Payment;
use crate::features::{KeyField, key_of};

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

/// Open windows of every definition and key, for one worker.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WindowState {
    /// Per definition index: key → open windows, oldest first.
    open: Vec<BTreeMap<String, Vec<Acc>>>,
    /// Newest event time seen.
    newest_ms: Option<i64>,
}

/// One worker's windows.
#[derive(Debug)]
pub struct Windows {
    defs: Vec<WindowDef>,
    out_of_orderness: i64,
    lateness: i64,
    state: WindowState,
}

impl Windows {
    /// Windows for `defs`.
    pub fn new(defs: Vec<WindowDef>, config: &WatermarkConfig) -> Self {
        let open = vec![BTreeMap::new(); defs.len()];
        Self {
            defs,
            out_of_orderness: config.out_of_orderness.as_millis() as i64,
            lateness: config.allowed_lateness.as_millis() as i64,
            state: WindowState { open, newest_ms: None },
        }
    }

    /// Whether any window is defined.
    pub fn is_empty(&self) -> bool {
        self.defs.is_empty()
    }

    /// The watermark: newest event time minus out-of-orderness.
    pub fn watermark(&self) -> Option<i64> {
        self.state.newest_ms.map(|t| t.saturating_sub(self.out_of_orderness))
    }

    /// Raises the newest event time the watermark follows, e.g. to the
    /// source's while this worker is idle.
    pub fn observe(&mut self, ts: i64) {
        self.state.newest_ms = Some(self.state.newest_ms.map_or(ts, |n| n.max(ts)));
    }

    /// Adds an event to its windows; calls `late` for each window it is too
    /// late for.
    pub fn add(&mut self, p: &Payment, mut late: impl FnMut(Late<'_>)) {
        if self.defs.is_empty() {
            return;
        }
        let watermark = self.watermark();
        for (def, open) in self.defs.iter().zip(&mut self.state.open) {
            let Some(key) = key_of(p, def.key) else {
                continue;
            };
            for (start, end) in def.shape.windows_of(p.ts_ms) {
                if let Some(wm) = watermark
                    && end.saturating_add(self.lateness) <= wm
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
                let windows = open.entry(key.to_owned()).or_default();
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
        let Some(wm) = self.watermark() else { return };
        for (def, open) in self.defs.iter().zip(&mut self.state.open) {
            open.retain(|key, windows| {
                windows.retain(|w| {
                    let due = flush_all || w.end.saturating_add(self.lateness) <= wm;
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
                !windows.is_empty()
            });
        }
    }

    /// The state, serialised for a checkpoint.
    pub fn snapshot(&self) -> Vec<u8> {
        let named: Vec<(&str, &BTreeMap<String, Vec<Acc>>)> =
            self.defs.iter().map(|d| d.name.as_str()).zip(&self.state.open).collect();
        postcard::to_allocvec(&(self.state.newest_ms, named)).unwrap_or_default()
    }

    /// Loads state a checkpoint holds; definitions are matched by name.
    ///
    /// # Errors
    /// A message when the bytes are not window state.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        type Stored = (Option<i64>, Vec<(String, BTreeMap<String, Vec<Acc>>)>);
        let (newest, named): Stored = postcard::from_bytes(bytes).map_err(|e| format!("bad window state: {e}"))?;
        if let Some(t) = newest {
            self.observe(t);
        }
        for (name, open) in named {
            if let Some(i) = self.defs.iter().position(|d| d.name == name) {
                for (key, windows) in open {
                    self.state.open[i].entry(key).or_default().extend(windows);
                }
            }
        }
        Ok(())
    }
}

/// Checks that `bytes` is window state.
///
/// # Errors
/// A message when it is not.
pub fn check_stored(bytes: &[u8]) -> Result<(), String> {
    type Stored = (Option<i64>, Vec<(String, BTreeMap<String, Vec<Acc>>)>);
    postcard::from_bytes::<Stored>(bytes).map(drop).map_err(|e| format!("bad window state in checkpoint: {e}"))
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
            id: format!("{merchant}-{ts_ms}"),
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

    #[test]
    fn state_survives_a_snapshot() {
        let mut w = windows(0, 0);
        w.add(&pay("m", 1_000, 10), |_| {});
        let mut r = windows(0, 0);
        r.restore(&w.snapshot()).expect("restore");
        let (mut a, mut b) = (Vec::new(), Vec::new());
        w.close(true, |c| a.push((c.key.to_owned(), c.count, c.sum)));
        r.close(true, |c| b.push((c.key.to_owned(), c.count, c.sum)));
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
    }
}
