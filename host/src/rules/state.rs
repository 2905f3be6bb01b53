//! Rules' keyed state: what a rule stores between events with
//! `ctx.state_put`, kept per rule and per entity.
//!
//! A rule's state belongs to one entity of each event — its manifest's
//! `state` (`#[rule(state = account)]`), the account by default — and a
//! rule reads and writes only the current event's entity's entries. That
//! entity has one owner (see `pipeline::exchange`), which runs the rule on
//! every event of it, in order: the rule's stored history of it is whole,
//! whichever worker or daemon decides the event.
//!
//! Entries are stored under the entity's key (its space, length and id)
//! followed by the rule's own key, so a checkpoint's entry says which
//! entity, and so which owner, it belongs to. An entry not written for
//! `rules.state-ttl` of event time is forgotten.

use crate::event::Space;

/// One rule's keyed state on one worker, and what changed since the last
/// checkpoint. Each entry remembers the input partition of the event that
/// wrote it: with Kafka, the partition whose changelog carries it.
#[derive(Debug)]
pub struct RuleState {
    /// Entity key and the rule's key → (partition that wrote it, when, value).
    entries: std::collections::HashMap<Box<[u8]>, Owned>,
    /// Changed keys, with the partition that changed them.
    dirty: std::collections::HashMap<Box<[u8]>, u32>,
    /// The input partition of the event being decided.
    partition: u32,
    /// The entity key of the event being decided ([`entity_key`]); empty
    /// when the event has no such entity, which then has no state.
    entity: Vec<u8>,
    /// `entity` followed by the key a rule asks for, built per look-up.
    scratch: Vec<u8>,
    /// Bytes the entries take, counted as [`entry_bytes`] does.
    bytes: usize,
    /// The most they may take (`rules.state-max-bytes`).
    max_bytes: usize,
    /// The event time of the event being decided: its writes are stamped
    /// with it, and entries not written for `ttl_ms` before it are gone.
    now_ms: i64,
    /// The newest event time seen, which [`RuleState::expire`] ages from.
    newest_ms: i64,
    /// How long an entry outlives its last write (`rules.state-ttl`).
    ttl_ms: i64,
}

impl Default for RuleState {
    fn default() -> Self {
        Self {
            entries: std::collections::HashMap::new(),
            dirty: std::collections::HashMap::new(),
            partition: 0,
            entity: Vec::new(),
            scratch: Vec::new(),
            bytes: 0,
            max_bytes: STATE_MAX_BYTES,
            now_ms: 0,
            newest_ms: i64::MIN,
            ttl_ms: i64::MAX,
        }
    }
}

/// A rule-state value with the input partition that wrote it and the event
/// time it was written at.
type Owned = (u32, i64, Box<[u8]>);

/// The most keys one rule may hold per worker.
pub const STATE_MAX_KEYS: usize = 1_000_000;

/// The most bytes one rule's state may take per worker, by default.
pub const STATE_MAX_BYTES: usize = 64 << 20;

/// What an entry costs: its key and value, and the map's bookkeeping
/// (two boxes, the partition, the table slot, about 64 bytes).
fn entry_bytes(key: usize, value: usize) -> usize {
    key + value + 64
}

/// Appends the key of the entity with `id` in `space` to `out`: its space,
/// the id's length (2 bytes, little-endian) and the id.
pub fn entity_key(space: Space, id: &str, out: &mut Vec<u8>) {
    let id = &id.as_bytes()[..id.len().min(usize::from(u16::MAX))];
    out.push(space.code());
    out.extend_from_slice(&(id.len() as u16).to_le_bytes());
    out.extend_from_slice(id);
}

/// The entity a stored entry's key belongs to: (space, id).
pub fn entity_of(key: &[u8]) -> Option<(Space, &str)> {
    let (&space, rest) = key.split_first()?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let id = rest.get(..usize::from(u16::from_le_bytes(*len)))?;
    Some((Space::from_code(space)?, std::str::from_utf8(id).ok()?))
}

impl RuleState {
    /// Sets the event the next calls are for: its input partition, its
    /// event time, and its entity's key ([`entity_key`]; empty when it has
    /// none).
    pub fn set_event(&mut self, partition: u32, ts_ms: i64, entity: &[u8]) {
        self.partition = partition;
        self.now_ms = ts_ms;
        self.newest_ms = self.newest_ms.max(ts_ms);
        self.entity.clear();
        self.entity.extend_from_slice(entity);
    }

