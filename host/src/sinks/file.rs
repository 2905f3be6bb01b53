//! File, stdout and discard sinks.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;

use super::Sink;

/// Appends to a file, creating it and its folder.
#[derive(Debug)]
pub struct FileSink {
    out: BufWriter<File>,
}

impl FileSink {
    /// Opens `path` for appending.
    ///
    /// # Errors
    /// When the file or its folder cannot be created.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            out: BufWriter::with_capacity(256 * 1024, file),
        })
    }
}

impl Sink for FileSink {
    fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
        self.out.write_all(lines)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes to standard output.
#[derive(Debug)]
pub struct StdoutSink {
    out: BufWriter<std::io::Stdout>,
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self {
            out: BufWriter::with_capacity(64 * 1024, std::io::stdout()),
        }
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
