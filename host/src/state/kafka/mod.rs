//! The state changelog: one compacted topic, partitioned like the input,
//! holding the latest value of every piece of keyed state.
//!
//! Record keys: `f` + key space + 128-bit key hash (big-endian) for a key's feature
//! series; `r` + rule name + NUL + the rule's key for rules' state; `w` +
//! window name + NUL + key for a key's open windows; `d` + the 128-bit id
//! hash (big-endian) for a transaction id in the de-duplication set, whose
//! value is its event time (i64, big-endian). The value is the state as the
//! local store keeps it; a tombstone (no value) deletes.

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod snapshot;

use super::{FeatureRecord, Restored, RuleRecord, WindowRecord};
use crate::config::KafkaConfig;
use crate::kafka::{Fence, Logging, SourceContext};
use crate::sinks::Producer;
use crate::state::{Checkpoint, Durable, StateError};
use snapshot::Snapshots;

fn feature_key(kind: u8, hash: u128) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.push(b'f');
    k.push(kind);
    k.extend_from_slice(&hash.to_be_bytes());
    k
}

fn dedup_key(id: u128) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'd');
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `tag`, `name`, NUL, `key`: rule state (`r`) and windows (`w`).
fn named_key(tag: u8, name: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + name.len() + key.len());
    k.push(tag);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// Sorts one changelog record into `state`.
fn apply(state: &mut HashMap<Vec<u8>, Vec<u8>>, key: &[u8], value: Option<&[u8]>) {
    match value {
        Some(v) => {
            state.insert(key.to_vec(), v.to_vec());
        }
        None => {
            state.remove(key);
        }
    }
}

fn into_partition_state(partition: u32, entries: HashMap<Vec<u8>, Vec<u8>>) -> Restored {
    let mut out = Restored { partition: Some(partition), ..Restored::default() };
    for (key, value) in entries {
        match key.split_first() {
            Some((b'f', rest)) if rest.len() == 17 => {
                let mut hash = [0u8; 16];
                hash.copy_from_slice(&rest[1..]);
                out.features.push(FeatureRecord { space: rest[0], hash: u128::from_be_bytes(hash), state: value });
            }
            Some((b'r', rest)) => {
                if let Some(nul) = rest.iter().position(|&b| b == 0) {
                    let rule = String::from_utf8_lossy(&rest[..nul]).into_owned();
                    out.rule_state.push(RuleRecord { rule, key: rest[nul + 1..].to_vec(), value });
                }
            }
            Some((b'w', rest)) => {
                let split = rest.iter().position(|&b| b == 0);
                match split.map(|nul| (std::str::from_utf8(&rest[..nul]), std::str::from_utf8(&rest[nul + 1..]))) {
                    Some((Ok(window), Ok(key))) => out.windows.push(WindowRecord {
                        window: window.to_owned(),
                        key: key.to_owned(),
                        partition,
                        windows: value,
                    }),
                    _ => tracing::warn!(partition, "ignoring a malformed window record in the changelog"),
                }
            }
            Some((b'd', rest)) => match (<[u8; 16]>::try_from(rest), <[u8; 8]>::try_from(value.as_slice())) {
                (Ok(id), Ok(ts)) => out.dedup.push((u128::from_be_bytes(id), i64::from_be_bytes(ts))),
                _ => tracing::warn!(partition, "ignoring a malformed de-duplication record in the changelog"),
            },
            _ => tracing::warn!(partition, "ignoring a changelog record with an unknown key"),
        }
    }
    out
}

