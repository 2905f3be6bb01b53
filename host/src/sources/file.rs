//! A JSONL file, read from the start and optionally followed like `tail -f`.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::{Position, Record, Source, SourceError};

pub(super) fn name(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// Reads lines from a file.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    name: String,
    reader: BufReader<File>,
    follow: bool,
    poll: Duration,
    /// The start of a line that runs past the end of the reader's buffer
    /// (or of the file, while the writer is mid-line), until it is whole;
    /// no more than `max_line` and a byte of it.
    partial: Vec<u8>,
    /// The length of that line so far, all of it.
    partial_len: u64,
    /// Longer lines are not held whole: only their start, to say what they
    /// were (see [`Record::oversize`]).
    max_line: usize,
    lines: Lines,
}

/// Hands out whole lines as records.
#[derive(Debug)]
struct Lines {
    line_no: u64,
    /// Bytes of the lines handed out (or skipped as blank).
    offset: u64,
    /// Line buffers of records the pipeline is done with (see
    /// [`Source::recycle`]), to copy the next lines into: a batch then
    /// allocates and frees nothing per line.
    spare: Vec<String>,
}

impl Lines {
    /// Hands out `raw`, one line with its newline if it has one, `len`
    /// bytes long in the file: more than `raw` holds when only its start
    /// was kept.
    fn push(&mut self, raw: &[u8], len: u64, batch: &mut Vec<Record>) {
        self.line_no += 1;
        self.offset += len;
        if len > raw.len() as u64 {
            let mut record = Record::from_bytes(raw.to_vec(), self.line_no, 0);
            record.oversize = Some(len);
            batch.push(record);
            return;
        }
        let mut line = raw;
        if let Some(rest) = line.strip_suffix(b"\n") {
            line = rest.strip_suffix(b"\r").unwrap_or(rest);
        }
        // Blank lines are not events: skipped, not dead-lettered.
        if !line.trim_ascii().is_empty() {
            let buffer = self.spare.pop().unwrap_or_default();
            batch.push(Record::copied_into(buffer, line, self.line_no, 0));
        }
    }
}

impl FileSource {
    /// Opens `path` at its start.
    ///
    /// # Errors
    /// [`SourceError::Io`] naming the file.
    pub fn open(path: &Path, follow: bool, poll: Duration) -> Result<Self, SourceError> {
        Self::open_at(path, follow, poll, Position::default())
    }

    /// Opens `path` to resume at `at`.
    ///
    /// # Errors
    /// [`SourceError::Io`] naming the file, also when it is shorter than `at`.
    pub fn open_at(path: &Path, follow: bool, poll: Duration, at: Position) -> Result<Self, SourceError> {
        let io = |what: String| move |source| SourceError::Io { what, source };
        let mut file = File::open(path).map_err(io(format!("cannot open source file {}", path.display())))?;
        let len = file.metadata().map_err(io(format!("cannot read {}", path.display())))?.len();
        if at.offset > len {
            return Err(SourceError::Io {
                what: format!(
                    "{}: the checkpoint resumes at byte {} but the file has {len}; it was replaced or truncated \
                     (move the state folder away to start from scratch)",
                    path.display(),
                    at.offset
                ),
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            });
        }
        file.seek(SeekFrom::Start(at.offset)).map_err(io(format!("cannot seek in {}", path.display())))?;
        Ok(Self {
            path: path.to_owned(),
            name: name(path),
            reader: BufReader::with_capacity(256 * 1024, file),
            follow,
            poll,
            partial: Vec::new(),
            partial_len: 0,
            max_line: usize::MAX - 1,
            lines: Lines { line_no: at.line_no, offset: at.offset, spare: Vec::new() },
        })
    }

    /// Holds no more than the first `max` bytes (and one) of a longer line:
    /// a line without a newline for gigabytes is not read into memory.
    #[must_use]
    pub fn with_max_line(mut self, max: usize) -> Self {
        self.max_line = max.min(usize::MAX - 1);
        self
    }

    /// Adds `bytes` to the line being read, keeping at most `max_line` and
    /// a byte of it.
    fn extend_partial(&mut self, bytes: &[u8]) {
        let room = (self.max_line + 1).saturating_sub(self.partial.len());
        self.partial.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.partial_len += bytes.len() as u64;
    }

    /// Hands out the line being read.
    fn push_partial(&mut self, batch: &mut Vec<Record>) {
        self.lines.push(&self.partial, self.partial_len, batch);
        self.partial.clear();
        self.partial_len = 0;
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
            let buf = self
                .reader
                .fill_buf()
                .map_err(|source| SourceError::Io { what: format!("cannot read {}", self.path.display()), source })?;
            if !buf.is_empty() {
                let Some(end) = memchr::memchr(b'\n', buf) else {
                    let n = buf.len();
                    // Borrowed from the reader: copied out first.
                    let bytes = buf.to_vec();
                    self.extend_partial(&bytes);
                    self.reader.consume(n);
                    continue;
                };
                if self.partial_len == 0 {
                    // Nearly every line: copied once, from the reader's
                    // buffer into the record's.
                    self.lines.push(&buf[..=end], end as u64 + 1, batch);
                } else {
                    let line = buf[..=end].to_vec();
                    self.extend_partial(&line);
                    self.push_partial(batch);
                }
                self.reader.consume(end + 1);
                continue;
            }
            // End of the file for now.
            if !self.follow {
                if self.partial_len > 0 {
                    self.push_partial(batch);
                }
                return Ok(false);
            }
            if batch.len() > start {
                return Ok(true);
            }
            if cancel.is_cancelled() {
                return Ok(false);
            }
            std::thread::sleep(self.poll);
            // Hand back an empty batch now and then, so the pipeline can
            // checkpoint and advance watermarks while the input is quiet.
            return Ok(!cancel.is_cancelled());
        }
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn position(&self) -> Position {
        Position { offset: self.lines.offset, line_no: self.lines.line_no }
    }

