//! `vigil replay`: run a history file through the full pipeline in batch
//! mode and judge the rules against known outcomes.
//!
//! The events go through the same decoder, features, windows, rules and
//! sinks as live traffic — only the source (events read up front, in event
//! time) and the outputs (a folder per run) differ — so a backtest decides
//! as production would have. Labels never reach the rules: they are kept
//! apart by transaction id and joined with the decision records afterwards.

pub mod analysis;
pub mod compare;
pub mod mapping;
pub mod report;

use crate::error::FileError;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::app::{self, Overrides};
use crate::config::{Config, SinkConfig, SinksConfig};
use crate::decode::Tokenizer;
use crate::pipeline::Counters;
use crate::sources::{MemorySource, Record};
pub use analysis::{Analysis, Counts, Labels, Typologies, TypologyTable};
pub use mapping::MappingError;

/// Why a replay or a comparison failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A file or folder could not be read, written, created or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// A CSV input could not be opened.
    #[error("cannot read {}", path.display())]
    CsvOpen {
        /// The CSV file.
        path: PathBuf,
        /// The reader's error.
        source: csv::Error,
    },
    /// A CSV input's header could not be read.
    #[error("cannot read the header of {}", path.display())]
    CsvHeader {
        /// The CSV file.
        path: PathBuf,
        /// The reader's error.
        source: csv::Error,
    },
    /// A CSV row could not be read.
    #[error("{} line {line}", path.display())]
    CsvRow {
        /// The CSV file.
        path: PathBuf,
        /// The row's line in the file.
        line: u64,
        /// The reader's error.
        source: csv::Error,
    },
    /// The column mapping does not fit the CSV file.
    #[error(transparent)]
    Mapping(#[from] MappingError),
    /// A line of the decisions file is not a decision record.
    #[error("{} line {line}: not a decision record", path.display())]
    NotADecision {
        /// The decisions file.
        path: PathBuf,
        /// The line, from 1.
        line: u64,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// The summary could not be turned into JSON.
    #[error("cannot serialise the summary")]
    Summary {
        /// The serialiser's error.
        source: serde_json::Error,
    },
    /// The runtime the pipeline runs on could not start.
    #[error("cannot start a runtime")]
    Runtime {
        /// The cause.
        source: std::io::Error,
    },
    /// The pipeline failed as `vigil run` would: rules, lists or sinks
    /// that cannot be set up. Its message and causes are the daemon's.
    #[error(transparent)]
    Run(Box<dyn std::error::Error + Send + Sync + 'static>),
    /// A side of `--compare` is neither a module nor a folder.
    #[error("--compare: {} is neither a .wasm file nor a rules folder", path.display())]
    CompareSide {
        /// The path given.
        path: PathBuf,
    },
    /// A side of `--compare` is a file path without a file name.
    #[error("--compare: a module path needs a file name")]
    NoFileName {
        /// The path given.
        path: PathBuf,
    },
    /// A module could not be copied into its own rules folder.
    #[error("cannot copy {} to {}", from.display(), to.display())]
    Copy {
        /// The module.
        from: PathBuf,
        /// The folder.
        to: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The input of a replay: events in the order they will be fed, and labels.
#[derive(Debug)]
pub struct Input {
    /// What was read, for messages.
    pub name: String,
    /// One canonical event line per record.
    pub records: Vec<Record>,
    /// Known outcomes, when a label was given.
    pub labels: Option<Labels>,
    /// Each event's typology, when a typology key was given.
    pub typologies: Option<Typologies>,
}

impl Input {
    /// Reads a CSV file through a column mapping.
    ///
    /// # Errors
    /// When the file or mapping cannot be read, or the mapping does not fit
    /// the file's header.
    pub fn csv(path: &Path, mapping: &mapping::Mapping, tokenizer: Tokenizer) -> Result<Input, ReplayError> {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(mapping.csv.delimiter as u8)
            .flexible(true)
            .from_path(path)
            .map_err(|source| ReplayError::CsvOpen { path: path.to_owned(), source })?;
        let header =
            reader.headers().map_err(|source| ReplayError::CsvHeader { path: path.to_owned(), source })?.clone();
        let mapper = mapping.bind(path, &header, tokenizer)?;
        let mut labels = mapping.label.as_ref().map(|name| Labels { name: name.clone(), ..Labels::default() });
        let mut rows = Vec::new();
        let mut record = csv::StringRecord::new();
        loop {
            let line_no = reader.position().line();
            match reader.read_record(&mut record) {
                Ok(true) => {}
                Ok(false) => break,
                Err(source) => return Err(ReplayError::CsvRow { path: path.to_owned(), line: line_no, source }),
            }
            let row = mapper.convert(&record);
            if let Some(labels) = labels.as_mut() {
                match (row.label, &row.id) {
                    (Some(l), Some(id)) => {
                        labels.by_id.entry(id.clone()).or_insert(l);
                    }
                    _ => labels.unlabelled += 1,
                }
            }
            rows.push((row.ts_ms, Record { line: row.line, line_no, ..Record::default() }));
        }
        if mapping.csv.sort_by_time {
            // Stable: rows at the same time keep file order; rows without a
            // readable time go first and are dead-lettered there.
            rows.sort_by_key(|(ts, _)| *ts);
        }
        Ok(Input {
            name: format!("replay:{}", path.display()),
            records: rows.into_iter().map(|(_, r)| r).collect(),
            labels,
            typologies: None,
        })
    }

    /// Reads a JSONL file of canonical events in file order. With `label`,
    /// that top-level key is taken out of each event (rules never see it)
    /// and kept as the event's label.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn jsonl(path: &Path, label: Option<&str>, typology: Option<&str>) -> Result<Input, ReplayError> {
        let read = |source| FileError { verb: "read", path: path.to_owned(), source };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut labels = label.map(|name| Labels { name: name.to_owned(), ..Labels::default() });
        let mut typologies = typology.map(|name| Typologies { name: name.to_owned(), ..Typologies::default() });
        let mut records = Vec::new();
        // Split on bytes: a line that is not UTF-8 becomes a dead letter
        // instead of ending the replay.
        for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
            let mut line = line.map_err(read)?;
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let mut record = Record::from_bytes(line, n as u64 + 1, 0);
            if let (Some(labels), Some(key)) = (labels.as_mut(), label) {
                if record.not_utf8_at.is_some() {
                    labels.unlabelled += 1;
                } else {
                    record.line = take_label(std::mem::take(&mut record.line), key, labels);
                }
            }
            if let (Some(t), Some(key)) = (typologies.as_mut(), typology)
                && record.not_utf8_at.is_none()
            {
                record.line = take_typology(std::mem::take(&mut record.line), key, t);
            }
            records.push(record);
        }
        Ok(Input { name: format!("replay:{}", path.display()), records, labels, typologies })
    }
}

/// Takes `key` out of a JSON event line and files its value under the
/// event's id. A line that is not a JSON object is left for the decoder.
fn take_label(line: String, key: &str, labels: &mut Labels) -> String {
    let Ok(serde_json::Value::Object(mut event)) = serde_json::from_str::<serde_json::Value>(&line) else {
        labels.unlabelled += 1;
        return line;
    };
    let label = event.remove(key).and_then(|v| match v {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::Number(n) => n.as_i64().and_then(|n| mapping::parse_label(&n.to_string())),
        serde_json::Value::String(s) => mapping::parse_label(&s),
        _ => None,
    });
    match (label, event.get("id").and_then(|v| v.as_str())) {
        (Some(l), Some(id)) => {
            labels.by_id.entry(id.to_owned()).or_insert(l);
        }
        _ => labels.unlabelled += 1,
    }
    serde_json::Value::Object(event).to_string()
}

/// Takes `key` out of a JSON event line and files its value (a string, or
/// null for none) under the event's id.
fn take_typology(line: String, key: &str, typologies: &mut Typologies) -> String {
    let Ok(serde_json::Value::Object(mut event)) = serde_json::from_str::<serde_json::Value>(&line) else {
        return line;
    };
    let typology = event.remove(key).and_then(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned));
    if let Some(id) = event.get("id").and_then(|v| v.as_str()) {
        typologies.by_id.entry(id.to_owned()).or_insert(typology);
    }
    serde_json::Value::Object(event).to_string()
}

/// The output files of one run, in `dir`.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The folder.
    pub dir: PathBuf,
}

