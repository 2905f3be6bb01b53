//! The output stage: one thread writing every stream's records to the
//! sinks, and assembling each checkpoint from the source's and the
//! workers' parts before it is committed (see [`super::checkpoint`]).

use crossbeam_channel::{Receiver, Sender, bounded};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::{Counters, PipelineError};
use crate::decide::now_us;
use crate::decode;
use crate::sinks::{self, Record, Records, Sink};
use crate::state::{Checkpoint, Durable, FeatureDelta, RuleStateDelta};
use crate::window::{Closed, Late, WindowDelta};

/// What reaches the output thread.
pub(super) enum SinkMsg {
    /// Outputs from worker `from`, or from the source when `from` is the
    /// worker count.
    Output { from: usize, out: Output },
    /// Worker `from` reached checkpoint `id`'s barrier: its outputs from
    /// here on are of events after the checkpoint. Its part follows once
    /// its feature state is serialised.
    Cut { from: usize, id: u64 },
    /// A worker's part of checkpoint `id`.
    Worker {
        id: u64,
        /// Its feature changes, in the order they apply: the deletes, then
        /// the keys changed ([`crate::features::FeatureEngine::finish_snapshot_parts`]).
        delta: [Vec<FeatureDelta>; 2],
        windows: Vec<WindowDelta>,
        newest_ms: Option<i64>,
        rule_state: Vec<RuleStateDelta>,
    },
    /// The source's part: position and de-duplication changes. Its outputs
    /// from here on are of events after the checkpoint.
    Source(Checkpoint),
}

/// The outputs.
pub struct Sinks {
    decisions: Box<dyn Sink>,
    alerts: Box<dyn Sink>,
    dead_letters: Box<dyn Sink>,
    aggregates: Box<dyn Sink>,
    late: Box<dyn Sink>,
    rule_sets: Box<dyn Sink>,
    /// Per hop of a chain ([`super::hop`]), the topic events go on to it
    /// by (none for a hop on the input).
    forward: Vec<Option<Box<dyn Sink>>>,
    /// The ids of the rule sets written to `rule_sets` by this run.
    written_sets: std::collections::HashSet<Arc<str>>,
}

impl std::fmt::Debug for Sinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sinks")
    }
}

impl Sinks {
    /// Opens the configured sinks.
    ///
    /// # Errors
    /// When one cannot be opened; the message names it.
    pub fn open(
        config: &crate::config::SinksConfig,
        producer: Option<&Arc<crate::sinks::Producer>>,
    ) -> Result<Self, crate::sinks::SinkError> {
        Ok(Self {
            decisions: sinks::open(&config.decisions, "decisions", producer)?,
            alerts: sinks::open(&config.alerts, "alerts", producer)?,
            dead_letters: sinks::open(&config.dead_letters, "dead-letters", producer)?,
            aggregates: sinks::open(&config.aggregates, "aggregates", producer)?,
            late: sinks::open(&config.late, "late", producer)?,
            rule_sets: sinks::open(&config.rule_sets, "rule-sets", producer)?,
            forward: Vec::new(),
            written_sets: std::collections::HashSet::new(),
        })
    }

    /// These sinks as `n` sets, each for one pipeline of a daemon (its
    /// hops' pipelines), all writing to the same outputs.
    pub fn shared(self, n: usize) -> Vec<Sinks> {
        let share = |s: Box<dyn Sink>| sinks::SharedSink::new(s);
        let (d, a, dl, ag, l, r) = (
            share(self.decisions),
            share(self.alerts),
            share(self.dead_letters),
            share(self.aggregates),
            share(self.late),
            share(self.rule_sets),
        );
        (0..n)
            .map(|_| Sinks {
                decisions: Box::new(d.clone()),
                alerts: Box::new(a.clone()),
                dead_letters: Box::new(dl.clone()),
                aggregates: Box::new(ag.clone()),
                late: Box::new(l.clone()),
                rule_sets: Box::new(r.clone()),
                forward: Vec::new(),
                written_sets: std::collections::HashSet::new(),
            })
            .collect()
    }

