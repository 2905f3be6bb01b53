//! The running pipeline: one source thread (read, decode, clean, partition),
//! P worker threads (features, windows, encode once, run rules, decide), and
//! one sink thread.
//!
//! Stages pass batches over bounded channels, so a slow stage holds the
//! previous one back instead of queueing without limit. Shutdown is a drain:
//! the source stops reading, and each stage ends when its input channel is
//! closed and empty, so every event read is decided or dead-lettered.
//!
//! Checkpoints are barriers: every `state.checkpoint-interval` the source
//! sends a numbered barrier down each worker channel after the batches it
//! covers, and its own part (position, de-duplication changes) to the sink.
//! When the barrier reaches a worker, behind every earlier event, it tells
//! the sink (a cut in its output stream), takes its window and rule state,
//! and marks the keys whose features changed; it serialises those over the
//! next half interval while it goes on deciding, each before an event
//! changes it, then sends its part. When the sink thread has all parts, the
//! outputs before the barrier are written: the files are synced and the
//! checkpoint committed in one transaction, on a committer thread for the
//! local store. A Kafka transaction takes in every output produced before
//! its commit, so there each stream's outputs after its cut wait for it.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use serde::Serialize;
use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use vigil_abi::Action;
use xxhash_rust::xxh3::xxh3_64;

use crate::config::{Config, WindowSpec};
use crate::decide::{self, Decision, FeatureValues, now_us};
use crate::decode::{self, DecodeError, Decoder};
use crate::event::Payment;
use crate::features::{Catalog, FeatureEngine};
use crate::partition::Partitioner;
use crate::rules::{self, Evaluator, RuleRegistry};
use crate::sinks::{self, Sink};
use crate::sources::{PartitionState, Rebalance, Record, Source};
use crate::state::{Checkpoint, Durable, FeatureDelta, RuleStateDelta};
use crate::window::{Closed, Late, Shape, WindowDef, WindowDelta, Windows};

/// Event counts; `events_in == decided + dead_lettered` once drained.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records read from the source.
    pub events_in: AtomicU64,
    /// Decision records written.
    pub decided: AtomicU64,
    /// Dead letters written.
    pub dead_lettered: AtomicU64,
    /// Alerts (review or block) written.
    pub alerts: AtomicU64,
    /// Checkpoints committed.
    pub checkpoints: AtomicU64,
    /// Closed windows written.
    pub aggregates: AtomicU64,
    /// Events too late for a window.
    pub late: AtomicU64,
    /// The longest a worker spent taking up a new rule set (swapping its
    /// rules and instantiating new versions), µs: the pause a deploy causes.
    pub rule_swap_max_us: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Summary {
    /// Records read from the source.
    pub events_in: u64,
    /// Decision records written.
    pub decided: u64,
    /// Dead letters written.
    pub dead_lettered: u64,
    /// Alerts written.
    pub alerts: u64,
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// Closed windows written.
    pub aggregates: u64,
    /// Events too late for a window.
    pub late: u64,
    /// The longest pause a rule-set swap caused a worker, µs.
    pub rule_swap_max_us: u64,
}

impl Counters {
    /// The counts now.
    pub fn summary(&self) -> Summary {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Summary {
            events_in: get(&self.events_in),
            decided: get(&self.decided),
            dead_lettered: get(&self.dead_lettered),
            alerts: get(&self.alerts),
            checkpoints: get(&self.checkpoints),
            aggregates: get(&self.aggregates),
            late: get(&self.late),
            rule_swap_max_us: get(&self.rule_swap_max_us),
        }
    }
}

/// The outputs.
pub struct Sinks {
    decisions: Box<dyn Sink>,
    alerts: Box<dyn Sink>,
    dead_letters: Box<dyn Sink>,
    aggregates: Box<dyn Sink>,
    late: Box<dyn Sink>,
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
        producer: Option<&Arc<crate::kafka::Producer>>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            decisions: sinks::open(&config.decisions, "decisions", producer)?,
            alerts: sinks::open(&config.alerts, "alerts", producer)?,
            dead_letters: sinks::open(&config.dead_letters, "dead-letters", producer)?,
            aggregates: sinks::open(&config.aggregates, "aggregates", producer)?,
            late: sinks::open(&config.late, "late", producer)?,
        })
    }

    fn all(&mut self) -> [&mut Box<dyn Sink>; 5] {
        [&mut self.decisions, &mut self.alerts, &mut self.dead_letters, &mut self.aggregates, &mut self.late]
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.all().into_iter().try_for_each(|s| s.flush())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.all().into_iter().try_for_each(|s| s.sync())
    }

    /// Handles to make what was written so far durable from another thread
    /// (see [`Sink::sync_handle`]).
    fn sync_handles(&mut self) -> std::io::Result<Vec<std::fs::File>> {
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
    rx: Receiver<(Vec<std::fs::File>, Checkpoint)>,
    mut store: Box<dyn Durable>,
    counters: &Counters,
) -> anyhow::Result<()> {
    // Only on CPU time the pipeline leaves: a commit takes 60–125 ms
    // here, which even at niceness 10 held a core from the source's parse
    // threads and the workers for milliseconds at a time on a 2-core
    // machine. Under sustained full load the commit still gets its turn:
    // the sink waits on this channel once a second checkpoint is ready, and
    // the pipeline behind it stops. So under full load the last durable
    // checkpoint lags the newest barrier by one to two intervals, and a
    // crash reads that much again (BENCHMARKS.md, "Replay after `kill -9`").
    crate::priority::idle();
    for (files, cp) in rx {
        let started = Instant::now();
        // Everything before the barrier is written; make it durable
        // before the checkpoint says it was processed.
        for f in &files {
            f.sync_data()?;
        }
        let (id, line, keys, abort) = (cp.id, cp.position.line_no, cp.features.len(), cp.abort);
        store.commit(cp)?;
        counters.checkpoints.fetch_add(u64::from(!abort), Ordering::Relaxed);
        tracing::debug!(id, line, keys, took_ms = started.elapsed().as_millis() as u64, "checkpoint committed");
    }
    store.finish()
}

