//! Duplicate transaction-id suppression within an event-time horizon.
//!
//! Ids are kept as 128-bit hashes (collisions are negligible at any volume a
//! horizon holds) in arrival order, and forgotten once the newest event time
//! seen is more than the horizon past them.
//!
//! The ids live in a ring in arrival order, found through an index of ring
//! positions by hash: a new id is pushed at the back and an expired one
//! popped off the front, both in order, so the only random accesses are to
//! the index. Its slots are 8 bytes, an id's number and 32 bits of its
//! hash (16–32 bytes an id, the index at most half full), so more of it
//! stays in the cache than of a map of whole entries (33 bytes a slot); a
//! lookup reads the ring only when those 32 bits match (a duplicate, or one
//! new id in billions), and the slots of ids about to expire are loaded
//! ahead. An id costs 48–96 bytes in all, ring included (each between
//! half and fully used).

use crate::keyed::KeyedHash;
use std::collections::VecDeque;

/// Ids added since a checkpoint, as (id hash, event time, input partition),
/// and ids forgotten, as (id hash, input partition).
pub type Delta = (Vec<(u128, i64, u32)>, Vec<(u128, u32)>);

/// One remembered id.
#[derive(Debug, Clone, Copy)]
struct Seen {
    key: u128,
    ts: i64,
    partition: u32,
}

/// How many ids ahead of the one expiring [`Dedup::expire`] starts loading
/// index slots: enough to cover a memory access's latency.
const EXPIRE_AHEAD: usize = 16;

/// Ring positions by id hash: open addressing with linear probing over
/// 8-byte slots, eight to a cache line, at most half full.
///
/// Written here rather than taken from hashbrown for one thing its tables
/// do not offer: the address of the slot a hash starts at, so the slots of
/// ids about to expire (known long in advance, in the ring's order) are
/// loaded before they are needed. Without it each expiry waited on two
/// cache misses, the control byte and then the slot, and at millions of
/// ids that was most of the set's time (`cargo bench -p vigil --bench
/// codec -- dedup`).
#[derive(Debug, Default)]
struct Index {
    /// `tag << 32 | number`; 0 is an empty slot (a tag is never 0).
    slots: Vec<u64>,
    len: usize,
    /// 64 less log2 of the slot count: a hash's top bits pick its home.
    shift: u32,
}

impl Index {
    /// An id's tag: its hash's low 32 bits, never 0.
    fn tag(key: u128) -> u32 {
        key as u32 | 1
    }