/// Reads `partitions` of the changelog to their current end: from the
/// local snapshot's mark where there is a usable one, else from the start.
/// What was read goes into the snapshots.
///
/// # Errors
/// When the changelog cannot be read within the outage limit.
pub fn read(
    k: &KafkaConfig,
    topic: &str,
    partitions: &[u32],
    snapshots: Option<&Snapshots>,
) -> Result<Vec<Restored>, StateError> {
    let started = Instant::now();
    let mut c = crate::kafka::client_config(k);
    for (key, value) in &k.consumer {
        c.set(key, value);
    }
    c.set("group.id", format!("{}-restore", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        // A snapshot's offset beyond the partition's end is an error, not a
        // silent jump: the topic was recreated, and the snapshot is void.
        .set("auto.offset.reset", "error")
        // An empty fetch at the end comes back at once, not after 500 ms.
        .set("fetch.wait.max.ms", "10");
    let consumer: BaseConsumer<Logging> = c.create_with_context(Logging).map_err(|source| StateError::Kafka {
        what: "kafka.client: cannot create a consumer".into(),
        source: source.into(),
    })?;
    // Read to the end as each fetch reports it (partition EOF), not to a
    // listed end offset: that is what the brokers last said they hold.
    let mut open: HashSet<u32> = partitions.iter().copied().collect();
    let mut tpl = TopicPartitionList::new();
    let mut entries: HashMap<u32, HashMap<Vec<u8>, Vec<u8>>> = HashMap::new();
    // Per partition: the offset after the last record reflected, and the
    // keys read on top of a local snapshot (`None`: read whole).
    let mut next: HashMap<u32, i64> = HashMap::new();
    let mut touched: HashMap<u32, Option<HashSet<Vec<u8>>>> = HashMap::new();
    let mut local_keys = 0usize;
    for &p in partitions {
        let local = snapshots.and_then(|s| usable_snapshot(s, p));
        let start = match local {
            Some((from, held)) => {
                local_keys += held.len();
                entries.insert(p, held);
                touched.insert(p, Some(HashSet::new()));
                next.insert(p, from);
                Offset::Offset(from)
            }
            None => {
                entries.insert(p, HashMap::new());
                touched.insert(p, None);
                next.insert(p, 0);
                Offset::Offset(0)
            }
        };
        tpl.add_partition_offset(topic, p as i32, start).map_err(|source| StateError::Kafka {
            what: format!("changelog `{topic}` partition {p}"),
            source: source.into(),
        })?;
    }
    let mut records = 0u64;
    if !open.is_empty() {
        consumer
            .assign(&tpl)
            .map_err(|source| StateError::Kafka { what: format!("changelog `{topic}`"), source: source.into() })?;
    }
    while !open.is_empty() {
        if started.elapsed() > crate::kafka::OUTAGE_LIMIT {
            return Err(StateError::ChangelogTimeout { topic: topic.to_owned(), within: crate::kafka::OUTAGE_LIMIT });
        }
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Ok(m)) => {
                let p = m.partition() as u32;
                if let (Some(key), Some(state)) = (m.key(), entries.get_mut(&p)) {
                    apply(state, key, m.payload());
                    if let Some(Some(keys)) = touched.get_mut(&p) {
                        keys.insert(key.to_vec());
                    }
                    records += 1;
                }
                next.insert(p, m.offset() + 1);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&(p as u32));
            }
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                // librdkafka does not say which partition: read them all whole.
                tracing::warn!(
                    "a local state snapshot is ahead of the changelog `{topic}` (was the topic recreated?); \
                     reading the whole changelog"
                );
                let mut all = TopicPartitionList::new();
                for &p in partitions {
                    entries.insert(p, HashMap::new());
                    touched.insert(p, None);
                    next.insert(p, 0);
                    all.add_partition_offset(topic, p as i32, Offset::Beginning).map_err(|source| {
                        StateError::Kafka { what: format!("changelog `{topic}` partition {p}"), source: source.into() }
                    })?;
                }
                open = partitions.iter().copied().collect();
                (records, local_keys) = (0, 0);
                consumer.assign(&all).map_err(|source| StateError::Kafka {
                    what: format!("changelog `{topic}`"),
                    source: source.into(),
                })?;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "reading the state changelog; retrying"),
        }
    }
    if let Some(s) = snapshots {
        for (&p, state) in &entries {
            let result = match touched.get(&p) {
                Some(Some(keys)) => {
                    s.restored(p, false, keys.iter().map(|k| (k.as_slice(), state.get(k).map(Vec::as_slice))), next[&p])
                }
                _ => s.restored(p, true, state.iter().map(|(k, v)| (k.as_slice(), Some(v.as_slice()))), next[&p]),
            };
            if let Err(e) = result {
                tracing::warn!(partition = p, error = %crate::error::chain(&e), "cannot store the local state snapshot");
            }
        }
    }
    let out: Vec<Restored> = entries.into_iter().map(|(p, e)| into_partition_state(p, e)).collect();
    tracing::info!(
        partitions = ?partitions,
        records,
        local_keys,
        keys = out.iter().map(|s| s.features.len() + s.rule_state.len() + s.windows.len()).sum::<usize>(),
        ms = started.elapsed().as_millis() as u64,
        "restored keyed state from the changelog"
    );
    Ok(out)
}

