//! A source over records already in memory: what `vigil replay` feeds the
//! pipeline after reading and mapping a history file.

use tokio_util::sync::CancellationToken;

use super::{Position, Record, Source, SourceError};

/// Hands out a fixed list of records, then ends.
#[derive(Debug)]
pub struct MemorySource {
    records: std::vec::IntoIter<Record>,
    name: String,
    handed_out: u64,
}

impl MemorySource {
    /// A source named `name` (for logs and dead letters) over `records`.
    pub fn new(name: impl Into<String>, records: Vec<Record>) -> Self {
        MemorySource { records: records.into_iter(), name: name.into(), handed_out: 0 }
    }
}

impl Source for MemorySource {
    fn next_batch(
        &mut self,
        batch: &mut Vec<Record>,
        max: usize,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError> {
        if cancel.is_cancelled() {
            return Ok(false);
        }
        let before = batch.len();
        batch.extend(self.records.by_ref().take(max));
        self.handed_out += (batch.len() - before) as u64;
        Ok(self.records.len() > 0)
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn position(&self) -> Position {
        Position { offset: 0, line_no: self.handed_out }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_every_record_in_order_then_ends() {
        let records: Vec<Record> =
            (1..=5).map(|n| Record { line: format!("l{n}"), line_no: n, ..Record::default() }).collect();
        let mut source = MemorySource::new("memory:test", records.clone());
        let cancel = CancellationToken::new();
        let mut got = Vec::new();
        assert!(source.next_batch(&mut got, 2, &cancel).expect("should succeed"));
        assert!(source.next_batch(&mut got, 2, &cancel).expect("should succeed"));
        assert!(!source.next_batch(&mut got, 2, &cancel).expect("should succeed"));
        assert_eq!(got, records);
        assert_eq!(source.position().line_no, 5);
    }
}