    /// Sends events on to hop `i` through `forward[i]`.
    #[must_use]
    pub fn forwarding(mut self, forward: Vec<Option<Box<dyn Sink>>>) -> Self {
        self.forward = forward;
        self
    }

    fn all(&mut self) -> impl Iterator<Item = &mut Box<dyn Sink>> {
        [
            &mut self.decisions,
            &mut self.alerts,
            &mut self.dead_letters,
            &mut self.aggregates,
            &mut self.late,
            &mut self.rule_sets,
        ]
        .into_iter()
        .chain(self.forward.iter_mut().flatten())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.all().try_for_each(|s| s.flush())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.all().try_for_each(|s| s.sync())
    }

    /// Handles to make what was written so far durable from another thread
    /// (see [`Sink::sync_handle`]).
    fn sync_handles(&mut self) -> std::io::Result<Vec<sinks::SyncHandle>> {
        let mut files = Vec::new();
        for s in self.all() {
            files.extend(s.sync_handle()?);
        }
        Ok(files)
    }
}

/// Makes checkpoints durable on a thread of its own, in order: the output
/// files' data, then the store's transaction. Commits take tens of
/// milliseconds (a sync of the files, and of the store); done on the sink
/// thread, they held every output behind them — and, once the channels
/// filled, every worker and the source.
fn run_committer(
    rx: Receiver<Ready>,
    mut store: Box<dyn Durable>,
    counters: &Counters,
    hop: Option<&str>,
) -> Result<(), PipelineError> {
    // Only on CPU time the pipeline leaves: a commit (the state bench's
    // "checkpoint of 1000000 keys") even at niceness 10 held a core from
    // the source's parse threads and the workers for milliseconds at a
    // time on a 2-core machine (the suite's row 4 p99). Under sustained full load the commit still gets its turn:
    // the sink waits on this channel once a second checkpoint is ready, and
    // the pipeline behind it stops. So under full load the last durable
    // checkpoint lags the newest barrier by one to two intervals, and a
    // crash reads that much again (BENCHMARKS.md, "Replay after `kill -9`").
    crate::priority::idle();
    for Ready { files, cp } in rx {
        let started = Instant::now();
        // Everything before the barrier is written; make it durable
        // before the checkpoint says it was processed.
        for f in &files {
            f.sync()?;
        }
        let keys: usize = cp.features.iter().map(Vec::len).sum();
        let (id, line, abort) = (cp.id, cp.position.line_no, cp.abort);
        store.commit(cp)?;
        if !abort {
            counters.checkpointed(hop, started.elapsed());
        }
        tracing::debug!(id, line, keys, took_ms = started.elapsed().as_millis() as u64, "checkpoint committed");
    }
    Ok(store.finish()?)
}

/// A batch of output records.
#[derive(Default)]
pub(super) struct Output {
    /// Rule sets that decided some of these decisions, as (id, record):
    /// written to the rule-sets output before them, once per run.
    pub(super) rule_sets: Vec<(Arc<str>, Arc<str>)>,
    /// Decision records, each under its event's id.
    pub(super) decisions: Records,
    /// The decisions that did not allow, again.
    pub(super) alerts: Records,
    /// Dead letters, under the event's id where it is known.
    dead: Records,
    /// The code of each dead letter in `dead`.
    dead_codes: Vec<&'static str>,
    /// Decisions with action block.
    pub(super) blocked: u64,
    /// Closed windows, each under its key.
    aggregates: Records,
    /// Late events, under their ids.
    late: Records,
    /// Events going on to another hop, by that hop, each under its key
    /// there (boxed: most outputs have none).
    forward: Option<Box<Onward>>,
}

/// Events going on to other hops: (hop, records).
#[derive(Default)]
struct Onward(Vec<(u8, Records)>);