/// A partition's local snapshot, if usable: the offset to read on from,
/// and the records up to it.
fn usable_snapshot(snapshots: &Snapshots, p: u32) -> Option<snapshot::Snapshot> {
    match snapshots.load(p) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(
                partition = p,
                error = %crate::error::chain(&e),
                "cannot read the local state snapshot; reading the whole changelog"
            );
            None
        }
    }
}

/// Whether an error is the cluster being unreachable for now (worth
/// retrying) rather than a refusal.
fn transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::RequestTimedOut
                | C::OperationTimedOut
                | C::BrokerTransportFailure
                | C::AllBrokersDown
                | C::NetworkException
                | C::CoordinatorNotAvailable
                | C::NotCoordinator
                | C::CoordinatorLoadInProgress
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
        )
    )
}

/// Calls `f` until it succeeds, fails for good, or the outage limit passes.
fn retry<T>(mut f: impl FnMut() -> rdkafka::error::KafkaResult<T>) -> rdkafka::error::KafkaResult<T> {
    let started = Instant::now();
    let mut wait = Duration::from_millis(100);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if !transient(&e) || started.elapsed() + wait > crate::kafka::OUTAGE_LIMIT => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "Kafka request failed; retrying in {}", humantime::format_duration(wait));
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Makes checkpoints durable in Kafka: changed state to the changelog, then
/// — once those records and every output before them are acknowledged —
/// the group's offsets. Sending the changelog records, the waiting and the
/// offset commit happen on a thread of their own, so the outputs keep
/// flowing meanwhile: sent from the output thread, a checkpoint's records
/// (a state per changed key, an id per event) held every decision behind
/// them, 12–26 ms at the 99th percentile at 10k events/s (BENCHMARKS.md,
/// "What moved them"; `cargo bench -p vigil --bench kafka` prints K3's
/// "decided → produced" stage).
pub struct Committer {
    fence: Fence,
    jobs: Option<crossbeam_channel::Sender<Pending>>,
    thread: Option<std::thread::JoinHandle<()>>,
    failure: Arc<std::sync::Mutex<Option<StateError>>>,
}

/// A checkpoint to make durable, its outputs already produced.
struct Pending {
    cp: Checkpoint,
    /// The partitions owned when it was handed over; they stay so until
    /// it settles.
    owned: std::collections::BTreeSet<u32>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    pub(crate) fn new(
        producer: Arc<Producer>,
        consumer: Arc<BaseConsumer<SourceContext>>,
        fence: Fence,
        input: String,
        changelog: String,
        snapshots: Option<Arc<Snapshots>>,
    ) -> Self {
        producer.committer_waits();
        // One checkpoint waiting behind the one being committed; the sink
        // holds back beyond that.
        let (tx, rx) = crossbeam_channel::bounded::<Pending>(1);
        let failure: Arc<std::sync::Mutex<Option<StateError>>> = Arc::default();
        let thread = std::thread::Builder::new()
            .name("vigil-kafka-commit".into())
            .spawn({
                let (fence, failure) = (fence.clone(), failure.clone());
                move || {
                    for job in rx.iter() {
                        let topics = (changelog.as_str(), input.as_str());
                        let result = commit(&producer, &consumer, &fence, topics, snapshots.as_deref(), job);
                        fence.settle();
                        if let Err(e) = result {
                            *failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
                            // Later checkpoints stay uncommitted: their input is read again.
                            for _ in rx.iter() {
                                fence.settle();
                            }
                            return;
                        }
                    }
                }
            })
            .ok();
        Self { fence, jobs: Some(tx), thread, failure }
    }