enum WorkerMsg {
    Jobs(Vec<Job>),
    Barrier(u64),
    /// The newest event time the source has seen, for an idle worker's watermark.
    Tick(i64),
    /// The input is exhausted: close every window.
    EndOfInput,
    /// These input partitions moved away: forget their keyed state.
    Drop(Vec<u32>),
    /// An input partition's keyed state, read back from the changelog,
    /// before its events.
    Restore(Box<PartitionState>),
}

enum SinkMsg {
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
        delta: Vec<FeatureDelta>,
        windows: Vec<WindowDelta>,
        newest_ms: Option<i64>,
        rule_state: Vec<RuleStateDelta>,
    },
    /// The source's part: position and de-duplication changes. Its outputs
    /// from here on are of events after the checkpoint.
    Source(Checkpoint),
}

/// Where and how often to checkpoint, and what to resume from.
#[derive(Debug, Default)]
pub struct Durability {
    /// Where checkpoints go; `None` runs without them.
    pub store: Option<Box<dyn Durable>>,
    /// Time between checkpoints.
    pub interval: Duration,
    /// The id of the checkpoint resumed from.
    pub last_id: u64,
    /// Feature state to load: (kind, hash, worker that wrote it, state).
    pub features: Vec<(u8, u64, u16, Vec<u8>)>,
    /// Every key's open windows, with the worker that wrote them.
    pub windows: Vec<WindowDelta>,
    /// Windows stored whole per worker by an earlier vigil.
    pub legacy_windows: Vec<(u16, Vec<u8>)>,
    /// The newest event time the watermarks followed.
    pub watermark: Option<i64>,
    /// Rules' keyed state: (rule, key, worker that wrote it, value).
    pub rule_state: Vec<(String, Vec<u8>, u16, Vec<u8>)>,
    /// Workers when that state was written.
    pub workers: u16,
}

struct Job {
    payment: Payment,
    ingested_at_us: i64,
    /// The input partition it came from (Kafka); 0 otherwise.
    partition: u32,
}

/// A batch of serialised output lines.
#[derive(Default)]
struct Output {
    decisions: Vec<u8>,
    decision_count: u64,
    alerts: Vec<Range<usize>>,
    dead: Vec<u8>,
    dead_count: u64,
    aggregates: Vec<u8>,
    aggregate_count: u64,
    late: Vec<u8>,
    late_count: u64,
}

#[derive(Serialize)]
struct EncodeFailure<'a> {
    reason: String,
    code: &'static str,
    id: &'a str,
    at_us: i64,
}

/// Appends one JSON line; serialising these plain records cannot fail.
fn push_line(buf: &mut Vec<u8>, count: &mut u64, record: &impl Serialize) {
    if serde_json::to_writer(&mut *buf, record).is_ok() {
        buf.push(b'\n');
        *count += 1;
    }
}

impl Output {
    fn dead_letter(&mut self, letter: &decode::DeadLetter<'_>) {
        push_line(&mut self.dead, &mut self.dead_count, letter);
    }

    fn encode_failure(&mut self, id: &str, error: &str) {
        let dl = EncodeFailure {
            reason: format!("cannot encode for the rules: {error}"),
            code: "encode",
            id,
            at_us: now_us(),
        };
        push_line(&mut self.dead, &mut self.dead_count, &dl);
    }

    fn closed(&mut self, c: &Closed<'_>) {
        push_line(&mut self.aggregates, &mut self.aggregate_count, c);
    }

    fn late(&mut self, l: &Late<'_>) {
        push_line(&mut self.late, &mut self.late_count, l);
    }

    fn is_empty(&self) -> bool {
        self.decision_count + self.dead_count + self.aggregate_count + self.late_count == 0
    }
}

/// The running threads.
#[derive(Debug)]
pub struct Pipeline {
    source: JoinHandle<anyhow::Result<()>>,
    workers: Vec<JoinHandle<()>>,
    sink: JoinHandle<anyhow::Result<()>>,
}

/// The parts the pipeline runs, in data-flow order.
pub struct Stages {
    /// Where records come from.
    pub source: Box<dyn Source>,
    /// Cleaning and de-duplication.
    pub decoder: Decoder,
    /// Features the workers keep.
    pub catalog: Arc<Catalog>,
    /// The live rules.
    pub registry: Arc<RuleRegistry>,
    /// The outputs.
    pub sinks: Sinks,
}

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stages").field("source", &self.source.name()).finish_non_exhaustive()
    }
}

/// The window definitions of `[windows]`.
pub fn window_defs(config: &Config) -> Vec<WindowDef> {
    let ms = |d: &Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    config
        .windows
        .iter()
        .map(|(name, spec)| {
            let (key, shape) = match spec {
                WindowSpec::Tumbling { key, size } => (*key, Shape::Tumbling { size: ms(size) }),
                WindowSpec::Hopping { key, size, hop } => (*key, Shape::Hopping { size: ms(size), hop: ms(hop) }),
                WindowSpec::Session { key, gap } => (*key, Shape::Session { gap: ms(gap) }),
            };
            WindowDef { name: name.clone(), key, shape }
        })
        .collect()
}