    /// Sets the input partition of the events that follow.
    pub fn set_partition(&mut self, partition: u32) {
        self.partition = partition;
    }

    /// Sets how long an entry outlives its last write, in event time: an
    /// event that much newer no longer sees it (`rules.state-ttl`).
    pub fn set_ttl(&mut self, ttl_ms: i64) {
        self.ttl_ms = ttl_ms;
    }

    /// Frees the entries no event from now on sees, last written more than
    /// the TTL before the newest event time, listing each in the next
    /// changes as removed.
    pub fn expire(&mut self) {
        if self.newest_ms == i64::MIN || self.ttl_ms == i64::MAX {
            return;
        }
        let cutoff_ms = self.newest_ms.saturating_sub(self.ttl_ms);
        let (bytes, dirty) = (&mut self.bytes, &mut self.dirty);
        self.entries.retain(|k, (p, at, v)| {
            let keep = *at >= cutoff_ms;
            if !keep {
                *bytes -= entry_bytes(k.len(), v.len());
                dirty.insert(k.clone(), *p);
            }
            keep
        });
    }

    /// `key` under the current entity, in `scratch`; none without one.
    fn full_key(&mut self, key: &[u8]) -> bool {
        if self.entity.is_empty() {
            return false;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.entity);
        self.scratch.extend_from_slice(key);
        true
    }

    /// The value stored for `key` of the current event's entity.
    pub fn get(&mut self, key: &[u8]) -> Option<&[u8]> {
        if !self.full_key(key) {
            return None;
        }
        let since = self.now_ms.saturating_sub(self.ttl_ms);
        self.entries.get(self.scratch.as_slice()).filter(|(_, at, _)| *at >= since).map(|(_, _, v)| &**v)
    }

