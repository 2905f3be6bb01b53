//! What the Kafka source ([`crate::sources::KafkaSource`]), the Kafka sink
//! and its producer ([`crate::sinks::KafkaSink`]) and the state changelog
//! ([`crate::state::kafka`]) share: client settings, logging, the consumer's
//! callbacks and the partitions this daemon owns.
//!
//! Partitions are the unit of ownership. Each event's partition decides its
//! worker, and every piece of keyed state (feature series, open windows,
//! rules' state, de-duplication ids) remembers the partition of the event
//! that last touched it. A checkpoint writes the changed state to a compacted
//! changelog topic, keyed by state key and in the same partition as the
//! input, then commits the consumer group's offsets: state and offsets
//! describe the same point of the input. When a partition moves, its old
//! owner forgets its state and the new one reads it back from the changelog
//! before processing the partition's events, starting at the committed
//! offset. This is the mechanism Kafka Streams uses, local snapshots
//! included: a daemon keeps a copy of the changelog of the partitions it had
//! and, taking one back, reads only the records written since its copy.
//!
//! The guarantee is at-least-once: events after the last checkpoint are
//! processed again after a crash or a rebalance, and their decisions carry
//! the same transaction id, so downstream consumers de-duplicate by key.

mod consumer;

pub use consumer::{Change, SourceContext};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::config::KafkaConfig;

/// The partitions this daemon owns, and a counter bumped at every change.
///
/// The source's rebalance callbacks and the checkpoint commits share it: a
/// revocation waits until the checkpoints already started (changelog
/// written, offsets not yet committed) are committed, so state and offsets
/// are handed over together; and a checkpoint taken before a change is
/// never committed after it.
#[derive(Debug, Default)]
pub struct Ownership {
    /// Bumped on every assignment or revocation.
    pub epoch: u64,
    /// The input partitions owned now.
    pub partitions: BTreeSet<u32>,
    /// Checkpoints whose changelog records are sent but whose offsets are
    /// not committed yet.
    pub committing: usize,
}

/// [`Ownership`], shared by the source and the committer.
#[derive(Debug, Clone, Default)]
pub struct Fence(Arc<(Mutex<Ownership>, Condvar)>);

impl Fence {
    /// Locks it; a poisoned lock (a panicked holder) still hands out the data.
    pub fn lock(&self) -> MutexGuard<'_, Ownership> {
        self.0.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Locks it once no checkpoint is half committed (or `limit` passed).
    pub fn lock_settled(&self, limit: Duration) -> MutexGuard<'_, Ownership> {
        let guard = self.lock();
        let (guard, _) = self
            .0
            .1
            .wait_timeout_while(guard, limit, |o| o.committing > 0)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard
    }

    /// Records that a checkpoint counted in `committing` is done, and wakes
    /// a revocation waiting in [`Fence::lock_settled`].
    pub fn settle(&self) {
        let mut owned = self.lock();
        owned.committing = owned.committing.saturating_sub(1);
        drop(owned);
        self.0.1.notify_all();
    }
}

/// The client settings every vigil Kafka client starts from: the brokers,
/// then `kafka.client` on top.
pub fn client_config(k: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    // Say more than librdkafka's default about lost brokers, less about the rest.
    c.set_log_level(RDKafkaLogLevel::Warning);
    if let Some(tls) = &k.tls {
        // `sasl_ssl` in kafka.client adds credentials to it.
        c.set("security.protocol", "ssl");
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        if let Some(ca) = &tls.ca {
            c.set("ssl.ca.location", path(ca));
        }
        if let (Some(cert), Some(key)) = (&tls.certificate, &tls.key) {
            c.set("ssl.certificate.location", path(cert));
            c.set("ssl.key.location", path(key));
        }
    }
    for (key, value) in &k.client {
        c.set(key, value);
    }
    c
}

/// The last authentication failure clients of this process saw, per
/// broker (`host:port` → why). librdkafka reports it through the error
/// callback while the request that fails reports only a transport error,
/// so a startup error uses it to name the setting that needs fixing.
static AUTH_FAILURE: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// The last TLS failure a client of this process saw, as [`AUTH_FAILURE`].
static TLS_FAILURE: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// The broker `host:port` a librdkafka error reason names
/// (`ssl://127.0.0.1:9093/1: …`).
fn broker_of(reason: &str) -> String {
    reason.split("://").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default().to_owned()
}