impl Pipeline {
    /// Starts the pipeline, loading restored state into the workers.
    ///
    /// # Errors
    /// When a thread cannot be spawned.
    pub fn start(
        config: &Config,
        stages: Stages,
        durability: Durability,
        counters: Arc<Counters>,
        cancel: CancellationToken,
    ) -> std::io::Result<Self> {
        let Stages { source, mut decoder, catalog, registry, sinks } = stages;
        let Durability {
            store,
            interval,
            last_id,
            features,
            windows,
            legacy_windows,
            watermark,
            rule_state,
            workers: stored_workers,
        } = durability;
        let workers = config.pipeline.worker_count();
        let cap = config.pipeline.channel_capacity.get();
        let checkpoints = store.as_ref().map(|_| interval);
        decoder.dedup_mut().track_forgotten(store.as_ref().is_some_and(|s| s.needs_forgotten_ids()));
        let (out_tx, out_rx) = bounded::<SinkMsg>(cap * workers.max(1));
        let sink = spawn("vigil-sink", {
            let counters = counters.clone();
            move || run_sinks(out_rx, sinks, store, workers, &counters)
        })?;
        // Restored state goes back to the worker that wrote it or, when the
        // worker count changed, to the worker its hash maps to.
        let same = usize::from(stored_workers) == workers;
        let mut restored: Vec<Restore> = (0..workers).map(|_| Restore::default()).collect();
        for (kind, hash, worker, state) in features {
            let w = if same { usize::from(worker) } else { (hash % workers as u64) as usize };
            restored[w.min(workers - 1)].features.push((kind, hash, state));
        }
        for d in windows {
            let w = if same { usize::from(d.worker) } else { (xxh3_64(d.key.as_bytes()) % workers as u64) as usize };
            restored[w.min(workers - 1)].windows.push(d);
        }
        for (worker, state) in legacy_windows {
            restored[usize::from(worker) % workers].legacy_windows.push(state);
        }
        for r in &mut restored {
            r.watermark = watermark;
            // With another worker count every key is stored again, under the
            // worker that now holds it.
            r.moved = !same;
        }
        for (rule, key, worker, value) in rule_state {
            let hash = xxh3_64(&key);
            let w = if same { usize::from(worker) } else { (hash % workers as u64) as usize };
            restored[w.min(workers - 1)].rule_state.push((rule, key, value));
        }
        let defs = window_defs(config);
        let mut worker_txs = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for (i, restore) in restored.into_iter().enumerate() {
            let (tx, rx) = bounded::<WorkerMsg>(cap);
            worker_txs.push(tx);
            let worker = Worker {
                index: i as u16,
                counters: counters.clone(),
                out_tx: out_tx.clone(),
                evaluator: Evaluator::new(registry.clone())
                    .with_event_budget(config.rules.event_budget())
                    .with_state_limit(usize::try_from(config.rules.state_max_bytes.as_u64()).unwrap_or(usize::MAX)),
                on_empty: config.rules.on_empty.action(),
                without_rules: false,
                features: FeatureEngine::new(catalog.clone()),
                windows: Windows::new(defs.clone(), &config.watermark),
                catalog: catalog.clone(),
                // Done well before the next barrier.
                drain_within: interval / 2,
                clock: decide::WallClock::new(),
            };
            handles.push(spawn(&format!("vigil-worker-{i}"), move || worker.run(rx, restore))?);
        }
        let partitioner = Partitioner::new(config.pipeline.partition_key, workers);
        let by_partition = source.partitioned();
        let batch = config.pipeline.batch_size.get();
        let ticks = !defs.is_empty();
        let parsers = match config.pipeline.decode_thread_count() {
            1 => None,
            n => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("vigil-decode-{i}"))
                    .build()
                    .map_err(std::io::Error::other)?,
            ),
        };
        let source = spawn("vigil-source", move || {
            let mut run = SourceRun {
                source,
                decoder,
                parsers,
                parsed: Vec::new(),
                partitioner,
                worker_txs,
                out_tx,
                batch_size: batch,
                checkpoints,
                next_id: last_id + 1,
                ticks,
                newest_ms: i64::MIN,
                by_partition,
            };
            run.run(&counters, &cancel)
        })?;
        Ok(Self { source, workers: handles, sink })
    }

    /// Waits until every stage has drained.
    ///
    /// # Errors
    /// When the source, a sink or a checkpoint failed; events read are
    /// still accounted for in the counters up to the failure.
    pub fn join(self) -> anyhow::Result<()> {
        let source = self.source.join().map_err(|_| anyhow::anyhow!("the source thread panicked"))?;
        for w in self.workers {
            w.join().map_err(|_| anyhow::anyhow!("a worker thread panicked"))?;
        }
        let sink = self.sink.join().map_err(|_| anyhow::anyhow!("the sink thread panicked"))?;
        source?;
        sink
    }
}

fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(f)
}

struct SourceRun {
    source: Box<dyn Source>,
    decoder: Decoder,
    /// Threads that parse a batch's lines in parallel; none: this thread.
    parsers: Option<rayon::ThreadPool>,
    /// The current batch, parsed (not yet de-duplicated), in input order.
    parsed: Vec<Result<Payment, DecodeError>>,
    partitioner: Partitioner,
    worker_txs: Vec<Sender<WorkerMsg>>,
    out_tx: Sender<SinkMsg>,
    batch_size: usize,
    checkpoints: Option<Duration>,
    next_id: u64,
    /// Whether workers keep windows and so need the source's event time.
    ticks: bool,
    newest_ms: i64,
    /// Spread events by input partition rather than by key (Kafka).
    by_partition: bool,
}

