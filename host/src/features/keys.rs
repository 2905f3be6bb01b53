//! The states of one key kind's keys: a slab of states and an index of
//! slot numbers by key hash.
//!
//! Memory per key is what `just bench` row 5 measures, and at a million
//! keys per worker it is most of a daemon's memory. Kept this way a key
//! costs its state inline in the slab, 4 bytes in the index (twice over, as
//! the index keeps a half-empty table) and 4 in the changed-key list —
//! where a map of boxed states cost a heap allocation's header and 16 bytes
//! a slot (a hash and a pointer, doubled). The index hashes nothing: key
//! hashes are already keyed xxh3 output, 128 bits of it, so two keys are
//! never taken for one — crafted ids cannot collide without the secret.
//!
//! A freed slot is reused by the next new key; the slab does not shrink.
//!
//! Idle keys are dropped by a sweep that walks the slab in slot order, a
//! slice at a time ([`KeyTable::sweep`]): in order the states are read
//! sequentially, and in slices no single event waits for a whole pass
//! (whole passes showed in the suite's row 4 p99).
//!
//! The index grows the same way. Grown all at once, it hashes every key
//! again, reading each key's hash from its state: a walk over the slab in
//! random order that holds a worker for longer the more keys it has. So
//! when it is full a new index of twice the room takes the new
//! keys, and each look-up moves the next few slots' keys over from the old
//! one, in slot order, until none is left; meanwhile a key is looked for in
//! both.

use crate::hint::prefetch;
use hashbrown::HashTable;

/// A key's 128-bit keyed hash (see [`crate::keyed`]): what a key is known
/// by. Kept as two halves, so a slot is aligned to 8 bytes, not 16.
type Stored = [u64; 2];

fn stored(hash: u128) -> Stored {
    [hash as u64, (hash >> 64) as u64]
}

fn full(s: Stored) -> u128 {
    u128::from(s[0]) | (u128::from(s[1]) << 64)
}

/// The half the index hashes by: the hash is keyed, so any 64 bits of it
/// spread keys as well as the whole.
fn low(hash: u128) -> u64 {
    hash as u64
}

/// A slot number in the slab.
pub type Slot = u32;

/// Slots whose keys move to the grown index at each look-up while it
/// grows: done within a sixteenth as many look-ups as there are slots, so
/// the two indexes are held together no longer than that (at 8 slots,
/// the bench's table of 1M keys, grown at 917k, still held both at 1M).
const MOVE_PER_LOOKUP: usize = 16;

/// One kind's keys: states in slots, found by key hash.
#[derive(Debug)]
pub struct KeyTable<S> {
    index: HashTable<Slot>,
    /// The index being emptied into `index` while it grows.
    old: Option<HashTable<Slot>>,
    /// The slot whose key moves to `index` next.
    moved_to: usize,
    slots: Vec<(Stored, S)>,
    free: Vec<Slot>,
    /// Which slots hold a key: a sweep skips the free ones.
    held: Bits,
    /// The slot the next sweep starts at.
    sweep_at: usize,
}

impl<S> Default for KeyTable<S> {
    fn default() -> Self {
        Self {
            index: HashTable::new(),
            old: None,
            moved_to: 0,
            slots: Vec::new(),
            free: Vec::new(),
            held: Bits::default(),
            sweep_at: 0,
        }
    }
}

impl<S: Default> KeyTable<S> {
    /// Keys held.
    pub fn len(&self) -> usize {
        self.index.len() + self.old.as_ref().map_or(0, HashTable::len)
    }

    /// Slots in the slab, held or free: what a whole sweep walks.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The slot of the key with `hash`, if held.
    pub fn find(&self, hash: u128) -> Option<Slot> {
        let slots = &self.slots;
        let key = stored(hash);
        let eq = |&s: &Slot| slots[s as usize].0 == key;
        self.index.find(low(hash), eq).or_else(|| self.old.as_ref()?.find(low(hash), eq)).copied()
    }

    /// Starts loading the state of the key with `hash` into the cache, if
    /// held, without waiting for it.
    ///
    /// The slot taken is the first the index offers for the hash, without
    /// comparing the hash stored in it: that comparison would wait for the
    /// very line being prefetched (it was most of a batch's prefetch pass).
    /// A wrong guess, when another key's index byte matches too, only loads
    /// a line for nothing.
    pub fn prefetch(&self, hash: u128) {
        let slots = &self.slots;
        let load = |&s: &Slot| {
            if let Some(entry) = slots.get(s as usize) {
                let start = std::ptr::from_ref(entry).cast::<u8>();
                for line in (0..size_of::<(Stored, S)>()).step_by(64) {
                    prefetch(start.wrapping_add(line));
                }
            }
            true
        };
        if self.index.find(low(hash), load).is_none()
            && let Some(old) = &self.old
        {
            let _ = old.find(low(hash), load);
        }
    }

