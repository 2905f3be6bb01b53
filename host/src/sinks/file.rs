//! File, stdout and discard sinks.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::Sink;

/// Appends to a file, creating it and its folder.
#[derive(Debug)]
pub struct FileSink {
    out: BufWriter<File>,
    /// A regular file, which `sync` makes durable; a named pipe or device
    /// has nothing to sync.
    regular: bool,
}

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
        // Small writes (a few dead letters) are gathered; a worker's batch
        // of decisions is larger than this and goes to the file directly,
        // without a copy through the buffer.
        Ok(Self { out: BufWriter::with_capacity(64 * 1024, file), regular })
    }
}

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
    fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        self.out.write_all(lines)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.regular { self.out.get_ref().sync_data() } else { Ok(()) }
    }
    fn sync_handle(&mut self) -> std::io::Result<Option<File>> {
        self.out.flush()?;
        if self.regular { self.out.get_ref().try_clone().map(Some) } else { Ok(None) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_last_line_is_removed_on_open() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("d.jsonl");
        std::fs::write(&path, "{\"id\":1}\n{\"id\":2}\n{\"id\":").expect("write");
        let mut sink = FileSink::create(&path).expect("open");
        sink.write(b"{\"id\":3}\n").expect("write");
        sink.flush().expect("flush");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{\"id\":1}\n{\"id\":2}\n{\"id\":3}\n");
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
    fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        self.out.write_all(lines)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Drops everything.
#[derive(Debug, Default)]
pub struct DiscardSink;

impl Sink for DiscardSink {
    fn write(&mut self, _lines: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