/// Sends `msg`, waiting while the channel is full and letting `source` keep
/// its connection alive meanwhile (see [`Source::stalled`]); false when the
/// receiver is gone.
fn send_or_stall<T>(tx: &Sender<T>, msg: T, source: &mut dyn Source) -> anyhow::Result<bool> {
    const POLL: Duration = Duration::from_millis(100);
    let mut msg = match tx.try_send(msg) {
        Ok(()) => return Ok(true),
        Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Ok(false),
        Err(crossbeam_channel::TrySendError::Full(m)) => m,
    };
    let since = Instant::now();
    let sent = loop {
        match tx.send_timeout(msg, POLL) {
            Ok(()) => break true,
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => break false,
            Err(crossbeam_channel::SendTimeoutError::Timeout(m)) => {
                msg = m;
                source.stalled()?;
            }
        }
    };
    if since.elapsed() >= POLL {
        source.unstalled()?;
    }
    Ok(sent)
}

impl SourceRun {
    fn send(&mut self, worker: usize, msg: WorkerMsg) -> anyhow::Result<()> {
        if !send_or_stall(&self.worker_txs[worker], msg, &mut *self.source)? {
            anyhow::bail!("a worker stopped before the input was drained");
        }
        Ok(())
    }

    fn send_out(&mut self, msg: SinkMsg) -> anyhow::Result<()> {
        if !send_or_stall(&self.out_tx, msg, &mut *self.source)? {
            anyhow::bail!("the sink stopped before the input was drained");
        }
        Ok(())
    }

    fn run(&mut self, counters: &Counters, cancel: &CancellationToken) -> anyhow::Result<()> {
        let mut records = Vec::with_capacity(self.batch_size);
        let mut last_checkpoint = Instant::now();
        // Whether anything was read since the last checkpoint: a quiet
        // input does not write the same checkpoint again and again.
        let mut changed = false;
        loop {
            self.source.recycle(&mut records);
            let more = self.source.next_batch(&mut records, self.batch_size, cancel)?;
            counters.events_in.fetch_add(records.len() as u64, Ordering::Relaxed);
            let now = now_us();
            let workers = self.worker_txs.len();
            // Sized for an even share and some skew, so a batch is not
            // grown (and its events copied again) as it fills.
            let share = if workers == 1 { records.len() } else { records.len() / workers + records.len() / 4 };
            let mut jobs: Vec<Vec<Job>> = (0..workers).map(|_| Vec::with_capacity(share)).collect();
            let mut rejected = Output::default();
            self.parse(&records);
            let ids = self.parsed.iter().filter_map(|p| p.as_ref().ok()).map(|p| p.id.as_str());
            self.decoder.dedup_mut().prefetch(ids);
            for (record, parsed) in records.iter().zip(self.parsed.drain(..)) {
                self.decoder.dedup_mut().set_partition(record.partition);
                match parsed.and_then(|p| self.decoder.admit(&p).map(|()| p)) {
                    Ok(payment) => {
                        self.newest_ms = self.newest_ms.max(payment.ts_ms);
                        let w = if self.by_partition {
                            record.partition as usize % workers
                        } else {
                            self.partitioner.partition(&payment)
                        };
                        jobs[w].push(Job { payment, ingested_at_us: now, partition: record.partition });
                    }
                    Err(e) => rejected.dead_letter(&self.decoder.dead_letter(&e, self.source.name(), record, now)),
                }
            }
            for (w, batch) in jobs.into_iter().enumerate() {
                if !batch.is_empty() {
                    self.send(w, WorkerMsg::Jobs(batch))?;
                } else if self.ticks && self.newest_ms > i64::MIN {
                    self.send(w, WorkerMsg::Tick(self.newest_ms))?;
                }
            }
            if !rejected.is_empty() {
                self.send_out(SinkMsg::Output { from: self.worker_txs.len(), out: rejected })?;
            }
            self.rebalance()?;
            let done = !more || cancel.is_cancelled();
            // Only a finished input closes every window; on shutdown they
            // stay open in the checkpoint and carry on after the restart.
            if !more && !cancel.is_cancelled() {
                for w in 0..self.worker_txs.len() {
                    self.send(w, WorkerMsg::EndOfInput)?;
                }
            }
            changed |= !records.is_empty();
            if let Some(every) = self.checkpoints
                && (done || (changed && last_checkpoint.elapsed() >= every))
            {
                self.barrier()?;
                last_checkpoint = Instant::now();
                changed = false;
            }
            if done {
                tracing::info!(source = self.source.name(), "source finished");
                return Ok(());
            }
        }
    }

    /// Parses `records` into `self.parsed`, in order: on the parser
    /// threads when there are enough to share, else here.
    fn parse(&mut self, records: &[Record]) {
        use rayon::prelude::*;
        /// Below this a batch is parsed faster than it is handed over.
        const SHARED_FROM: usize = 32;
        let decoder = &self.decoder;
        let parse = |r: &Record| match (r.oversize, r.not_utf8_at) {
            (Some(len), _) => Err(decoder.too_large(len)),
            (None, None) => decoder.parse(&r.line),
            (None, Some(at)) => Err(DecodeError::NotUtf8 { at }),
        };
        self.parsed.clear();
        match &self.parsers {
            Some(pool) if records.len() >= SHARED_FROM => pool.install(|| {
                records.par_iter().map(parse).collect_into_vec(&mut self.parsed);
            }),
            _ => self.parsed.extend(records.iter().map(parse)),
        }
    }

