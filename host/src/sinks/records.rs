//! A batch of output records: JSON lines, each with the key a keyed
//! destination (a Kafka topic) sends it under.

use serde::Serialize;

/// JSON lines one after another, each with its key. A file writes the
/// lines in one call; a topic sends each line under its key.
#[derive(Debug, Default)]
pub struct Records {
    /// The lines, each ending in `\n`.
    lines: Vec<u8>,
    /// The keys, one after another.
    keys: Vec<u8>,
    /// Per record, where its line and its key end.
    ends: Vec<End>,
}

#[derive(Debug, Clone, Copy)]
struct End {
    line: usize,
    key: usize,
    /// Whether the record has a key (it may be empty).
    keyed: bool,
}

/// One record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// What a keyed destination sends it under.
    pub key: Option<&'a [u8]>,
    /// The JSON, without its line end.
    pub line: &'a [u8],
}

impl Records {
    /// Appends `record` as a JSON line under `key`; serialising plain
    /// records cannot fail, and one that does is left out.
    pub fn push(&mut self, key: Option<&str>, record: &impl Serialize) {
        let start = self.lines.len();
        if serde_json::to_writer(&mut self.lines, record).is_err() {
            self.lines.truncate(start);
            return;
        }
        self.end(key.map(str::as_bytes));
    }

    /// Appends the line `write` adds to the buffer, under `key`. A
    /// line end is added when `write` left none; nothing is recorded when
    /// it wrote nothing.
    pub fn push_with(&mut self, key: Option<&str>, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.lines.len();
        write(&mut self.lines);
        if self.lines.len() > start {
            self.end(key.map(str::as_bytes));
        }
    }

    /// Appends a copy of `record`.
    pub fn push_record(&mut self, record: Record<'_>) {
        self.lines.extend_from_slice(record.line);
        self.lines.push(b'\n');
        self.end(record.key);
    }

    /// Records the line just added, ending it with `\n` unless it has one.
    fn end(&mut self, key: Option<&[u8]>) {
        let start = self.ends.last().map_or(0, |e| e.line);
        if self.lines.len() == start || self.lines.last() != Some(&b'\n') {
            self.lines.push(b'\n');
        }
        self.keys.extend_from_slice(key.unwrap_or_default());
        self.ends.push(End { line: self.lines.len(), key: self.keys.len(), keyed: key.is_some() });
    }

    /// Room for `n` more records of `bytes` bytes each, with keys of the
    /// usual length of an id.
    pub fn reserve(&mut self, n: usize, bytes: usize) {
        const KEY_BYTES: usize = 24;
        self.lines.reserve(n * bytes);
        self.keys.reserve(n * KEY_BYTES);
        self.ends.reserve(n);
    }

    /// The records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Every line, each ending in `\n`.
    pub fn lines(&self) -> &[u8] {
        &self.lines
    }

    /// The last record.
    pub fn last(&self) -> Option<Record<'_>> {
        self.iter().next_back()
    }

    /// Each record in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = Record<'_>> + ExactSizeIterator {
        (0..self.ends.len()).map(|i| {
            let start = i.checked_sub(1).map_or(End { line: 0, key: 0, keyed: false }, |p| self.ends[p]);
            let end = self.ends[i];
            Record {
                key: end.keyed.then(|| &self.keys[start.key..end.key]),
                line: &self.lines[start.line..end.line - 1],
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_record_keeps_its_key_whatever_its_neighbours_have() {
        let mut r = Records::default();
        r.push(Some("tx-1"), &serde_json::json!({"a": 1}));
        r.push(None, &serde_json::json!({"b": 2}));
        r.push_with(Some(""), |buf| buf.extend_from_slice(b"{\"c\":3}\n"));
        r.push_with(Some("never"), |_| {});
        r.push_record(Record { key: Some(b"a\"b"), line: b"{\"d\":4}" });
        r.push_record(Record { key: None, line: b"" });
        let got: Vec<_> = r.iter().map(|x| (x.key, x.line)).collect();
        assert_eq!(
            got,
            [
                (Some(&b"tx-1"[..]), &b"{\"a\":1}"[..]),
                (None, b"{\"b\":2}"),
                (Some(b""), b"{\"c\":3}"),
                (Some(b"a\"b"), b"{\"d\":4}"),
                (None, b""),
            ]
        );
        assert_eq!(r.len(), 5);
        assert_eq!(r.lines(), b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n{\"d\":4}\n\n");
        assert_eq!(r.iter().nth(3).and_then(|x| x.key), Some(&b"a\"b"[..]));
    }
}
