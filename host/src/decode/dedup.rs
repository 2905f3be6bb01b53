//! Duplicate transaction-id suppression within an event-time horizon.
//!
//! Ids are kept as 128-bit hashes (collisions are negligible at any volume a
//! horizon holds) in arrival order, and forgotten once the newest event time
//! seen is more than the horizon past them.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use xxhash_rust::xxh3::xxh3_128;

/// Keys are xxh3 hashes already: hashing them again (std's SipHash) only
/// costs time, so the map takes their low bits as they are.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u128` is used; this keeps any other key well spread.
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u128(&mut self, v: u128) {
        self.0 ^= v as u64;
    }
}

type IdMap = HashMap<u128, (i64, u32), BuildHasherDefault<Prehashed>>;

/// Ids added since a checkpoint, as (id hash, event time, input partition),
/// and ids forgotten, as (id hash, input partition).
pub type Delta = (Vec<(u128, i64, u32)>, Vec<(u128, u32)>);

/// The set of recently seen ids.
#[derive(Debug)]
pub struct Dedup {
    horizon_ms: i64,
    /// Id hash → (event time, input partition it came from).
    seen: IdMap,
    order: VecDeque<(i64, u128)>,
    newest_ms: i64,
    /// Ids added since the last checkpoint: (id hash, event time, partition).
    added: Vec<(u128, i64, u32)>,
    /// Ids forgotten since the last checkpoint: (id hash, partition).
    removed: Vec<(u128, u32)>,
    /// Whether `removed` is kept (see [`Dedup::track_forgotten`]).
    track_forgotten: bool,
    /// Ids pushed onto and popped off `order` so far, and `pushed` at the
    /// last checkpoint: an id popped at or past `mark` was added since.
    pushed: u64,
    popped: u64,
    mark: u64,
    /// Whether an id added since the last checkpoint may have been
    /// forgotten since: `added` then needs checking against `seen`.
    stale: bool,
    /// The input partition of the events being inserted.
    partition: u32,
}

impl Dedup {
    /// Remembers ids for `horizon_ms` of event time.
    pub fn new(horizon_ms: i64) -> Self {
        Self {
            horizon_ms,
            seen: IdMap::default(),
            order: VecDeque::new(),
            newest_ms: i64::MIN,
            added: Vec::new(),
            removed: Vec::new(),
            track_forgotten: true,
            pushed: 0,
            popped: 0,
            mark: 0,
            stale: false,
            partition: 0,
        }
    }

    /// Whether checkpoints list the ids forgotten (on by default): a Kafka
    /// changelog writes a tombstone for each, while the local store drops
    /// whole chunks of ids once past the horizon and needs no list.
    pub fn track_forgotten(&mut self, on: bool) {
        self.track_forgotten = on;
        if !on {
            self.removed = Vec::new();
        }
    }

    /// Sets the input partition of the ids inserted next.
    pub fn set_partition(&mut self, partition: u32) {
        self.partition = partition;
    }

    /// Forgets the ids seen from `partitions` (moved to another daemon, or
    /// about to be read again from their last committed offset).
    pub fn drop_partitions(&mut self, partitions: &[u32]) {
        self.seen.retain(|_, (_, p)| !partitions.contains(p));
        let seen = &self.seen;
        self.order.retain(|(_, key)| seen.contains_key(key));
        // Positions in `order` moved: check every added id at the next
        // checkpoint.
        self.stale = true;
        self.popped = self.pushed - self.order.len() as u64;
    }