    fn lag(&mut self) -> super::Lag {
        let end = self.reader.get_ref().metadata().map(|m| m.len()).ok();
        super::Lag { bytes: end.map(|end| end.saturating_sub(self.lines.offset)), ..super::Lag::default() }
    }

    fn recycle(&mut self, batch: &mut Vec<Record>) {
        // Enough for the next batch; a line far longer than the rest does
        // not keep its buffer.
        const KEEP: usize = 4096;
        for record in batch.drain(..) {
            if self.lines.spare.len() < KEEP && record.line.capacity() <= 4 * 1024 {
                self.lines.spare.push(record.line);
            }
        }
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
        let more = src.next_batch(&mut batch, 100, &CancellationToken::new()).expect("read");
        assert!(!more);
        let got: Vec<_> = batch.iter().map(|r| (r.line.as_str(), r.line_no)).collect();
        assert_eq!(got, [("a", 1), ("b", 3), ("c", 4)]);
    }

    #[test]
    fn resuming_at_a_position_continues_where_it_stopped() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        write!(f, "one\ntwo\nthree\n").expect("write");
        let cancel = CancellationToken::new();
        let mut src = FileSource::open(f.path(), false, Duration::from_millis(1)).expect("open");
        let mut batch = Vec::new();
        src.next_batch(&mut batch, 2, &cancel).expect("read");
        let at = src.position();
        assert_eq!(at, Position { offset: 8, line_no: 2 });
        let mut src = FileSource::open_at(f.path(), false, Duration::from_millis(1), at).expect("reopen");
        batch.clear();
        src.next_batch(&mut batch, 10, &cancel).expect("read");
        assert_eq!(batch, [Record { line: "three".into(), line_no: 3, ..Record::default() }]);
        let e = FileSource::open_at(f.path(), false, Duration::from_millis(1), Position { offset: 999, line_no: 9 })
            .expect_err("past the end");
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn recycled_buffers_carry_only_their_new_line() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        let lines = ["a long first line", "b", "a line \u{e9}", "x", "another long line", "y"];
        for l in lines {
            writeln!(f, "{l}").expect("write");
        }
        f.write_all(b"bad \xff byte\n").expect("write");
        let mut src = FileSource::open(f.path(), false, Duration::from_millis(1)).expect("open");
        let cancel = CancellationToken::new();
        let mut batch = Vec::new();
        let mut got = Vec::new();
        while src.next_batch(&mut batch, 2, &cancel).expect("read") || !batch.is_empty() {
            got.extend(batch.iter().map(|r| (r.line.clone(), r.not_utf8_at)));
            let before = src.lines.spare.len();
            src.recycle(&mut batch);
            assert!(batch.is_empty());
            assert!(src.lines.spare.len() > before || got.len() == lines.len() + 1, "buffers kept for reuse");
        }
        let mut want: Vec<_> = lines.iter().map(|l| (l.to_string(), None)).collect();
        want.push(("bad \u{fffd} byte".to_string(), Some(4)));
        assert_eq!(got, want);
    }

    #[test]
    fn lines_longer_than_the_read_buffer_come_out_whole() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        let lines = ["a line of more than five bytes", "ab", "abcd", "", "x\r", "the last, unterminated"];
        write!(f, "{}", lines.join("\n")).expect("write");
        let mut src = FileSource::open(f.path(), false, Duration::from_millis(1)).expect("open");
        src.reader = BufReader::with_capacity(5, File::open(f.path()).expect("open"));
        let mut batch = Vec::new();
        assert!(!src.next_batch(&mut batch, 100, &CancellationToken::new()).expect("read"));
        let got: Vec<_> = batch.iter().map(|r| (r.line.as_str(), r.line_no)).collect();
        assert_eq!(got, [(lines[0], 1), ("ab", 2), ("abcd", 3), ("x", 5), (lines[5], 6)]);
        let len = std::fs::metadata(f.path()).expect("len").len();
        assert_eq!(src.position(), Position { offset: len, line_no: 6 });
    }

    #[test]
    fn a_line_over_the_limit_is_not_held_whole() {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        let long = "x".repeat(100);
        write!(f, "short\n{long}\nafter\n{long}").expect("write");
        let mut src = FileSource::open(f.path(), false, Duration::from_millis(1)).expect("open").with_max_line(10);
        src.reader = BufReader::with_capacity(8, File::open(f.path()).expect("open"));
        let mut batch = Vec::new();
        assert!(!src.next_batch(&mut batch, 100, &CancellationToken::new()).expect("read"));
        let got: Vec<_> = batch.iter().map(|r| (r.line.len(), r.line_no, r.oversize)).collect();
        assert_eq!(got, [(5, 1, None), (11, 2, Some(101)), (5, 3, None), (11, 4, Some(100))]);
        let len = std::fs::metadata(f.path()).expect("len").len();
        assert_eq!(src.position().offset, len, "the whole line is read past");
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
