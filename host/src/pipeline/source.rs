//! The source thread: reads records, decodes and de-duplicates them in
//! order, routes each batch's keys once ([`super::exchange`]) and hands the
//! batch to every worker; dead letters go straight to the output thread.
//! It also starts each checkpoint (a barrier after the batches it covers)
//! and passes Kafka partition moves on to the workers.

use crossbeam_channel::Sender;
use smallvec::SmallVec;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::exchange::{Carried, Item, Plan, Router, Shared};
use super::hop::{self, Chain};
use super::output::{Output, SinkMsg};
use super::{Counters, PipelineError, WorkerMsg};
use crate::decide::now_us;
use crate::decode::{DecodeError, Decoder};
use crate::event::{KeyField, Payment, Text};
use crate::rules::RuleRegistry;
use crate::sources::{Rebalance, Record, Source};
use crate::state::Checkpoint;

/// What the source thread is started with.
pub(super) struct Setup {
    pub source: Box<dyn Source>,
    pub decoder: Decoder,
    pub parsers: Option<rayon::ThreadPool>,
    pub router: Router,
    pub registry: Arc<RuleRegistry>,
    /// The key fields windows are kept per.
    pub window_fields: SmallVec<[KeyField; 6]>,
    /// Each worker's unparker: rung after each message sent to it.
    pub wake: Arc<[crossbeam_utils::sync::Unparker]>,
    pub worker_txs: Vec<Sender<WorkerMsg>>,
    pub out_tx: Sender<SinkMsg>,
    pub batch_size: usize,
    pub checkpoints: Option<Duration>,
    pub next_id: u64,
    /// Where the source's lag and the channels' fill are reported.
    pub counters: Arc<Counters>,
    /// The hops of a group keeping state per several keys, and the topic
    /// of theirs this source reads (`None`: the input).
    pub chain: Option<(Arc<Chain>, Option<String>)>,
}

/// How often the source's lag and the channels' fill are reported.
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// Reports the source's lag and how full the channels to the workers and
/// the output are, once per [`STATUS_EVERY`] (`last`: when it last did).
/// A source reading a topic between hops reports only its lag, under the
/// topic's name (the input's pipeline reports the channels).
fn report_status(
    source: &mut dyn Source,
    worker_txs: &[Sender<WorkerMsg>],
    out_tx: &Sender<SinkMsg>,
    counters: &Counters,
    (last, hop_topic): (&mut Instant, Option<&str>),
) {
    if last.elapsed() < STATUS_EVERY {
        return;
    }
    *last = Instant::now();
    let lag = source.lag();
    if let Some(topic) = hop_topic {
        let mut hops = counters.hop_lag.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        hops.insert(topic.to_owned(), lag.records);
        return;
    }
    *counters.source_lag.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = lag;
    let fill = |name: String, len: usize, cap: Option<usize>| (name, len, cap.unwrap_or(0));
    let channels = worker_txs
        .iter()
        .enumerate()
        .map(|(i, tx)| fill(format!("to-worker-{i}"), tx.len(), tx.capacity()))
        .chain(std::iter::once(fill("to-output".into(), out_tx.len(), out_tx.capacity())))
        .collect();
    *counters.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = channels;
}

pub(super) struct SourceRun {
    setup: Setup,
    /// When the status was last reported ([`report_status`]).
    reported: Instant,
    /// The topic between hops the source reads, if it does.
    hop_topic: Option<String>,
    /// The current batch, parsed (not yet de-duplicated), in input order.
    parsed: Vec<Result<Payment, DecodeError>>,
    /// Read from a hop's topic: each of `parsed`'s hop and the values the
    /// hops before worked out.
    hops: Vec<HopParts>,
    /// What the events of the batch being built bring from the hops before.
    carried: Carried,
    /// Batches sent so far ([`Shared::seq`]).
    batches: u64,
    /// Messages other than batches sent so far, to any worker
    /// ([`Shared::epoch`]).
    controls: u64,
}