/// Keeps the latest failure per broker: clients of other clusters in the
/// same process (or other tests) do not overwrite it.
fn remember(slot: &Mutex<BTreeMap<String, String>>, reason: &str) {
    let mut last = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // Bounded: a process talks to a handful of brokers.
    if last.len() >= 64 {
        last.clear();
    }
    last.insert(broker_of(reason), reason.to_owned());
}

/// Forwards librdkafka's logs and errors to tracing, so a broker outage is
/// in vigil's log with its cause.
#[derive(Debug, Clone, Default)]
pub struct Logging;

impl rdkafka::consumer::ConsumerContext for Logging {}

impl ClientContext for Logging {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "vigil::kafka", facility = fac, "{message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "vigil::kafka", facility = fac, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "vigil::kafka", facility = fac, "{message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "vigil::kafka", facility = fac, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            // The changelog reader asks for end-of-partition events.
            Some(RDKafkaErrorCode::PartitionEOF) => {}
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                tracing::warn!(target: "vigil::kafka", "all Kafka brokers are down: {reason}; retrying with backoff");
            }
            Some(RDKafkaErrorCode::BrokerTransportFailure) => {
                tracing::warn!(target: "vigil::kafka", "lost a Kafka broker: {reason}; reconnecting with backoff");
            }
            Some(RDKafkaErrorCode::SSL) => {
                remember(&TLS_FAILURE, reason);
                tracing::error!(target: "vigil::kafka", "TLS with a Kafka broker failed: {reason}; check [kafka.tls]");
            }
            _ if reason.contains("SSL handshake failed") => {
                remember(&TLS_FAILURE, reason);
                tracing::error!(target: "vigil::kafka", "TLS with a Kafka broker failed: {reason}; check [kafka.tls]");
            }
            Some(RDKafkaErrorCode::Authentication) => {
                remember(&AUTH_FAILURE, reason);
                tracing::error!(
                    target: "vigil::kafka",
                    "Kafka authentication failed: {reason}; check the sasl.* settings in [kafka.client]"
                );
            }
            _ => tracing::error!(target: "vigil::kafka", "Kafka client error: {error}: {reason}"),
        }
    }
}

/// Turns a failure to reach the cluster into the error that says which
/// setting to look at.
fn explain(err: KafkaError, k: &KafkaConfig) -> ClusterError {
    let brokers = k.brokers.clone();
    match err.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed) => {
            ClusterError::Authentication { brokers, source: err.into() }
        }
        Some(RDKafkaErrorCode::TopicAuthorizationFailed | RDKafkaErrorCode::GroupAuthorizationFailed) => {
            ClusterError::NotAllowed { source: err.into() }
        }
        _ if let Some(reason) = last_failure(&TLS_FAILURE, &k.brokers) => {
            if reason.contains("certificate verify failed") {
                ClusterError::UntrustedCertificate { brokers, reason }
            } else {
                ClusterError::Tls { brokers, reason }
            }
        }
        _ if let Some(reason) = last_failure(&AUTH_FAILURE, &k.brokers) => ClusterError::Refused { brokers, reason },
        _ => ClusterError::Unreachable { brokers, within: k.connect_timeout, source: err.into() },
    }
}

