//! The running pipeline: one source thread (read, decode, clean, route),
//! P worker threads (features, windows, rules, decisions) exchanging the
//! work of each batch, and one output thread (sinks, checkpoints).
//!
//! ```text
//!                       ┌─► worker 0 ─┐
//!  source ─ batch ──────┤     ▲ ▼     ├──► output ─► sinks
//!  (decode, dedup,      └─► worker 1 ─┘    (records, checkpoint commits)
//!   route keys)          exchange: features, outcomes
//! ```
//!
//! Every batch goes to every worker; each does the part of it that its
//! keys own, and the workers meet between its phases ([`exchange`]).
//! Stages pass batches over bounded channels, so a slow stage holds the
//! previous one back instead of queueing without limit. Shutdown is a
//! drain: the source stops reading, and each stage ends when its input
//! channel is closed and empty, so every event read is decided or
//! dead-lettered. Checkpoints are barriers in the same stream
//! ([`checkpoint`]).
//!
//! # Layout
//! - `source`: reading, decoding, de-duplicating, routing, barriers.
//! - `exchange`: who owns which key, and the batch the workers share.
//! - [`hop`]: the hops an event takes between the daemons of a Kafka group
//!   keeping state per several keys.
//! - `worker`: one worker's phases of each batch, and its checkpoint part.
//! - `shard`: one worker's features and windows, which another worker
//!   takes over rather than wait for them.
//! - `output`: the sinks, and assembling and committing checkpoints.
//! - [`checkpoint`]: the barrier protocol, and restored state's routing.

pub mod checkpoint;
pub mod exchange;
pub mod hop;
mod output;
mod shard;
mod source;
mod worker;

use crossbeam_channel::bounded;
use serde::Serialize;
use smallvec::SmallVec;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, WindowSpec};
use crate::decode::Decoder;
use crate::event::KeyField;
use crate::features::{Catalog, FeatureEngine};
use crate::keyed::KeyedHash;
use crate::rules::RuleRegistry;
use crate::sources::Source;
use crate::window::{Shape, WindowDef, Windows};
pub use checkpoint::Durability;
use exchange::{Router, Shared};
use output::SinkMsg;
pub use output::Sinks;

/// Event counts; `events_in == decided + dead_lettered` once drained.
#[derive(Debug)]
pub struct Counters {
    /// Decision records by action: each only grows, unlike a difference
    /// of two counters read one after the other.
    pub allowed: AtomicU64,
    /// Decision records with action review.
    pub reviewed: AtomicU64,
    /// Decision records with action block.
    pub blocked: AtomicU64,
    /// Dead letters by their reason's code.
    pub dead_by_code: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// When the input's pipeline last committed a checkpoint, ms since the
    /// epoch (0: none).
    pub checkpoint_at_ms: AtomicU64,
    /// How long committing it took, µs.
    pub checkpoint_took_us: AtomicU64,
    /// Time from intake to decision per event.
    pub decision_latency: crate::stats::Histogram,
    /// How far the source is behind its input, updated about once a second.
    pub source_lag: std::sync::Mutex<crate::sources::Lag>,
    /// How far each topic between hops is behind, per owned partition
    /// (records), by topic; updated as `source_lag`.
    pub hop_lag: std::sync::Mutex<std::collections::BTreeMap<String, Vec<(u32, u64)>>>,
    /// The checkpoints of each topic between hops' pipeline, by topic
    /// (the fields above are the input's pipeline's).
    pub hop_checkpoints: std::sync::Mutex<std::collections::BTreeMap<String, HopCheckpoints>>,
    /// Messages waiting in each channel between the stages, and its
    /// capacity, updated with `source_lag`: (channel, waiting, capacity).
    pub channels: std::sync::Mutex<Vec<(String, usize, usize)>>,
    /// Records read from the source.
    pub events_in: AtomicU64,
    /// Decision records written.
    pub decided: AtomicU64,
    /// Dead letters written.
    pub dead_lettered: AtomicU64,
    /// Alerts (review or block) written.
    pub alerts: AtomicU64,
    /// Checkpoints committed by the pipeline reading the input.
    pub checkpoints: AtomicU64,
    /// Closed windows written.
    pub aggregates: AtomicU64,
    /// Events too late for a window.
    pub late: AtomicU64,
    /// The longest a worker spent taking up a new rule set (swapping its
    /// rules and instantiating new versions), µs: the pause a deploy causes.
    pub rule_swap_max_us: AtomicU64,
}