    fn failed(&self) -> Result<(), StateError> {
        match self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// A checkpoint's changelog records, kept for the local snapshots with
/// the producer's sequence number of each.
#[derive(Default)]
struct Sent {
    records: Vec<snapshot::Record>,
    seqs: Vec<u64>,
}

/// Sends a checkpoint's state changes of the owned partitions to the
/// changelog; returns how many, and the offsets to commit with them. With
/// `keep`, the records are kept there for the local snapshots.
fn send_changes(
    producer: &Producer,
    changelog: &str,
    input: &str,
    cp: &Checkpoint,
    owned: &std::collections::BTreeSet<u32>,
    mut keep: Option<&mut Sent>,
) -> Result<(usize, TopicPartitionList), StateError> {
    let write = |source| StateError::ChangelogWrite { id: cp.id, topic: changelog.to_owned(), source };
    let mut produced = 0usize;
    let mut send = |partition: u32, key: Vec<u8>, value: Option<&[u8]>| -> std::io::Result<()> {
        produced += 1;
        match keep.as_deref_mut() {
            Some(sent) => {
                let seq = producer.send_tracked(changelog, Some(partition as i32), Some(&key), value)?;
                sent.seqs.push(seq);
                sent.records.push((partition, key, value.map(<[u8]>::to_vec)));
                Ok(())
            }
            None => producer.send(changelog, Some(partition as i32), Some(&key), value),
        }
    };
    for d in cp.features.iter().flatten().filter(|d| owned.contains(&d.partition)) {
        send(d.partition, feature_key(d.kind, d.hash), d.state.as_deref()).map_err(write)?;
    }
    for d in cp.rule_state.iter().filter(|d| owned.contains(&d.partition)) {
        send(d.partition, named_key(b'r', &d.rule, &d.key), d.value.as_deref()).map_err(write)?;
    }
    for d in cp.windows.iter().filter(|d| owned.contains(&d.partition)) {
        send(d.partition, named_key(b'w', &d.window, d.key.as_bytes()), d.windows.as_deref()).map_err(write)?;
    }
    // An id forgotten and remembered again since the last checkpoint is in
    // both lists (`Dedup::take_delta`): the tombstones go first, and the
    // idempotent producer keeps a partition's records in order.
    for &(id, partition) in cp.dedup_removed.iter().filter(|(_, p)| owned.contains(p)) {
        send(partition, dedup_key(id), None).map_err(write)?;
    }
    for &(id, ts, partition) in cp.dedup_added.iter().filter(|(_, _, p)| owned.contains(p)) {
        send(partition, dedup_key(id), Some(&ts.to_be_bytes())).map_err(write)?;
    }
    let mut offsets = TopicPartitionList::new();
    for &(p, next) in cp.offsets.iter().filter(|(p, _)| owned.contains(p)) {
        offsets.add_partition_offset(input, p as i32, Offset::Offset(next)).map_err(|source| StateError::Kafka {
            what: format!("cannot list the offsets of `{input}` to commit"),
            source: source.into(),
        })?;
    }
    Ok((produced, offsets))
}

/// Stores a checkpoint's acknowledged changelog records in the local
/// snapshots. A failure costs only a longer restore later: the snapshot's
/// mark does not move past records it lacks.
fn keep_locally(producer: &Producer, snapshots: &Snapshots, sent: Sent) {
    let offsets = producer.take_offsets(&sent.seqs);
    let mut written: HashMap<u32, Vec<i64>> = HashMap::new();
    for ((partition, _, _), offset) in sent.records.iter().zip(offsets) {
        // Not acknowledged with an offset: a gap that keeps the mark put.
        written.entry(*partition).or_default().push(offset.unwrap_or(-1));
    }
    if let Err(e) = snapshots.apply(&sent.records, &written) {
        tracing::warn!(
            error = %crate::error::chain(&e),
            "cannot update the local state snapshots; restores will read more of the changelog"
        );
    }
}

/// Sends the checkpoint's records to the changelog, waits for them and
/// every output before them, then commits its offsets to the input topic
/// unless its partitions moved meanwhile.
fn commit(
    producer: &Producer,
    consumer: &BaseConsumer<SourceContext>,
    fence: &Fence,
    (changelog, input): (&str, &str),
    snapshots: Option<&Snapshots>,
    job: Pending,
) -> Result<(), StateError> {
    let Pending { cp, owned } = job;
    let (id, epoch) = (cp.id, cp.epoch);
    let mut sent = snapshots.map(|_| Sent::default());
    let (produced, offsets) = send_changes(producer, changelog, input, &cp, &owned, sent.as_mut())?;
    tracing::debug!(checkpoint = id, changelog_records = produced, "checkpoint sent to Kafka");
    drop(cp);
    producer.wait(producer.mark()).map_err(|source| StateError::ChangelogWrite {
        id,
        topic: changelog.to_owned(),
        source,
    })?;
    // The records are in the changelog whatever happens to the offsets.
    if let (Some(snapshots), Some(sent)) = (snapshots, sent) {
        keep_locally(producer, snapshots, sent);
    }
    let owned = fence.lock();
    if owned.epoch != epoch || offsets.count() == 0 {
        return Ok(());
    }
    drop(owned);
    match retry(|| consumer.commit(&offsets, CommitMode::Sync)) {
        Ok(()) => {
            tracing::debug!(checkpoint = id, partitions = offsets.count(), "offsets committed");
            Ok(())
        }
        // The group is rebalancing or this member was replaced: the
        // partitions' next owner reads from the previous commit.
        Err(e) if !transient(&e) => {
            tracing::warn!(error = %e, checkpoint = id, "offsets not committed; the group is rebalancing");
            Ok(())
        }
        Err(source) => {
            Err(StateError::Kafka { what: format!("cannot commit offsets of `{input}`"), source: source.into() })
        }
    }
}

impl Durable for Committer {
    fn commit(&mut self, cp: Checkpoint) -> Result<(), StateError> {
        self.failed()?;
        let mut owned = self.fence.lock();
        if cp.abort || cp.epoch != owned.epoch {
            // Partitions moved since the barrier: what it covers is read
            // again by whoever owns them now, from the last commit.
            tracing::debug!(checkpoint = cp.id, "partitions moved since this checkpoint began: not committed");
            return Ok(());
        }
        // A revocation waits for it to settle, so these stay owned.
        owned.committing += 1;
        let job = Pending { cp, owned: owned.partitions.clone() };
        drop(owned);
        let sent = self.jobs.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            self.fence.settle();
            self.failed()?;
            return Err(StateError::CommitThread("stopped"));
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StateError> {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| StateError::CommitThread("panicked"))?;
        }
        self.failed()
    }

    fn needs_forgotten_ids(&self) -> bool {
        true
    }
}

/// Exactly-once: each checkpoint commits one transaction holding the
/// outputs since the previous one, the changelog records and the offsets.
/// A rebalance marker aborts the open transaction: the work in it is read
/// again from the committed offsets by whoever owns the partitions now.
pub struct Transactions {
    producer: Arc<Producer>,
    consumer: Arc<BaseConsumer<SourceContext>>,
    fence: Fence,
    input: String,
    changelog: String,
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions").field("changelog", &self.changelog).finish_non_exhaustive()
    }
}

