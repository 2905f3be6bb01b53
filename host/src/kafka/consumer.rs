//! The consumer group member's callbacks, shared by the Kafka source
//! (which reads what they record) and the state changelog (which commits
//! offsets through the same consumer).

use rdkafka::ClientContext;
use rdkafka::TopicPartitionList;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext, Rebalance as KafkaRebalance};
use rdkafka::error::KafkaError;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Fence, Logging};

/// An ownership change seen in a rebalance callback, not yet handled.
#[derive(Debug)]
pub enum Change {
    /// Partitions taken away.
    Revoked(Vec<u32>),
    /// Partitions given.
    Assigned(Vec<u32>),
}

/// The consumer's callbacks: they run inside `poll` on the source thread.
#[derive(Debug)]
pub struct SourceContext {
    pub(crate) topic: String,
    pub(crate) fence: Fence,
    pub(crate) changes: Mutex<Vec<Change>>,
    /// Consumption is paused for back-pressure: partitions assigned
    /// meanwhile are paused as they arrive.
    pub(crate) paused: AtomicBool,
    /// The end each partition of the topic can be read to (the last
    /// stable offset with transactions, else the high watermark), from
    /// librdkafka's statistics.
    pub(crate) ends: Mutex<BTreeMap<u32, i64>>,
    /// Read committed: the end is the last stable offset.
    pub(crate) committed_only: bool,
    /// Whether a broker was up at the last statistics.
    pub(crate) connected: AtomicBool,
}

impl SourceContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        tpl.elements_for_topic(&self.topic).iter().map(|e| e.partition() as u32).collect()
    }

    pub(crate) fn pending(&self) -> bool {
        !self.changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_empty()
    }

    fn push(&self, change: Change) {
        self.changes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(change);
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        Logging.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        Logging.error(error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        // Bootstrap entries have no node id; a broker of the cluster that
        // is up means the source reaches its input.
        let up = statistics.brokers.values().any(|b| b.nodeid >= 0 && b.state == "UP");
        self.connected.store(up, Ordering::Relaxed);
        let Some(topic) = statistics.topics.get(&self.topic) else { return };
        let mut ends = self.ends.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (&p, part) in &topic.partitions {
            let end = if self.committed_only { part.ls_offset } else { part.hi_offset };
            if let (Ok(p), true) = (u32::try_from(p), end >= 0) {
                ends.insert(p, end);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &KafkaRebalance<'_>) {
        if let KafkaRebalance::Revoke(tpl) = rebalance {
            let partitions = self.partitions(tpl);
            // Waits for checkpoints being committed: they finish before
            // the partitions are handed over.
            let mut owned = self.fence.lock_settled(super::OUTAGE_LIMIT);
            owned.epoch += 1;
            for p in &partitions {
                owned.partitions.remove(p);
            }
            let now: Vec<u32> = owned.partitions.iter().copied().collect();
            drop(owned);
            tracing::info!(topic = %self.topic, ?partitions, owned = ?now, "partitions revoked");
            self.push(Change::Revoked(partitions));
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &KafkaRebalance<'_>) {
        match rebalance {
            KafkaRebalance::Assign(tpl) => {
                if self.paused.load(Ordering::Relaxed)
                    && let Err(e) = consumer.pause(tpl)
                {
                    tracing::warn!(error = %e, "cannot pause newly assigned partitions during back-pressure");
                }
                let partitions = self.partitions(tpl);
                let mut owned = self.fence.lock();
                owned.epoch += 1;
                owned.partitions.extend(partitions.iter().copied());
                let now: Vec<u32> = owned.partitions.iter().copied().collect();
                drop(owned);
                // With cooperative rebalancing (`partition.assignment.strategy
                // = "cooperative-sticky"` under [kafka.consumer]) `partitions`
                // are only the new ones; `owned` is the whole assignment.
                tracing::info!(topic = %self.topic, ?partitions, owned = ?now, "partitions assigned");
                self.push(Change::Assigned(partitions));
            }
            KafkaRebalance::Revoke(_) => {}
            KafkaRebalance::Error(e) => tracing::warn!(error = %e, "consumer group rebalance failed; retrying"),
        }
    }
}
