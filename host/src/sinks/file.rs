//! File, stdout and discard sinks.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use super::{Records, Sink, SyncHandle};

/// Appends to a file, creating it and its folder.
#[derive(Debug)]
pub struct FileSink {
    out: BufWriter<File>,
    /// A regular file, which `sync` makes durable; a named pipe or device
    /// has nothing to sync.
    regular: bool,
    /// Bytes the file holds, counting those still in the buffer.
    len: u64,
    /// Bytes handed to the kernel's writeback so far (see [`Self::write_back`]).
    written_back: u64,
    /// Whether early writeback is done: a regular file, and the kernel
    /// supports it.
    early_writeback: bool,
    /// What its errors name: the file, and the output it serves.
    what: Arc<str>,
}

/// Bytes written between two calls for their early writeback.
const WRITE_BACK_EVERY: u64 = 1 << 20;

impl FileSink {
    /// Opens `path` for appending. A last line cut short by a crash is
    /// removed first, so the file stays one whole record per line (the
    /// record is written again after the restart).
    ///
    /// # Errors
    /// When the file or its folder cannot be created.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            let keep = whole_lines_len(&mut file, len)?;
            if keep < len {
                tracing::warn!(file = %path.display(), dropped_bytes = len - keep, "removed a partial last line left by a crash");
                file.set_len(keep)?;
            }
        }
        let regular = file.metadata()?.file_type().is_file();
        let len = file.metadata()?.len();
        Ok(Self {
            out: BufWriter::with_capacity(BUFFER, file),
            regular,
            len,
            written_back: len,
            early_writeback: regular,
            what: format!("the file {}", path.display()).into(),
        })
    }

    /// Names the output the file serves in its errors ("the decisions
    /// file out/decisions.jsonl").
    #[must_use]
    pub fn serving(mut self, role: &str, path: &Path) -> Self {
        self.what = format!("the {role} file {}", path.display()).into();
        self
    }

    fn named(&self, e: std::io::Error) -> std::io::Error {
        super::named(&self.what, e)
    }

    /// Starts the kernel writing what was written so far to disk, without
    /// waiting for it (Linux's `sync_file_range`, as RocksDB's
    /// `bytes_per_sync` does). Left to the checkpoint's `fdatasync`, the
    /// whole second of output was written out at once, and a write
    /// appending to the page being written out waited for it, stalling the
    /// sink (the suite's row 4, p99 at half load, shows it). The buffer's
    /// bytes and the last page are left alone, so the next write never
    /// waits for this one.
    fn write_back(&mut self) {
        let end = self.len.saturating_sub(BUFFER as u64 + 4096) & !4095;
        if !self.early_writeback || end < self.written_back.saturating_add(WRITE_BACK_EVERY) {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (from, bytes) = (self.written_back as libc::off64_t, (end - self.written_back) as libc::off64_t);
            // SAFETY: the descriptor is this sink's open file; the call
            // only asks the kernel to start writing a range of it.
            let rc = unsafe {
                libc::sync_file_range(self.out.get_ref().as_raw_fd(), from, bytes, libc::SYNC_FILE_RANGE_WRITE)
            };
            if rc != 0 {
                // Only an optimisation: the checkpoint's sync still does it all.
                tracing::debug!(error = %std::io::Error::last_os_error(), "early writeback not available");
                self.early_writeback = false;
                return;
            }
        }
        self.written_back = end;
    }
}

/// The write buffer; a worker's batch of decisions is larger and goes to
/// the file directly, without a copy through it.
const BUFFER: usize = 64 * 1024;

/// The length of `file` up to and including its last newline.
fn whole_lines_len(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut buf = [0u8; 4096];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

impl Sink for FileSink {
    fn write(&mut self, records: &Records) -> std::io::Result<()> {
        let lines = records.lines();
        self.out.write_all(lines).map_err(|e| self.named(e))?;
        self.len += lines.len() as u64;
        self.write_back();
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush().map_err(|e| self.named(e))
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.flush()?;
        if self.regular { self.out.get_ref().sync_data().map_err(|e| self.named(e)) } else { Ok(()) }
    }
    fn sync_handle(&mut self) -> std::io::Result<Option<SyncHandle>> {
        self.flush()?;
        if !self.regular {
            return Ok(None);
        }
        let file = self.out.get_ref().try_clone().map_err(|e| self.named(e))?;
        Ok(Some(SyncHandle { file, what: self.what.clone() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Records {
        let mut r = Records::default();
        r.push_with(None, |buf| buf.extend_from_slice(line.as_bytes()));
        r
    }

    #[test]
    fn a_write_that_fails_names_the_output_and_its_file() {
        let path = Path::new("/dev/full");
        let mut sink = FileSink::create(path).expect("open /dev/full").serving("decisions", path);
        sink.write(&one("{\"id\":1}\n")).expect("buffered");
        let e = sink.flush().expect_err("the device is full");
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
        let said = crate::error::chain(&e).to_string();
        assert!(said.starts_with("the decisions file /dev/full: "), "{said}");
        assert!(said.contains("No space left on device"), "{said}");
    }

    #[test]
    fn a_partial_last_line_is_removed_on_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"id\":1}\n{\"id\":2}\n{\"id\":").expect("write");
        let mut sink = FileSink::create(&path).expect("open");
        sink.write(&one("{\"id\":3}\n")).expect("write");
        sink.flush().expect("flush");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n");
    }

    #[test]
    fn early_writeback_leaves_the_buffer_and_last_page_and_loses_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"id\":0}\n").expect("write");
        let mut sink = FileSink::create(&path).expect("open");
        let mut expected = std::fs::read(&path).expect("read");
        let start = expected.len() as u64;
        for i in 0..40_000 {
            let line = format!("{{\"id\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 200));
            sink.write(&one(&line)).expect("write");
            expected.extend_from_slice(line.as_bytes());
            let (back, len) = (sink.written_back, sink.len);
            assert!(back == start || back + BUFFER as u64 + 4096 <= len, "line {i}: {back} of {len}");
        }
        assert_eq!(sink.len, expected.len() as u64);
        if cfg!(target_os = "linux") {
            assert!(sink.written_back >= sink.len - WRITE_BACK_EVERY - BUFFER as u64 - 8192, "{}", sink.written_back);
            assert_eq!(sink.written_back % 4096, 0);
        }
        sink.sync().expect("sync");
        assert_eq!(std::fs::read(&path).expect("read"), expected);
    }
}

/// Writes to standard output.
#[derive(Debug)]
pub struct StdoutSink {
    out: BufWriter<std::io::Stdout>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self { out: BufWriter::with_capacity(64 * 1024, std::io::stdout()) }
    }
}

impl Sink for StdoutSink {
    fn write(&mut self, records: &Records) -> std::io::Result<()> {
        self.out.write_all(records.lines())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Drops everything.
#[derive(Debug, Default)]
pub struct DiscardSink;

impl Sink for DiscardSink {
    fn write(&mut self, _records: &Records) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