impl Transactions {
    pub(crate) fn new(
        producer: Arc<Producer>,
        consumer: Arc<BaseConsumer<SourceContext>>,
        fence: Fence,
        input: String,
        changelog: String,
    ) -> Self {
        // The transaction commit waits for the outputs.
        producer.committer_waits();
        Self { producer, consumer, fence, input, changelog }
    }
}

impl Durable for Transactions {
    fn commit(&mut self, cp: Checkpoint) -> Result<(), StateError> {
        let mut owned = self.fence.lock();
        if cp.abort {
            drop(owned);
            tracing::info!(checkpoint = cp.id, "partitions moved: aborting the open transaction");
            return self.producer.abort_transaction().map_err(|source| StateError::Kafka {
                what: "cannot abort the Kafka transaction and begin the next".into(),
                source: source.into(),
            });
        }
        if cp.epoch != owned.epoch {
            // Its marker follows and aborts the transaction.
            return Ok(());
        }
        let (produced, offsets) =
            send_changes(&self.producer, &self.changelog, &self.input, &cp, &owned.partitions, None)?;
        owned.committing += 1;
        drop(owned);
        let group = self.consumer.group_metadata();
        let result = self.producer.commit_transaction(&offsets, group.as_ref());
        self.fence.settle();
        result.map_err(|source| StateError::Kafka {
            what: format!("cannot commit the Kafka transaction of checkpoint {}", cp.id),
            source: source.into(),
        })?;
        tracing::debug!(checkpoint = cp.id, changelog_records = produced, "transaction committed");
        Ok(())
    }

    fn finish(&mut self) -> Result<(), StateError> {
        Ok(())
    }

    fn commit_takes_outputs(&self) -> bool {
        true
    }