    /// Passes partition ownership changes on: workers forget what moved
    /// away and load what arrived, before any event of it.
    fn rebalance(&mut self) -> anyhow::Result<()> {
        let changes = self.source.take_rebalance()?;
        let moved = !changes.is_empty();
        for change in changes {
            match change {
                Rebalance::Revoked(partitions) => {
                    self.decoder.dedup_mut().drop_partitions(&partitions);
                    for w in 0..self.worker_txs.len() {
                        self.send(w, WorkerMsg::Drop(partitions.clone()))?;
                    }
                }
                Rebalance::Assigned(mut state) => {
                    // The ids its previous owner saw, so a payment sent
                    // again after the move is still caught.
                    let dedup = std::mem::take(&mut state.dedup);
                    self.decoder.dedup_mut().restore_partition(state.partition, &dedup);
                    let w = state.partition as usize % self.worker_txs.len();
                    self.send(w, WorkerMsg::Restore(Box::new(state)))?;
                }
            }
        }
        // A marker in the output stream between the work before the change
        // and the work after it: a transaction open across it is aborted.
        if moved && self.checkpoints.is_some() {
            self.barrier_marked(true)?;
        }
        Ok(())
    }

    /// Starts checkpoint `next_id` covering everything sent so far.
    fn barrier(&mut self) -> anyhow::Result<()> {
        self.barrier_marked(false)
    }

    /// A barrier; `abort` makes it a rebalance marker (see [`Checkpoint::abort`]).
    fn barrier_marked(&mut self, abort: bool) -> anyhow::Result<()> {
        let id = self.next_id;
        self.next_id += 1;
        for w in 0..self.worker_txs.len() {
            self.send(w, WorkerMsg::Barrier(id))?;
        }
        let dedup_cutoff = self.decoder.dedup_mut().cutoff();
        let (dedup_added, dedup_removed) = self.decoder.dedup_mut().take_delta();
        let (epoch, offsets) = self.source.offsets();
        let part = Checkpoint {
            epoch,
            offsets,
            abort,
            id,
            position: self.source.position(),
            source: self.source.name().to_owned(),
            workers: self.worker_txs.len() as u16,
            dedup_added,
            dedup_removed,
            dedup_cutoff,
            ..Checkpoint::default()
        };
        self.send_out(SinkMsg::Source(part))
    }
}

/// State a worker starts from.
#[derive(Default)]
struct Restore {
    features: Vec<(u8, u64, Vec<u8>)>,
    windows: Vec<WindowDelta>,
    legacy_windows: Vec<Vec<u8>>,
    watermark: Option<i64>,
    /// The worker count changed since the state was stored.
    moved: bool,
    rule_state: Vec<(String, Vec<u8>, Vec<u8>)>,
}

/// How often an idle worker wakes to serialise the keys due while it takes
/// a checkpoint (see [`Worker::drain`]).
const DRAIN_TICK: Duration = Duration::from_millis(1);

/// Time a worker takes per key of a checkpoint's feature state, at most:
/// at ~1 µs a key, about 5 % of a core.
const DRAIN_PER_KEY: Duration = Duration::from_micros(20);

/// A worker's part of a checkpoint while its feature state is serialised.
struct Part {
    id: u64,
    /// When the barrier reached the worker.
    started: Instant,
    /// Keys the snapshot had to look at then.
    keys: usize,
    /// The time they are spread over.
    within: Duration,
    windows: Vec<WindowDelta>,
    newest_ms: Option<i64>,
    rule_state: Vec<RuleStateDelta>,
}

struct Worker {
    index: u16,
    counters: Arc<Counters>,
    out_tx: Sender<SinkMsg>,
    evaluator: Evaluator,
    features: FeatureEngine,
    windows: Windows,
    catalog: Arc<Catalog>,
    /// The longest time a checkpoint's feature state is spread over.
    drain_within: Duration,
    /// Stamps decisions; anchored to the system clock at each batch.
    clock: decide::WallClock,
    /// The final action at least, while no enforcing rule is live.
    on_empty: Action,
    /// Whether no enforcing rule was live at the last batch.
    without_rules: bool,
}