    /// The slot and state of the key with `hash`, a fresh default state
    /// when new.
    pub fn find_or_insert(&mut self, hash: u128) -> (Slot, &mut S) {
        if self.old.is_some() {
            self.move_some(MOVE_PER_LOOKUP);
        }
        let slot = match self.find(hash) {
            Some(slot) => slot,
            None => self.insert_new(hash),
        };
        (slot, &mut self.slots[slot as usize].1)
    }

    fn insert_new(&mut self, hash: u128) -> Slot {
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].0 = stored(hash);
                slot
            }
            None => {
                // Past 4 billion keys in one worker the slab would have
                // exhausted memory long before.
                let slot = Slot::try_from(self.slots.len()).unwrap_or(Slot::MAX);
                self.slots.push((stored(hash), S::default()));
                slot
            }
        };
        self.held.set(slot as usize);
        if self.index.len() >= self.index.capacity() {
            self.grow();
        }
        let slots = &self.slots;
        self.index.insert_unique(low(hash), slot, |&s| slots[s as usize].0[0]);
        slot
    }

    /// Makes room in the index for as many keys again: a new index takes
    /// the new keys, and [`KeyTable::move_some`] moves the held ones over.
    fn grow(&mut self) {
        // The last growth is done by now unless the slab has far more
        // slots than keys (the move takes a sixteenth as many look-ups as
        // there are slots, and the room lasts for as many new keys as the
        // old index held); what is left of it then moves now.
        self.move_some(usize::MAX);
        let bigger = HashTable::with_capacity((2 * self.index.capacity()).max(16));
        let old = std::mem::replace(&mut self.index, bigger);
        if !old.is_empty() {
            self.old = Some(old);
            self.moved_to = 0;
        }
    }

    /// Moves the keys of the next `count` slots from the old index to the
    /// grown one, and drops the old one when it is empty.
    fn move_some(&mut self, count: usize) {
        let Self { index, old, moved_to, slots, held, .. } = self;
        let Some(from) = old.as_mut() else { return };
        let end = moved_to.saturating_add(count).min(slots.len());
        for at in *moved_to..end {
            if !held.get(at) {
                continue;
            }
            let hash = slots[at].0[0];
            // Not there when the key came after the index grew.
            if let Ok(entry) = from.find_entry(hash, |&s| s as usize == at) {
                entry.remove();
                index.insert_unique(hash, at as Slot, |&s| slots[s as usize].0[0]);
            }
        }
        *moved_to = end;
        if end == slots.len() {
            debug_assert!(from.is_empty(), "every key of the old index was in a slot before the end");
            *old = None;
        }
    }

    /// The key hash and state in `slot`. A freed slot reads as a default
    /// state (its hash is stale).
    pub fn slot_mut(&mut self, slot: Slot) -> Option<(u128, &mut S)> {
        self.slots.get_mut(slot as usize).map(|(h, s)| (full(*h), s))
    }

    /// Calls `f` on every state, held or not (a slot not held holds a
    /// default state).
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&mut S)) {
        self.move_some(usize::MAX);
        for (_, s) in &mut self.slots {
            f(s);
        }
    }

    /// Keeps only the keys for which `keep(hash, state)` is true; a dropped
    /// key's slot is emptied (its state dropped) and reused later.
    pub fn retain(&mut self, mut keep: impl FnMut(u128, &S) -> bool) {
        self.move_some(usize::MAX);
        let Self { index, slots, free, held, .. } = self;
        index.retain(|&mut slot| {
            let (hash, state) = &mut slots[slot as usize];
            if keep(full(*hash), state) {
                return true;
            }
            *state = S::default();
            free.push(slot);
            held.clear(slot as usize);
            false
        });
    }

    /// Looks at the next `count` slots, in slot order from where the last
    /// sweep stopped and round past the end, and drops each held key for
    /// which `drop_if(hash, state)` is true, as [`KeyTable::retain`] does.
    /// Sweeps of [`KeyTable::slots`] slots in all look at every key once.
    pub fn sweep(&mut self, count: usize, mut drop_if: impl FnMut(u128, &S) -> bool) {
        let len = self.slots.len();
        for _ in 0..count.min(len) {
            let at = if self.sweep_at >= len { 0 } else { self.sweep_at };
            self.sweep_at = at + 1;
            let slot = at as Slot;
            if !self.held.get(at) {
                continue;
            }
            let (hash, state) = &mut self.slots[at];
            if !drop_if(full(*hash), state) {
                continue;
            }
            let hash = hash[0];
            // Held, so one of the indexes has it.
            match self.index.find_entry(hash, |&s| s == slot) {
                Ok(entry) => drop(entry.remove()),
                Err(_) => {
                    if let Some(Ok(entry)) = self.old.as_mut().map(|o| o.find_entry(hash, |&s| s == slot)) {
                        entry.remove();
                    }
                }
            }
            *state = S::default();
            self.free.push(slot);
            self.held.clear(at);
        }
    }
}