    fn needs_forgotten_ids(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_keys_sort_back_into_their_kinds_of_state() {
        let mut entries = HashMap::new();
        apply(&mut entries, &feature_key(3, 0xdead_beef), Some(b"series"));
        apply(&mut entries, &named_key(b'r', "velocity", b"card\0x"), Some(b"v1"));
        apply(&mut entries, &named_key(b'r', "velocity", b"gone"), Some(b"v"));
        apply(&mut entries, &named_key(b'r', "velocity", b"gone"), None);
        apply(&mut entries, &dedup_key(u128::MAX - 5), Some(&1_717_000_000_123i64.to_be_bytes()));
        apply(&mut entries, &dedup_key(9), Some(&5i64.to_be_bytes()));
        apply(&mut entries, &dedup_key(9), None);
        apply(&mut entries, &named_key(b'w', "card-5m", b"tok-1"), Some(b"open"));
        apply(&mut entries, &named_key(b'w', "card-5m", b"tok-2"), Some(b"closed"));
        apply(&mut entries, &named_key(b'w', "card-5m", b"tok-2"), None);
        apply(&mut entries, &named_key(b'w', "card-5m", b"\xff"), Some(b"not utf-8"));
        let s = into_partition_state(7, entries);
        assert_eq!(s.partition, Some(7));
        assert_eq!(s.features, vec![FeatureRecord { space: 3, hash: 0xdead_beef, state: b"series".to_vec() }]);
        let rule = RuleRecord { rule: "velocity".to_owned(), key: b"card\0x".to_vec(), value: b"v1".to_vec() };
        assert_eq!(s.rule_state, vec![rule]);
        assert_eq!(s.dedup, vec![(u128::MAX - 5, 1_717_000_000_123)]);
        let window = WindowRecord {
            window: "card-5m".to_owned(),
            key: "tok-1".to_owned(),
            partition: 7,
            windows: b"open".to_vec(),
        };
        assert_eq!(s.windows, vec![window]);
    }

    /// Reading with a local snapshot, on librdkafka's mock cluster: the
    /// snapshot plus the records after its mark; a snapshot ahead of the
    /// topic's end is dropped and the partition read whole.
    #[test]
    fn a_restore_starts_from_the_snapshot_and_drops_one_ahead_of_the_topic() {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
        let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        mock.create_topic("cl", 1, 1).expect("topic");
        let k: KafkaConfig = toml::from_str(&format!("brokers = {:?}", mock.bootstrap_servers())).expect("config");
        let producer: BaseProducer =
            rdkafka::ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).create().expect("producer");
        let produce = |hashes: std::ops::Range<u64>| {
            for h in hashes {
                let key = feature_key(1, u128::from(h));
                let value = h.to_be_bytes();
                producer.send(BaseRecord::to("cl").partition(0).key(&key).payload(&value)).expect("send");
            }
            producer.flush(Duration::from_secs(10)).expect("flush");
        };
        let hashes = |states: &[Restored]| -> Vec<u128> {
            let mut h: Vec<u128> = states[0].features.iter().map(|f| f.hash).collect();
            h.sort_unstable();
            h
        };
        produce(0..3);
        let dir = tempfile::tempdir().expect("tmp");
        let snapshots = Snapshots::open(dir.path(), "mock", "cl").expect("snapshots");
        // A snapshot whose mark is past the end, as after the topic was
        // recreated: its key must not come back.
        let stale = feature_key(1, 99);
        snapshots.restored(0, true, [(stale.as_slice(), Some(&b"old"[..]))].into_iter(), 1_000).expect("stale");
        let states = read(&k, "cl", &[0], Some(&snapshots)).expect("read");
        assert_eq!(hashes(&states), [0, 1, 2]);
        let (next, held) = snapshots.load(0).expect("load").expect("a snapshot now");
        assert_eq!((next, held.len()), (3, 3), "the snapshot is replaced by the changelog's contents");
        // Two more records: read on top of the snapshot, from its mark.
        produce(3..5);
        let states = read(&k, "cl", &[0], Some(&snapshots)).expect("read");
        assert_eq!(hashes(&states), [0, 1, 2, 3, 4]);
        assert_eq!(snapshots.load(0).expect("load").map(|(n, h)| (n, h.len())), Some((5, 5)));
        // The snapshot alone answers: drop a record from the snapshot only
        // and it stays dropped, proving records before the mark are not read.
        snapshots.restored(0, false, [(feature_key(1, 0).as_slice(), None)].into_iter(), 5).expect("edit");
        let states = read(&k, "cl", &[0], Some(&snapshots)).expect("read");
        assert_eq!(hashes(&states), [1, 2, 3, 4]);
    }
}
