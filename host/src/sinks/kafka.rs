//! Producing outputs and changelog records.

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{Records, Sink, SinkError};
use crate::config::KafkaConfig;
use crate::kafka::{ClusterError, Logging, OUTAGE_LIMIT};

/// Tracks the records not yet acknowledged, by sequence number, and the
/// first delivery failure (librdkafka retries everything else).
#[derive(Debug, Default)]
struct Delivery {
    failure: Mutex<Option<ProduceError>>,
    in_flight: Mutex<std::collections::BTreeSet<u64>>,
    acked: Condvar,
    /// Records whose offset is wanted (sent with [`Producer::send_tracked`]),
    /// by sequence number: the offset once acknowledged.
    tracked: Mutex<std::collections::HashMap<u64, Option<i64>>>,
}

impl ClientContext for Delivery {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        Logging.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        Logging.error(error, reason);
    }
}

/// Set in a record's opaque when its offset is tracked, so the delivery
/// of every other record skips the tracking lock.
const TRACKED: usize = 1 << (usize::BITS - 1);

impl ProducerContext for Delivery {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let seq = opaque & !TRACKED;
        if opaque & TRACKED != 0
            && let Ok(m) = result
        {
            use rdkafka::Message as _;
            let mut tracked = self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(offset) = tracked.get_mut(&(seq as u64)) {
                *offset = Some(m.offset());
            }
        }
        let mut in_flight = self.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        in_flight.remove(&(seq as u64));
        drop(in_flight);
        self.acked.notify_all();
        if let Err((e, m)) = result {
            use rdkafka::Message as _;
            let mut slot = self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.is_none() {
                *slot = Some(ProduceError { topic: m.topic().to_owned(), source: e.clone().into() });
            }
        }
    }
}

/// A record that could not be sent or delivered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot produce to topic `{topic}`")]
pub struct ProduceError {
    topic: String,
    source: Box<KafkaError>,
}

/// The daemon's one idempotent producer, shared by every Kafka output and
/// the state changelog, so one flush covers them all before a checkpoint.
pub struct Producer {
    inner: ThreadedProducer<Delivery>,
    context: Arc<Delivery>,
    /// Sequence number of the next record.
    next: AtomicU64,
    /// Set when a Kafka committer waits for the outputs before committing,
    /// so the sinks need not.
    committer_waits: AtomicBool,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Producer")
    }
}

impl Producer {
    /// The partitions of `topic`, named by the setting `key` in errors.
    ///
    /// # Errors
    /// As [`crate::kafka::partitions_of`].
    pub fn partitions_of(
        &self,
        topic: &str,
        key: &str,
        k: &crate::config::KafkaConfig,
    ) -> Result<u32, crate::kafka::ClusterError> {
        use rdkafka::producer::Producer as _;
        crate::kafka::partitions_of(self.inner.client(), topic, key, k)
    }

    /// An idempotent producer for the cluster of `k`.
    ///
    /// # Errors
    /// When a `kafka.client` setting is invalid.
    pub fn new(k: &KafkaConfig, transactional_id: Option<&str>) -> Result<Arc<Self>, SinkError> {
        // The cluster's settings (brokers, TLS), then the producer's own.
        let mut c = crate::kafka::client_config(k);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            // Ride out broker outages: delivery is retried for this long.
            .set("message.timeout.ms", OUTAGE_LIMIT.as_millis().to_string());
        if transactional_id.is_some() {
            // librdkafka wants a transaction to outlive its messages' retries.
            c.set("transaction.timeout.ms", OUTAGE_LIMIT.as_millis().to_string());
        }
        // kafka.client still wins over the defaults above, kafka.producer over both.
        for (key, value) in k.client.iter().chain(&k.producer) {
            c.set(key, value);
        }
        if let Some(id) = transactional_id {
            c.set("transactional.id", id);
        }
        let context = Delivery::default();
        let inner: ThreadedProducer<Delivery> = c
            .create_with_context(context)
            .map_err(|source| ClusterError::Client { what: "producer", source: source.into() })?;
        let context = rdkafka::producer::Producer::context(&inner).clone();
        if let Some(id) = transactional_id {
            use rdkafka::producer::Producer as _;
            inner.init_transactions(k.connect_timeout).map_err(|source| SinkError::Transactions {
                id: id.to_owned(),
                brokers: k.brokers.clone(),
                source: source.into(),
            })?;
            inner.begin_transaction().map_err(|e| SinkError::Begin(e.into()))?;
        }
        Ok(Arc::new(Self { inner, context, next: AtomicU64::new(0), committer_waits: AtomicBool::new(false) }))
    }