impl Outputs {
    /// Decision records.
    pub fn decisions(&self) -> PathBuf {
        self.dir.join("decisions.jsonl")
    }
    /// Dead letters.
    pub fn dead_letters(&self) -> PathBuf {
        self.dir.join("dead-letters.jsonl")
    }
    /// The HTML report.
    pub fn report(&self) -> PathBuf {
        self.dir.join("report.html")
    }
    /// The summary as JSON.
    pub fn summary(&self) -> PathBuf {
        self.dir.join("summary.json")
    }
    fn sinks(&self) -> SinksConfig {
        let file = |name: &str| SinkConfig::File { path: self.dir.join(name) };
        SinksConfig {
            decisions: file("decisions.jsonl"),
            alerts: file("alerts.jsonl"),
            dead_letters: file("dead-letters.jsonl"),
            aggregates: file("aggregates.jsonl"),
            late: file("late.jsonl"),
            rule_sets: file("rule-sets.jsonl"),
        }
    }
    /// Empties the folder's outputs from an earlier run (sinks append).
    fn reset(&self) -> Result<(), ReplayError> {
        std::fs::create_dir_all(&self.dir).map_err(FileError::of("create", &self.dir))?;
        for name in [
            "decisions.jsonl",
            "alerts.jsonl",
            "dead-letters.jsonl",
            "aggregates.jsonl",
            "late.jsonl",
            "rule-sets.jsonl",
        ] {
            match std::fs::remove_file(self.dir.join(name)) {
                Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                    return Err(FileError { verb: "clear", path: self.dir.join(name), source }.into());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// One run of the pipeline over `records` with the rules in `rules_dir`,
/// writing to `out`. Starts from empty state: no checkpoint is read or
/// written, and rule folders are not watched.
///
/// # Errors
/// As `vigil run`: rules, lists or sinks that cannot be set up.
pub fn run_once(
    config: &Config,
    name: &str,
    records: Vec<Record>,
    rules_dir: &Path,
    out: &Outputs,
    progress: bool,
) -> Result<(Counts, Duration), ReplayError> {
    let mut config = config.clone();
    config.rules.dir = rules_dir.to_owned();
    config.rules.watch = false;
    config.sinks = out.sinks();
    // A replay serves nothing: it must not take the daemon's admin port.
    config.admin.listen = None;
    // The report judges every rule on every event.
    config.decisions.record = crate::decide::RecordShape::Full;
    out.reset()?;
    let total = records.len() as u64;
    let counters = Arc::new(Counters::default());
    let bar = if progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} events, {per_sec}, eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(rules_dir.display().to_string());
    let done = tokio_util::sync::CancellationToken::new();
    let ticker = {
        let (bar, counters, done) = (bar.clone(), counters.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.is_cancelled() {
                let s = counters.summary();
                bar.set_position(s.decided + s.dead_lettered);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ReplayError::Runtime { source })?;
    let start = Instant::now();
    let overrides = Overrides {
        source: Some(Box::new(MemorySource::new(name, records))),
        counters: Some(counters.clone()),
        ..Overrides::default()
    };
    let result = rt.block_on(app::run_with(config, std::future::pending(), overrides));
    let elapsed = start.elapsed();
    done.cancel();
    let _ = ticker.join();
    // The daemon's error, its causes kept as its sources.
    let summary = result.map_err(|e| ReplayError::Run(e.into()))?;
    bar.set_position(summary.decided + summary.dead_lettered);
    bar.finish_and_clear();
    let counts = Counts {
        events_in: summary.events_in,
        decided: summary.decided,
        dead_lettered: summary.dead_lettered,
        late: summary.late,
    };
    Ok((counts, elapsed))
}

/// Replays `input` once with the configured rules: writes the outputs, the
/// summary and the report to `out`, and returns the analysis.
///
/// # Errors
/// As [`run_once`], and when an output cannot be written.
pub fn replay(config: &Config, input: Input, out: &Outputs, progress: bool) -> Result<Analysis, ReplayError> {
    let rules_dir = config.rules.dir.clone();
    let (counts, elapsed) = run_once(config, &input.name, input.records, &rules_dir, out, progress)?;
    eprintln!(
        "replayed {} events in {:.2} s ({:.0} events/s)",
        counts.events_in,
        elapsed.as_secs_f64(),
        counts.events_in as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    let decisions = analysis::read_decisions(&out.decisions())?;
    let mut analysis = Analysis::new(counts, &decisions, input.labels.as_ref());
    analysis.typologies = input.typologies.as_ref().map(|t| TypologyTable::new(&decisions, t));
    let json = serde_json::to_string_pretty(&analysis).map_err(|source| ReplayError::Summary { source })?;
    write(&out.summary(), json)?;
    let html = report::render(&input.name, &analysis);
    write(&out.report(), html)?;
    Ok(analysis)
}

/// Writes an output file.
fn write(path: &Path, contents: String) -> Result<(), ReplayError> {
    Ok(std::fs::write(path, contents).map_err(FileError::of("write", path))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jsonl_line_that_is_not_utf8_is_kept_for_the_dead_letters() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("events.jsonl");
        let mut bytes = b"{\"id\":\"a\",\"fraud\":true}\n{\"id\":\"caf".to_vec();
        bytes.extend_from_slice(b"\xe9\"}\r\n{\"id\":\"b\",\"fraud\":false}\n");
        std::fs::write(&path, bytes).expect("write");
        let input = Input::jsonl(&path, Some("fraud"), None).expect("read");
        assert_eq!(input.records.len(), 3, "every line is a record");
        let bad = &input.records[1];
        assert_eq!((bad.not_utf8_at, bad.line_no), (Some(10), 2));
        assert!(input.records.iter().enumerate().all(|(i, r)| i == 1 || r.not_utf8_at.is_none()));
        let labels = input.labels.expect("labels");
        assert_eq!(labels.unlabelled, 1);
        assert_eq!(labels.by_id.get("a"), Some(&true));
        assert_eq!(labels.by_id.get("b"), Some(&false));
    }

    #[test]
    fn errors_name_the_file_and_keep_the_cause_apart() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = dir.path().join("missing.jsonl");
        let e = Input::jsonl(&missing, None, None).expect_err("no such file");
        assert_eq!(e.to_string(), format!("cannot read {}", missing.display()));
        let cause = std::error::Error::source(&e).expect("the io error").to_string();
        assert_eq!(crate::error::chain(&e).to_string(), format!("cannot read {}: {cause}", missing.display()));
        let decisions = dir.path().join("decisions.jsonl");
        std::fs::write(&decisions, "{\"id\":\"a\",\"action\":\"allow\",\"score\":0}\nnot json\n").expect("write");
        let e = analysis::read_decisions(&decisions).expect_err("line 2");
        let text = crate::error::chain(&e).to_string();
        assert!(text.starts_with(&format!("{} line 2: not a decision record: ", decisions.display())), "{text}");
    }
}
