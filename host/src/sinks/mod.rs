//! Sinks: where decisions, alerts, window aggregates, late events and dead
//! letters go.
//!
//! Records arrive already serialised as JSON lines, in batches of
//! [`Records`], each with its key: a file writes the lines, a topic sends
//! each under its key. Alerts and dead letters are roles, not kinds: any sink kind
//! can serve any role.

mod file;
mod kafka;
mod records;

pub use file::{DiscardSink, FileSink, StdoutSink};
pub use kafka::{KafkaSink, Producer};
pub use records::{Record, Records};

use crate::config::SinkConfig;

/// A destination for records.
pub trait Sink: Send {
    /// Writes a batch of records.
    ///
    /// # Errors
    /// When the destination cannot be written.
    fn write(&mut self, records: &Records) -> std::io::Result<()>;

    /// Makes everything written so far visible.
    ///
    /// # Errors
    /// When the destination cannot be written.
    fn flush(&mut self) -> std::io::Result<()>;

    /// Makes everything written so far durable (before a checkpoint).
    ///
    /// # Errors
    /// When the destination cannot be written.
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()
    }

    /// Writes out what is buffered and hands back a handle whose
    /// `sync_data` makes it durable, for another thread to call while
    /// this one goes on writing; `None` when [`Sink::sync`] has done it
    /// here (the default) or there is nothing to make durable.
    ///
    /// # Errors
    /// When the destination cannot be written.
    fn sync_handle(&mut self) -> std::io::Result<Option<SyncHandle>> {
        self.sync().map(|()| None)
    }
}

/// An output file to make durable from another thread ([`Sink::sync_handle`]).
#[derive(Debug)]
pub struct SyncHandle {
    file: std::fs::File,
    /// What its errors name (see [`named`]).
    what: std::sync::Arc<str>,
}

impl SyncHandle {
    /// Makes what was written to the file before the handle was taken
    /// durable.
    ///
    /// # Errors
    /// When the file cannot be synced, naming it.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data().map_err(|e| named(&self.what, e))
    }
}

/// An output's error `e`, saying which output and file it was at, with the
/// same kind.
fn named(what: &std::sync::Arc<str>, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), At { what: what.clone(), source: e })
}

/// See [`named`].
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
struct At {
    what: std::sync::Arc<str>,
    source: std::io::Error,
}

/// A sink several pipelines write to (the hops of one daemon), one at a time.
#[derive(Clone)]
pub struct SharedSink(std::sync::Arc<std::sync::Mutex<Box<dyn Sink>>>);

impl std::fmt::Debug for SharedSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSink")
    }
}

impl SharedSink {
    /// Shares `sink`.
    pub fn new(sink: Box<dyn Sink>) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(sink)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Box<dyn Sink>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Sink for SharedSink {
    fn write(&mut self, records: &Records) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.lock().write(records)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.lock().flush()
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.lock().sync()
    }

    fn sync_handle(&mut self) -> std::io::Result<Option<SyncHandle>> {
        self.lock().sync_handle()
    }
}

/// Why an output could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Its file could not be created.
    #[error("cannot open the {role} file {}", path.display())]
    File {
        /// The output role.
        role: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A Kafka output without a cluster to produce to.
    #[error("sinks.{role}: a Kafka sink needs [kafka] with kafka.brokers")]
    NoCluster {
        /// The output role.
        role: &'static str,
    },
    /// The producer could not be created.
    #[error(transparent)]
    Producer(#[from] crate::kafka::ClusterError),
    /// The brokers refused transactions.
    #[error(
        "kafka.exactly-once: cannot start transactions as `{id}` on {brokers}; the brokers must support transactions"
    )]
    Transactions {
        /// `transactional.id`.
        id: String,
        /// `kafka.brokers`.
        brokers: String,
        /// The client's error.
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The first transaction could not begin.
    #[error("kafka.exactly-once: cannot begin a transaction")]
    Begin(#[source] Box<rdkafka::error::KafkaError>),
}

/// Opens the configured sink.
///
/// # Errors
/// When a file cannot be created, naming it, or a Kafka sink has no
/// cluster.
pub fn open(
    config: &SinkConfig,
    role: &'static str,
    producer: Option<&std::sync::Arc<Producer>>,
) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match config {
        SinkConfig::File { path } => {
            let file = FileSink::create(path).map_err(|source| SinkError::File { role, path: path.clone(), source })?;
            Box::new(file.serving(role, path))
        }
        SinkConfig::Stdout => Box::new(StdoutSink::default()),
        SinkConfig::Discard => Box::new(DiscardSink),
        SinkConfig::Kafka { topic } => {
            let Some(producer) = producer else {
                return Err(SinkError::NoCluster { role });
            };
            Box::new(KafkaSink::new(producer.clone(), topic.clone()))
        }
    })
}
