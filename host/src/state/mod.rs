//! Durable state: checkpoints in an embedded redb database.
//!
//! A checkpoint is one redb write transaction holding everything that
//! changed since the previous one — feature state of the keys touched or
//! expired, ids added to or dropped from the de-duplication set — together
//! with the source position it covers. It commits only after the outputs
//! for every event before that position are synced, so after `kill -9` a
//! restart resumes from the last checkpoint: no event is lost and no state
//! is counted twice (decisions after the checkpoint may be written again,
//! with the same transaction id).
//!
//! redb was chosen by measurement on this 2-core machine (1M keys of 96 B):
//! writing them in one transaction took ~2.0 s against fjall's ~1.8 s, but
//! reading them all back — what a restart does — took ~0.1 s against ~0.5 s,
//! and redb's single-file ACID transactions are exactly a checkpoint
//! (BENCHMARKS.md, "State store choice": a scratch comparison, not kept).

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::window::WindowDelta;

pub mod kafka;

/// Where a source is: what a checkpoint stores to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Byte offset of the first record not yet handed out.
    pub offset: u64,
    /// Lines handed out so far.
    pub line_no: u64,
}

/// Writes `bytes` to `path` whole or not at all: to a dot-file beside it
/// (which the rules folder's watch ignores), flushed to disk, then renamed
/// over it.
///
/// # Errors
/// When the file cannot be written or renamed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Bumped when the stored layout changes incompatibly.
pub const FORMAT: u32 = 6;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const FEATURES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("features");
/// The ids each checkpoint added, in one record: (newest event time among
/// them, checkpoint id) → [id hash (u128 LE), event time (i64 LE)]…. A
/// chunk is deleted once its newest id is past the horizon. Writing one
/// record per checkpoint instead of one per event is what keeps
/// checkpoints cheap: per-id records in a B-tree, keyed by a hash, cost
/// more than the rest of a checkpoint together.
const DEDUP_CHUNKS: TableDefinition<(i64, u64), &[u8]> = TableDefinition::new("dedup_chunks");
const DEDUP_ENTRY: usize = 24;

fn dedup_chunk(ids: impl Iterator<Item = (u128, i64)>) -> (i64, Vec<u8>) {
    let mut newest = i64::MIN;
    let mut bytes = Vec::with_capacity(ids.size_hint().0 * DEDUP_ENTRY);
    for (id, ts) in ids {
        newest = newest.max(ts);
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&ts.to_le_bytes());
    }
    (newest, bytes)
}
/// Window name, NUL, key → worker (u16 LE), partition (u32 LE), open windows.
const WINDOW_KEYS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("window_keys");
const RULE_STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("rule_state");

/// A rule's keyed-state entry that changed, or went away (`value: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleStateDelta {
    /// The rule's name.
    pub rule: String,
    /// The key the rule chose.
    pub key: Vec<u8>,
    /// The worker that owns it.
    pub worker: u16,
    /// The input partition whose event last wrote it (0 for files).
    pub partition: u32,
    /// The value, or `None` to delete.
    pub value: Option<Vec<u8>>,
}

