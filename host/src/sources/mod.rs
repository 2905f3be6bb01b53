//! Sources: where raw event records come from.
//!
//! A source hands out batches of raw lines with their position, so a
//! dead letter can say where it came from and, later, a checkpoint can say
//! where to resume.

mod file;
mod kafka;
mod memory;

pub use crate::state::Position;
pub use file::FileSource;
pub use kafka::KafkaSource;
pub use memory::MemorySource;

use tokio_util::sync::CancellationToken;

use crate::config::SourceConfig;

/// One raw record: a line and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The line, without its newline.
    pub line: String,
    /// 1-based line number in the source; for Kafka, the offset.
    pub line_no: u64,
    /// The input partition (Kafka); 0 for other sources.
    pub partition: u32,
    /// Where the raw bytes stopped being valid UTF-8, if they did; `line`
    /// then holds them with U+FFFD in place of the bad bytes, and the
    /// record is dead-lettered rather than decoded.
    pub not_utf8_at: Option<usize>,
    /// The line's whole length when it was longer than the source holds
    /// (`clean.max-event-bytes`): `line` then holds only its start, and the
    /// record is dead-lettered as too large.
    pub oversize: Option<u64>,
}

impl Record {
    /// A record of `bytes` copied into `line` (emptied first), which should
    /// be UTF-8; see [`Record::not_utf8_at`] for those that are not.
    pub fn copied_into(mut line: String, bytes: &[u8], line_no: u64, partition: u32) -> Self {
        let Ok(text) = std::str::from_utf8(bytes) else {
            // Rare: not worth a reused buffer.
            return Self::from_bytes(bytes.to_vec(), line_no, partition);
        };
        line.clear();
        line.push_str(text);
        Self { line, line_no, partition, not_utf8_at: None, oversize: None }
    }

    /// A record of raw bytes, which should be UTF-8; see
    /// [`Record::not_utf8_at`] for those that are not.
    pub fn from_bytes(bytes: Vec<u8>, line_no: u64, partition: u32) -> Self {
        match String::from_utf8(bytes) {
            Ok(line) => Self { line, line_no, partition, not_utf8_at: None, oversize: None },
            Err(e) => Self {
                not_utf8_at: Some(e.utf8_error().valid_up_to()),
                line: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                line_no,
                partition,
                oversize: None,
            },
        }
    }
}

/// A change of the partitions this daemon owns (Kafka).
#[derive(Debug)]
pub enum Rebalance {
    /// These partitions were taken away: forget their state; whoever gets
    /// them next restores it from the changelog.
    Revoked(Vec<u32>),
    /// This partition was given to this daemon, with its state as the
    /// changelog holds it. Its events follow.
    Assigned {
        /// The partition.
        partition: u32,
        /// Its state.
        state: crate::state::Restored,
    },
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input could not be opened or read.
    #[error("{what}")]
    Io {
        /// What was being read.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The cluster or a topic the settings name cannot be used.
    #[error(transparent)]
    Cluster(#[from] crate::kafka::ClusterError),
    /// The state changelog does not fit the input topic.
    #[error(
        "kafka.changelog-topic: topic `{changelog}` has {kept} partitions; it needs {input}, as many as \
         source.topic `{topic}`"
    )]
    ChangelogPartitions {
        /// The changelog topic.
        changelog: String,
        /// Its partitions.
        kept: u32,
        /// The input topic.
        topic: String,
        /// Its partitions.
        input: u32,
    },
    /// The state changelog cannot be used.
    #[error("the state changelog must exist, compacted, with {input} partitions like `{topic}`")]
    NoChangelog {
        /// The input topic.
        topic: String,
        /// Its partitions.
        input: u32,
        /// Why it cannot be used.
        source: crate::kafka::ClusterError,
    },
    /// A Kafka call failed in a way retries do not fix.
    #[error("{what}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client's error.
        source: Box<rdkafka::error::KafkaError>,
    },
    /// State could not be restored or kept.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A Kafka source opened without its cluster settings.
    #[error("a Kafka source is opened with its cluster settings: sources::KafkaSource")]
    NeedsCluster,
}

/// A producer of raw records.
pub trait Source: Send {
    /// Appends up to `max` records to `batch`. Returns `false` once the
    /// source is exhausted (never, for a followed file) or `cancel` fired;
    /// the records appended on that call still count. A source waiting for
    /// input returns an empty batch from time to time.
    ///
    /// # Errors
    /// [`SourceError`] when the input cannot be read.
    fn next_batch(
        &mut self,
        batch: &mut Vec<Record>,
        max: usize,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError>;

    /// A name for logs and dead letters, e.g. `file:events.jsonl`.
    fn name(&self) -> &str;

    /// The position after the last record handed out.
    fn position(&self) -> Position;

    /// Whether records' partitions own keyed state (Kafka): events are then
    /// spread over workers by partition, and state follows partitions.
    fn partitioned(&self) -> bool {
        false
    }

    /// Partition ownership changes since the last call, in order. Records
    /// handed out before a change came before it.
    ///
    /// # Errors
    /// [`SourceError`] when moved state cannot be read back.
    fn take_rebalance(&mut self) -> Result<Vec<Rebalance>, SourceError> {
        Ok(Vec::new())
    }

    /// The rebalance epoch and the next offset of each owned partition,
    /// for a checkpoint (Kafka).
    fn offsets(&self) -> (u64, Vec<(u32, i64)>) {
        (0, Vec::new())
    }

    /// Called about every 100 ms while the pipeline cannot take what was
    /// read (back-pressure). A source that must keep talking to a server to
    /// keep its input (a Kafka group member) does so here, reading nothing.
    ///
    /// # Errors
    /// [`SourceError`] when the source cannot pause.
    fn stalled(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// The pipeline took what was waiting: reading may go on.
    ///
    /// # Errors
    /// [`SourceError`] when the source cannot resume.
    fn unstalled(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// Empties `batch`, whose records are done with; a source may keep
    /// their buffers to read the next records into.
    fn recycle(&mut self, batch: &mut Vec<Record>) {
        batch.clear();
    }

    /// How far reading is behind the input, as far as the source knows.
    fn lag(&mut self) -> Lag {
        Lag::default()
    }
}

/// How far a source is behind its input, and whether it reaches it
/// ([`Source::lag`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lag {
    /// A file: bytes between the next line and the end.
    pub bytes: Option<u64>,
    /// Kafka: records between the next offset and the high watermark, per
    /// owned partition.
    pub records: Vec<(u32, u64)>,
    /// Kafka: whether a broker is connected; none for other sources.
    pub connected: Option<bool>,
}

/// Opens the configured source, resuming at `resume` when given; lines
/// longer than `max_line` are not held whole.
///
/// # Errors
/// [`SourceError`] when it cannot be opened or the position is past its end.
pub fn open(config: &SourceConfig, resume: Option<Position>, max_line: usize) -> Result<Box<dyn Source>, SourceError> {
    match config {
        SourceConfig::File(f) => Ok(Box::new(
            FileSource::open_at(&f.path, f.follow, f.poll_interval, resume.unwrap_or_default())?
                .with_max_line(max_line),
        )),
        SourceConfig::Kafka(_) => Err(SourceError::NeedsCluster),
    }
}

/// The name a configured source reports, without opening it.
pub fn name(config: &SourceConfig) -> String {
    match config {
        SourceConfig::File(f) => file::name(&f.path),
        SourceConfig::Kafka(k) => format!("kafka:{}", k.topic),
    }
}