/// A bit for each slot, cleared unless set.
#[derive(Debug, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn get(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: usize) {
        if i / 64 >= self.0.len() {
            self.0.resize(i / 64 + 1, 0);
        }
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeyTable;
    use std::collections::HashMap;

    #[test]
    fn keys_are_found_kept_and_dropped_like_a_map() {
        // Hashes that collide in their low bits, so probing is exercised.
        let hash = |k: u64| u128::from((k << 40) | (k % 7));
        let mut table: KeyTable<u64> = KeyTable::default();
        let mut model: HashMap<u128, u64> = HashMap::new();
        for round in 0..4u64 {
            for k in 0..2_000u64 {
                let (slot, v) = table.find_or_insert(hash(k));
                *v += k + round;
                assert_eq!(table.slot_mut(slot).map(|(h, _)| h), Some(hash(k)));
                *model.entry(hash(k)).or_default() += k + round;
            }
            // Drop a different third of the keys each round.
            table.retain(|h, _| (h >> 40) % 3 != u128::from(round % 3));
            model.retain(|h, _| (h >> 40) % 3 != u128::from(round % 3));
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

    #[test]
    fn a_sweep_in_slices_drops_what_retain_drops_and_offers_each_key_once() {
        let hash = |k: u64| u128::from((k << 40) | (k % 7));
        let (mut swept, mut retained): (KeyTable<u64>, KeyTable<u64>) = Default::default();
        for table in [&mut swept, &mut retained] {
            for k in 0..5_000u64 {
                *table.find_or_insert(hash(k)).1 = k;
            }
            // Free slots among the held ones, for the sweep to skip.
            table.retain(|_, &v| v % 5 != 0);
        }
        let held = swept.len();
        // Slices of every size from 1 to 97, starting part way through, so
        // the pass runs round past the end of the slab.
        swept.sweep(1_234, |_, _| false);
        let (mut looked, mut offered, mut step) = (0, 0, 1);
        while looked < swept.slots() {
            let n = step.min(swept.slots() - looked);
            swept.sweep(n, |h, &v| {
                offered += 1;
                assert_eq!(h, hash(v), "the hash held with the state");
                v % 3 == 0
            });
            looked += n;
            step = step % 97 + 1;
        }
        assert_eq!(offered, held, "each held key once, no free slot");
        retained.retain(|_, &v| v % 3 != 0);
        assert_eq!(swept.len(), retained.len());
        for k in 0..5_000u64 {
            let (a, b) = (swept.find(hash(k)), retained.find(hash(k)));
            assert_eq!(a.is_some(), b.is_some(), "key {k}");
            if let Some(slot) = a {
                assert_eq!(swept.slot_mut(slot).map(|(_, &mut v)| v), Some(k));
            }
        }
        // The slots freed are taken by new keys before the slab grows.
        let slots = swept.slots();
        for k in 10_000..10_000 + (slots - swept.len()) as u64 {
            swept.find_or_insert(hash(k));
        }
        assert_eq!(swept.slots(), slots);
        swept.find_or_insert(hash(20_000));
        assert_eq!(swept.slots(), slots + 1);
    }

    #[test]
    fn keys_stay_found_while_the_index_grows_a_slice_at_a_time() {
        let hash = |k: u64| u128::from(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | (u128::from(k) << 64);
        let mut table: KeyTable<u64> = KeyTable::default();
        let mut model: HashMap<u128, u64> = HashMap::new();
        let (mut growths, mut retained_while_growing) = (0, false);
        for k in 0..20_000u64 {
            let growing = table.old.is_some();
            *table.find_or_insert(hash(k)).1 = k;
            model.insert(hash(k), k);
            growths += usize::from(!growing && table.old.is_some());
            // Keys dropped while some are still in the old index.
            table.sweep(7, |h, &v| {
                let idle = v % 11 == 0;
                if idle {
                    model.remove(&h);
                }
                idle
            });
            if table.old.is_some() && k % 5 == 0 && !retained_while_growing {
                table.retain(|_, &v| v % 13 != 0);
                model.retain(|_, &mut v| v % 13 != 0);
                retained_while_growing = true;
            }
            if k % 97 == 0 || table.old.is_none() && growing {
                assert_eq!(table.len(), model.len(), "after key {k}");
                for (&h, &v) in &model {
                    let slot = table.find(h).unwrap_or_else(|| panic!("key {v} lost after key {k}"));
                    assert_eq!(table.slot_mut(slot).map(|(_, &mut s)| s), Some(v));
                }
            }
        }
        assert!(growths >= 5, "the index grew a slice at a time {growths} times");
        assert!(retained_while_growing);
        // Look-ups alone finish the move.
        let held = *model.keys().next().expect("keys held");
        for _ in 0..table.slots() {
            table.find_or_insert(held);
        }
        assert!(table.old.is_none());
        assert_eq!(table.len(), model.len());
    }
}
