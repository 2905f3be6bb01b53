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
    fn sync_handle(&mut self) -> std::io::Result<Option<std::fs::File>> {
        self.sync().map(|()| None)
    }
}

/// Opens the configured sink.
///
/// # Errors
/// When a file cannot be created; the message names it.
pub fn open(
    config: &SinkConfig,
    role: &str,
    producer: Option<&std::sync::Arc<Producer>>,
) -> anyhow::Result<Box<dyn Sink>> {
    Ok(match config {
        SinkConfig::File { path } => Box::new(
            FileSink::create(path)
                .map_err(|e| anyhow::anyhow!("cannot open the {role} file {}: {e}", path.display()))?,
        ),
        SinkConfig::Stdout => Box::new(StdoutSink::default()),
        SinkConfig::Discard => Box::new(DiscardSink),
        SinkConfig::Kafka { topic } => {
            let Some(producer) = producer else {
                anyhow::bail!("sinks.{role}: a Kafka sink needs [kafka] with kafka.brokers");
            };
            Box::new(KafkaSink::new(producer.clone(), topic.clone()))
        }
    })
}
