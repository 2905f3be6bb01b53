//! The consumer-group source.

use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::kafka::{Change, ClusterError, Fence, SourceContext};
use crate::sinks::Producer;
use crate::sources::{Position, Rebalance, Record, Source, SourceError};
use crate::state::kafka::snapshot::Snapshots;
use crate::state::kafka::{self as changelog, Committer, Transactions};

/// Reads the input topic as a member of the consumer group.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer<SourceContext>>,
    config: KafkaConfig,
    name: String,
    changelog: String,
    /// Local snapshots of the changelog (at-least-once mode with a state folder).
    snapshots: Option<Arc<Snapshots>>,
    /// The next offset to hand out, per owned partition.
    next: BTreeMap<u32, i64>,
    /// Records polled after an ownership change (or while paused), handed
    /// out after it.
    carry: VecDeque<(Record, i64)>,
    /// When the current back-pressure began (see [`Source::stalled`]).
    stalled_at: Option<Instant>,
    /// How long back-pressure lasts before consumption is paused.
    pause_after: Duration,
    /// When consumption was paused for back-pressure.
    paused_at: Option<Instant>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource").field("name", &self.name).finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Joins the group on `topic` after checking that the input and
    /// changelog topics exist; returns the source and the committer that
    /// makes its checkpoints durable. With `state_dir`, local snapshots of
    /// the changelog are kept there (not in exactly-once mode).
    ///
    /// # Errors
    /// Unreachable brokers, bad credentials, missing topics or a changelog
    /// with too few partitions, each naming the setting to fix; a state
    /// folder in use by another daemon.
    pub fn open(
        k: &KafkaConfig,
        topic: &str,
        producer: Arc<Producer>,
        state_dir: Option<&std::path::Path>,
    ) -> Result<(Self, Box<dyn crate::state::Durable>), SourceError> {
        let fence = Fence::default();
        let mut c = crate::kafka::client_config(k);
        c.set("group.id", &k.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false");
        for (key, value) in k.client.iter().chain(&k.consumer) {
            c.set(key, value);
        }
        let pause_after = pause_after(&c);
        // For the lag metric: partition ends once a second, as statistics.
        if c.get("statistics.interval.ms").is_none() {
            c.set("statistics.interval.ms", "1000");
        }
        let context = SourceContext {
            topic: topic.to_owned(),
            fence: fence.clone(),
            changes: Mutex::new(Vec::new()),
            paused: AtomicBool::new(false),
            ends: Mutex::new(BTreeMap::new()),
            committed_only: k.exactly_once,
            connected: AtomicBool::new(true),
        };
        let consumer: BaseConsumer<SourceContext> = c
            .create_with_context(context)
            .map_err(|source| ClusterError::Client { what: "consumer", source: source.into() })?;
        let input = crate::kafka::partitions_of(consumer.client(), topic, "source.topic", k)?;
        let changelog = k.changelog_topic();
        let kept = crate::kafka::partitions_of(consumer.client(), &changelog, "kafka.changelog-topic", k)
            .map_err(|source| SourceError::NoChangelog { topic: topic.to_owned(), input, source })?;
        if kept < input {
            return Err(SourceError::ChangelogPartitions { changelog, kept, topic: topic.to_owned(), input });
        }
        consumer.subscribe(&[topic]).map_err(|source| SourceError::Kafka {
            what: format!("source.topic: cannot subscribe to `{topic}`"),
            source: source.into(),
        })?;
        tracing::info!(topic, group = %k.group_id, partitions = input, changelog = %changelog, "joining the consumer group");
        let snapshots = match state_dir {
            Some(dir) if !k.exactly_once => {
                let cluster = consumer.client().fetch_cluster_id(k.connect_timeout).unwrap_or_default();
                Some(Arc::new(Snapshots::open(dir, &cluster, &changelog)?))
            }
            _ => None,
        };
        let consumer = Arc::new(consumer);
        let committer: Box<dyn crate::state::Durable> = if k.exactly_once {
            Box::new(Transactions::new(producer, consumer.clone(), fence, topic.to_owned(), changelog.clone()))
        } else {
            Box::new(Committer::new(
                producer,
                consumer.clone(),
                fence,
                topic.to_owned(),
                changelog.clone(),
                snapshots.clone(),
            ))
        };
        let source = Self {
            consumer,
            config: k.clone(),
            name: format!("kafka:{topic}"),
            changelog,
            snapshots,
            next: BTreeMap::new(),
            carry: VecDeque::new(),
            stalled_at: None,
            pause_after,
            paused_at: None,
        };
        Ok((source, committer))
    }

    /// Hands `record` on, unless a record at or after its offset already
    /// was: a fetch that goes back over records handed on (a broker's or
    /// the client's doing, around a pause or a seek) must not decide them
    /// twice.
    fn hand_out(&mut self, batch: &mut Vec<Record>, record: Record, next: i64) {
        if advance(&mut self.next, record.partition, next) {
            batch.push(record);
        } else {
            tracing::debug!(partition = record.partition, offset = next - 1, "dropping a record read again");
        }
    }
}