/// Of an event read from a hop's topic: its hop, when the first hop read
/// it (µs), and the values the hops before worked out.
type HopParts = (u8, i64, Vec<(Text, f64)>);

/// Sends `msg`, waiting while the channel is full and letting `source` keep
/// its connection alive meanwhile (see [`Source::stalled`]), and calling
/// `waiting` every poll; false when the receiver is gone.
fn send_or_stall<T>(
    tx: &Sender<T>,
    msg: T,
    source: &mut dyn Source,
    mut waiting: impl FnMut(&mut dyn Source),
) -> Result<bool, PipelineError> {
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
                waiting(source);
            }
        }
    };
    if since.elapsed() >= POLL {
        source.unstalled()?;
    }
    Ok(sent)
}

impl Drop for Setup {
    /// Closes the workers' channels and wakes them, so a worker waiting
    /// parked sees the source gone.
    fn drop(&mut self) {
        self.worker_txs.clear();
        super::exchange::unpark_all(&self.wake);
    }
}

impl SourceRun {
    pub(super) fn new(setup: Setup) -> Self {
        let hop_topic = setup.chain.as_ref().and_then(|(_, topic)| topic.clone());
        Self {
            setup,
            reported: Instant::now(),
            hop_topic,
            parsed: Vec::new(),
            hops: Vec::new(),
            carried: Vec::new(),
            batches: 0,
            controls: 0,
        }
    }

    fn send(&mut self, worker: usize, msg: WorkerMsg) -> Result<(), PipelineError> {
        let (s, last) = (&mut self.setup, (&mut self.reported, self.hop_topic.as_deref()));
        // While the pipeline is full the lag is what matters most: still reported.
        let report =
            |src: &mut dyn Source| report_status(src, &s.worker_txs, &s.out_tx, &s.counters, (&mut *last.0, last.1));
        if !matches!(msg, WorkerMsg::Batch(_)) {
            self.controls += 1;
        }
        if !send_or_stall(&s.worker_txs[worker], msg, &mut *s.source, report)? {
            return Err(PipelineError::Stopped("a worker"));
        }
        // Workers wait parked, not on their channels.
        s.wake[worker].unpark();
        Ok(())
    }

    fn send_all(&mut self, msg: impl Fn() -> WorkerMsg) -> Result<(), PipelineError> {
        for w in 0..self.setup.worker_txs.len() {
            self.send(w, msg())?;
        }
        Ok(())
    }

    fn send_out(&mut self, msg: SinkMsg) -> Result<(), PipelineError> {
        let (s, last) = (&mut self.setup, (&mut self.reported, self.hop_topic.as_deref()));
        let report =
            |src: &mut dyn Source| report_status(src, &s.worker_txs, &s.out_tx, &s.counters, (&mut *last.0, last.1));
        if !send_or_stall(&s.out_tx, msg, &mut *s.source, report)? {
            return Err(PipelineError::Stopped("the sink"));
        }
        Ok(())
    }