impl Worker {
    fn run(mut self, rx: Receiver<WorkerMsg>, restore: Restore) {
        // The app checked every record before starting; a record that no
        // longer fits is dropped with a log line rather than stopping work.
        for (kind, hash, state) in restore.features {
            if let Err(e) = self.features.restore(kind, hash, &state, restore.moved) {
                tracing::error!(worker = self.index, error = %e, "cannot restore a key's feature state");
            }
        }
        for (rule, key, value) in restore.rule_state {
            self.evaluator.restore_state(&rule, &key, &value, restore.moved);
        }
        if let Some(t) = restore.watermark {
            self.windows.observe(t);
        }
        for d in restore.windows {
            let bytes = d.windows.as_deref().unwrap_or_default();
            if let Err(e) = self.windows.restore_key(&d.window, &d.key, d.partition, bytes, restore.moved) {
                tracing::error!(worker = self.index, error = %e, "cannot restore a key's windows");
            }
        }
        for state in restore.legacy_windows {
            if let Err(e) = self.windows.restore_legacy(&state) {
                tracing::error!(worker = self.index, error = %e, "cannot restore window state");
            }
        }
        // The batch's events as the rules take them, the job each came
        // from, and each one's rule outcomes.
        let mut batch = rules::Batch::default();
        let mut in_batch = Vec::new();
        let mut outcomes = Vec::new();
        // (name with its rendered JSON key, catalog index) of the features
        // live rules read; worker-local, so records touch no shared
        // reference counts.
        let mut used: Vec<(decide::FeatureKey, usize)> = Vec::new();
        let mut used_generation = u64::MAX;
        // Bytes per decision record in the last batch: each batch's buffer
        // is sized from it, so it is not grown (and copied) as it fills.
        let mut record_bytes = 512;
        // The checkpoint this worker is serialising its feature state for.
        let mut part: Option<Part> = None;
        loop {
            let msg = if part.is_some() {
                match rx.recv_timeout(DRAIN_TICK) {
                    Ok(msg) => msg,
                    Err(RecvTimeoutError::Timeout) => {
                        if !self.drain(&mut part) {
                            return;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            };
            // Anything but events waits for the checkpoint being taken:
            // barriers keep their order, and keys dropped or restored
            // their state at the barrier.
            if !matches!(msg, WorkerMsg::Jobs(_) | WorkerMsg::Tick(_)) && !self.send_part(&mut part) {
                return;
            }
            let mut out = Output::default();
            match msg {
                WorkerMsg::Jobs(jobs) => {
                    // Rules first: a rule that declares a new feature adds it
                    // to the catalog before it goes live, so the engine then
                    // sees it too.
                    let start = Instant::now();
                    self.clock = decide::WallClock::new();
                    if self.evaluator.refresh() {
                        let us = start.elapsed().as_micros() as u64;
                        self.counters.rule_swap_max_us.fetch_max(us, Ordering::Relaxed);
                        let generation = self.evaluator.generation();
                        tracing::debug!(worker = self.index, generation, pause_us = us, "rule set swapped in");
                    }
                    self.features.refresh();
                    let without_rules = !self.evaluator.enforcing();
                    if without_rules != self.without_rules {
                        self.without_rules = without_rules;
                        if without_rules {
                            tracing::error!(
                                worker = self.index,
                                action = self.on_empty.as_str(),
                                "no enforcing rule is live (none loaded, or all quarantined): every decision takes \
                                 rules.on-empty until one is"
                            );
                        } else {
                            tracing::info!(worker = self.index, "an enforcing rule is live again");
                        }
                    }
                    if self.evaluator.generation() != used_generation {
                        let names = self.catalog.snapshot();
                        used = self
                            .evaluator
                            .used_features()
                            .into_iter()
                            .filter_map(|i| names.get(i).map(|f| (decide::FeatureKey::new(&f.name), i)))
                            .collect();
                        used_generation = self.evaluator.generation();
                    }
                    out.decisions.reserve(jobs.len() * (record_bytes + record_bytes / 8));
                    let mut record_features = Vec::with_capacity(used.len());
                    self.features.prefetch(jobs.iter().map(|j| &j.payment));
                    self.prepare(&jobs, &mut batch, &mut in_batch, &mut out);
                    self.evaluator.evaluate(&batch, &mut outcomes);
                    for (i, &j) in in_batch.iter().enumerate() {
                        let job = &jobs[j];
                        self.record(job, &used, &mut record_features, batch.values(i), &outcomes[i], &mut out);
                    }
                    if out.decision_count > 0 {
                        record_bytes = out.decisions.len() / out.decision_count as usize;
                    }
                    self.windows.close(false, |c| out.closed(&c));
                    if !self.drain(&mut part) {
                        return;
                    }
                }
                WorkerMsg::Tick(ts) => {
                    self.windows.observe(ts);
                    self.windows.close(false, |c| out.closed(&c));
                }
                WorkerMsg::EndOfInput => self.windows.close(true, |c| out.closed(&c)),
                WorkerMsg::Drop(partitions) => {
                    self.features.drop_partitions(&partitions);
                    self.windows.drop_partitions(&partitions);
                    self.evaluator.drop_partitions(&partitions);
                    continue;
                }
                WorkerMsg::Restore(state) => {
                    self.restore_partition(*state);
                    continue;
                }
                WorkerMsg::Barrier(id) => {
                    // Windows and rules' state are small and taken now; the
                    // feature state is serialised from here on.
                    self.features.begin_snapshot(self.index);
                    let keys = self.features.snapshot_remaining();
                    part = Some(Part {
                        id,
                        started: Instant::now(),
                        keys,
                        within: DRAIN_PER_KEY
                            .saturating_mul(u32::try_from(keys).unwrap_or(u32::MAX))
                            .min(self.drain_within),
                        windows: self.windows.take_delta(self.index),
                        newest_ms: self.windows.newest(),
                        rule_state: self.evaluator.take_state_delta(self.index),
                    });
                    if self.out_tx.send(SinkMsg::Cut { from: usize::from(self.index), id }).is_err() {
                        tracing::error!("the sink stopped; worker exiting");
                        return;
                    }
                    if !self.drain(&mut part) {
                        return;
                    }
                    continue;
                }
            }
            if !out.is_empty() && self.out_tx.send(SinkMsg::Output { from: usize::from(self.index), out }).is_err() {
                tracing::error!("the sink stopped; worker exiting");
                return;
            }
        }
        // The input is drained: the checkpoint being taken goes out whole.
        self.send_part(&mut part);
    }

    /// Serialises the keys of `part`'s snapshot that are due by now, and
    /// sends the part once none is left; false when the sink stopped.
    ///
    /// The keys are spread evenly over [`DRAIN_PER_KEY`] each, at most
    /// half the checkpoint interval (so a checkpoint is durable well before
    /// the next barrier): taken as fast as the worker could (whenever it
    /// was idle, and a key an event) the snapshot took 30–80 ms of a core
    /// per worker right after each barrier, which with the source, the sink
    /// and the other worker on 2 cores queued events for tens of
    /// milliseconds.
    fn drain(&mut self, part: &mut Option<Part>) -> bool {
        let Some(p) = part.as_ref() else {
            return true;
        };
        let share = if p.within.is_zero() {
            1.0
        } else {
            (p.started.elapsed().as_secs_f64() / p.within.as_secs_f64()).min(1.0)
        };
        let due = (p.keys as f64 * share).ceil() as usize;
        let done = p.keys.saturating_sub(self.features.snapshot_remaining());
        if !self.features.snapshot_step(due.saturating_sub(done)) {
            return true;
        }
        self.send_part(part)
    }

    /// Finishes the feature snapshot of `part`, if one is being taken, and
    /// sends the worker's part of that checkpoint; false when the sink
    /// stopped.
    fn send_part(&mut self, part: &mut Option<Part>) -> bool {
        let Some(Part { id, windows, newest_ms, rule_state, .. }) = part.take() else {
            return true;
        };
        let delta = self.features.finish_snapshot();
        if self.out_tx.send(SinkMsg::Worker { id, delta, windows, newest_ms, rule_state }).is_err() {
            tracing::error!("the sink stopped; worker exiting");
            return false;
        }
        true
    }

    fn restore_partition(&mut self, state: PartitionState) {
        self.features.set_partition(state.partition);
        self.evaluator.set_partition(state.partition);
        for (window, key, bytes) in &state.windows {
            if let Err(e) = self.windows.restore_key(window, key, state.partition, bytes, false) {
                tracing::error!(partition = state.partition, error = %e, "cannot restore a key's windows");
            }
        }
        for (kind, hash, bytes) in &state.features {
            if let Err(e) = self.features.restore(*kind, *hash, bytes, false) {
                tracing::error!(partition = state.partition, error = %e, "cannot restore a key's feature state");
            }
        }
        for (rule, key, value) in &state.rule_state {
            self.evaluator.restore_state(rule, key, value, false);
        }
    }

    /// Encodes each job's event for the rules and computes its features,
    /// in order, into `batch`; `in_batch` gets the job of each event there.
    fn prepare(&mut self, jobs: &[Job], batch: &mut rules::Batch, in_batch: &mut Vec<usize>, out: &mut Output) {
        batch.clear();
        in_batch.clear();
        for (j, job) in jobs.iter().enumerate() {
            let p = &job.payment;
            self.features.set_partition(job.partition);
            self.windows.set_partition(job.partition);
            if let Err(e) = p.encode(batch.buffer()) {
                // Validation limits keep events far below the layout's
                // limits, so this is a bug; the event still is accounted for.
                tracing::error!(id = %p.id, error = %e, "cannot encode event for the rules");
                out.encode_failure(&p.id, &e.to_string());
                continue;
            }
            self.windows.add(p, |l| out.late(&l));
            batch.push(job.partition, self.features.compute(p));
            in_batch.push(j);
        }
    }

    /// Combines an event's rule outcomes into its decision and writes the
    /// audit record.
    fn record<'u>(
        &self,
        job: &Job,
        used: &'u [(decide::FeatureKey, usize)],
        record_features: &mut Vec<(&'u decide::FeatureKey, f64)>,
        values: &[f64],
        outcomes: &[decide::RuleOutcome],
        out: &mut Output,
    ) {
        let p = &job.payment;
        record_features.clear();
        record_features.extend(used.iter().map(|(key, i)| (key, values[*i])));
        let (mut action, score, mut reasons) = decide::combine(outcomes);
        if self.without_rules {
            action = action.max(self.on_empty);
            reasons.push(decide::NO_ENFORCING_RULE);
        }
        let record = Decision {
            id: &p.id,
            action,
            score,
            reasons,
            rules: outcomes,
            features: FeatureValues(record_features),
            event_ts_ms: p.ts_ms,
            ingested_at_us: job.ingested_at_us,
            decided_at_us: self.clock.now_us(),
        };
        let start = out.decisions.len();
        record.write_json_line(&mut out.decisions);
        out.decision_count += 1;
        if action != Action::Allow && out.decisions.len() > start {
            out.alerts.push(start..out.decisions.len());
        }
    }
}

#[derive(Default)]
struct Pending {
    workers: usize,
    source: Option<Checkpoint>,
    features: Vec<FeatureDelta>,
    windows: Vec<WindowDelta>,
    watermark: Option<i64>,
    rule_state: Vec<RuleStateDelta>,
}

fn run_sinks(
    rx: Receiver<SinkMsg>,
    mut sinks: Sinks,
    store: Option<Box<dyn Durable>>,
    workers: usize,
    counters: &Counters,
) -> anyhow::Result<()> {
    // One checkpoint may wait while the previous one commits; then the
    // sink waits, so commits keep their order and never pile up.
    let (commit_tx, commit_rx) = bounded::<(Vec<std::fs::File>, Checkpoint)>(1);
    let (off_thread, mut inline) = match store {
        Some(s) if s.commits_off_thread() => (Some(s), None),
        other => (None, other),
    };
    let result = std::thread::scope(|scope| {
        let committer = off_thread.map(|store| {
            std::thread::Builder::new()
                .name("vigil-commit".into())
                .spawn_scoped(scope, move || run_committer(commit_rx, store, counters))
        });
        let committer = committer.transpose()?;
        let commits = match &committer {
            Some(_) => Commits::OffThread(&commit_tx),
            None => Commits::Inline(inline.take()),
        };
        let written = write_outputs(&rx, &mut sinks, commits, workers, counters);
        drop(commit_tx);
        let committed = match committer {
            Some(c) => c.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the checkpoint committer panicked"))),
            None => Ok(()),
        };
        // A failed commit closes the channel: the writer's error then only
        // says so, and the committer's says why.
        committed.and(written)
    });
    if let Err(e) = &result {
        tracing::error!(error = %e, "writing output or a checkpoint failed; stopping");
    }
    result
}

fn write_output(sinks: &mut Sinks, out: &Output, counters: &Counters) -> std::io::Result<()> {
    sinks.decisions.write(&out.decisions)?;
    for r in &out.alerts {
        sinks.alerts.write(&out.decisions[r.clone()])?;
    }
    sinks.dead_letters.write(&out.dead)?;
    sinks.aggregates.write(&out.aggregates)?;
    sinks.late.write(&out.late)?;
    let add = |c: &AtomicU64, n: u64| c.fetch_add(n, Ordering::Relaxed);
    add(&counters.decided, out.decision_count);
    add(&counters.alerts, out.alerts.len() as u64);
    add(&counters.dead_lettered, out.dead_count);
    add(&counters.aggregates, out.aggregate_count);
    add(&counters.late, out.late_count);
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
    Output(Output),
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
        self.held[from].push_back(Held::Output(out));
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
                    Held::Output(out) => free.push(out),
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
            Held::Output(out) => Some(out),
            Held::Cut(_) => None,
        })
        .collect()
    }
}

