//! Local snapshots of the changelog: what a daemon last knew of each
//! partition's state, so taking a partition back reads only the changelog
//! records written since, not the whole partition.
//!
//! For each input partition the snapshot holds the changelog's records as
//! the compacted topic would keep them (latest value per key) up to an
//! offset, `next`: every record before `next` is reflected. A daemon
//! restoring the partition loads the snapshot and reads the changelog from
//! `next` to its end; records it applies twice are harmless, since each
//! holds a key's whole latest value. `next` moves:
//! - to the changelog's end after a restore, with the records read stored;
//! - past this daemon's own records once they are acknowledged, but only
//!   while they follow on from `next` with no gap: a gap means another
//!   writer (a member the group replaced but that is still running), and
//!   `next` then stays put until the next restore reads the gap.
//!
//! A snapshot is not used when it is for another changelog or cluster, when
//! `next` lies beyond the changelog's end (the topic was recreated), or
//! when it is older than [`MAX_AGE`]: the broker drops tombstones of a
//! compacted topic after `delete.retention.ms` (a day by default), so a
//! deletion older than that cannot be read back. Exactly-once mode does not
//! use snapshots: its changelog records count only once their transaction
//! commits.

use crate::state::StateError;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Partition (u32 BE) + changelog key → value.
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// Partition → `next` (i64 LE) + when it was set (epoch ms, u64 LE).
const MARKS: TableDefinition<u32, &[u8]> = TableDefinition::new("marks");
/// "changelog" → the cluster id and topic the snapshots are of.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Snapshots older than this are not used: half of Kafka's default
/// `delete.retention.ms`, so no tombstone written since can be gone.
pub const MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// The snapshot database, `<state.dir>/kafka-state.redb`.
#[derive(Debug)]
pub struct Snapshots {
    db: Database,
    path: PathBuf,
}

/// One changelog record of a checkpoint: (partition, key, value or `None`
/// for a tombstone).
pub type Record = (u32, Vec<u8>, Option<Vec<u8>>);