    /// The rules and features that decide the next batch (the catalog as
    /// the rule set was published with), the key fields they keep state
    /// per, and the batch's place in the stream.
    fn plan(&mut self, carried: Carried) -> Plan<'_> {
        self.batches += 1;
        let s = &self.setup;
        let rules = s.registry.current();
        let features = rules.features.clone();
        let mut fields: SmallVec<[KeyField; 6]> = SmallVec::new();
        for key in
            s.window_fields.iter().copied().chain(features.iter().filter(|f| f.live).flat_map(|f| f.spec.fields()))
        {
            if !fields.contains(&key) {
                fields.push(key);
            }
        }
        // In key order: an event with one id for two keys (a transfer from
        // an account to itself) updates and reads the party's state as its
        // account, then as its counterparty, however the features are
        // listed — as the hops between daemons do it (`hop::Chain::fields_for`).
        fields.sort_unstable();
        let mut homes: SmallVec<[Option<KeyField>; 2]> = SmallVec::new();
        for r in &rules.rules {
            if !homes.contains(&r.home) {
                homes.push(r.home);
            }
        }
        let chain = s.chain.as_ref().map(|(c, _)| c.clone());
        Plan {
            router: &s.router,
            rules,
            features,
            fields,
            chain,
            carried,
            homes,
            wake: s.wake.clone(),
            seq: self.batches,
            epoch: self.controls,
        }
    }

    pub(super) fn run(&mut self, counters: &Counters, cancel: &CancellationToken) -> Result<(), PipelineError> {
        let mut records = Vec::with_capacity(self.setup.batch_size);
        let mut last_checkpoint = Instant::now();
        // Whether anything was read since the last checkpoint: a quiet
        // input does not write the same checkpoint again and again.
        let mut changed = false;
        loop {
            let s = &mut self.setup;
            let last = (&mut self.reported, self.hop_topic.as_deref());
            report_status(&mut *s.source, &s.worker_txs, &s.out_tx, &s.counters, last);
            self.setup.source.recycle(&mut records);
            let more = self.setup.source.next_batch(&mut records, self.setup.batch_size, cancel)?;
            let on_hop = self.hop_topic.is_some();
            let input_hop = self.setup.chain.as_ref().map_or(0, |(c, _)| c.input_hop());
            if !on_hop {
                // Events read between hops were counted as they came in.
                counters.events_in.fetch_add(records.len() as u64, Ordering::Relaxed);
            }
            let now = now_us();
            let mut items = Vec::with_capacity(records.len());
            let mut rejected = Output::default();
            self.parse(&records);
            let s = &mut self.setup;
            let ids = self.parsed.iter().filter_map(|p| p.as_ref().ok()).map(|p| p.id.as_str());
            s.decoder.dedup_mut().prefetch(ids);
            let mut hops = self.hops.drain(..);
            for (record, parsed) in records.iter().zip(self.parsed.drain(..)) {
                s.decoder.dedup_mut().set_partition(record.partition);
                let (hop, read_us, carried) = match on_hop {
                    true => hops.next().unwrap_or_default(),
                    false => (input_hop, now, Vec::new()),
                };
                let admitted = match (parsed, on_hop) {
                    // Sent again by a hop before that restarted from its
                    // last checkpoint: already taken here.
                    (Ok(p), true) => {
                        if !s.decoder.dedup_mut().insert(&hop::dedup_id(&p.id, hop), p.ts_ms) {
                            tracing::debug!(id = %p.id, hop, "an event sent again between hops: already taken");
                            continue;
                        }
                        Ok(p)
                    }
                    (parsed, _) => parsed.and_then(|p| s.decoder.admit(&p).map(|()| p)),
                };
                match admitted {
                    Ok(payment) => {
                        let ingested_at_us = if read_us > 0 { read_us } else { now };
                        items.push(Item { payment, ingested_at_us, partition: record.partition, hop });
                        if on_hop {
                            self.carried.push(carried);
                        }
                    }
                    Err(e) => rejected.dead_letter(&s.decoder.dead_letter(&e, s.source.name(), record, now)),
                }
            }
            drop(hops);
            if !items.is_empty() {
                let carried = std::mem::take(&mut self.carried);
                let batch = Arc::new(Shared::new(items, self.plan(carried)));
                self.send_all(|| WorkerMsg::Batch(batch.clone()))?;
            }
            if !rejected.is_empty() {
                let from = self.setup.worker_txs.len();
                self.send_out(SinkMsg::Output { from, out: rejected })?;
            }
            self.rebalance()?;
            let done = !more || cancel.is_cancelled();
            // Only a finished input closes every window; on shutdown they
            // stay open in the checkpoint and carry on after the restart.
            if !more && !cancel.is_cancelled() {
                self.send_all(|| WorkerMsg::EndOfInput)?;
            }
            changed |= !records.is_empty();
            if let Some(every) = self.setup.checkpoints
                && (done || (changed && last_checkpoint.elapsed() >= every))
            {
                self.barrier()?;
                last_checkpoint = Instant::now();
                changed = false;
            }
            if done {
                tracing::info!(source = self.setup.source.name(), "source finished");
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
        let decoder = &self.setup.decoder;
        self.parsed.clear();
        self.hops.clear();
        if let Some((chain, Some(topic))) = &self.setup.chain {
            // Decoded, cleaned and tokenised where they came in.
            for r in records {
                match chain.read(&r.line, topic) {
                    Ok(f) => {
                        self.parsed.push(Ok(f.payment));
                        self.hops.push((f.hop, f.read_us, f.values));
                    }
                    Err(why) => {
                        self.parsed.push(Err(DecodeError::Json(why)));
                        self.hops.push((0, 0, Vec::new()));
                    }
                }
            }
            return;
        }
        let parse = |r: &Record| match (r.oversize, r.not_utf8_at) {
            (Some(len), _) => Err(decoder.too_large(len)),
            (None, None) => decoder.parse(&r.line),
            (None, Some(at)) => Err(DecodeError::NotUtf8 { at }),
        };
        match &self.setup.parsers {
            Some(pool) if records.len() >= SHARED_FROM => pool.install(|| {
                records.par_iter().map(parse).collect_into_vec(&mut self.parsed);
            }),
            _ => self.parsed.extend(records.iter().map(parse)),
        }
    }

    /// Passes partition ownership changes on: workers forget what moved
    /// away and load what arrived, before any event of it.
    fn rebalance(&mut self) -> Result<(), PipelineError> {
        let changes = self.setup.source.take_rebalance()?;
        let moved = !changes.is_empty();
        for change in changes {
            match change {
                Rebalance::Revoked(partitions) => {
                    self.setup.decoder.dedup_mut().drop_partitions(&partitions);
                    self.send_all(|| WorkerMsg::Drop(partitions.clone()))?;
                }
                Rebalance::Assigned { partition, mut state } => {
                    // The ids its previous owner saw, so a payment sent
                    // again after the move is still caught.
                    let dedup = std::mem::take(&mut state.dedup);
                    self.setup.decoder.dedup_mut().restore_partition(partition, &dedup);
                    let w = self.setup.router.owner_of_partition(partition);
                    self.send(w, WorkerMsg::Restore(Box::new(state)))?;
                }
            }
        }
        // A marker in the output stream between the work before the change
        // and the work after it: a transaction open across it is aborted.
        if moved && self.setup.checkpoints.is_some() {
            self.barrier_marked(true)?;
        }
        Ok(())
    }

    /// Starts checkpoint `next_id` covering everything sent so far.
    fn barrier(&mut self) -> Result<(), PipelineError> {
        self.barrier_marked(false)
    }

    /// A barrier; `abort` makes it a rebalance marker (see [`Checkpoint::abort`]).
    fn barrier_marked(&mut self, abort: bool) -> Result<(), PipelineError> {
        let id = self.setup.next_id;
        self.setup.next_id += 1;
        self.send_all(|| WorkerMsg::Barrier(id))?;
        let s = &mut self.setup;
        let dedup_cutoff = s.decoder.dedup_mut().cutoff();
        let (dedup_added, dedup_removed) = s.decoder.dedup_mut().take_delta();
        let (epoch, offsets) = s.source.offsets();
        let part = Checkpoint {
            epoch,
            offsets,
            abort,
            id,
            position: s.source.position(),
            source: s.source.name().to_owned(),
            workers: s.worker_txs.len() as u16,
            dedup_added,
            dedup_removed,
            dedup_cutoff,
            ..Checkpoint::default()
        };
        self.send_out(SinkMsg::Source(part))
    }
}
