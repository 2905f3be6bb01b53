//! One worker's share of the look-back state: the features and windows of
//! the keys it owns ([`super::exchange`]), and how far through the batches
//! they are.
//!
//! Its owner works a shard through every batch, in order, as it reads
//! them. A worker whose own part of a batch is done and that has waited
//! for another's (200 µs, or a millisecond while it has batches of its
//! own queued: see `worker.rs`) takes that worker's shard, when nobody
//! holds it, and does its part itself: first the batches before it
//! that the shard has not been through, in order, so each key still sees
//! its events in source order whoever does the work. A batch then waits
//! at most about that long for a worker that is descheduled (unless it was
//! descheduled holding its shard), not until that worker runs again: on 2
//! cores shared with the source, the sink and the committer, such waits
//! were much of the five-key latency tail of the suite's row 8.
//!
//! A shard is never taken past a barrier, a rebalance or a restore its
//! owner has not taken yet: batches carry the epoch they were read in
//! (how many such messages went before), and only a batch of the epoch of
//! the last batch its owner read may be done for it by another worker —
//! none before its owner read one, so not before it loaded the state it
//! was started with.

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::exchange::Shared;
use super::output::Output;
use crate::features::FeatureEngine;
use crate::window::Windows;

/// A worker's features and windows.
pub(super) struct Shard {
    pub features: FeatureEngine,
    pub windows: Windows,
    /// One event's feature values.
    row: Vec<f64>,
    /// The number of the last batch done here (the source numbers them
    /// from 1).
    done: u64,
    /// The epoch of the last batch its owner read; none before its first
    /// (its owner may still be loading its restored state).
    epoch: Option<u64>,
}

impl Shard {
    pub fn new(features: FeatureEngine, windows: Windows) -> Self {
        Self { features, windows, row: Vec::new(), done: 0, epoch: None }
    }

    /// Its owner `me` read `b`: does its part unless another worker did.
    pub fn read(&mut self, me: usize, b: &Shared, out: &mut Output) {
        self.epoch = Some(b.epoch);
        if self.done < b.seq {
            debug_assert_eq!(self.done + 1, b.seq, "the owner reads every batch, in order");
            self.features_of(me, b, out);
        }
    }

    /// Whether `b` is done here.
    pub fn has_done(&self, b: &Shared) -> bool {
        self.done >= b.seq
    }

    /// Another worker does shard `me`'s part of `b`, if `b` is the next
    /// batch to do here and its owner has read `b`'s epoch; false if not.
    pub fn take(&mut self, me: usize, b: &Shared, out: &mut Output) -> bool {
        if self.epoch != Some(b.epoch) || self.done + 1 != b.seq {
            return false;
        }
        self.features_of(me, b, out);
        true
    }

    /// Phase 1 for the keys of worker `me`: their features and windows,
    /// event by event in order; every event's time moves the watermark.
    fn features_of(&mut self, me: usize, b: &Shared, out: &mut Output) {
        let me = me as u8;
        let Self { features, windows, row, .. } = self;
        features.refresh_to(&b.features);
        row.resize(b.width(), 0.0);
        for (i, keys) in b.keys.iter().enumerate() {
            for &field in b.fields_of(i) {
                if let Some(k) = keys[usize::from(field.code())]
                    && k.owner == me
                {
                    features.prefetch(field, k.hash);
                }
            }
        }
        for (i, item) in b.items.iter().enumerate() {
            let p = &item.payment;
            features.set_partition(item.partition);
            windows.set_partition(item.partition);
            features.observe(p.ts_ms);
            let decides = b.deciders[i] == me;
            for &field in b.fields_of(i) {
                if !features.tracks(field) {
                    continue;
                }
                match b.keys[i][usize::from(field.code())] {
                    Some(k) if k.owner == me => {
                        features.update(p, field, k.hash, row);
                        features.tick();
                    }
                    None if decides => features.empty(field, row),
                    _ => continue,
                }
                for &f in features.features_of(field) {
                    b.set_value(i, f, row[f]);
                }
            }
            let keys = &b.keys[i];
            // At a hop, only its own keys: the rules' key is routed for
            // them even where its state was kept at an earlier hop.
            let at_hop = b.chain.as_ref().map(|_| b.fields_of(i));
            windows.add_owned(
                p,
                |field| {
                    at_hop.is_none_or(|f| f.contains(&field))
                        && keys[usize::from(field.code())].is_some_and(|k| k.owner == me)
                },
                |l| out.late(&l),
            );
        }
        windows.close(false, |c| out.closed(&c));
        self.done = b.seq;
        b.features_finished();
    }
}

/// Locks `shard`, waiting for a worker doing its part of a batch. A worker
/// that panicked holding it stopped every worker ([`super::worker`]), so
/// what it left is only read to finish up.
pub(super) fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}