/// Where the output loop sends a complete checkpoint.
enum Commits<'a> {
    /// To the committer thread.
    OffThread(&'a Sender<(Vec<std::fs::File>, Checkpoint)>),
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
) -> anyhow::Result<()> {
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
                p.features.extend(delta);
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
                if tx.send((files, cp)).is_err() {
                    anyhow::bail!("the checkpoint committer stopped");
                }
            }
            Commits::Inline(store) => {
                // Everything before the barrier is written; make it durable
                // before the checkpoint says it was processed.
                sinks.sync()?;
                if let Some(store) = store {
                    let (line, abort) = (cp.position.line_no, cp.abort);
                    store.commit(cp)?;
                    counters.checkpoints.fetch_add(u64::from(!abort), Ordering::Relaxed);
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
        fn write(&mut self, lines: &[u8]) -> std::io::Result<()> {
            if !lines.is_empty() {
                self.0.lock().expect("log").push(String::from_utf8_lossy(lines).into_owned());
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
        /// Commits on the committer thread, failing from this id on.
        fails_from: Option<u64>,
    }

    impl Durable for Store {
        fn commit(&mut self, cp: Checkpoint) -> anyhow::Result<()> {
            if self.fails_from.is_some_and(|id| cp.id >= id) {
                anyhow::bail!("cannot write the store: no space left on device");
            }
            self.log.lock().expect("log").push(format!("commit {}", cp.id));
            Ok(())
        }

        fn commits_off_thread(&self) -> bool {
            self.fails_from.is_some()
        }

        fn commit_takes_outputs(&self) -> bool {
            self.takes_outputs
        }
    }

    /// Every output writing to `log`.
    fn recorded(log: &Log) -> Sinks {
        let sink = || Box::new(Recorded(log.clone())) as Box<dyn Sink>;
        Sinks { decisions: sink(), alerts: sink(), dead_letters: sink(), aggregates: sink(), late: sink() }
    }

    fn output(from: usize, line: &str) -> SinkMsg {
        let out = Output { decisions: format!("{line}\n").into_bytes(), decision_count: 1, ..Output::default() };
        SinkMsg::Output { from, out }
    }

    fn part(id: u64) -> SinkMsg {
        SinkMsg::Worker { id, delta: Vec::new(), windows: Vec::new(), newest_ms: None, rule_state: Vec::new() }
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
        let store = Store { log: log.clone(), takes_outputs, fails_from: None };
        let counters = Counters::default();
        write_outputs(&rx, &mut sinks, Commits::Inline(Some(Box::new(store))), 2, &counters).expect("write");
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
        let store = Store { log: log.clone(), takes_outputs: false, fails_from: Some(2) };
        let counters = Counters::default();
        std::thread::scope(|scope| {
            let sink = scope.spawn(|| run_sinks(rx, sinks, Some(Box::new(store)), 1, &counters));
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
            assert!(e.to_string().contains("no space left on device"), "{e:#}");
            assert!(id < 1_000, "the sink stopped taking messages");
        });
        let lines = log.lock().expect("log").clone();
        assert!(lines.contains(&"commit 1".to_owned()), "{lines:?}");
        assert!(!lines.iter().any(|l| l.starts_with("commit 2")), "{lines:?}");
    }

    #[test]
    fn otherwise_outputs_are_written_as_they_come() {
        let lines = run(false);
        let commit = lines.iter().position(|l| l == "commit 1").expect("committed");
        assert_eq!(commit, lines.len() - 1, "{lines:?}");
        assert_eq!(lines[..3], ["w0 before", "w0 after", "source before"]);
    }
}