    /// Queues one record; waits while librdkafka's queue is full.
    ///
    /// # Errors
    /// When the record cannot be queued (too large, unknown topic).
    pub fn send(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> std::io::Result<()> {
        self.send_seq(topic, partition, key, payload, false).map(drop)
    }

    /// Queues one record whose offset [`Producer::take_offsets`] tells once
    /// it is acknowledged; returns its sequence number.
    ///
    /// # Errors
    /// As [`Producer::send`].
    pub fn send_tracked(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
    ) -> std::io::Result<u64> {
        self.send_seq(topic, partition, key, payload, true)
    }

    /// The offsets tracked records of `seqs` landed at (`None` where not
    /// acknowledged), forgetting them.
    pub fn take_offsets(&self, seqs: &[u64]) -> Vec<Option<i64>> {
        let mut tracked = self.context.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seqs.iter().map(|s| tracked.remove(s).flatten()).collect()
    }

    fn send_seq(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        track: bool,
    ) -> std::io::Result<u64> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        if track {
            self.context.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(seq, None);
        }
        self.context.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(seq);
        let opaque = if track { seq as usize | TRACKED } else { seq as usize };
        let mut record: BaseRecord<'_, [u8], [u8], usize> = BaseRecord::with_opaque_to(topic, opaque);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(v) = payload {
            record = record.payload(v);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(seq),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    self.context.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&seq);
                    self.context.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&seq);
                    return Err(std::io::Error::other(ProduceError { topic: topic.to_owned(), source: e.into() }));
                }
            }
        }
    }

    /// A mark covering every record sent so far, for [`Producer::wait`].
    pub fn mark(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Waits until every record sent before `mark` is acknowledged by the
    /// brokers; records sent since do not hold it up.
    ///
    /// # Errors
    /// When a record could not be delivered, or not within the outage limit.
    pub fn wait(&self, mark: u64) -> std::io::Result<()> {
        let in_flight = self.context.in_flight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (in_flight, timeout) = self
            .context
            .acked
            .wait_timeout_while(in_flight, OUTAGE_LIMIT, |f| f.first().is_some_and(|&first| first < mark))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(in_flight);
        // Kept, not taken: every later wait fails too, so no pipeline
        // sharing the producer (the hops of a chain) commits offsets past
        // a record that was lost.
        if let Some(failure) = self.context.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            return Err(std::io::Error::other(failure));
        }
        if timeout.timed_out() {
            return Err(std::io::Error::other(format!(
                "Kafka did not acknowledge the outputs within {}",
                humantime::format_duration(OUTAGE_LIMIT)
            )));
        }
        Ok(())
    }

    /// Waits until every record sent so far is acknowledged.
    ///
    /// # Errors
    /// As [`Producer::wait`].
    pub fn flush(&self) -> std::io::Result<()> {
        self.wait(self.mark())
    }

    /// Commits the open transaction with `offsets` as the group's, and
    /// begins the next.
    ///
    /// # Errors
    /// When the commit fails; the transaction is then aborted.
    pub(crate) fn commit_transaction(
        &self,
        offsets: &rdkafka::TopicPartitionList,
        group: Option<&rdkafka::consumer::ConsumerGroupMetadata>,
    ) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer as _;
        let result = (|| {
            if let (Some(group), true) = (group, offsets.count() > 0) {
                self.inner.send_offsets_to_transaction(offsets, group, OUTAGE_LIMIT)?;
            }
            self.inner.commit_transaction(OUTAGE_LIMIT)
        })();
        if let Err(e) = result {
            let _ = self.inner.abort_transaction(OUTAGE_LIMIT);
            let _ = self.inner.begin_transaction();
            return Err(e);
        }
        self.inner.begin_transaction()
    }

    /// Discards the open transaction and begins the next.
    ///
    /// # Errors
    /// When the brokers cannot be told.
    pub(crate) fn abort_transaction(&self) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer as _;
        self.inner.abort_transaction(OUTAGE_LIMIT)?;
        self.inner.begin_transaction()
    }

    /// Leaves waiting for outputs before a checkpoint to the committer.
    pub(crate) fn committer_waits(&self) {
        self.committer_waits.store(true, Ordering::Relaxed);
    }
}

/// An output role written to a topic, each record under its key.
#[derive(Debug)]
pub struct KafkaSink {
    producer: Arc<Producer>,
    topic: String,
}

impl KafkaSink {
    /// A sink producing to `topic`.
    pub fn new(producer: Arc<Producer>, topic: String) -> Self {
        Self { producer, topic }
    }
}

impl Sink for KafkaSink {
    fn write(&mut self, records: &Records) -> std::io::Result<()> {
        records.iter().try_for_each(|r| self.producer.send(&self.topic, None, r.key, Some(r.line)))
    }

    /// librdkafka sends in the background within `linger.ms`.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    /// With a Kafka committer, it waits for these records before it
    /// commits offsets, off the output path; otherwise wait here.
    fn sync(&mut self) -> std::io::Result<()> {
        if self.producer.committer_waits.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.producer.flush()
    }
}