/// Why the cluster could not be used, naming the setting to check.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The brokers refused the credentials.
    #[error(
        "kafka.client: authentication with {brokers} failed; check sasl.mechanism, sasl.username and sasl.password"
    )]
    Authentication {
        /// `kafka.brokers`.
        brokers: String,
        /// The client's error.
        source: Box<KafkaError>,
    },
    /// The credentials are not allowed a topic or the group.
    #[error("kafka.client: the credentials are not allowed this; check the cluster's ACLs")]
    NotAllowed {
        /// The client's error.
        source: Box<KafkaError>,
    },
    /// A broker's certificate is not signed by a trusted CA.
    #[error(
        "kafka.tls.ca: the certificate of a broker at {brokers} is not signed by a trusted CA ({reason}); check \
         kafka.tls.ca"
    )]
    UntrustedCertificate {
        /// `kafka.brokers`.
        brokers: String,
        /// What librdkafka logged.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("kafka.tls: TLS with {brokers} failed ({reason}); check [kafka.tls]")]
    Tls {
        /// `kafka.brokers`.
        brokers: String,
        /// What librdkafka logged.
        reason: String,
    },
    /// The login was refused before any request.
    #[error(
        "kafka.client: authentication with {brokers} failed ({reason}); check security.protocol, sasl.mechanism, \
         sasl.username and sasl.password"
    )]
    Refused {
        /// `kafka.brokers`.
        brokers: String,
        /// What librdkafka logged.
        reason: String,
    },
    /// No broker answered in time.
    #[error(
        "kafka.brokers: cannot reach {brokers} within {}; check kafka.brokers and that the brokers are up",
        humantime::format_duration(*within)
    )]
    Unreachable {
        /// `kafka.brokers`.
        brokers: String,
        /// `kafka.connect-timeout`.
        within: Duration,
        /// The client's error.
        source: Box<KafkaError>,
    },
    /// A topic the settings name does not exist.
    #[error("{key}: topic `{topic}` does not exist on {brokers}; create it")]
    NoTopic {
        /// The setting naming it.
        key: String,
        /// The topic.
        topic: String,
        /// `kafka.brokers`.
        brokers: String,
    },
    /// The cluster reports an error for a topic.
    #[error("{key}: topic `{topic}`")]
    Topic {
        /// The setting naming it.
        key: String,
        /// The topic.
        topic: String,
        /// What the cluster reports.
        source: RDKafkaErrorCode,
    },
    /// A client could not be created from the settings.
    #[error("kafka.client: cannot create a {what}")]
    Client {
        /// `consumer` or `producer`.
        what: &'static str,
        /// The client's error.
        source: Box<KafkaError>,
    },
}

/// Why authentication or TLS (`slot`) with one of `brokers` last failed,
/// if it did.
fn last_failure(slot: &Mutex<BTreeMap<String, String>>, brokers: &str) -> Option<String> {
    let last = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    brokers.split(',').find_map(|b| last.get(b.trim()).cloned())
}

/// The number of partitions of `topic`, or a message naming the setting
/// to fix when the cluster cannot be reached or the topic is missing.
///
/// # Errors
/// Unreachable brokers, bad credentials or a missing topic.
pub fn partitions_of<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    key: &str,
    k: &KafkaConfig,
) -> Result<u32, ClusterError> {
    // Asked in short slices: a refused login or handshake is reported by
    // librdkafka's error callback while the request only times out, so
    // each slice checks for one and fails fast, naming the setting.
    let deadline = std::time::Instant::now() + k.connect_timeout;
    let metadata = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match client.fetch_metadata(Some(topic), left.min(Duration::from_millis(500))) {
            Ok(m) => break m,
            Err(e) => {
                let transient = matches!(
                    e.rdkafka_error_code(),
                    Some(
                        RDKafkaErrorCode::OperationTimedOut
                            | RDKafkaErrorCode::BrokerTransportFailure
                            | RDKafkaErrorCode::AllBrokersDown
                    )
                );
                let known = last_failure(&TLS_FAILURE, &k.brokers).is_some()
                    || last_failure(&AUTH_FAILURE, &k.brokers).is_some();
                if !transient || known || std::time::Instant::now() >= deadline {
                    return Err(explain(e, k));
                }
            }
        }
    };
    let missing = || ClusterError::NoTopic { key: key.to_owned(), topic: topic.to_owned(), brokers: k.brokers.clone() };
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(missing());
    };
    if let Some(err) = t.error() {
        let code = RDKafkaErrorCode::from(err);
        if code == RDKafkaErrorCode::UnknownTopicOrPartition || code == RDKafkaErrorCode::UnknownTopic {
            return Err(missing());
        }
        return Err(ClusterError::Topic { key: key.to_owned(), topic: topic.to_owned(), source: code });
    }
    if t.partitions().is_empty() {
        return Err(missing());
    }
    Ok(t.partitions().len() as u32)
}

/// How long a flush or commit may wait through a broker outage before the
/// pipeline gives up and stops (uncommitted input is read again on restart).
pub const OUTAGE_LIMIT: Duration = Duration::from_secs(300);
