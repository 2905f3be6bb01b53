//! A JSONL file, read from the start and optionally followed like `tail -f`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::{Record, Source, SourceError};

/// Reads lines from a file.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    name: String,
    reader: BufReader<File>,
    follow: bool,
    poll: Duration,
    line_no: u64,
    /// A line read without its newline yet (the writer is mid-line).
    partial: String,
}

impl FileSource {
    /// Opens `path`.
    ///
    /// # Errors
    /// [`SourceError::Io`] naming the file.
    pub fn open(path: &Path, follow: bool, poll: Duration) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(|source| SourceError::Io {
            what: format!("cannot open source file {}", path.display()),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            name: format!("file:{}", path.display()),
            reader: BufReader::with_capacity(256 * 1024, file),
            follow,
            poll,
            line_no: 0,
            partial: String::new(),
        })
    }

    fn push(&mut self, batch: &mut Vec<Record>, mut line: String) {
        self.line_no += 1;
        if line.ends_with('\n') {
            line.pop();
            if line.ends_with('\r') {
                line.pop();
            }
        }
        // Blank lines are not events: skipped, not dead-lettered.
        if !line.trim().is_empty() {
            batch.push(Record {
                line,
                line_no: self.line_no,
            });
        }
    }
}

impl Source for FileSource {
    fn next_batch(
        &mut self,
        batch: &mut Vec<Record>,
        max: usize,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError> {
        let start = batch.len();
        loop {
            if batch.len() - start >= max {
                return Ok(true);
            }
            let mut line = std::mem::take(&mut self.partial);
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|source| SourceError::Io {
                    what: format!("cannot read {}", self.path.display()),
                    source,
                })?;
            if n > 0 && line.ends_with('\n') {
                self.push(batch, line);
                continue;
            }
            // End of the file for now.
            if !self.follow {
                if !line.is_empty() {
                    self.push(batch, line);
                }
                return Ok(false);
            }
            self.partial = line;
            if batch.len() > start {
                return Ok(true);
            }
            if cancel.is_cancelled() {
                return Ok(false);
            }
            std::thread::sleep(self.poll);
            if cancel.is_cancelled() {
                return Ok(false);
            }
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_all_lines_skipping_blanks_and_numbering_them() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        write!(f, "a\n\nb\r\nc").expect("write");
        let mut src = FileSource::open(f.path(), false, Duration::from_millis(1)).expect("open");
        let mut batch = Vec::new();
        let more = src
            .next_batch(&mut batch, 100, &CancellationToken::new())
            .expect("read");
        assert!(!more);
        let got: Vec<_> = batch.iter().map(|r| (r.line.as_str(), r.line_no)).collect();
        assert_eq!(got, [("a", 1), ("b", 3), ("c", 4)]);
    }

    #[test]
    fn a_followed_file_waits_for_whole_lines() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        write!(f, "first\nsec").expect("write");
        f.flush().expect("flush");
        let mut src = FileSource::open(f.path(), true, Duration::from_millis(1)).expect("open");
        let cancel = CancellationToken::new();
        let mut batch = Vec::new();
        assert!(src.next_batch(&mut batch, 100, &cancel).expect("read"));
        assert_eq!(batch.len(), 1);
        writeln!(f, "ond").expect("write");
        f.flush().expect("flush");
        batch.clear();
        assert!(src.next_batch(&mut batch, 100, &cancel).expect("read"));
        assert_eq!(batch[0].line, "second");
        cancel.cancel();
        batch.clear();
        assert!(!src.next_batch(&mut batch, 100, &cancel).expect("read"));
    }
}