#[derive(Serialize)]
struct EncodeFailure<'a> {
    reason: String,
    code: &'static str,
    id: &'a str,
    at_us: i64,
}

impl Output {
    pub(super) fn dead_letter(&mut self, letter: &decode::DeadLetter<'_>) {
        self.dead_codes.push(letter.code);
        self.dead.push(None, letter);
    }

    pub(super) fn encode_failure(&mut self, id: &str, error: &str) {
        let dl = EncodeFailure {
            reason: format!("cannot encode for the rules: {error}"),
            code: "encode",
            id,
            at_us: now_us(),
        };
        self.dead_codes.push("encode");
        self.dead.push(Some(id), &dl);
    }

    pub(super) fn closed(&mut self, c: &Closed<'_>) {
        self.aggregates.push(Some(c.key), c);
    }

    pub(super) fn late(&mut self, l: &Late<'_>) {
        self.late.push(Some(l.id), l);
    }

    /// Where events going on to hop `hop` are written.
    pub(super) fn forward_to(&mut self, hop: u8) -> &mut Records {
        let Onward(forward) = &mut **self.forward.get_or_insert_with(Box::default);
        let at = match forward.iter().position(|(h, _)| *h == hop) {
            Some(at) => at,
            None => {
                forward.push((hop, Records::default()));
                forward.len() - 1
            }
        };
        &mut forward[at].1
    }

    pub(super) fn is_empty(&self) -> bool {
        self.decisions.is_empty()
            && self.dead.is_empty()
            && self.aggregates.is_empty()
            && self.late.is_empty()
            && self.forward.is_none()
    }
}

#[derive(Default)]
struct Pending {
    workers: usize,
    source: Option<Checkpoint>,
    /// Each worker's lists as they came (its deletes, then its keys
    /// changed), in the order they apply: see [`Checkpoint::features`].
    features: Vec<Vec<FeatureDelta>>,
    windows: Vec<WindowDelta>,
    watermark: Option<i64>,
    rule_state: Vec<RuleStateDelta>,
}

pub(super) fn run_sinks(
    rx: Receiver<SinkMsg>,
    mut sinks: Sinks,
    store: Option<Box<dyn Durable>>,
    workers: usize,
    counters: &Counters,
    hop: Option<&str>,
) -> Result<(), PipelineError> {
    // One checkpoint may wait while the previous one commits; then the
    // sink waits, so commits keep their order and never pile up.
    let (commit_tx, commit_rx) = bounded::<Ready>(1);
    let (off_thread, mut inline) = match store {
        Some(s) if s.commits_off_thread() => (Some(s), None),
        other => (None, other),
    };
    let result = std::thread::scope(|scope| {
        let committer = off_thread.map(|store| {
            std::thread::Builder::new()
                .name("vigil-commit".into())
                .spawn_scoped(scope, move || run_committer(commit_rx, store, counters, hop))
        });
        let committer = committer.transpose().map_err(|e| PipelineError::Spawn("checkpoint committer", e))?;
        let commits = match &committer {
            Some(_) => Commits::OffThread(&commit_tx),
            None => Commits::Inline(inline.take()),
        };
        let written = write_outputs(&rx, &mut sinks, commits, workers, counters, hop);
        drop(commit_tx);
        let committed = match committer {
            Some(c) => c.join().unwrap_or(Err(PipelineError::Panicked("checkpoint committer"))),
            None => Ok(()),
        };
        // A failed commit closes the channel: the writer's error then only
        // says so, and the committer's says why.
        committed.and(written)
    });
    if let Err(e) = &result {
        tracing::error!(error = %crate::error::chain(e), "writing output or a checkpoint failed; stopping");
    }
    result
}