/// A partition's snapshot: the changelog offset it reflects everything
/// before, and the latest value of each key.
pub type Snapshot = (i64, HashMap<Vec<u8>, Vec<u8>>);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn record_key(partition: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn mark(next: i64, at_ms: u64) -> [u8; 16] {
    let mut m = [0; 16];
    m[..8].copy_from_slice(&next.to_le_bytes());
    m[8..].copy_from_slice(&at_ms.to_le_bytes());
    m
}

fn read_mark(raw: &[u8]) -> Option<(i64, u64)> {
    let next = i64::from_le_bytes(raw.get(..8)?.try_into().ok()?);
    let at = u64::from_le_bytes(raw.get(8..16)?.try_into().ok()?);
    Some((next, at))
}

impl Snapshots {
    /// Opens (or creates) the snapshots in `dir` for `changelog` on the
    /// cluster `cluster`; snapshots of another changelog are dropped.
    ///
    /// # Errors
    /// [`StateError::SnapshotsInUse`] when another vigil uses the same
    /// `state.dir`; [`StateError::Snapshots`] naming the file otherwise.
    pub fn open(dir: &Path, cluster: &str, changelog: &str) -> Result<Self, StateError> {
        let path = dir.join("kafka-state.redb");
        let err = |source: redb::Error| StateError::Snapshots { path: path.clone(), source: source.into() };
        std::fs::create_dir_all(dir).map_err(|e| err(e.into()))?;
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StateError::SnapshotsInUse { path: path.clone() },
            e => err(e.into()),
        })?;
        let this = Self { db, path };
        let id = format!("{cluster}/{changelog}");
        let tx = this.db.begin_write().map_err(|e| this.err(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| this.err(e))?;
            let known = meta.get("changelog").map_err(|e| this.err(e))?.map(|v| v.value().to_owned());
            if known.as_deref() != Some(id.as_str()) {
                if let Some(known) = known {
                    tracing::info!(file = %this.path.display(), was = %known, now = %id, "local state snapshots are of another changelog; starting them afresh");
                }
                tx.delete_table(RECORDS).map_err(|e| this.err(e))?;
                tx.delete_table(MARKS).map_err(|e| this.err(e))?;
                meta.insert("changelog", id.as_str()).map_err(|e| this.err(e))?;
            }
        }
        tx.commit().map_err(|e| this.err(e))?;
        Ok(this)
    }

    fn err(&self, e: impl Into<redb::Error>) -> StateError {
        StateError::Snapshots { path: self.path.clone(), source: Box::new(e.into()) }
    }

    /// A partition's snapshot, if there is a usable one: the offset to read
    /// the changelog from, and the records up to it.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub fn load(&self, partition: u32) -> Result<Option<Snapshot>, StateError> {
        let rx = self.db.begin_read().map_err(|e| self.err(e))?;
        let marks = match rx.open_table(MARKS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some((next, at)) = marks.get(partition).map_err(|e| self.err(e))?.and_then(|m| read_mark(m.value())) else {
            return Ok(None);
        };
        if now_ms().saturating_sub(at) > MAX_AGE.as_millis() as u64 {
            tracing::info!(partition, "the local state snapshot is too old to trust; reading the whole changelog");
            return Ok(None);
        }
        let records = rx.open_table(RECORDS).map_err(|e| self.err(e))?;
        let (from, to) = (partition.to_be_bytes(), (u64::from(partition) + 1).to_be_bytes());
        let mut out = HashMap::new();
        // Keys of `partition` sort between its 4-byte prefix and the next's.
        let range = records.range::<&[u8]>(from.as_slice()..&to[4..]).map_err(|e| self.err(e))?;
        for entry in range {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            out.insert(k.value()[4..].to_vec(), v.value().to_vec());
        }
        Ok(Some((next, out)))
    }

    /// Stores what a restore read: `records` (key, value or `None` when
    /// deleted) on top of the partition's snapshot, or replacing it when
    /// `whole`, now reflecting the changelog up to `next`.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn restored<'a>(
        &self,
        partition: u32,
        whole: bool,
        records: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        next: i64,
    ) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(RECORDS).map_err(|e| self.err(e))?;
            if whole {
                let from = partition.to_be_bytes();
                let to = (u64::from(partition) + 1).to_be_bytes();
                table.retain_in::<&[u8], _>(from.as_slice()..&to[4..], |_, _| false).map_err(|e| self.err(e))?;
            }
            put(&mut table, partition, records).map_err(|e| self.err(e))?;
            let mut marks = tx.open_table(MARKS).map_err(|e| self.err(e))?;
            marks.insert(partition, mark(next, now_ms()).as_slice()).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Stores a checkpoint's acknowledged changelog records; `written`
    /// gives, per partition, the offsets they landed at, in order.
    ///
    /// # Errors
    /// When the database cannot be written.
    pub fn apply(&self, records: &[Record], written: &HashMap<u32, Vec<i64>>) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = tx.open_table(RECORDS).map_err(|e| self.err(e))?;
            for (p, k, v) in records {
                put(&mut table, *p, std::iter::once((k.as_slice(), v.as_deref()))).map_err(|e| self.err(e))?;
            }
            let mut marks = tx.open_table(MARKS).map_err(|e| self.err(e))?;
            for (&partition, offsets) in written {
                let Some((next, at)) =
                    marks.get(partition).map_err(|e| self.err(e))?.and_then(|m| read_mark(m.value()))
                else {
                    continue;
                };
                if let Some(last) = follows_on(next, offsets) {
                    marks.insert(partition, mark(last + 1, at).as_slice()).map_err(|e| self.err(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

/// The last of `offsets` when they run on from `next` without a gap.
fn follows_on(next: i64, offsets: &[i64]) -> Option<i64> {
    let gapless = (next..).zip(offsets).all(|(want, &o)| o == want);
    offsets.last().copied().filter(|_| gapless)
}

fn put<'a>(
    table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    partition: u32,
    records: impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)>,
) -> Result<(), redb::StorageError> {
    for (k, v) in records {
        let key = record_key(partition, k);
        match v {
            Some(v) => {
                table.insert(key.as_slice(), v)?;
            }
            None => {
                table.remove(key.as_slice())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&[u8], &[u8])]) -> HashMap<Vec<u8>, Vec<u8>> {
        pairs.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn a_restore_then_own_records_in_order_move_the_mark() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Snapshots::open(dir.path(), "c1", "state").expect("open");
        assert!(s.load(3).expect("load").is_none(), "nothing yet");
        s.restored(3, true, [(&b"a"[..], Some(&b"1"[..])), (&b"b"[..], Some(&b"2"[..]))].into_iter(), 10)
            .expect("restored");
        // Partition 4's records do not mix with 3's.
        s.restored(4, true, [(&b"a"[..], Some(&b"x"[..]))].into_iter(), 7).expect("restored");
        assert_eq!(s.load(3).expect("load"), Some((10, entries(&[(b"a", b"1"), (b"b", b"2")]))));
        // Own records at 10 and 11: the mark moves to 12.
        let records = vec![(3, b"a".to_vec(), None), (3, b"c".to_vec(), Some(b"3".to_vec()))];
        s.apply(&records, &HashMap::from([(3, vec![10, 11])])).expect("apply");
        assert_eq!(s.load(3).expect("load"), Some((12, entries(&[(b"b", b"2"), (b"c", b"3")]))));
        // A gap (someone else wrote offset 12): the records are kept, the
        // mark is not moved past the gap.
        let records = vec![(3, b"d".to_vec(), Some(b"4".to_vec()))];
        s.apply(&records, &HashMap::from([(3, vec![13])])).expect("apply");
        let (next, got) = s.load(3).expect("load").expect("some");
        assert_eq!(next, 12);
        assert_eq!(got.len(), 3);
        // A restore replacing the whole partition drops what was there.
        s.restored(3, true, [(&b"z"[..], Some(&b"9"[..]))].into_iter(), 20).expect("restored");
        assert_eq!(s.load(3).expect("load"), Some((20, entries(&[(b"z", b"9")]))));
        assert_eq!(s.load(4).expect("load"), Some((7, entries(&[(b"a", b"x")]))));
    }

    #[test]
    fn snapshots_of_another_changelog_are_dropped() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let s = Snapshots::open(dir.path(), "c1", "state").expect("open");
            s.restored(0, true, [(&b"a"[..], Some(&b"1"[..]))].into_iter(), 5).expect("restored");
        }
        {
            let s = Snapshots::open(dir.path(), "c1", "state").expect("open");
            assert!(s.load(0).expect("load").is_some(), "same changelog: kept");
        }
        let s = Snapshots::open(dir.path(), "c2", "state").expect("open");
        assert!(s.load(0).expect("load").is_none(), "another cluster: dropped");
    }

    #[test]
    fn a_snapshot_too_old_is_not_used() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Snapshots::open(dir.path(), "c1", "state").expect("open");
        s.restored(0, true, std::iter::empty(), 5).expect("restored");
        let old = now_ms() - MAX_AGE.as_millis() as u64 - 1_000;
        let tx = s.db.begin_write().expect("tx");
        tx.open_table(MARKS).expect("marks").insert(0, mark(5, old).as_slice()).expect("insert");
        tx.commit().expect("commit");
        assert!(s.load(0).expect("load").is_none());
    }

    #[test]
    fn offsets_follow_on_only_without_a_gap() {
        assert_eq!(follows_on(5, &[5, 6, 7]), Some(7));
        assert_eq!(follows_on(5, &[6]), None);
        assert_eq!(follows_on(5, &[5, 7]), None);
        assert_eq!(follows_on(5, &[]), None);
    }

    #[test]
    fn a_second_daemon_on_the_same_folder_is_told_so() {
        let dir = tempfile::tempdir().expect("tmp");
        let _first = Snapshots::open(dir.path(), "c", "s").expect("open");
        let e = Snapshots::open(dir.path(), "c", "s").expect_err("in use").to_string();
        assert!(e.contains("kafka-state.redb") && e.contains("own state.dir"), "{e}");
    }
}