    /// The slot a tag's probe starts at (Fibonacci hashing).
    fn home(&self, tag: u32) -> usize {
        (u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    /// Starts loading the slot `key`'s probe starts at.
    fn prefetch(&self, key: u128) {
        if let Some(slot) = self.slots.get(self.home(Self::tag(key))) {
            crate::hint::prefetch(std::ptr::from_ref(slot).cast());
        }
    }

    /// The number of an id with `tag` for which `eq(number)` holds.
    fn find(&self, tag: u32, mut eq: impl FnMut(u32) -> bool) -> Option<u32> {
        self.probe(tag, |s| (s >> 32) as u32 == tag && eq(s as u32)).map(|i| self.slots[i] as u32)
    }

    /// The position of the first slot from `tag`'s home, up to the end of
    /// its run, for which `hit` holds.
    fn probe(&self, tag: u32, mut hit: impl FnMut(u64) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(tag);
        loop {
            match self.slots[i] {
                0 => return None,
                s if hit(s) => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn insert(&mut self, tag: u32, number: u32) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        self.place(pack(tag, number));
        self.len += 1;
    }

    /// Puts `slot` in the first free slot from its home.
    fn place(&mut self, slot: u64) {
        let mask = self.slots.len() - 1;
        let mut i = self.home((slot >> 32) as u32);
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
    }

    fn grow(&mut self) {
        let count = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![0; count]);
        self.shift = 64 - count.trailing_zeros();
        for slot in old.into_iter().filter(|&s| s != 0) {
            self.place(slot);
        }
    }

    /// Removes the id numbered `number` with `tag`, closing the gap by
    /// moving later slots of the same run back (no tombstones).
    fn remove(&mut self, tag: u32, number: u32) {
        let want = pack(tag, number);
        let Some(mut hole) = self.probe(tag, |s| s == want) else {
            return;
        };
        let mask = self.slots.len() - 1;
        let mut j = (hole + 1) & mask;
        loop {
            let s = self.slots[j];
            if s == 0 {
                break;
            }
            // It may fill the hole when the hole is between its home and
            // where it is now.
            let home = self.home((s >> 32) as u32);
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole] = 0;
        self.len -= 1;
    }
}

/// An index slot: `tag << 32 | number`.
fn pack(tag: u32, number: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(number)
}

/// The set of recently seen ids.
#[derive(Debug)]
pub struct Dedup {
    horizon_ms: i64,
    /// Hashes ids under a secret: they are the input's to choose.
    hasher: KeyedHash,
    /// The ids remembered, oldest first: the id pushed as number `n`
    /// (counting from 0 over the set's life) is at `n - popped`.
    ring: VecDeque<Seen>,
    /// Each remembered id's number, truncated to 32 bits (the ring never
    /// holds 2^32 ids), by its hash.
    index: Index,
    newest_ms: i64,
    /// Ids added since the last checkpoint: (id hash, event time, partition).
    added: Vec<(u128, i64, u32)>,
    /// Ids forgotten since the last checkpoint: (id hash, partition).
    removed: Vec<(u128, u32)>,
    /// Whether `removed` is kept (see [`Dedup::track_forgotten`]).
    track_forgotten: bool,
    /// Ids pushed onto and popped off `ring` so far, and `pushed` at the
    /// last checkpoint: an id popped at or past `mark` was added since.
    pushed: u64,
    popped: u64,
    mark: u64,
    /// Whether `added` holds exactly the ids numbered `mark..pushed`, in
    /// order (no partition dropped or restored since the last
    /// checkpoint): those forgotten since are then its first
    /// `popped - mark`, and an id forgotten and remembered again is in it.
    numbered: bool,
    /// The input partition of the events being inserted.
    partition: u32,
}

impl Dedup {
    /// Remembers ids for `horizon_ms` of event time, by their hashes
    /// under `hasher`.
    pub fn new(horizon_ms: i64, hasher: KeyedHash) -> Self {
        Self {
            horizon_ms,
            hasher,
            ring: VecDeque::new(),
            index: Index::default(),
            newest_ms: i64::MIN,
            added: Vec::new(),
            removed: Vec::new(),
            track_forgotten: true,
            pushed: 0,
            popped: 0,
            mark: 0,
            numbered: true,
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
        self.ring.retain(|s| !partitions.contains(&s.partition));
        // Positions in the ring moved: number the ids again, and check
        // every added id at the next checkpoint.
        self.popped = self.pushed - self.ring.len() as u64;
        self.reindex();
        self.numbered = false;
    }

    /// Builds the index afresh from the ring.
    fn reindex(&mut self) {
        self.index = Index::default();
        for (i, s) in self.ring.iter().enumerate() {
            self.index.insert(Index::tag(s.key), (self.popped + i as u64) as u32);
        }
    }

    /// The ring position of the id with hash `key`, if remembered.
    fn find(&self, key: u128) -> Option<usize> {
        let (ring, base) = (&self.ring, self.popped as u32);
        let at = |number: u32| number.wrapping_sub(base) as usize;
        self.index.find(Index::tag(key), |n| ring[at(n)].key == key).map(at)
    }

    /// Starts loading the index slots `ids` will be looked up in, so the
    /// inserts of a batch that follow do not each wait for memory.
    pub fn prefetch<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        for id in ids {
            self.index.prefetch(self.hasher.hash128(id.as_bytes()));
        }
    }

    /// Records `id` seen at `ts_ms`; returns false when it was already seen
    /// within the horizon.
    pub fn insert(&mut self, id: &str, ts_ms: i64) -> bool {
        self.newest_ms = self.newest_ms.max(ts_ms);
        self.expire();
        let key = self.hasher.hash128(id.as_bytes());
        if self.find(key).is_some() {
            return false;
        }
        self.push(Seen { key, ts: ts_ms, partition: self.partition });
        self.added.push((key, ts_ms, self.partition));
        true
    }

    /// Appends a new id to the ring and the index.
    fn push(&mut self, seen: Seen) {
        self.index.insert(Index::tag(seen.key), self.pushed as u32);
        self.ring.push_back(seen);
        self.pushed += 1;
    }

    /// Event time before which ids are forgotten: the newest seen less the
    /// horizon.
    pub fn cutoff(&self) -> i64 {
        self.newest_ms.saturating_sub(self.horizon_ms)
    }

    fn expire(&mut self) {
        let cutoff = self.cutoff();
        while let Some(&front) = self.ring.front() {
            if front.ts >= cutoff {
                break;
            }
            if let Some(ahead) = self.ring.get(EXPIRE_AHEAD) {
                self.index.prefetch(ahead.key);
            }
            self.index.remove(Index::tag(front.key), self.popped as u32);
            self.ring.pop_front();
            self.popped += 1;
            if self.track_forgotten {
                self.removed.push((front.key, front.partition));
            }
        }
    }

    /// The ids added and forgotten since the last call, for a checkpoint.
    /// The added are those remembered now; an id forgotten and then
    /// remembered again is in both lists, so a store applies the forgotten
    /// first.
    ///
    /// Runs on the source thread at each checkpoint, so it looks no id up
    /// while the ids added since line up with their numbers: those
    /// forgotten since are the first few (a replay's event time can pass
    /// the horizon within one interval, and its checkpoint had looked up
    /// every id added, 2.3-5.0 ms for 300k ids). A partition dropped or
    /// restored since breaks the line-up, and then each id listed is
    /// looked up.
    pub fn take_delta(&mut self) -> Delta {
        let mut added = std::mem::take(&mut self.added);
        let mut removed = std::mem::take(&mut self.removed);
        if self.numbered {
            let forgotten = (self.popped.saturating_sub(self.mark) as usize).min(added.len());
            added.drain(..forgotten);
        } else {
            added.retain(|&(key, ts, _)| self.find(key).is_some_and(|i| self.ring[i].ts == ts));
            removed.retain(|&(key, _)| self.find(key).is_none());
        }
        self.numbered = true;
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
        self.numbered &= ids.is_empty();
        let mut ids = ids.to_vec();
        ids.sort_by_key(|&(key, ts)| (ts, key));
        for (key, ts) in ids {
            match self.find(key) {
                // Seen here too: it is the moved partition's now.
                Some(i) => self.ring[i] = Seen { key, ts, partition },
                None => self.push(Seen { key, ts, partition }),
            }
            self.newest_ms = self.newest_ms.max(ts);
        }
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.ring.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn repeats_within_the_horizon_are_caught() {
        let mut d = Dedup::new(1_000, KeyedHash::for_tests());
        assert!(d.insert("a", 0));
        assert!(!d.insert("a", 500));
        assert!(d.insert("b", 900));
    }

    #[test]
    fn a_restored_set_catches_the_same_duplicates() {
        let mut d = Dedup::new(1_000, KeyedHash::for_tests());
        d.insert("a", 0);
        d.insert("b", 10);
        let (added, removed) = d.take_delta();
        assert_eq!((added.len(), removed.len()), (2, 0));
        let mut r = Dedup::new(1_000, KeyedHash::for_tests());
        r.restore(&added.iter().map(|&(id, ts, _)| (id, ts)).collect::<Vec<_>>());
        assert!(!r.insert("a", 20) && !r.insert("b", 20));
        assert!(r.insert("c", 20));
        d.insert("z", 2_000);
        assert_eq!(d.take_delta().1.len(), 2, "a and b were forgotten");
    }

    #[test]
    fn a_delta_lists_each_id_as_it_ends_up() {
        let mut d = Dedup::new(1_000, KeyedHash::for_tests());
        d.set_partition(4);
        d.insert("a", 0);
        d.insert("z", 2_000); // forgets a
        let (added, removed) = d.take_delta();
        let a = KeyedHash::for_tests().hash128(b"a");
        assert_eq!(added, vec![(KeyedHash::for_tests().hash128(b"z"), 2_000, 4)], "a came and went");
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
        let mut d = Dedup::new(1_000, KeyedHash::for_tests());
        d.set_partition(1);
        assert!(d.insert("local", 100));
        d.restore_partition(3, &[(KeyedHash::for_tests().hash128(b"moved"), 90)]);
        assert!(!d.insert("moved", 110), "an id seen by the previous owner is a duplicate");
        d.drop_partitions(&[3]);
        assert!(d.insert("moved", 120), "forgotten with its partition");
        assert!(!d.insert("local", 130));
    }

    #[test]
    fn ids_are_forgotten_after_the_horizon() {
        let mut d = Dedup::new(1_000, KeyedHash::for_tests());
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
            let mut d = Dedup::new(horizon, KeyedHash::for_tests());
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

        /// The same against a model that also forgets moved partitions: the
        /// index stays right as ids expire, partitions are dropped (the
        /// ring renumbered) and ids come back.
        #[test]
        fn matches_a_naive_model_as_partitions_move(
            steps in proptest::collection::vec((0u8..20, 0i64..40, 0u8..12), 1..400),
        ) {
            let horizon = 100;
            let mut d = Dedup::new(horizon, KeyedHash::for_tests());
            let mut ts = 0;
            let mut model: HashMap<u8, (i64, u32)> = HashMap::new();
            for (id, step, action) in steps {
                let partition = u32::from(id % 3);
                if action == 0 {
                    d.drop_partitions(&[partition]);
                    model.retain(|_, (_, p)| *p != partition);
                    continue;
                }
                ts += step;
                d.set_partition(partition);
                let fresh = d.insert(&id.to_string(), ts);
                let model_dup = model.get(&id).is_some_and(|&(t, _)| t >= ts - horizon);
                prop_assert_eq!(fresh, !model_dup);
                if fresh {
                    model.insert(id, (ts, partition));
                }
                model.retain(|_, (t, _)| *t >= ts - horizon);
                prop_assert_eq!(d.len(), model.len());
            }
        }

        /// The index against a set, with few distinct tags so runs are
        /// long, wrap around the end and are closed up on removal.
        #[test]
        fn the_index_finds_what_a_set_holds(ops in proptest::collection::vec((0u32..40, any::<bool>()), 1..600)) {
            let mut index = Index::default();
            let mut model = std::collections::HashSet::new();
            for (number, add) in ops {
                let tag = Index::tag(u128::from(number % 7) << 40 | u128::from(number % 7));
                if add && model.insert(number) {
                    index.insert(tag, number);
                } else if !add && model.remove(&number) {
                    index.remove(tag, number);
                }
                prop_assert_eq!(index.len, model.len());
                for n in 0..40 {
                    let tag = Index::tag(u128::from(n % 7) << 40 | u128::from(n % 7));
                    prop_assert_eq!(index.find(tag, |m| m == n).is_some(), model.contains(&n));
                }
            }
        }

        /// Checkpoints applied in order, each with its forgotten ids first,
        /// keep a store equal to the set, as ids come, go, come back and
        /// partitions move; and the ids added are those looking each up
        /// would list.
        #[test]
        fn deltas_applied_in_order_keep_a_store_equal_to_the_set(
            steps in proptest::collection::vec((0u8..30, 0i64..300, 0u8..20), 1..300),
        ) {
            let mut d = Dedup::new(1_000, KeyedHash::for_tests());
            let mut store: HashMap<u128, (i64, u32)> = HashMap::new();
            let mut ts = 0;
            for (id, step, action) in steps {
                match action {
                    0 => {
                        // The partition's changelog is another daemon's now.
                        let partition = u32::from(id % 2);
                        d.drop_partitions(&[partition]);
                        store.retain(|_, &mut (_, p)| p != partition);
                    }
                    1..=3 => {
                        let expected: Vec<_> = d
                            .added
                            .iter()
                            .filter(|&&(key, ts, _)| d.find(key).is_some_and(|i| d.ring[i].ts == ts))
                            .copied()
                            .collect();
                        let (added, removed) = d.take_delta();
                        prop_assert_eq!(&added, &expected);
                        for (key, _) in removed {
                            store.remove(&key);
                        }
                        for (key, ts, partition) in added {
                            store.insert(key, (ts, partition));
                        }
                        let set: HashMap<u128, (i64, u32)> = d.ring.iter().map(|s| (s.key, (s.ts, s.partition))).collect();
                        prop_assert_eq!(&store, &set);
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