    /// Records `id` seen at `ts_ms`; returns false when it was already seen
    /// within the horizon.
    pub fn insert(&mut self, id: &str, ts_ms: i64) -> bool {
        self.newest_ms = self.newest_ms.max(ts_ms);
        self.expire();
        let key = xxh3_128(id.as_bytes());
        match self.seen.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => return false,
            std::collections::hash_map::Entry::Vacant(v) => v.insert((ts_ms, self.partition)),
        };
        self.order.push_back((ts_ms, key));
        self.pushed += 1;
        self.added.push((key, ts_ms, self.partition));
        true
    }

    /// Event time before which ids are forgotten: the newest seen less the
    /// horizon.
    pub fn cutoff(&self) -> i64 {
        self.newest_ms.saturating_sub(self.horizon_ms)
    }

    fn expire(&mut self) {
        let cutoff = self.cutoff();
        while let Some(&(ts, key)) = self.order.front() {
            if ts >= cutoff {
                break;
            }
            self.order.pop_front();
            self.stale |= self.popped >= self.mark;
            self.popped += 1;
            if let Some((_, partition)) = self.seen.remove(&key)
                && self.track_forgotten
            {
                self.removed.push((key, partition));
            }
        }
    }

    /// The ids added and forgotten since the last call, for a checkpoint.
    /// An id both added and forgotten since the last call is listed once,
    /// as what it is now: kept if it is remembered, else removed.
    ///
    /// Runs on the source thread at each checkpoint, so it looks ids up
    /// only when it must: an added id needs checking only when one may
    /// have been forgotten since (rare: the horizon is far longer than a
    /// checkpoint interval), and forgotten ids are listed only for Kafka.
    pub fn take_delta(&mut self) -> Delta {
        let seen = &self.seen;
        let mut added = std::mem::take(&mut self.added);
        let mut removed = std::mem::take(&mut self.removed);
        if self.stale {
            added.retain(|(key, ts, _)| seen.get(key).is_some_and(|(t, _)| t == ts));
        }
        removed.retain(|(key, _)| !seen.contains_key(key));
        self.stale = false;
        self.popped = self.pushed - self.order.len() as u64;
        self.mark = self.pushed;
        (added, removed)
    }

    /// Loads the set a checkpoint stored, as ids of the current partition.
    pub fn restore(&mut self, ids: &[(u128, i64)]) {
        self.restore_partition(self.partition, ids);
    }

    /// Loads the ids a partition's changelog holds (the partition has just
    /// moved here), so a payment replayed after the move is still caught.
    pub fn restore_partition(&mut self, partition: u32, ids: &[(u128, i64)]) {
        let mut ids = ids.to_vec();
        ids.sort_by_key(|&(key, ts)| (ts, key));
        for (key, ts) in ids {
            if self.seen.insert(key, (ts, partition)).is_none() {
                self.order.push_back((ts, key));
                self.pushed += 1;
            }
            self.newest_ms = self.newest_ms.max(ts);
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repeats_within_the_horizon_are_caught() {
        let mut d = Dedup::new(1_000);
        assert!(d.insert("a", 0));
        assert!(!d.insert("a", 500));
        assert!(d.insert("b", 900));
    }

    #[test]
    fn a_restored_set_catches_the_same_duplicates() {
        let mut d = Dedup::new(1_000);
        d.insert("a", 0);
        d.insert("b", 10);
        let (added, removed) = d.take_delta();
        assert_eq!((added.len(), removed.len()), (2, 0));
        let mut r = Dedup::new(1_000);
        r.restore(&added.iter().map(|&(id, ts, _)| (id, ts)).collect::<Vec<_>>());
        assert!(!r.insert("a", 20) && !r.insert("b", 20));
        assert!(r.insert("c", 20));
        d.insert("z", 2_000);
        assert_eq!(d.take_delta().1.len(), 2, "a and b were forgotten");
    }

    #[test]
    fn a_delta_lists_each_id_as_it_ends_up() {
        let mut d = Dedup::new(1_000);
        d.set_partition(4);
        d.insert("a", 0);
        d.insert("z", 2_000); // forgets a
        let (added, removed) = d.take_delta();
        let a = xxh3_128(b"a");
        assert_eq!(added, vec![(xxh3_128(b"z"), 2_000, 4)], "a came and went");
        assert_eq!(removed, vec![(a, 4)]);
        d.insert("b", 2_001);
        d.insert("a", 4_000); // forgets z and b, a is back
        let (added, removed) = d.take_delta();
        assert_eq!(added, vec![(a, 4_000, 4)]);
        assert_eq!(removed.len(), 2, "z and b, not a: {removed:?}");
        assert!(!removed.iter().any(|(id, _)| *id == a));
    }

    #[test]
    fn a_moved_partition_s_ids_are_restored_and_dropped_with_it() {
        let mut d = Dedup::new(1_000);
        d.set_partition(1);
        assert!(d.insert("local", 100));
        d.restore_partition(3, &[(xxh3_128(b"moved"), 90)]);
        assert!(!d.insert("moved", 110), "an id seen by the previous owner is a duplicate");
        d.drop_partitions(&[3]);
        assert!(d.insert("moved", 120), "forgotten with its partition");
        assert!(!d.insert("local", 130));
    }

    #[test]
    fn ids_are_forgotten_after_the_horizon() {
        let mut d = Dedup::new(1_000);
        assert!(d.insert("a", 0));
        assert!(d.insert("b", 1_001));
        assert_eq!(d.len(), 1);
        assert!(d.insert("a", 1_002));
    }

    proptest! {
        /// Against a model that keeps everything: with in-order event times,
        /// an id is a duplicate exactly when it was seen at most `horizon` ago.
        #[test]
        fn matches_a_naive_model(ids in proptest::collection::vec((0u8..20, 0i64..50), 1..200)) {
            let horizon = 100;
            let mut d = Dedup::new(horizon);
            let mut ts = 0;
            let mut last_seen: HashMap<u8, i64> = HashMap::new();
            for (id, step) in ids {
                ts += step;
                let fresh = d.insert(&id.to_string(), ts);
                let newest = ts;
                let model_dup = last_seen.get(&id).is_some_and(|&t| t >= newest - horizon);
                prop_assert_eq!(fresh, !model_dup);
                if fresh {
                    last_seen.insert(id, ts);
                }
            }
        }

        /// Checking added ids only when one may have been forgotten gives
        /// the same delta as checking every one, as ids come, go, come back
        /// and partitions move.
        #[test]
        fn a_delta_checks_added_ids_only_when_it_must(
            steps in proptest::collection::vec((0u8..30, 0i64..300, 0u8..20), 1..300),
        ) {
            let mut d = Dedup::new(1_000);
            let mut ts = 0;
            for (id, step, action) in steps {
                match action {
                    0 => d.drop_partitions(&[u32::from(id % 2)]),
                    1..=3 => {
                        let expected: Vec<_> = d
                            .added
                            .iter()
                            .filter(|(key, ts, _)| d.seen.get(key).is_some_and(|(t, _)| t == ts))
                            .copied()
                            .collect();
                        prop_assert_eq!(d.take_delta().0, expected);
                    }
                    _ => {
                        ts += step;
                        d.set_partition(u32::from(id % 2));
                        d.insert(&id.to_string(), ts);
                    }
                }
            }
        }
    }
}