/// The checkpoints committed by the pipeline reading one topic between hops.
#[derive(Debug, Clone, Copy, Default)]
pub struct HopCheckpoints {
    /// How many.
    pub committed: u64,
    /// When the last was, ms since the epoch.
    pub at_ms: u64,
    /// How long committing it took, µs.
    pub took_us: u64,
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

impl Default for Counters {
    fn default() -> Self {
        Self {
            allowed: AtomicU64::new(0),
            reviewed: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            dead_by_code: std::sync::Mutex::default(),
            checkpoint_at_ms: AtomicU64::new(0),
            checkpoint_took_us: AtomicU64::new(0),
            decision_latency: crate::stats::Histogram::new(crate::stats::BATCH_NS),
            source_lag: std::sync::Mutex::default(),
            hop_lag: std::sync::Mutex::default(),
            hop_checkpoints: std::sync::Mutex::default(),
            channels: std::sync::Mutex::default(),
            events_in: AtomicU64::new(0),
            decided: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            aggregates: AtomicU64::new(0),
            late: AtomicU64::new(0),
            rule_swap_max_us: AtomicU64::new(0),
        }
    }
}

impl Counters {
    /// Notes a checkpoint committed that took `took`: of the pipeline
    /// reading the input, or of the one reading the topic between hops
    /// `hop`.
    pub(crate) fn checkpointed(&self, hop: Option<&str>, took: std::time::Duration) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let (at_ms, took_us) = (now.as_millis() as u64, took.as_micros() as u64);
        match hop {
            None => {
                self.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.checkpoint_at_ms.store(at_ms, Ordering::Relaxed);
                self.checkpoint_took_us.store(took_us, Ordering::Relaxed);
            }
            Some(topic) => {
                let mut hops = self.hop_checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let c = hops.entry(topic.to_owned()).or_default();
                *c = HopCheckpoints { committed: c.committed + 1, at_ms, took_us };
            }
        }
    }

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

/// What the source sends each worker, in order.
pub(crate) enum WorkerMsg {
    /// A batch of events, the same for every worker.
    Batch(Arc<Shared>),
    /// Checkpoint `id`'s barrier: the worker's part is its state after
    /// every batch before it.
    Barrier(u64),
    /// The input is exhausted: close every window.
    EndOfInput,
    /// These input partitions moved away: forget their keyed state.
    Drop(Vec<u32>),
    /// An input partition's keyed state, read back from the changelog,
    /// before its events.
    Restore(Box<crate::state::Restored>),
}

/// Why the pipeline stopped before its input was drained.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The input could not be read.
    #[error(transparent)]
    Source(#[from] crate::sources::SourceError),
    /// An output could not be written or made durable.
    #[error("cannot write the outputs")]
    Output(#[from] std::io::Error),
    /// A checkpoint could not be committed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// A stage stopped while others still had work for it: its own error
    /// says why.
    #[error("{0} stopped before the input was drained")]
    Stopped(&'static str),
    /// A thread could not be started.
    #[error("cannot start the {0} thread")]
    Spawn(&'static str, #[source] std::io::Error),
    /// A thread panicked (its message is in the log).
    #[error("the {0} thread panicked")]
    Panicked(&'static str),
}

/// The running threads.
#[derive(Debug)]
pub struct Pipeline {
    source: JoinHandle<Result<(), PipelineError>>,
    workers: Vec<JoinHandle<()>>,
    sink: JoinHandle<Result<(), PipelineError>>,
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
    /// How entity keys are hashed: the same on every daemon and restart.
    pub hasher: KeyedHash,
    /// The hops of a Kafka group keeping state per several keys, and the
    /// topic of theirs `source` reads (`None`: the input).
    pub chain: Option<(Arc<hop::Chain>, Option<String>)>,
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
        let Stages { source, mut decoder, catalog, registry, sinks, hasher, chain } = stages;
        let workers = config.pipeline.worker_count();
        let cap = config.pipeline.channel_capacity.get();
        let (store, interval, last_id) = (durability.store, durability.interval, durability.last_id);
        let checkpoints = store.as_ref().map(|_| interval);
        decoder.dedup_mut().track_forgotten(store.as_ref().is_some_and(|s| s.needs_forgotten_ids()));
        let (out_tx, out_rx) = bounded::<SinkMsg>(cap * workers.max(1));
        // The topic between hops this pipeline reads, if it reads one.
        let hop = chain.as_ref().and_then(|(_, topic)| topic.clone());
        // Events between hops were parsed where they came in.
        let on_hop = hop.is_some();
        let sink = spawn("vigil-sink", {
            let counters = counters.clone();
            move || output::run_sinks(out_rx, sinks, store, workers, &counters, hop.as_deref())
        })?;
        let by_partition = source.partitioned();
        let router = Router::new(workers, hasher, config.pipeline.partition_key.field(), by_partition);
        let defs = window_defs(config);
        let restored = checkpoint::route(durability.restored, &router, &defs);
        // A worker waiting for the others is woken when a phase completes,
        // or when the source sends it something.
        let parkers: Vec<_> = (0..workers).map(|_| crossbeam_utils::sync::Parker::new()).collect();
        let wake: Arc<[_]> = parkers.iter().map(|p| p.unparker().clone()).collect();
        let halted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Should a thread below fail to start, the workers already running
        // are woken once their channels are closed (dropped before this),
        // rather than at their next idle poll.
        let mut started = WakeUnlessStarted(Some(wake.clone()));
        let mut worker_txs = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        let shards: Arc<[_]> = (0..workers)
            .map(|_| {
                let features = FeatureEngine::new(catalog.clone(), router.hasher().clone());
                let windows = Windows::new(defs.clone(), &config.watermark);
                std::sync::Mutex::new(shard::Shard::new(features.with_limits((&config.state).into()), windows))
            })
            .collect();
        for (i, (restore, parker)) in restored.into_iter().zip(parkers).enumerate() {
            let (tx, rx) = bounded::<WorkerMsg>(cap);
            worker_txs.push(tx);
            let worker = worker::Worker::new(worker::Setup {
                index: i,
                workers,
                halted: halted.clone(),
                wake: wake.clone(),
                config,
                counters: counters.clone(),
                out_tx: out_tx.clone(),
                registry: registry.clone(),
                shards: shards.clone(),
                // Done well before the next barrier.
                drain_within: interval / 2,
            });
            handles.push(spawn(&format!("vigil-worker-{i}"), move || worker.run(rx, parker, restore))?);
        }
        let parsers = match config.pipeline.decode_thread_count() {
            _ if on_hop => None,
            1 => None,
            n => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("vigil-decode-{i}"))
                    .build()
                    .map_err(std::io::Error::other)?,
            ),
        };
        let window_fields: SmallVec<[KeyField; 6]> = defs.iter().map(|d| d.key).collect();
        let batch_size = config.pipeline.batch_size.get();
        let source = spawn("vigil-source", move || {
            let mut run = source::SourceRun::new(source::Setup {
                source,
                decoder,
                parsers,
                router,
                registry,
                window_fields,
                wake,
                worker_txs,
                out_tx,
                batch_size,
                checkpoints,
                next_id: last_id + 1,
                counters: counters.clone(),
                chain,
            });
            run.run(&counters, &cancel)
        })?;
        started.0 = None;
        Ok(Self { source, workers: handles, sink })
    }

    /// Waits until every stage has drained.
    ///
    /// # Errors
    /// When the source, a sink or a checkpoint failed; events read are
    /// still accounted for in the counters up to the failure.
    pub fn join(self) -> Result<(), PipelineError> {
        let source = self.source.join().map_err(|_| PipelineError::Panicked("source"))?;
        for w in self.workers {
            w.join().map_err(|_| PipelineError::Panicked("worker"))?;
        }
        let sink = self.sink.join().map_err(|_| PipelineError::Panicked("sink"))?;
        match (source, sink) {
            // The workers stopped because the output failed: its error
            // says why.
            (Err(PipelineError::Stopped(_)), Err(e)) => Err(e),
            (Err(e), _) => Err(e),
            (Ok(()), sink) => sink,
        }
    }
}

/// Wakes every worker when dropped still holding their unparkers: see
/// [`Pipeline::start`].
struct WakeUnlessStarted(Option<Arc<[crossbeam_utils::sync::Unparker]>>);

impl Drop for WakeUnlessStarted {
    fn drop(&mut self) {
        if let Some(wake) = &self.0 {
            exchange::unpark_all(wake);
        }
    }
}

fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(f)
}