/// `name`, NUL, `key`: the store's key for rule state and for windows.
fn named_key(name: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1 + key.len());
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// Why state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened, read or written.
    #[error("state store {}", path.display())]
    Store {
        /// The database file.
        path: PathBuf,
        /// The database's error.
        source: Box<redb::Error>,
    },
    /// The database holds a record this vigil cannot read.
    #[error("state store {}: {what}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which record.
        what: &'static str,
        /// Why it could not be read, when a decoder said.
        source: Option<postcard::Error>,
    },
    /// The checkpoint record could not be encoded.
    #[error("state store {}: cannot encode the checkpoint", path.display())]
    Encode {
        /// The database file.
        path: PathBuf,
        /// The encoder's error.
        source: postcard::Error,
    },
    /// The local snapshots of the Kafka changelog could not be opened,
    /// read or written.
    #[error("local state snapshots {}", path.display())]
    Snapshots {
        /// The database file.
        path: PathBuf,
        /// The database's error.
        source: Box<redb::Error>,
    },
    /// Another daemon has the local snapshots open.
    #[error("state.dir: local state snapshots {}: in use by another vigil; give each daemon its own state.dir", path.display())]
    SnapshotsInUse {
        /// The database file.
        path: PathBuf,
    },
    /// The state changelog was not read to its end in time.
    #[error("cannot read the state changelog `{topic}` to its end within {}", humantime::format_duration(*within))]
    ChangelogTimeout {
        /// The changelog topic.
        topic: String,
        /// How long it was read for.
        within: std::time::Duration,
    },
    /// The checkpoint was written by an incompatible vigil.
    #[error(
        "state store {path}: checkpoint format v{found}, this vigil reads v{FORMAT}; \
         move the state folder away to start from scratch"
    )]
    Incompatible {
        /// The database file.
        path: PathBuf,
        /// The format found.
        found: u32,
    },
    /// The checkpoint is for another input.
    #[error(
        "state store {path}: the checkpoint is for source `{found}`, not `{expected}`; \
         move the state folder away to start from scratch"
    )]
    OtherSource {
        /// The database file.
        path: PathBuf,
        /// The source the checkpoint covers.
        found: String,
        /// The configured source.
        expected: String,
    },
    /// A checkpoint's records could not be sent to the Kafka changelog.
    #[error("cannot send checkpoint {id} to the changelog `{topic}`")]
    ChangelogWrite {
        /// The checkpoint.
        id: u64,
        /// The changelog topic.
        topic: String,
        /// The producer's error.
        source: std::io::Error,
    },
    /// A Kafka call of a checkpoint failed: committing the input's offsets
    /// or the transaction.
    #[error("{what}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The thread committing checkpoints to Kafka is gone.
    #[error("the Kafka commit thread {0}")]
    CommitThread(&'static str),
}

/// One key's feature state that changed, or went away (`state: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureDelta {
    /// Key space code ([`crate::event::Space`]).
    pub kind: u8,
    /// The key's keyed hash.
    pub hash: u128,
    /// The worker that owns it (0 for a delete).
    pub worker: u16,
    /// The input partition whose events last touched it (0 for files).
    pub partition: u32,
    /// Serialised state, or `None` to delete.
    pub state: Option<Vec<u8>>,
}

/// Everything a checkpoint writes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Sequence number.
    pub id: u64,
    /// Where the source resumes.
    pub position: Position,
    /// The source's name, to refuse resuming another input.
    pub source: String,
    /// Number of workers when written.
    pub workers: u16,
    /// Ids added to the de-duplication set: (id hash, event time, input
    /// partition).
    pub dedup_added: Vec<(u128, i64, u32)>,
    /// Ids dropped from it: (id hash, input partition).
    pub dedup_removed: Vec<(u128, u32)>,
    /// Ids with an event time before this are forgotten (the local store
    /// drops its chunks of ids all older than this).
    pub dedup_cutoff: i64,
    /// Feature state changes: the workers' lists as they sent them (each
    /// up to a key table's worth), applied in order, so a key listed twice
    /// keeps its last state. Never joined on the sink's thread, which
    /// writes the decisions meanwhile and hands every checkpoint on: the
    /// local store's committer joins them on its own, a Kafka changelog
    /// sends them as they are. (Joined on the sink's thread, row 8's
    /// 50k–130k changes a worker held it 0.2–3.5 ms a checkpoint, with
    /// the local store.)
    pub features: Vec<Vec<FeatureDelta>>,
    /// Open windows of the keys whose windows changed.
    pub windows: Vec<WindowDelta>,
    /// The newest event time the workers' watermarks follow.
    pub watermark: Option<i64>,
    /// Rules' keyed-state changes.
    pub rule_state: Vec<RuleStateDelta>,
    /// Kafka: the rebalance epoch the checkpoint was taken in; one from an
    /// earlier epoch is not committed.
    pub epoch: u64,
    /// Kafka: the next offset of each partition read, to commit.
    pub offsets: Vec<(u32, i64)>,
    /// Kafka: partitions moved just before this barrier; what was produced
    /// since the last checkpoint is discarded (exactly-once) or left
    /// uncommitted, and read again from the committed offsets.
    pub abort: bool,
}