fn write_output(sinks: &mut Sinks, out: &Output, counters: &Counters) -> std::io::Result<()> {
    for (id, record) in &out.rule_sets {
        if !id.is_empty() && !sinks.written_sets.contains(id) {
            let mut set = Records::default();
            set.push_record(Record { key: Some(id.as_bytes()), line: record.trim_end().as_bytes() });
            sinks.rule_sets.write(&set)?;
            sinks.written_sets.insert(id.clone());
        }
    }
    sinks.decisions.write(&out.decisions)?;
    sinks.alerts.write(&out.alerts)?;
    sinks.dead_letters.write(&out.dead)?;
    sinks.aggregates.write(&out.aggregates)?;
    sinks.late.write(&out.late)?;
    for (hop, records) in out.forward.iter().flat_map(|f| f.0.iter()) {
        match sinks.forward.get_mut(usize::from(*hop)).and_then(Option::as_mut) {
            Some(sink) => sink.write(records)?,
            None => return Err(std::io::Error::other(format!("no topic to send events on to hop {hop} by"))),
        }
    }
    let add = |c: &AtomicU64, n: usize| c.fetch_add(n as u64, Ordering::Relaxed);
    add(&counters.decided, out.decisions.len());
    add(&counters.alerts, out.alerts.len());
    add(&counters.dead_lettered, out.dead.len());
    add(&counters.aggregates, out.aggregates.len());
    add(&counters.late, out.late.len());
    add(&counters.allowed, out.decisions.len().saturating_sub(out.alerts.len()));
    let (alerts, blocked) = (out.alerts.len() as u64, out.blocked);
    counters.reviewed.fetch_add(alerts.saturating_sub(blocked), Ordering::Relaxed);
    counters.blocked.fetch_add(blocked, Ordering::Relaxed);
    if !out.dead_codes.is_empty() {
        let mut by_code = counters.dead_by_code.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for code in &out.dead_codes {
            *by_code.entry(code).or_default() += 1;
        }
    }
    Ok(())
}

/// The output streams of the workers and the source, each cut by the
/// checkpoints' barriers. When a commit takes in every output written
/// before it (a Kafka transaction), a stream's outputs after a barrier are
/// held until that checkpoint commits: the others may not have reached the
/// barrier yet, and a worker's part comes only after it has serialised its
/// state while it goes on deciding.
struct Lanes {
    hold: bool,
    /// Per stream, the checkpoint whose commit its outputs wait for.
    waiting: Vec<Option<u64>>,
    /// Per stream, what came after that barrier, in order.
    held: Vec<std::collections::VecDeque<Held>>,
}

enum Held {
    Output(Box<Output>),
    Cut(u64),
}

impl Lanes {
    fn new(streams: usize, hold: bool) -> Self {
        Self {
            hold,
            waiting: vec![None; streams],
            held: (0..streams).map(|_| std::collections::VecDeque::new()).collect(),
        }
    }

    /// `out` when it can be written now; otherwise it is held.
    fn pass(&mut self, from: usize, out: Output) -> Option<Output> {
        if self.waiting[from].is_none() {
            return Some(out);
        }
        self.held[from].push_back(Held::Output(Box::new(out)));
        None
    }

    /// Stream `from` reached checkpoint `id`'s barrier.
    fn cut(&mut self, from: usize, id: u64) {
        if !self.hold {
            return;
        }
        match self.waiting[from] {
            None => self.waiting[from] = Some(id),
            Some(_) => self.held[from].push_back(Held::Cut(id)),
        }
    }

    /// Checkpoint `id` committed: the outputs that waited for it, in
    /// order, up to each stream's next barrier.
    fn release(&mut self, id: u64) -> Vec<Output> {
        let mut free = Vec::new();
        for (waiting, held) in self.waiting.iter_mut().zip(&mut self.held) {
            if *waiting != Some(id) {
                continue;
            }
            *waiting = None;
            while let Some(next) = held.pop_front() {
                match next {
                    Held::Output(out) => free.push(*out),
                    Held::Cut(next_id) => {
                        *waiting = Some(next_id);
                        break;
                    }
                }
            }
        }
        free
    }