/// Moves `partition`'s next offset to `next` (the offset after a record
/// read from it); false, leaving it, when the record is behind it.
fn advance(offsets: &mut BTreeMap<u32, i64>, partition: u32, next: i64) -> bool {
    match offsets.get_mut(&partition) {
        Some(at) if *at >= next => false,
        Some(at) => {
            *at = next;
            true
        }
        None => {
            offsets.insert(partition, next);
            true
        }
    }
}

/// How long back-pressure may last before the source pauses its partitions:
/// a quarter of `max.poll.interval.ms` (librdkafka's default 300 s), at
/// most 5 s. Until then it only stops polling, and librdkafka stops
/// fetching once its queue is full; the group waits that long at most for
/// a rebalance. Pausing sooner would drop what librdkafka prefetched and
/// fetch it again on every short stall, and a resume seeks each partition
/// to an offset inside a stored batch, which tansu 0.6 answers with the
/// next batch, losing the rest of that one.
fn pause_after(c: &rdkafka::ClientConfig) -> Duration {
    const MOST: Duration = Duration::from_secs(5);
    let interval = c.get("max.poll.interval.ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(300_000);
    Duration::from_millis(interval / 4).min(MOST)
}

/// A polled message as a record, with the offset after it.
fn record_of(m: &rdkafka::message::BorrowedMessage<'_>) -> (Record, i64) {
    let bytes = m.payload().map(<[u8]>::to_vec).unwrap_or_default();
    (Record::from_bytes(bytes, m.offset() as u64, m.partition() as u32), m.offset() + 1)
}

impl Source for KafkaSource {
    fn next_batch(
        &mut self,
        batch: &mut Vec<Record>,
        max: usize,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError> {
        while batch.len() < max
            && let Some((record, next)) = self.carry.pop_front()
        {
            self.hand_out(batch, record, next);
        }
        while batch.len() < max {
            if cancel.is_cancelled() {
                return Ok(false);
            }
            // An ownership change is handled before anything polled after it.
            if self.consumer.context().pending() {
                break;
            }
            let wait = if batch.is_empty() { Duration::from_millis(100) } else { Duration::ZERO };
            match self.consumer.poll(wait) {
                None => break,
                Some(Ok(m)) => {
                    let (record, next) = record_of(&m);
                    drop(m);
                    if self.consumer.context().pending() {
                        self.carry.push_back((record, next));
                        break;
                    }
                    self.hand_out(batch, record, next);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Kafka consumer error; retrying");
                    break;
                }
            }
        }
        Ok(!cancel.is_cancelled())
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn position(&self) -> Position {
        Position::default()
    }

    fn lag(&mut self) -> crate::sources::Lag {
        // Owned now: a partition revoked while the pipeline stalls is
        // forgotten here only once the rebalance is taken up.
        let owned = self.consumer.context().fence.lock().partitions.clone();
        let ends = self.consumer.context().ends.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let records = self
            .next
            .iter()
            .filter(|(p, _)| owned.contains(p))
            .filter_map(|(p, &next)| ends.get(p).map(|&end| (*p, u64::try_from(end - next).unwrap_or(0))))
            .collect();
        let connected = Some(self.consumer.context().connected.load(Ordering::Relaxed));
        crate::sources::Lag { bytes: None, records, connected }
    }

    fn partitioned(&self) -> bool {
        true
    }

    fn take_rebalance(&mut self) -> Result<Vec<Rebalance>, SourceError> {
        let changes = std::mem::take(
            &mut *self.consumer.context().changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut out = Vec::new();
        for change in changes {
            match change {
                Change::Revoked(ps) => {
                    for p in &ps {
                        self.next.remove(p);
                    }
                    out.push(Rebalance::Revoked(ps));
                }
                Change::Assigned(ps) => {
                    let states = changelog::read(&self.config, &self.changelog, &ps, self.snapshots.as_deref())?;
                    for state in states {
                        let partition = state.partition.expect("the changelog reads a partition's state");
                        out.push(Rebalance::Assigned { partition, state });
                    }
                }
            }
        }
        Ok(out)
    }

    fn offsets(&self) -> (u64, Vec<(u32, i64)>) {
        let epoch = self.consumer.context().fence.lock().epoch;
        (epoch, self.next.iter().map(|(&p, &o)| (p, o)).collect())
    }

    fn stalled(&mut self) -> Result<(), SourceError> {
        let since = *self.stalled_at.get_or_insert_with(|| {
            tracing::debug!(topic = %self.consumer.context().topic, "the pipeline is full: waiting for it");
            Instant::now()
        });
        if self.paused_at.is_none() && since.elapsed() < self.pause_after {
            return Ok(());
        }
        if self.paused_at.is_none() {
            // Stop fetching (librdkafka drops what it prefetched and fetches
            // again from the next offset on resume) but keep polling below,
            // so the group does not take the partitions away after
            // `max.poll.interval.ms`.
            let context = self.consumer.context();
            context.paused.store(true, Ordering::Relaxed);
            let assigned = self.consumer.assignment().map_err(kafka("cannot read the assignment"))?;
            self.consumer.pause(&assigned).map_err(kafka("cannot pause consumption"))?;
            self.paused_at = Some(Instant::now());
            tracing::info!(topic = %context.topic, "the pipeline is full: pausing consumption, staying in the group");
        }
        // Serves rebalances and keeps the membership; paused partitions
        // return no records, but keep anything that comes all the same.
        match self.consumer.poll(Duration::ZERO) {
            Some(Ok(m)) => self.carry.push_back(record_of(&m)),
            Some(Err(e)) => tracing::warn!(error = %e, "Kafka consumer error while paused; retrying"),
            None => {}
        }
        Ok(())
    }

    fn unstalled(&mut self) -> Result<(), SourceError> {
        self.stalled_at = None;
        let Some(since) = self.paused_at.take() else {
            return Ok(());
        };
        let context = self.consumer.context();
        context.paused.store(false, Ordering::Relaxed);
        let assigned = self.consumer.assignment().map_err(kafka("cannot read the assignment"))?;
        self.consumer.resume(&assigned).map_err(kafka("cannot resume consumption"))?;
        // Where fetching resumes is ours to say: librdkafka's own resume
        // position was seen to re-read some records and skip others when
        // the pause came with records in flight. Each partition goes on
        // right after the last record handed out.
        for (&partition, &next) in &self.next {
            self.consumer
                .seek(&context.topic, partition as i32, rdkafka::Offset::Offset(next), Duration::from_secs(10))
                .map_err(|source| SourceError::Kafka {
                    what: format!("cannot resume partition {partition} at {next}"),
                    source: source.into(),
                })?;
        }
        let next = &self.next;
        self.carry.retain(|(r, _)| !next.contains_key(&r.partition));
        tracing::info!(topic = %context.topic, paused_ms = since.elapsed().as_millis() as u64, "resuming consumption");
        Ok(())
    }
}

/// A failed Kafka call of the source, saying what it was.
fn kafka(what: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> SourceError {
    move |source| SourceError::Kafka { what: what.to_owned(), source: source.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_again_are_not_handed_on_twice() {
        let mut next = BTreeMap::new();
        // Offsets 10, 11 and 12 of partition 0, then 11 and 12 again (a
        // fetch that went back), then 13; partition 1 on its own.
        let read = [(0, 11), (0, 12), (0, 13), (1, 1), (0, 12), (0, 13), (0, 14), (1, 1), (1, 2)];
        let handed: Vec<(u32, i64)> = read.into_iter().filter(|&(p, n)| advance(&mut next, p, n)).collect();
        assert_eq!(handed, [(0, 11), (0, 12), (0, 13), (1, 1), (0, 14), (1, 2)]);
        assert_eq!(next, BTreeMap::from([(0, 14), (1, 2)]));
    }

    #[test]
    fn reading_pauses_only_after_a_quarter_of_the_poll_interval_at_most_5_s() {
        let with = |interval: Option<&str>| {
            let mut c = rdkafka::ClientConfig::new();
            if let Some(v) = interval {
                c.set("max.poll.interval.ms", v);
            }
            pause_after(&c)
        };
        assert_eq!(with(None), Duration::from_secs(5), "librdkafka's default of 300 s");
        assert_eq!(with(Some("7000")), Duration::from_millis(1750));
        assert_eq!(with(Some("600000")), Duration::from_secs(5));
    }
}
