//! Sources: where raw event records come from.
//!
//! A source hands out batches of raw lines with their position, so a
//! dead letter can say where it came from and, later, a checkpoint can say
//! where to resume.

mod file;
mod memory;

pub use file::FileSource;
pub use memory::MemorySource;

use tokio_util::sync::CancellationToken;

use crate::config::SourceConfig;

/// One raw record: a line and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The line, without its newline.
    pub line: String,
    /// 1-based line number in the source.
    pub line_no: u64,
}

/// Where a source is: what a checkpoint stores to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Byte offset of the first record not yet handed out.
    pub offset: u64,
    /// Lines handed out so far.
    pub line_no: u64,
}

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input could not be opened or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
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
}

/// Opens the configured source, resuming at `resume` when given.
///
/// # Errors
/// [`SourceError`] when it cannot be opened or the position is past its end.
pub fn open(config: &SourceConfig, resume: Option<Position>) -> Result<Box<dyn Source>, SourceError> {
    match config {
        SourceConfig::File(f) => {
            Ok(Box::new(FileSource::open_at(&f.path, f.follow, f.poll_interval, resume.unwrap_or_default())?))
        }
    }
}

/// The name a configured source reports, without opening it.
pub fn name(config: &SourceConfig) -> String {
    match config {
        SourceConfig::File(f) => file::name(&f.path),
    }
}