/// Where a checkpoint is made durable: the local store, or Kafka (the
/// state changelog and the group's offsets).
pub trait Durable: Send + std::fmt::Debug {
    /// Makes `cp` durable, or hands it to a thread of its own that will
    /// (see [`Durable::finish`]); the outputs before it are already synced.
    ///
    /// # Errors
    /// When it cannot be written; the previous checkpoint stays the latest.
    fn commit(&mut self, cp: Checkpoint) -> Result<(), StateError>;

    /// Finishes the commits still under way, at shutdown.
    ///
    /// # Errors
    /// When one of them failed.
    fn finish(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    /// Whether commits may run on a thread of their own while outputs go
    /// on being written. Not for Kafka: there a commit ends the
    /// transaction the outputs are produced in.
    fn commits_off_thread(&self) -> bool {
        false
    }

    /// Whether a commit takes in every output written before it, as a
    /// Kafka transaction does: outputs of events after a checkpoint's
    /// barrier must then wait for its commit, or a crash would leave them
    /// committed with their input read again.
    fn commit_takes_outputs(&self) -> bool {
        false
    }

    /// Whether a checkpoint must list the de-duplication ids forgotten
    /// since the last one: a changelog writes a tombstone for each, while
    /// the local store drops whole chunks of ids past the horizon.
    fn needs_forgotten_ids(&self) -> bool {
        false
    }
}

/// Lists of feature changes as one, in order.
fn join(lists: Vec<Vec<FeatureDelta>>) -> Vec<FeatureDelta> {
    let rest = lists.iter().skip(1).map(Vec::len).sum();
    let mut lists = lists.into_iter();
    let mut all = lists.next().unwrap_or_default();
    all.reserve(rest);
    lists.for_each(|list| all.extend(list));
    all
}

impl Durable for StateStore {
    fn commit(&mut self, mut cp: Checkpoint) -> Result<(), StateError> {
        // Joined and moved into key order (stable: a key listed twice
        // keeps its last state) on the committer's thread, so the
        // transaction reads the deltas in turn.
        let mut all = join(std::mem::take(&mut cp.features));
        all.sort_by_key(|d| (d.kind, d.hash));
        cp.features = vec![all];
        StateStore::commit(self, &cp)
    }

    fn commits_off_thread(&self) -> bool {
        true
    }
}

/// Keyed state read back, with named records, as it goes to the workers:
/// a whole checkpoint from the store, a worker's share of one, or one input
/// partition's state from the Kafka changelog.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// The checkpoint's sequence number (0 for a changelog partition).
    pub id: u64,
    /// Where the source resumes.
    pub position: Position,
    /// Workers when written.
    pub workers: u16,
    /// The input partition the state is of (Kafka), or `None` for a
    /// checkpoint's whole state.
    pub partition: Option<u32>,
    /// The de-duplication set: (id hash, event time).
    pub dedup: Vec<(u128, i64)>,
    /// Every key's feature series.
    pub features: Vec<FeatureRecord>,
    /// Every key's open windows.
    pub windows: Vec<WindowRecord>,
    /// The newest event time the watermarks followed.
    pub watermark: Option<i64>,
    /// Rules' keyed state.
    pub rule_state: Vec<RuleRecord>,
}

/// One key's feature series, as [`crate::features::FeatureEngine::restore`] takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureRecord {
    /// The key space's code.
    pub space: u8,
    /// The key's hash.
    pub hash: u128,
    /// The serialised series.
    pub state: Vec<u8>,
}

/// One key's open windows of one window definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRecord {
    /// The window definition's name.
    pub window: String,
    /// The key.
    pub key: String,
    /// The input partition of the event that last touched it.
    pub partition: u32,
    /// The serialised windows.
    pub windows: Vec<u8>,
}