    /// Every output still held.
    fn release_all(&mut self) -> Vec<Output> {
        self.waiting.fill(None);
        let held = self.held.iter_mut().flat_map(std::mem::take);
        held.filter_map(|h| match h {
            Held::Output(out) => Some(*out),
            Held::Cut(_) => None,
        })
        .collect()
    }
}

/// A complete checkpoint on its way to the committer thread, with the
/// output files to make durable first.
struct Ready {
    files: Vec<sinks::SyncHandle>,
    cp: Checkpoint,
}

/// Where the output loop sends a complete checkpoint.
enum Commits<'a> {
    /// To the committer thread.
    OffThread(&'a Sender<Ready>),
    /// Committed here, before the next output is written (Kafka), or not
    /// at all.
    Inline(Option<Box<dyn Durable>>),
}

fn write_outputs(
    rx: &Receiver<SinkMsg>,
    sinks: &mut Sinks,
    mut commits: Commits<'_>,
    workers: usize,
    counters: &Counters,
    hop: Option<&str>,
) -> Result<(), PipelineError> {
    let hold = matches!(&commits, Commits::Inline(Some(store)) if store.commit_takes_outputs());
    let mut lanes = Lanes::new(workers + 1, hold);
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    for msg in rx {
        let id = match msg {
            SinkMsg::Output { from, out } => {
                if let Some(out) = lanes.pass(from, out) {
                    write_output(sinks, &out, counters)?;
                }
                // Flush when caught up, so a quiet stream still shows its
                // decisions promptly while a busy one writes in large chunks.
                if rx.is_empty() {
                    sinks.flush()?;
                }
                continue;
            }
            SinkMsg::Cut { from, id } => {
                lanes.cut(from, id);
                continue;
            }
            SinkMsg::Worker { id, delta, windows, newest_ms, rule_state } => {
                let p = pending.entry(id).or_default();
                p.workers += 1;
                p.features.extend(delta.into_iter().filter(|list| !list.is_empty()));
                p.rule_state.extend(rule_state);
                p.windows.extend(windows);
                p.watermark = p.watermark.max(newest_ms);
                id
            }
            SinkMsg::Source(cp) => {
                let id = cp.id;
                lanes.cut(workers, id);
                pending.entry(id).or_default().source = Some(cp);
                id
            }
        };
        let complete = pending.get(&id).is_some_and(|p| p.workers == workers && p.source.is_some());
        if !complete {
            continue;
        }
        let Some(p) = pending.remove(&id) else {
            continue;
        };
        let Some(mut cp) = p.source else { continue };
        cp.features = p.features;
        cp.windows = p.windows;
        cp.watermark = p.watermark;
        cp.rule_state = p.rule_state;
        match &mut commits {
            Commits::OffThread(tx) => {
                let files = sinks.sync_handles()?;
                if tx.send(Ready { files, cp }).is_err() {
                    return Err(PipelineError::Stopped("the checkpoint committer"));
                }
            }
            Commits::Inline(store) => {
                // Everything before the barrier is written; make it durable
                // before the checkpoint says it was processed.
                sinks.sync()?;
                if let Some(store) = store {
                    let (line, abort) = (cp.position.line_no, cp.abort);
                    let started = Instant::now();
                    store.commit(cp)?;
                    if !abort {
                        counters.checkpointed(hop, started.elapsed());
                    }
                    tracing::debug!(id, line, "checkpoint committed");
                }
                for out in lanes.release(id) {
                    write_output(sinks, &out, counters)?;
                }
            }
        }
    }
    // Only a failed run ends with outputs held: their checkpoint was not
    // committed, and a transaction open now is aborted.
    for out in lanes.release_all() {
        write_output(sinks, &out, counters)?;
    }
    sinks.flush()?;
    if let Commits::Inline(Some(mut store)) = commits {
        store.finish()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What reached the outputs and the store, in order.
    type Log = Arc<Mutex<Vec<String>>>;

    struct Recorded(Log);

    impl Sink for Recorded {
        fn write(&mut self, records: &Records) -> std::io::Result<()> {
            if !records.is_empty() {
                self.0.lock().expect("log").push(String::from_utf8_lossy(records.lines()).into_owned());
            }
            Ok(())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Store {
        log: Log,
        takes_outputs: bool,
        /// Fails from this id on.
        fails_from: Option<u64>,
        /// Commits on the committer thread.
        off_thread: bool,
    }

    impl Durable for Store {
        fn commit(&mut self, cp: Checkpoint) -> Result<(), crate::state::StateError> {
            if self.fails_from.is_some_and(|id| cp.id >= id) {
                return Err(crate::state::StateError::Store {
                    path: "test.redb".into(),
                    source: Box::new(std::io::Error::other("no space left on device").into()),
                });
            }
            let mut log = self.log.lock().expect("log");
            for d in cp.features.iter().flatten() {
                log.push(format!("{} {}", if d.state.is_some() { "store" } else { "delete" }, d.hash));
            }
            log.push(format!("commit {}", cp.id));
            Ok(())
        }

        fn commits_off_thread(&self) -> bool {
            self.off_thread
        }

        fn commit_takes_outputs(&self) -> bool {
            self.takes_outputs
        }
    }

    /// Every output writing to `log`.
    fn recorded(log: &Log) -> Sinks {
        let sink = || Box::new(Recorded(log.clone())) as Box<dyn Sink>;
        Sinks {
            decisions: sink(),
            alerts: sink(),
            dead_letters: sink(),
            aggregates: sink(),
            late: sink(),
            rule_sets: sink(),
            forward: Vec::new(),
            written_sets: std::collections::HashSet::new(),
        }
    }

    fn output(from: usize, line: &str) -> SinkMsg {
        let mut out = Output::default();
        out.decisions.push_with(None, |buf| buf.extend_from_slice(line.as_bytes()));
        SinkMsg::Output { from, out }
    }

    fn part(id: u64) -> SinkMsg {
        SinkMsg::Worker {
            id,
            delta: [Vec::new(), Vec::new()],
            windows: Vec::new(),
            newest_ms: None,
            rule_state: Vec::new(),
        }
    }

    /// Two workers and the source (stream 2) around one checkpoint: worker 0
    /// decides an event after the barrier before worker 1 reaches it.
    fn run(takes_outputs: bool) -> Vec<String> {
        let log = Log::default();
        let mut sinks = recorded(&log);
        let (tx, rx) = bounded(64);
        let msgs = [
            output(0, "w0 before"),
            SinkMsg::Cut { from: 0, id: 1 },
            output(0, "w0 after"),
            output(2, "source before"),
            SinkMsg::Source(Checkpoint { id: 1, ..Checkpoint::default() }),
            output(2, "source after"),
            part(1),
            output(1, "w1 before"),
            SinkMsg::Cut { from: 1, id: 1 },
            output(0, "w0 after 2"),
            SinkMsg::Cut { from: 0, id: 2 },
            output(0, "w0 after the next barrier"),
            part(1),
        ];
        for msg in msgs {
            tx.send(msg).expect("send");
        }
        drop(tx);
        let store = Store { log: log.clone(), takes_outputs, fails_from: None, off_thread: false };
        let counters = Counters::default();
        write_outputs(&rx, &mut sinks, Commits::Inline(Some(Box::new(store))), 2, &counters, None).expect("write");
        assert_eq!(counters.decided.load(Ordering::Relaxed), 7, "every output is written once");
        log.lock().expect("log").iter().map(|l| l.trim_end().to_owned()).collect()
    }

    #[test]
    fn a_commit_that_takes_the_outputs_holds_those_after_its_barrier() {
        let lines = run(true);
        let commit = lines.iter().position(|l| l == "commit 1").expect("committed");
        let (before, after) = lines.split_at(commit);
        let mut before = before.to_vec();
        before.sort();
        assert_eq!(before, ["source before", "w0 before", "w1 before"], "{lines:?}");
        // Stream by stream, in order; checkpoint 2 never committed, so what
        // came after its barrier is written last, at the end of the run.
        assert_eq!(after[1..], ["w0 after", "w0 after 2", "source after", "w0 after the next barrier"], "{lines:?}");
    }

    #[test]
    fn a_failed_commit_stops_the_sink_with_its_cause() {
        let log = Log::default();
        let sinks = recorded(&log);
        let (tx, rx) = bounded(64);
        let store = Store { log: log.clone(), takes_outputs: false, fails_from: Some(2), off_thread: true };
        let counters = Counters::default();
        std::thread::scope(|scope| {
            let sink = scope.spawn(|| run_sinks(rx, sinks, Some(Box::new(store)), 1, &counters, None));
            // Checkpoints go on being sent until the sink stops taking them.
            let mut id = 1;
            while id < 1_000
                && tx.send(output(0, &format!("decision {id}"))).is_ok()
                && tx.send(SinkMsg::Source(Checkpoint { id, ..Checkpoint::default() })).is_ok()
                && tx.send(part(id)).is_ok()
            {
                id += 1;
            }
            drop(tx);
            let e = sink.join().expect("sink thread").expect_err("the commit failed");
            let e = crate::error::chain(&e).to_string();
            assert!(e.contains("test.redb") && e.contains("no space left on device"), "{e}");
            assert!(id < 1_000, "the sink stopped taking messages");
        });
        let lines = log.lock().expect("log").clone();
        assert!(lines.contains(&"commit 1".to_owned()), "{lines:?}");
        assert!(!lines.iter().any(|l| l.starts_with("commit 2")), "{lines:?}");
    }

    #[test]
    fn a_checkpoint_lists_each_worker_s_deletes_before_its_keys_changed() {
        for off_thread in [false, true] {
            let lines = deletes_and_changes(off_thread);
            assert_eq!(lines, ["delete 1", "store 2", "delete 3", "store 3", "commit 1"], "off thread: {off_thread}");
        }
    }

    /// What a store committing here or on the committer thread is given.
    fn deletes_and_changes(off_thread: bool) -> Vec<String> {
        let log = Log::default();
        let sinks = recorded(&log);
        let (tx, rx) = bounded(64);
        let change = |hash: u128, store: bool| FeatureDelta {
            kind: 0,
            hash,
            worker: 0,
            partition: 0,
            state: store.then(Vec::new),
        };
        let part = |deleted: u128, stored: u128| SinkMsg::Worker {
            id: 1,
            delta: [vec![change(deleted, false)], vec![change(stored, true)]],
            windows: Vec::new(),
            newest_ms: None,
            rule_state: Vec::new(),
        };
        // Worker 1's key 3 expired and came back before the barrier.
        let msgs = [
            SinkMsg::Cut { from: 0, id: 1 },
            SinkMsg::Cut { from: 1, id: 1 },
            part(1, 2),
            SinkMsg::Source(Checkpoint { id: 1, ..Checkpoint::default() }),
            part(3, 3),
        ];
        for msg in msgs {
            tx.send(msg).expect("send");
        }
        drop(tx);
        let store = Store { log: log.clone(), takes_outputs: false, fails_from: None, off_thread };
        run_sinks(rx, sinks, Some(Box::new(store)), 2, &Counters::default(), None).expect("write");
        log.lock().expect("log").clone()
    }

    #[test]
    fn otherwise_outputs_are_written_as_they_come() {
        let lines = run(false);
        let commit = lines.iter().position(|l| l == "commit 1").expect("committed");
        assert_eq!(commit, lines.len() - 1, "{lines:?}");
        assert_eq!(lines[..3], ["w0 before", "w0 after", "source before"]);
    }
}
