//! The states of one key kind's keys: a slab of states and an index of
//! slot numbers by key hash.
//!
//! Memory per key is what `just bench` row 5 measures, and at a million
//! keys per worker it is most of a daemon's memory. Kept this way a key
//! costs its state inline in the slab, 4 bytes in the index (twice over, as
//! the index keeps a half-empty table) and 4 in the changed-key list —
//! where a map of boxed states cost a heap allocation's header and 16 bytes
//! a slot (a hash and a pointer, doubled). The index hashes nothing: key
//! hashes are already xxh3 output.
//!
//! A freed slot is reused by the next new key; the slab does not shrink.

use crate::hint::prefetch;
use hashbrown::HashTable;

/// A slot number in the slab.
pub type Slot = u32;

/// One kind's keys: states in slots, found by key hash.
#[derive(Debug)]
pub struct KeyTable<S> {
    index: HashTable<Slot>,
    slots: Vec<(u64, S)>,
    free: Vec<Slot>,
}

impl<S> Default for KeyTable<S> {
    fn default() -> Self {
        Self { index: HashTable::new(), slots: Vec::new(), free: Vec::new() }
    }
}

impl<S: Default> KeyTable<S> {
    /// Keys held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// The slot of the key with `hash`, if held.
    pub fn find(&self, hash: u64) -> Option<Slot> {
        let slots = &self.slots;
        self.index.find(hash, |&s| slots[s as usize].0 == hash).copied()
    }

    /// Starts loading the state of the key with `hash` into the cache, if
    /// held, without waiting for it.
    ///
    /// The slot taken is the first the index offers for the hash, without
    /// comparing the hash stored in it: that comparison would wait for the
    /// very line being prefetched (it was most of a batch's prefetch pass).
    /// A wrong guess, when another key's index byte matches too, only loads
    /// a line for nothing.
    pub fn prefetch(&self, hash: u64) {
        let slots = &self.slots;
        let _ = self.index.find(hash, |&s| {
            if let Some(entry) = slots.get(s as usize) {
                let start = std::ptr::from_ref(entry).cast::<u8>();
                for line in (0..size_of::<(u64, S)>()).step_by(64) {
                    prefetch(start.wrapping_add(line));
                }
            }
            true
        });
    }

    /// The slot and state of the key with `hash`, a fresh default state
    /// when new.
    pub fn find_or_insert(&mut self, hash: u64) -> (Slot, &mut S) {
        let slot = match self.find(hash) {
            Some(slot) => slot,
            None => self.insert_new(hash),
        };
        (slot, &mut self.slots[slot as usize].1)
    }

    fn insert_new(&mut self, hash: u64) -> Slot {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].0 = hash;
                slot
            }
            None => {
                // Past 4 billion keys in one worker the slab would have
                // exhausted memory long before.
                let slot = Slot::try_from(self.slots.len()).unwrap_or(Slot::MAX);
                self.slots.push((hash, S::default()));
                slot
            }
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, slot, |&s| slots[s as usize].0);
        slot
    }

    /// The key hash and state in `slot`. A freed slot reads as a default
    /// state (its hash is stale).
    pub fn slot_mut(&mut self, slot: Slot) -> Option<(u64, &mut S)> {
        self.slots.get_mut(slot as usize).map(|(h, s)| (*h, s))
    }

    /// Keeps only the keys for which `keep(hash, state)` is true; a dropped
    /// key's slot is emptied (its state dropped) and reused later.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, &S) -> bool) {
        let Self { index, slots, free } = self;
        index.retain(|&mut slot| {
            let (hash, state) = &mut slots[slot as usize];
            if keep(*hash, state) {
                return true;
            }
            *state = S::default();
            free.push(slot);
            false
        });
    }
}

#[cfg(test)]
mod tests {
    use super::KeyTable;
    use std::collections::HashMap;

    #[test]
    fn keys_are_found_kept_and_dropped_like_a_map() {
        // Hashes that collide in their low bits, so probing is exercised.
        let hash = |k: u64| (k << 40) | (k % 7);
        let mut table: KeyTable<u64> = KeyTable::default();
        let mut model: HashMap<u64, u64> = HashMap::new();
        for round in 0..4u64 {
            for k in 0..2_000u64 {
                let (slot, v) = table.find_or_insert(hash(k));
                *v += k + round;
                assert_eq!(table.slot_mut(slot).map(|(h, _)| h), Some(hash(k)));
                *model.entry(hash(k)).or_default() += k + round;
            }
            // Drop a different third of the keys each round.
            table.retain(|h, _| (h >> 40) % 3 != round % 3);
            model.retain(|h, _| (h >> 40) % 3 != round % 3);
            assert_eq!(table.len(), model.len());
            for (&h, &v) in &model {
                let slot = table.find(h).expect("kept key");
                assert_eq!(table.slot_mut(slot).map(|(_, s)| *s), Some(v), "key {}", h >> 40);
            }
        }
        // Freed slots were reused: the slab never held more than all keys.
        assert!(table.slots.len() <= 2_000, "{} slots", table.slots.len());
        assert_eq!(table.find(hash(5_000)), None);
    }

    #[test]
    fn a_dropped_key_comes_back_empty() {
        let mut table: KeyTable<Vec<u8>> = KeyTable::default();
        *table.find_or_insert(42).1 = vec![1, 2, 3];
        table.retain(|_, _| false);
        assert_eq!(table.len(), 0);
        let (slot, state) = table.find_or_insert(43);
        assert!(state.is_empty());
        *table.find_or_insert(43).1 = vec![9];
        assert_eq!(table.len(), 1);
        assert_eq!(table.slot_mut(slot), Some((43, &mut vec![9])));
    }
}