/// One value a rule stored for one of its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    /// The rule's name.
    pub rule: String,
    /// The stored key (entity and the rule's own key).
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    id: u64,
    position: Position,
    source: String,
    workers: u16,
}

/// The state database.
#[derive(Debug)]
pub struct StateStore {
    db: Database,
    path: PathBuf,
}

fn feature_key(kind: u8, hash: u128) -> [u8; 17] {
    let mut k = [0; 17];
    k[0] = kind;
    k[1..].copy_from_slice(&hash.to_be_bytes());
    k
}

impl StateStore {
    /// Opens (or creates) `dir/state.redb`.
    ///
    /// # Errors
    /// [`StateError::Store`] naming the file, e.g. when it is corrupt.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        let path = dir.join("state.redb");
        let err = |source: redb::Error| StateError::Store { path: path.clone(), source: source.into() };
        std::fs::create_dir_all(dir).map_err(|e| err(e.into()))?;
        let db = Database::create(&path).map_err(|e| err(e.into()))?;
        Ok(Self { db, path })
    }

    fn err(&self, e: impl Into<redb::Error>) -> StateError {
        StateError::Store { path: self.path.clone(), source: Box::new(e.into()) }
    }

    fn corrupt(&self, what: &'static str) -> StateError {
        StateError::Corrupt { path: self.path.clone(), what, source: None }
    }

    /// Reads the last checkpoint, if any, for the source named `source`.
    ///
    /// # Errors
    /// [`StateError`] when the store is unreadable, of another format, or
    /// for another source — never a silent reset.
    pub fn load(&self, source: &str) -> Result<Option<Restored>, StateError> {
        let rx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta_table = match rx.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let Some(raw) = meta_table.get("checkpoint").map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        let meta: Meta = postcard::from_bytes(raw.value()).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            what: "bad checkpoint record",
            source: Some(e),
        })?;
        if meta.format != FORMAT {
            return Err(StateError::Incompatible { path: self.path.clone(), found: meta.format });
        }
        if meta.source != source {
            return Err(StateError::OtherSource {
                path: self.path.clone(),
                found: meta.source,
                expected: source.to_owned(),
            });
        }
        let mut restored =
            Restored { id: meta.id, position: meta.position, workers: meta.workers, ..Restored::default() };
        match rx.open_table(DEDUP_CHUNKS) {
            Ok(chunks) => {
                // An id can be in several chunks (seen, forgotten, seen
                // again): the latest time counts.
                let mut ids: HashMap<u128, i64> = HashMap::new();
                for entry in chunks.iter().map_err(|e| self.err(e))? {
                    let (_, v) = entry.map_err(|e| self.err(e))?;
                    let v = v.value();
                    if v.len() % DEDUP_ENTRY != 0 {
                        return Err(self.corrupt("bad dedup chunk"));
                    }
                    for e in v.chunks_exact(DEDUP_ENTRY) {
                        let id = u128::from_le_bytes(e[..16].try_into().expect("16 bytes"));
                        let ts = i64::from_le_bytes(e[16..].try_into().expect("8 bytes"));
                        ids.entry(id).and_modify(|t| *t = (*t).max(ts)).or_insert(ts);
                    }
                }
                restored.dedup = ids.into_iter().collect();
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err(e)),
        }
        let features = rx.open_table(FEATURES).map_err(|e| self.err(e))?;
        for entry in features.iter().map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let (k, v) = (k.value(), v.value());
            if k.len() != 17 || v.len() < 2 {
                return Err(self.corrupt("bad feature record"));
            }
            let hash = u128::from_be_bytes(k[1..].try_into().map_err(|_| self.corrupt("bad feature key"))?);
            // The first two bytes name the worker that wrote it.
            restored.features.push(FeatureRecord { space: k[0], hash, state: v[2..].to_vec() });
        }
        match rx.open_table(RULE_STATE) {
            Ok(table) => {
                for entry in table.iter().map_err(|e| self.err(e))? {
                    let (k, v) = entry.map_err(|e| self.err(e))?;
                    let (k, v) = (k.value(), v.value());
                    let split = k.iter().position(|&b| b == 0).ok_or_else(|| self.corrupt("bad rule state key"))?;
                    let rule = std::str::from_utf8(&k[..split]).map_err(|_| self.corrupt("bad rule name"))?;
                    if v.len() < 2 {
                        return Err(self.corrupt("bad rule state record"));
                    }
                    restored.rule_state.push(RuleRecord {
                        rule: rule.to_owned(),
                        key: k[split + 1..].to_vec(),
                        value: v[2..].to_vec(),
                    });
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err(e)),
        }
        match rx.open_table(WINDOW_KEYS) {
            Ok(table) => {
                for entry in table.iter().map_err(|e| self.err(e))? {
                    let (k, v) = entry.map_err(|e| self.err(e))?;
                    let (k, v) = (k.value(), v.value());
                    let bad = || self.corrupt("bad window record");
                    let split = k.iter().position(|&b| b == 0).ok_or_else(bad)?;
                    let window = std::str::from_utf8(&k[..split]).map_err(|_| bad())?;
                    let key = std::str::from_utf8(&k[split + 1..]).map_err(|_| bad())?;
                    // After the writing worker (2 bytes): the partition.
                    let Some(partition) = v.get(2..6) else {
                        return Err(bad());
                    };
                    restored.windows.push(WindowRecord {
                        window: window.to_owned(),
                        key: key.to_owned(),
                        partition: u32::from_le_bytes([partition[0], partition[1], partition[2], partition[3]]),
                        windows: v[6..].to_vec(),
                    });
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.err(e)),
        }
        if let Some(raw) = meta_table.get("watermark").map_err(|e| self.err(e))? {
            let raw: [u8; 8] = raw.value().try_into().map_err(|_| self.corrupt("bad watermark record"))?;
            restored.watermark = Some(i64::from_le_bytes(raw));
        }
        Ok(Some(restored))
    }

    /// Writes a checkpoint atomically.
    ///
    /// # Errors
    /// [`StateError::Store`] when the transaction fails; the previous
    /// checkpoint then stays the latest.
    pub fn commit(&self, cp: &Checkpoint) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut features = tx.open_table(FEATURES).map_err(|e| self.err(e))?;
            let mut value = Vec::new();
            // In key order, each insert lands next to the last one in the
            // B-tree; a key listed twice keeps its last state. The daemon's
            // checkpoints come sorted (see `Durable::commit` above): read
            // through a sorted index instead, each delta was a cache miss,
            // most of a large commit's time.
            let listed: Vec<&FeatureDelta> = cp.features.iter().flatten().collect();
            let in_order: Vec<&FeatureDelta> = match listed.is_sorted_by_key(|d| (d.kind, d.hash)) {
                true => listed,
                false => {
                    let mut by_key: Vec<(u8, u128, usize, &FeatureDelta)> =
                        listed.into_iter().enumerate().map(|(i, d)| (d.kind, d.hash, i, d)).collect();
                    by_key.sort_unstable_by_key(|&(kind, hash, i, _)| (kind, hash, i));
                    by_key.into_iter().map(|(.., d)| d).collect()
                }
            };
            for d in in_order {
                let key = feature_key(d.kind, d.hash);
                match &d.state {
                    Some(state) => {
                        value.clear();
                        value.extend_from_slice(&d.worker.to_le_bytes());
                        value.extend_from_slice(state);
                        features.insert(key.as_slice(), value.as_slice()).map_err(|e| self.err(e))?;
                    }
                    None => {
                        features.remove(key.as_slice()).map_err(|e| self.err(e))?;
                    }
                }
            }
            let mut windows = tx.open_table(WINDOW_KEYS).map_err(|e| self.err(e))?;
            for d in &cp.windows {
                let key = named_key(&d.window, d.key.as_bytes());
                match &d.windows {
                    Some(w) => {
                        value.clear();
                        value.extend_from_slice(&d.worker.to_le_bytes());
                        value.extend_from_slice(&d.partition.to_le_bytes());
                        value.extend_from_slice(w);
                        windows.insert(key.as_slice(), value.as_slice()).map_err(|e| self.err(e))?;
                    }
                    None => {
                        windows.remove(key.as_slice()).map_err(|e| self.err(e))?;
                    }
                }
            }
            let mut rule_state = tx.open_table(RULE_STATE).map_err(|e| self.err(e))?;
            for d in &cp.rule_state {
                let key = named_key(&d.rule, &d.key);
                match &d.value {
                    Some(v) => {
                        let mut value = Vec::with_capacity(2 + v.len());
                        value.extend_from_slice(&d.worker.to_le_bytes());
                        value.extend_from_slice(v);
                        rule_state.insert(key.as_slice(), value.as_slice()).map_err(|e| self.err(e))?;
                    }
                    None => {
                        rule_state.remove(key.as_slice()).map_err(|e| self.err(e))?;
                    }
                }
            }
            // `dedup_removed` needs nothing here: whole chunks expire.
            let mut chunks = tx.open_table(DEDUP_CHUNKS).map_err(|e| self.err(e))?;
            if !cp.dedup_added.is_empty() {
                let (newest, bytes) = dedup_chunk(cp.dedup_added.iter().map(|&(id, ts, _)| (id, ts)));
                chunks.insert((newest, cp.id), bytes.as_slice()).map_err(|e| self.err(e))?;
            }
            chunks.retain_in(..(cp.dedup_cutoff, 0), |_, _| false).map_err(|e| self.err(e))?;
            let meta = Meta {
                format: FORMAT,
                id: cp.id,
                position: cp.position,
                source: cp.source.clone(),
                workers: cp.workers,
            };
            let raw =
                postcard::to_allocvec(&meta).map_err(|e| StateError::Encode { path: self.path.clone(), source: e })?;
            let mut table = tx.open_table(META).map_err(|e| self.err(e))?;
            table.insert("checkpoint", raw.as_slice()).map_err(|e| self.err(e))?;
            if let Some(t) = cp.watermark {
                table.insert("watermark", t.to_le_bytes().as_slice()).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn an_empty_store_has_no_checkpoint() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(StateStore::open(dir.path()).expect("open").load("s").expect("load").is_none());
    }

    #[test]
    fn another_source_or_format_is_refused_not_reset() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = StateStore::open(dir.path()).expect("open");
        store.commit(&Checkpoint { id: 1, source: "file:a".into(), ..Checkpoint::default() }).expect("commit");
        let e = store.load("file:b").expect_err("other source");
        assert!(e.to_string().contains("file:a") && e.to_string().contains("move the state folder"), "{e}");
    }

    #[test]
    fn a_corrupt_store_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("state.redb"), b"this is not a database at all, not even close").expect("write");
        let e = StateStore::open(dir.path()).and_then(|s| s.load("x")).expect_err("corrupt");
        assert!(e.to_string().contains("state.redb"), "{e}");
    }

    #[test]
    fn windows_are_stored_per_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = StateStore::open(dir.path()).expect("open");
        let delta = |key: &str, windows: Option<&[u8]>| WindowDelta {
            window: "card-5m".into(),
            key: key.into(),
            worker: 1,
            partition: 3,
            windows: windows.map(<[u8]>::to_vec),
        };
        let cp = Checkpoint {
            id: 2,
            source: "s".into(),
            windows: vec![delta("a", Some(b"wa")), delta("b", Some(b"wb"))],
            watermark: Some(-5),
            ..Checkpoint::default()
        };
        store.commit(&cp).expect("commit");
        let r = store.load("s").expect("load").expect("some");
        let record = |key: &str, windows: &[u8]| WindowRecord {
            window: "card-5m".into(),
            key: key.into(),
            partition: 3,
            windows: windows.to_vec(),
        };
        assert_eq!(r.windows, [record("a", b"wa"), record("b", b"wb")]);
        assert_eq!(r.watermark, Some(-5));
        let cp = Checkpoint { id: 3, source: "s".into(), windows: vec![delta("a", None)], ..Checkpoint::default() };
        store.commit(&cp).expect("commit");
        let r = store.load("s").expect("load").expect("some");
        assert_eq!(r.windows, [record("b", b"wb")]);
        assert_eq!(r.watermark, Some(-5), "kept while no worker has seen an event");
    }

    proptest! {
        /// A sequence of incremental checkpoints reads back as the model
        /// that applies the same changes to plain maps.
        #[test]
        fn checkpoints_accumulate_like_a_map(
            steps in proptest::collection::vec(
                (proptest::collection::vec((0u128..20, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))), 0..10),
                 proptest::collection::vec((0u8..20, 0i64..40), 0..10)),
                1..8),
        ) {
            let dir = tempfile::tempdir().expect("tmp");
            let mut store = StateStore::open(dir.path()).expect("open");
            let mut model_features: HashMap<u128, Vec<u8>> = HashMap::new();
            let mut model_dedup: HashMap<u128, i64> = HashMap::new();
            let mut dedup_set = crate::decode::Dedup::new(100, crate::keyed::KeyedHash::for_tests());
            let mut ts = 0;
            for (i, (features, dedup)) in steps.into_iter().enumerate() {
                let mut cp = Checkpoint { id: i as u64, source: "s".into(), workers: 2, ..Checkpoint::default() };
                cp.position = Position { offset: i as u64 * 10, line_no: i as u64 };
                let mut list = Vec::new();
                for (hash, state) in features {
                    match &state {
                        Some(s) => { model_features.insert(hash, s.clone()); }
                        None => { model_features.remove(&hash); }
                    }
                    list.push(FeatureDelta { kind: 0, hash, worker: 1, partition: 0, state });
                }
                // In lists, as workers send them.
                let rest = list.split_off(list.len() / 2);
                cp.features = vec![list, rest];
                // The set the source keeps: ids come in time order; those
                // older than the horizon are forgotten.
                for &(id, step) in &dedup {
                    ts += step;
                    dedup_set.insert(&id.to_string(), ts);
                }
                cp.dedup_cutoff = dedup_set.cutoff();
                (cp.dedup_added, cp.dedup_removed) = dedup_set.take_delta();
                for &(id, ts, _) in &cp.dedup_added {
                    model_dedup.insert(id, ts);
                }
                model_dedup.retain(|_, ts| *ts >= cp.dedup_cutoff);
                // Every other step as the daemon's committer commits.
                match i % 2 {
                    0 => store.commit(&cp).expect("commit"),
                    _ => Durable::commit(&mut store, cp.clone()).expect("commit"),
                }
                let r = store.load("s").expect("load").expect("some");
                prop_assert_eq!(r.id, i as u64);
                prop_assert_eq!(r.position, cp.position);
                let got: HashMap<u128, Vec<u8>> = r.features.into_iter().map(|f| (f.hash, f.state)).collect();
                prop_assert_eq!(&got, &model_features);
                // Chunks still kept may hold ids already forgotten, which the
                // restored set forgets in turn; every remembered id is there.
                let got: HashMap<u128, i64> = r.dedup.into_iter().filter(|&(_, ts)| ts >= cp.dedup_cutoff).collect();
                prop_assert_eq!(&got, &model_dedup);
                // And a chunk goes once all its ids are forgotten.
                let rx = store.db.begin_read().expect("read");
                let chunks = rx.open_table(DEDUP_CHUNKS).expect("chunks");
                for chunk in chunks.iter().expect("iter") {
                    let (newest, _) = chunk.expect("chunk").0.value();
                    prop_assert!(newest >= cp.dedup_cutoff, "{} < {}", newest, cp.dedup_cutoff);
                }
            }
        }
    }
}
