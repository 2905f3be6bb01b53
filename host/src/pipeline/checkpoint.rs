//! Checkpoints: barriers in the stream of batches, and where restored
//! state goes.
//!
//! Every `state.checkpoint-interval` the source sends a numbered barrier
//! to every worker after the batches it covers, and its own part (input
//! position, de-duplication changes) to the output thread:
//!
//! ```text
//!  source   … batch 41 │ barrier 7 │ batch 42 …          part 7: position, ids
//!  worker   … finishes 41 (all phases) ─ cut 7 ─ state of its keys, in slices ─ part 7
//!  output   … records before cut 7 ─────────── all parts in: sync files, commit 7
//! ```
//!
//! A worker reaches a barrier only after every batch before it has been
//! through all three phases on every worker (it waits for them), so its
//! keys' state is exactly that of the input before the barrier. It tells
//! the output thread (a cut in its output stream), takes its windows and
//! rules' state at once, and serialises its feature state over the next
//! half interval while it goes on with the batches after the barrier —
//! each key before an event changes it. When the output thread has every
//! part, the outputs before the barrier are written: the files are synced
//! and the checkpoint committed in one transaction, on a committer thread
//! for the local store. A Kafka transaction takes in every output produced
//! before its commit, so there each stream's outputs after its cut wait
//! for it.
//!
//! State is stored per key, so a restart — with any number of workers —
//! hands each key to the worker that owns it now.

use std::time::{Duration, Instant};

use super::exchange::Router;
use crate::rules::state::entity_of;
use crate::state::{Durable, Restored, RuleStateDelta};
use crate::window::{WindowDef, WindowDelta};

/// Where and how often to checkpoint, and what to resume from.
#[derive(Debug, Default)]
pub struct Durability {
    /// Where checkpoints go; `None` runs without them.
    pub store: Option<Box<dyn Durable>>,
    /// Time between checkpoints.
    pub interval: Duration,
    /// The id of the checkpoint resumed from.
    pub last_id: u64,
    /// The state it holds, if any.
    pub restored: Option<Restored>,
}

/// Hands each restored key to the worker that owns it under `router`: one
/// [`Restored`] per worker, holding its keys and the watermark.
pub(super) fn route(restored: Option<Restored>, router: &Router, defs: &[WindowDef]) -> Vec<Restored> {
    let mut out: Vec<Restored> = (0..router.workers()).map(|_| Restored::default()).collect();
    let Some(r) = restored else { return out };
    for f in r.features {
        out[router.owner_of_hash(f.hash)].features.push(f);
    }
    for w in r.windows {
        let owner = match defs.iter().any(|def| def.name == w.window) {
            true => router.owner_of_hash(router.hasher().hash128(w.key.as_bytes())),
            // No longer configured: whoever takes it drops it.
            false => 0,
        };
        out[owner].windows.push(w);
    }
    for r in r.rule_state {
        let owner = entity_of(&r.key).map_or(0, |(_, id)| router.owner_of_hash(router.hasher().hash128(id.as_bytes())));
        out[owner].rule_state.push(r);
    }
    for w in &mut out {
        w.watermark = r.watermark;
    }
    out
}

/// How often an idle worker wakes to serialise the keys due while it takes
/// a checkpoint (see `Worker::drain`).
pub(super) const DRAIN_TICK: Duration = Duration::from_millis(1);

/// Time a worker takes per key of a checkpoint's feature state, at most:
/// a key takes a small share of that to serialise (the state bench's
/// "serialising them, after the barrier" over its key count), so a
/// checkpoint takes a few per cent of a core.
pub(super) const DRAIN_PER_KEY: Duration = Duration::from_micros(20);

/// A worker's part of a checkpoint while its feature state is serialised.
pub(super) struct Part {
    pub id: u64,
    /// When the barrier reached the worker.
    pub started: Instant,
    /// Keys the snapshot had to look at then.
    pub keys: usize,
    /// The time they are spread over.
    pub within: Duration,
    pub windows: Vec<WindowDelta>,
    pub newest_ms: Option<i64>,
    pub rule_state: Vec<RuleStateDelta>,
}