    /// Stores (or, with an empty value, removes) a value for `key` of the
    /// current event's entity; false when over a limit, or when the event
    /// has no such entity.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> bool {
        if key.len() > vigil_abi::STATE_MAX_KEY || value.len() > vigil_abi::STATE_MAX_VALUE || !self.full_key(key) {
            return false;
        }
        let full = self.scratch.as_slice();
        let held = self.entries.get(full).map_or(0, |(_, _, v)| entry_bytes(full.len(), v.len()));
        if value.is_empty() {
            if self.entries.remove(full).is_none() {
                // Nothing to delete: nothing changed.
                return true;
            }
            self.bytes -= held;
        } else {
            let bytes = self.bytes - held + entry_bytes(full.len(), value.len());
            if bytes > self.max_bytes || (held == 0 && self.entries.len() >= STATE_MAX_KEYS) {
                return false;
            }
            self.entries.insert(full.into(), (self.partition, self.now_ms, value.into()));
            self.bytes = bytes;
        }
        self.dirty.insert(full.into(), self.partition);
        true
    }

    /// Bounds the bytes the state may take (`rules.state-max-bytes`): a
    /// put past it is refused, as one past the key limit is.
    pub fn set_max_bytes(&mut self, max: usize) {
        self.max_bytes = max;
    }

    /// Bytes the state takes, counted as the limit counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets the entries last written from one of `partitions`.
    pub fn drop_partitions(&mut self, partitions: &[u32]) {
        let bytes = &mut self.bytes;
        self.entries.retain(|k, (p, _, v)| {
            let keep = !partitions.contains(p);
            if !keep {
                *bytes -= entry_bytes(k.len(), v.len());
            }
            keep
        });
        self.dirty.retain(|_, p| !partitions.contains(p));
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The changes since the last call: (stored key, partition, stored
    /// value or `None` if removed). A stored value is the event time it was
    /// written at (8 bytes, little-endian) followed by the value.
    pub fn take_dirty(&mut self) -> Vec<(Vec<u8>, u32, Option<Vec<u8>>)> {
        let dirty = std::mem::take(&mut self.dirty);
        let stored = |at: i64, v: &[u8]| {
            let mut out = Vec::with_capacity(8 + v.len());
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(v);
            out
        };
        dirty.into_iter().map(|(k, p)| (k.to_vec(), p, self.entries.get(&k).map(|(_, at, v)| stored(*at, v)))).collect()
    }

    /// Loads an entry (its stored key and value, see
    /// [`RuleState::take_dirty`]) from a checkpoint or changelog, as written
    /// from the current partition; `changed` lists it in the next changes.
    pub fn restore(&mut self, key: &[u8], stored: &[u8], changed: bool) {
        let (at, value) = match stored.split_first_chunk::<8>() {
            Some((at, value)) => (i64::from_le_bytes(*at), value),
            None => (self.newest_ms.max(0), stored),
        };
        self.newest_ms = self.newest_ms.max(at);
        let old = self.entries.insert(key.into(), (self.partition, at, value.into()));
        self.bytes += entry_bytes(key.len(), value.len());
        if let Some((_, _, v)) = old {
            self.bytes -= entry_bytes(key.len(), v.len());
        }
        if changed {
            self.dirty.insert(key.into(), self.partition);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(space: Space, id: &str) -> Vec<u8> {
        let mut k = Vec::new();
        entity_key(space, id, &mut k);
        k
    }

    #[test]
    fn state_is_per_entity_and_says_whose_it_is() {
        let mut state = RuleState::default();
        state.set_event(0, 0, &entity(Space::Party, "acct-1"));
        assert!(state.put(b"last", b"d1"));
        state.set_event(0, 0, &entity(Space::Party, "acct-2"));
        assert_eq!(state.get(b"last"), None, "another account's");
        assert!(state.put(b"last", b"d2"));
        state.set_event(0, 0, &entity(Space::Party, "acct-1"));
        assert_eq!(state.get(b"last"), Some(&b"d1"[..]));
        state.set_event(0, 0, &[]);
        assert_eq!(state.get(b"last"), None, "no entity, no state");
        assert!(!state.put(b"last", b"x"), "and nothing is stored");
        let mut owners: Vec<_> =
            state.take_dirty().iter().map(|(k, _, _)| entity_of(k).map(|(s, id)| (s, id.to_owned()))).collect();
        owners.sort();
        assert_eq!(owners, [Some((Space::Party, "acct-1".into())), Some((Space::Party, "acct-2".into()))]);
    }

    #[test]
    fn entries_not_written_for_the_ttl_are_unseen_then_freed_and_restored_with_their_time() {
        let mut state = RuleState::default();
        state.set_ttl(3_000);
        state.set_event(0, 1_000, &entity(Space::Party, "old"));
        assert!(state.put(b"k", b"v"));
        state.set_event(0, 5_000, &entity(Space::Party, "new"));
        assert!(state.put(b"k", b"v"));
        state.set_event(0, 3_900, &entity(Space::Party, "old"));
        assert_eq!(state.get(b"k"), Some(&b"v"[..]), "written 2.9s before this event");
        state.set_event(0, 4_100, &entity(Space::Party, "old"));
        assert_eq!(state.get(b"k"), None, "written 3.1s before this one");
        let written = state.take_dirty();
        let mut restored = RuleState::default();
        restored.set_ttl(3_000);
        for (k, _, v) in &written {
            restored.restore(k, v.as_deref().expect("value"), false);
        }
        for s in [&mut state, &mut restored] {
            s.expire();
            assert_eq!(s.len(), 1, "the entry written at 1000 is freed");
            s.set_event(0, 5_000, &entity(Space::Party, "new"));
            assert_eq!(s.get(b"k"), Some(&b"v"[..]));
        }
        let removed = state.take_dirty();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].2, None, "and the next checkpoint removes it");
    }

    #[test]
    fn rule_state_is_bounded_in_bytes_and_deleting_nothing_changes_nothing() {
        let mut state = RuleState::default();
        let prefix = entity(Space::Card, "c");
        state.set_event(0, 0, &prefix);
        let full = prefix.len() + 4;
        state.set_max_bytes(10 * entry_bytes(full, 100));
        for i in 0..10u32 {
            assert!(state.put(&i.to_le_bytes(), &[1; 100]), "{i}");
        }
        assert!(!state.put(&10u32.to_le_bytes(), &[1; 100]), "over the bytes limit");
        assert!(state.put(&3u32.to_le_bytes(), &[2; 100]), "replacing a value in place fits");
        assert!(state.put(&3u32.to_le_bytes(), &[]), "removed");
        assert!(state.put(&10u32.to_le_bytes(), &[1; 100]), "room again");
        assert_eq!(state.bytes(), 10 * entry_bytes(full, 100));
        state.take_dirty();
        for i in 100..10_000u32 {
            assert!(state.put(&i.to_le_bytes(), &[]), "deleting an absent key is fine");
        }
        assert!(state.take_dirty().is_empty(), "and changes nothing");
    }
}
