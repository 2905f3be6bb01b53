//! One worker: the three phases of each batch for the keys it owns (see
//! [`super::exchange`]), in batch order, and its part of each checkpoint;
//! and the features of another worker's keys when it would otherwise wait
//! for them ([`super::shard`]).

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use crossbeam_utils::sync::{Parker, Unparker};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vigil_abi::Action;

use super::checkpoint::{DRAIN_PER_KEY, DRAIN_TICK, Part};
use super::exchange::{Outcomes, Shared};
use super::output::{Output, SinkMsg};
use super::shard::{self, Shard};
use super::{Counters, WorkerMsg};
use crate::config::Config;
use crate::decide::{self, Decision, FeatureValues, RuleOutcome};
use crate::rules::{self, Evaluator, RuleRegistry};
use crate::state::Restored;

/// An outcome list's event index with this bit set says the event could
/// not be encoded for the rules there: its decider dead-letters it.
const UNENCODABLE: u32 = 1 << 31;

/// The longest a worker sleeps without being woken: it is woken for every
/// message, for every phase completed and when the source thread ends, so
/// this bounds a wake-up missed, and how late a worker left behind by a
/// start that failed before the source thread began sees its channel
/// closed.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// How long a batch's features wait for another worker's before this one
/// takes them over ([`super::shard`]), while this one has batches of its
/// own queued. Taken over at once, shards changed hands all the time at
/// full load: owners waited on their locks and their keys' states moved
/// between the cores' caches (the suite's row 8 at 4 workers read 0.55 of
/// the card-only row, against 0.81 before; after a millisecond, 0.80
/// against 0.82 beside it). A worker descheduled is gone for longer than
/// that.
const TAKE_OVER_AFTER: Duration = Duration::from_millis(1);

/// The same wait for a worker with nothing queued, which would otherwise
/// only sleep: long enough for an owner woken for the same batch to have
/// started on it. Row 8's paced runs, five-key p99 over four alternated
/// rounds: 11.9–27.7 ms at 1 ms, 5.8–13.8 ms at 200 µs, 5.4–14.4 ms at
/// once; full-load throughput unchanged (0.82 and 0.84 of the card-only
/// row, median of seven 2-worker rounds each).
const TAKE_OVER_IDLE: Duration = Duration::from_micros(200);

/// How long to wait before taking over: see [`TAKE_OVER_AFTER`].
fn take_over_after(idle: bool) -> Duration {
    if idle { TAKE_OVER_IDLE } else { TAKE_OVER_AFTER }
}

/// What a worker is started with.
pub(super) struct Setup<'a> {
    pub index: usize,
    pub workers: usize,
    /// Set by a worker that stops before its input is drained.
    pub halted: Arc<AtomicBool>,
    /// Every worker's unparker.
    pub wake: Arc<[Unparker]>,
    pub config: &'a Config,
    pub counters: Arc<Counters>,
    pub out_tx: Sender<SinkMsg>,
    pub registry: Arc<RuleRegistry>,
    /// Every worker's features and windows, by worker.
    pub shards: Arc<[Mutex<Shard>]>,
    /// The longest time a checkpoint's feature state is spread over.
    pub drain_within: Duration,
}

/// Where a batch is on this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Its features are done here; its rules wait for every worker's.
    Features,
    /// Its rules are done here; its records wait for every worker's rules
    /// when some of its outcomes come from another worker.
    Rules,
}

/// A batch begun here and not yet recorded.
/// At most this many emptied outcome lists are kept for reuse (a few
/// batches' worth).
const SPARE_LISTS: usize = 1 << 14;

struct InFlight {
    batch: Arc<Shared>,
    stage: Stage,
    /// Per event of the batch, the outcomes computed for it here, for the
    /// events this worker decides.
    mine: Vec<Vec<RuleOutcome>>,
    /// Events this worker decides that could not be encoded.
    unencodable: Vec<u32>,
}

pub(super) struct Worker {
    index: usize,
    workers: usize,
    halted: Arc<AtomicBool>,
    wake: Arc<[Unparker]>,
    counters: Arc<Counters>,
    out_tx: Sender<SinkMsg>,
    evaluator: Evaluator,
    /// Which rules a decision record lists (`decisions.record`).
    record_shape: decide::RecordShape,
    /// Every worker's features and windows: this worker's its own to
    /// work through each batch, the others' to take when it would wait.
    shards: Arc<[Mutex<Shard>]>,
    /// The longest time a checkpoint's feature state is spread over.
    drain_within: Duration,
    /// Stamps decisions; anchored to the system clock at each batch.
    clock: decide::WallClock,
    /// The final action at least, while no enforcing rule is live.
    on_empty: Action,
    /// Whether no enforcing rule was live at the last batch.
    without_rules: bool,
    /// Batches begun and not yet recorded, oldest first.
    inflight: VecDeque<InFlight>,
    /// The events of one group of rules, as they take them.
    batch: rules::Batch,
    /// Which batch event each of `batch`'s is.
    in_batch: Vec<usize>,
    /// Each of `batch`'s events' outcomes.
    outcomes: Vec<Vec<RuleOutcome>>,
    /// Emptied outcome lists of decided batches, kept with their capacity
    /// for the next ones: at a hundred rules, growing a new list for every
    /// event cost more than a rule's own work.
    spare: Vec<Vec<RuleOutcome>>,
    /// (name with its rendered JSON key, catalog index) of the features
    /// live rules read; worker-local, so records touch no shared
    /// reference counts.
    used: Vec<(decide::FeatureKey, usize)>,
    used_generation: u64,
    /// Bytes per decision record in the last batch: each batch's buffer
    /// is sized from it, so it is not grown (and copied) as it fills.
    record_bytes: usize,
    /// The checkpoint this worker is serialising its feature state for.
    part: Option<Part>,
    /// The batch (by number) whose features wait for another worker's
    /// here, and since when (or since this worker last tried to take those
    /// over): only the first batch not past its features waits.
    waiting: Option<(u64, Instant)>,
}

impl Worker {
    pub(super) fn new(s: Setup<'_>) -> Self {
        let c = s.config;
        Self {
            halted: s.halted,
            wake: s.wake,
            index: s.index,
            workers: s.workers,
            counters: s.counters,
            out_tx: s.out_tx,
            evaluator: Evaluator::new(s.registry)
                .with_event_budget(c.rules.event_budget())
                .with_state_limit(usize::try_from(c.rules.state_max_bytes.as_u64()).unwrap_or(usize::MAX))
                .with_state_ttl(c.rules.state_ttl)
                .leaving_out_quiet(c.decisions.record == decide::RecordShape::Compact),
            shards: s.shards,
            drain_within: s.drain_within,
            clock: decide::WallClock::new(),
            on_empty: c.rules.on_empty.action(),
            record_shape: c.decisions.record,
            without_rules: false,
            inflight: VecDeque::new(),
            batch: rules::Batch::default(),
            in_batch: Vec::new(),
            outcomes: Vec::new(),
            spare: Vec::new(),
            used: Vec::new(),
            used_generation: u64::MAX,
            record_bytes: 512,
            part: None,
            waiting: None,
        }
    }

    pub(super) fn run(mut self, rx: Receiver<WorkerMsg>, woken: Parker, restore: Restored) {
        // Any way out but the end of the input (the sink gone, a panic)
        // tells the other workers, which may be waiting on this one's part
        // of a batch, to stop too.
        let mut halting = Halting { halted: self.halted.clone(), wake: self.wake.clone(), armed: true };
        self.restore(restore);
        loop {
            if !self.progress(rx.is_empty()) {
                return;
            }
            let msg = match self.next(&rx, &woken) {
                Next::Msg(msg) => msg,
                Next::Again => continue,
                Next::Closed => break,
            };
            if let WorkerMsg::Batch(batch) = msg {
                let mut out = Output::default();
                shard::lock(&self.shards[self.index]).read(self.index, &batch, &mut out);
                if !self.send(out) {
                    return;
                }
                let n = batch.items.len();
                let mine = (0..n).map(|_| self.spare.pop().unwrap_or_default()).collect();
                self.inflight.push_back(InFlight { batch, stage: Stage::Features, mine, unencodable: Vec::new() });
                if !self.drain_part() {
                    return;
                }
                continue;
            }
            // Anything but events waits for every batch before it, and for
            // the checkpoint being taken: barriers keep their order, and
            // keys dropped or restored their state at the barrier.
            if !self.finish_inflight(&woken) || !self.send_part() {
                return;
            }
            let mut out = Output::default();
            match msg {
                WorkerMsg::Batch(_) => unreachable!("handled above"),
                WorkerMsg::EndOfInput => shard::lock(&self.shards[self.index]).windows.close(true, |c| out.closed(&c)),
                WorkerMsg::Drop(partitions) => {
                    let mut mine = shard::lock(&self.shards[self.index]);
                    mine.features.drop_partitions(&partitions);
                    mine.windows.drop_partitions(&partitions);
                    drop(mine);
                    self.evaluator.drop_partitions(&partitions);
                }
                WorkerMsg::Restore(state) => self.restore(*state),
                WorkerMsg::Barrier(id) => {
                    if !self.barrier(id) {
                        return;
                    }
                }
            }
            if !self.send(out) {
                return;
            }
        }
        // The input is drained: what is in flight is finished, and the
        // checkpoint being taken goes out whole.
        if self.finish_inflight(&woken) && self.send_part() {
            halting.armed = false;
        }
    }

    /// Waits for the next message, a wake-up (a phase some batch here
    /// waits for completed), or the time to serialise more of a snapshot.
    ///
    /// The worker parks: the source unparks it after each message it sends
    /// and once it is gone, and the worker completing a phase unparks every
    /// worker. Waiting in the channel's blocking receive, or in a `select`
    /// of the channel and a wake-up channel, spun and yielded the core in a
    /// back-off loop before sleeping, and the `select` took locks on both
    /// channels' waiter lists, on every wait: on 2 cores that held back the
    /// thread being waited for (row 8's paced runs, BENCHMARKS.md).
    fn next(&mut self, rx: &Receiver<WorkerMsg>, woken: &Parker) -> Next {
        match rx.try_recv() {
            Ok(msg) => return Next::Msg(msg),
            // Drained: what is in flight is finished in `run`.
            Err(TryRecvError::Disconnected) => return Next::Closed,
            Err(TryRecvError::Empty) => {}
        }
        match self.part {
            Some(_) => {
                woken.park_timeout(DRAIN_TICK);
                self.drain_part();
            }
            // Bounded, should a wake-up ever be missed.
            None => {
                let look_again = self.waiting.map(|(_, since)| since + take_over_after(true));
                woken.park_timeout(look_again.map_or(IDLE_POLL, |t| t.saturating_duration_since(Instant::now())))
            }
        }
        Next::Again
    }

    /// Takes the batches in flight as far as the other workers let them:
    /// rules in batch order, then records; false when the output or another
    /// worker stopped. `idle`: nothing else is queued for this worker, so
    /// it takes another's features over sooner ([`TAKE_OVER_IDLE`]).
    fn progress(&mut self, idle: bool) -> bool {
        // Another worker stopped: a batch waiting on its part never completes.
        if self.halted.load(Ordering::Acquire) {
            return false;
        }
        let waited = self.waiting.take();
        let mut i = 0;
        while i < self.inflight.len() {
            let f = &self.inflight[i];
            if f.stage == Stage::Features {
                if f.batch.cross && !f.batch.features_done() {
                    let seq = f.batch.seq;
                    let mut since = waited.filter(|&(s, _)| s == seq).map_or_else(Instant::now, |(_, t)| t);
                    if since.elapsed() >= take_over_after(idle) {
                        let mut out = Output::default();
                        self.take_over(i, &mut out);
                        if !self.send(out) {
                            return false;
                        }
                        since = Instant::now();
                    }
                    if !self.inflight[i].batch.features_done() {
                        self.waiting = Some((seq, since));
                        break;
                    }
                }
                let mut f = self.inflight.remove(i).expect("in range");
                let mut out = Output::default();
                self.rules_of(&mut f, &mut out);
                self.inflight.insert(i, f);
                if !self.send(out) {
                    return false;
                }
            }
            i += 1;
        }
        while let Some(f) = self.inflight.front() {
            if f.stage != Stage::Rules || (f.batch.outcomes_cross && !f.batch.rules_done()) {
                break;
            }
            let f = self.inflight.pop_front().expect("front");
            let mut out = Output::default();
            self.record_all(f, &mut out);
            if !self.send(out) {
                return false;
            }
        }
        true
    }

    /// Does the features of batch `inflight[i]` (waiting for them) that
    /// other workers have not done, where nobody holds their shard: first
    /// the batches before it each shard has not been through, in order
    /// ([`super::shard`]). Such batches are still in flight here, since a
    /// batch is recorded only once its features are done everywhere —
    /// unless it needed none from other workers: a shard whose next batch
    /// is not here is not taken.
    fn take_over(&mut self, i: usize, out: &mut Output) {
        for (w, shard) in self.shards.iter().enumerate().filter(|&(w, _)| w != self.index) {
            let Ok(mut shard) = shard.try_lock() else {
                continue;
            };
            for f in self.inflight.range(..=i) {
                if !shard.has_done(&f.batch) && !shard.take(w, &f.batch, out) {
                    break;
                }
            }
        }
    }

    /// Waits for every batch in flight to be recorded; false when the
    /// output or another worker stopped.
    fn finish_inflight(&mut self, woken: &Parker) -> bool {
        loop {
            if !self.progress(true) {
                return false;
            }
            if self.inflight.is_empty() {
                return true;
            }
            // The batches in flight hold every worker's unparker, so this wakes.
            woken.park_timeout(DRAIN_TICK);
            if !self.drain_part() {
                return false;
            }
        }
    }

    fn send(&self, out: Output) -> bool {
        if out.is_empty() {
            return true;
        }
        if self.out_tx.send(SinkMsg::Output { from: self.index, out }).is_err() {
            tracing::error!("the sink stopped; worker exiting");
            return false;
        }
        true
    }

    /// Phase 2: the rules whose entities this worker owns (and, for rules
    /// that keep no state, whose events it decides), a group at a time.
    fn rules_of(&mut self, f: &mut InFlight, out: &mut Output) {
        let b = f.batch.clone();
        let me = self.index;
        if b.chain.is_some() && (0..b.items.len()).all(|i| b.forwards(i)) {
            // A hop that only sends its events on runs no rule (and
            // instantiates none).
            b.rules_finished(me, (0..self.workers).map(|_| Vec::new()).collect());
            f.stage = Stage::Rules;
            return;
        }
        let started = Instant::now();
        self.clock = decide::WallClock::new();
        if self.evaluator.refresh_to(&b.rules) {
            let us = started.elapsed().as_micros() as u64;
            self.counters.rule_swap_max_us.fetch_max(us, Ordering::Relaxed);
            let generation = self.evaluator.generation();
            tracing::debug!(worker = self.index, generation, pause_us = us, "rule set swapped in");
        }
        let mut outgoing: Vec<Outcomes> = (0..self.workers).map(|_| Vec::new()).collect();
        let mut values = Vec::with_capacity(b.width());
        let canaries = self.evaluator.canaries();
        for &home in &b.homes {
            self.batch.clear();
            self.in_batch.clear();
            for (i, item) in b.items.iter().enumerate() {
                if b.home_owner(i, home) != me || b.forwards(i) {
                    continue;
                }
                let p = &item.payment;
                let decider = usize::from(b.deciders[i]);
                if let Err(e) = p.encode(self.batch.buffer()) {
                    // Validation limits keep events far below the layout's
                    // limits, so this is a bug; the event still is
                    // accounted for, by its decider.
                    tracing::error!(id = %p.id, error = %e, "cannot encode event for the rules");
                    if decider == me {
                        if !f.unencodable.contains(&(i as u32)) {
                            f.unencodable.push(i as u32);
                            out.encode_failure(&p.id, &e.to_string());
                        }
                    } else {
                        outgoing[decider].push((i as u32 | UNENCODABLE, Vec::new()));
                    }
                    continue;
                }
                if let Some(field) = home
                    && let Some(id) = p.key(field)
                {
                    self.batch.set_entity(field.space(), id);
                }
                if canaries {
                    self.batch.set_canary_ids(p);
                }
                b.values_of(i, &mut values);
                self.batch.push(item.partition, item.payment.ts_ms, &values);
                self.in_batch.push(i);
            }
            if self.batch.is_empty() {
                continue;
            }
            self.evaluator.evaluate_home(&self.batch, Some(home), &mut self.outcomes);
            for (k, &i) in self.in_batch.iter().enumerate() {
                let decider = usize::from(b.deciders[i]);
                match decider == me {
                    // Moved, not copied; the list given back in exchange
                    // has room for the next batch's outcomes.
                    true if f.mine[i].is_empty() => std::mem::swap(&mut f.mine[i], &mut self.outcomes[k]),
                    true => f.mine[i].append(&mut self.outcomes[k]),
                    false => outgoing[decider].push((i as u32, std::mem::take(&mut self.outcomes[k]))),
                }
            }
        }
        b.rules_finished(me, outgoing);
        f.stage = Stage::Rules;
    }

    /// Phase 3: the decision records of the events this worker decides.
    fn record_all(&mut self, mut f: InFlight, out: &mut Output) {
        let b = f.batch.clone();
        let me = self.index;
        if b.outcomes_cross {
            for from in (0..self.workers).filter(|&w| w != me) {
                for (i, outcomes) in b.outcomes_for(from, me) {
                    if i & UNENCODABLE != 0 {
                        let i = i & !UNENCODABLE;
                        if !f.unencodable.contains(&i) {
                            f.unencodable.push(i);
                            out.encode_failure(&b.items[i as usize].payment.id, "the event does not fit the rule ABI");
                        }
                        continue;
                    }
                    f.mine[*i as usize].extend(outcomes.iter().cloned());
                }
            }
        }
        if b.chain.is_some() {
            self.forward(&b, out);
            if (0..b.items.len()).all(|i| b.forwards(i)) {
                // Decided at a later hop, with the rule set there.
                self.recycle(f.mine);
                return;
            }
        }
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
        if self.evaluator.generation() != self.used_generation {
            out.rule_sets.push((b.rules.id.clone(), b.rules.record.clone()));
            self.used = self
                .evaluator
                .used_features()
                .into_iter()
                .filter_map(|i| b.features.get(i).map(|f| (decide::FeatureKey::new(&f.name), i)))
                .collect();
            self.used_generation = self.evaluator.generation();
        }
        let mine = b.deciders.iter().filter(|&&d| usize::from(d) == me).count();
        out.decisions.reserve(mine, self.record_bytes + self.record_bytes / 8);
        let several_homes = b.homes.len() > 1;
        let mut record_features = Vec::with_capacity(self.used.len());
        // Intake to decision, added to the shared histogram once per batch.
        let mut latency = self.counters.decision_latency.local();
        for (i, outcomes) in f.mine.iter_mut().enumerate() {
            if usize::from(b.deciders[i]) != me || f.unencodable.contains(&(i as u32)) || b.forwards(i) {
                continue;
            }
            if several_homes {
                // Outcomes came a group of rules at a time: back in rule order.
                outcomes.sort_by(|a, c| a.label.rule.cmp(&c.label.rule));
            }
            self.record(&b, i, &mut record_features, outcomes, &mut latency, out);
        }
        if !out.decisions.is_empty() {
            self.record_bytes = out.decisions.lines().len() / out.decisions.len();
        }
        self.counters.decision_latency.merge(&mut latency);
        self.recycle(f.mine);
    }

    /// Keeps emptied outcome lists for the next batches.
    fn recycle(&mut self, lists: Vec<Vec<RuleOutcome>>) {
        for mut list in lists {
            if self.spare.len() >= SPARE_LISTS {
                break;
            }
            list.clear();
            self.spare.push(list);
        }
    }

    /// Sends the events this worker decides that go on to another hop
    /// there, keyed by that hop's key, with the values worked out so far.
    fn forward(&mut self, b: &Shared, out: &mut Output) {
        let Some(chain) = &b.chain else { return };
        let me = self.index;
        let mut scratch = Vec::new();
        for (i, item) in b.items.iter().enumerate() {
            if usize::from(b.deciders[i]) != me || !b.forwards(i) {
                continue;
            }
            let Some(next) = chain.next(item.hop) else { continue };
            let p = &item.payment;
            // An event without the next hop's key has no history for it,
            // and lands where its id does.
            let key = chain.fields_at(next).first().and_then(|&f| p.key(f)).unwrap_or(&p.id);
            let values = b
                .features
                .iter()
                .enumerate()
                .map(|(f, feature)| (&*feature.name, b.value(i, f)))
                .filter(|(_, v)| !v.is_nan());
            let to = out.forward_to(next);
            if let Err(e) = chain.write(to, key, next, item.ingested_at_us, p, values, &mut scratch) {
                // As for the rules: validation limits make this a bug.
                tracing::error!(id = %p.id, error = %e, "cannot encode event for the next hop");
                out.encode_failure(&p.id, &e.to_string());
            }
        }
    }

    /// Combines an event's rule outcomes into its decision and writes the
    /// audit record.
    fn record<'u>(
        &'u self,
        b: &Shared,
        i: usize,
        record_features: &mut Vec<(&'u decide::FeatureKey, f64)>,
        outcomes: &[RuleOutcome],
        latency: &mut crate::stats::Local,
        out: &mut Output,
    ) {
        let item = &b.items[i];
        let p = &item.payment;
        record_features.clear();
        record_features.extend(self.used.iter().map(|(key, f)| (key, b.value(i, *f))));
        let (mut action, score, mut reasons) = decide::combine(outcomes);
        if self.without_rules && !outcomes.iter().any(|o| o.in_canary == Some(true) && o.error.is_none()) {
            action = action.max(self.on_empty);
            reasons.push(decide::NO_ENFORCING_RULE);
        }
        let decided_at_us = self.clock.now_us();
        out.blocked += u64::from(action == Action::Block);
        latency.observe(decided_at_us.saturating_sub(item.ingested_at_us).max(0) as u64 * 1000);
        let record = Decision {
            schema: decide::SCHEMA,
            id: &p.id,
            action,
            score,
            reasons,
            rule_set: &b.rules.id,
            rules: decide::Listed { outcomes, shape: self.record_shape, decided: action },
            features: FeatureValues(record_features),
            event_ts_ms: p.ts_ms,
            ingested_at_us: item.ingested_at_us,
            decided_at_us,
        };
        out.decisions.push_with(Some(&p.id), |buf| record.write_json_line(buf));
        if action != Action::Allow
            && let Some(decided) = out.decisions.last()
        {
            out.alerts.push_record(decided);
        }
    }

    /// Checkpoint `id`'s barrier: windows and rules' state are small and
    /// taken now; the feature state is serialised from here on.
    fn barrier(&mut self, id: u64) -> bool {
        let worker = self.index as u16;
        self.evaluator.age_state();
        let mut mine = shard::lock(&self.shards[self.index]);
        mine.features.begin_snapshot(worker);
        let keys = mine.features.snapshot_remaining();
        self.part = Some(Part {
            id,
            started: Instant::now(),
            keys,
            within: DRAIN_PER_KEY.saturating_mul(u32::try_from(keys).unwrap_or(u32::MAX)).min(self.drain_within),
            windows: mine.windows.take_delta(worker),
            newest_ms: mine.windows.newest(),
            rule_state: self.evaluator.take_state_delta(worker),
        });
        drop(mine);
        if self.out_tx.send(SinkMsg::Cut { from: self.index, id }).is_err() {
            tracing::error!("the sink stopped; worker exiting");
            return false;
        }
        self.drain_part()
    }

    /// Serialises the keys of the checkpoint being taken that are due by
    /// now, and sends the part once none is left; false when the sink
    /// stopped.
    ///
    /// The keys are spread evenly over [`DRAIN_PER_KEY`] each, at most
    /// half the checkpoint interval (so a checkpoint is durable well before
    /// the next barrier): taken as fast as the worker could (whenever it
    /// was idle, and a key an event) the snapshot took tens of milliseconds
    /// of a core per worker right after each barrier, which with the
    /// source, the sink and the other worker on 2 cores queued events (the
    /// suite's row 4 p99).
    fn drain_part(&mut self) -> bool {
        let Some(p) = self.part.as_ref() else {
            return true;
        };
        let share = if p.within.is_zero() {
            1.0
        } else {
            (p.started.elapsed().as_secs_f64() / p.within.as_secs_f64()).min(1.0)
        };
        let due = (p.keys as f64 * share).ceil() as usize;
        let mut mine = shard::lock(&self.shards[self.index]);
        let done = p.keys.saturating_sub(mine.features.snapshot_remaining());
        if !mine.features.snapshot_step(due.saturating_sub(done)) {
            return true;
        }
        drop(mine);
        self.send_part()
    }

    /// Finishes the feature snapshot of the checkpoint being taken, if one
    /// is, and sends the worker's part of it; false when the sink stopped.
    fn send_part(&mut self) -> bool {
        let Some(Part { id, windows, newest_ms, rule_state, .. }) = self.part.take() else {
            return true;
        };
        let delta = shard::lock(&self.shards[self.index]).features.finish_snapshot_parts();
        if self.out_tx.send(SinkMsg::Worker { id, delta, windows, newest_ms, rule_state }).is_err() {
            tracing::error!("the sink stopped; worker exiting");
            return false;
        }
        true
    }

    /// Loads restored state this worker owns: its share of a checkpoint
    /// at startup, or an input partition's state read back from the
    /// changelog (Kafka) when the partition is assigned.
    fn restore(&mut self, restored: Restored) {
        let mut mine = shard::lock(&self.shards[self.index]);
        let Shard { features, windows, .. } = &mut *mine;
        if let Some(p) = restored.partition {
            features.set_partition(p);
            self.evaluator.set_partition(p);
        }
        // The app checked every record before starting; a record that no
        // longer fits is dropped with a log line rather than stopping work.
        for f in restored.features {
            if let Err(e) = features.restore(f.space, f.hash, &f.state, false) {
                tracing::error!(
                    worker = self.index,
                    partition = ?restored.partition,
                    error = %crate::error::chain(&e),
                    "cannot restore a key's feature state"
                );
            }
        }
        for r in restored.rule_state {
            self.evaluator.restore_state(&r.rule, &r.key, &r.value, false);
        }
        if let Some(t) = restored.watermark {
            windows.observe(t);
            features.observe(t);
        }
        for w in restored.windows {
            if let Err(e) = windows.restore_key(&w.window, &w.key, w.partition, &w.windows, false) {
                tracing::error!(
                    worker = self.index,
                    partition = ?restored.partition,
                    error = %crate::error::chain(&e),
                    "cannot restore a key's windows"
                );
            }
        }
    }
}

/// Stops every worker when dropped armed: see [`Worker::run`].
struct Halting {
    halted: Arc<AtomicBool>,
    wake: Arc<[Unparker]>,
    armed: bool,
}

impl Drop for Halting {
    fn drop(&mut self) {
        if self.armed {
            self.halted.store(true, Ordering::Release);
            super::exchange::unpark_all(&self.wake);
        }
    }
}

/// What a worker waits for next.
enum Next {
    Msg(WorkerMsg),
    /// Woken, or time to serialise more of a snapshot: look again.
    Again,
    /// The source is gone.
    Closed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Card, KeyField, Payment};
    use crate::features::{Catalog, FeatureEngine};
    use crate::keyed::KeyedHash;
    use crate::pipeline::exchange::{Item, Plan, Router};
    use crate::window::Windows;
    use crossbeam_channel::bounded;
    use std::collections::BTreeMap;
    use vigil_abi::{Channel, Kind};

    struct Two {
        router: Router,
        features: Arc<Vec<crate::features::Feature>>,
        rules: Arc<crate::rules::RuleSet>,
        wake: Arc<[Unparker]>,
        txs: Vec<crossbeam_channel::Sender<WorkerMsg>>,
        out_rx: Receiver<SinkMsg>,
        handles: Vec<std::thread::JoinHandle<()>>,
        /// Worker 1, until it is started.
        idle: Option<(Worker, Receiver<WorkerMsg>, Parker)>,
    }

    /// Two workers deciding by the card, with `count(account, 1h)`; only
    /// worker 0 runs until [`Two::start_second`].
    fn two() -> Two {
        let config = Config::parse("", std::path::Path::new("t.toml")).expect("config");
        let map = BTreeMap::from([("n".to_owned(), "count(account, 1h)".to_owned())]);
        let catalog = Arc::new(Catalog::from_config(&map).expect("catalog"));
        let router = Router::new(2, KeyedHash::for_tests(), KeyField::Card, false);
        let registry = Arc::new(RuleRegistry::new(
            rules::sandbox::Sandbox::from_config(&config).expect("sandbox"),
            std::env::temp_dir(),
            BTreeMap::new(),
            config.rules.on_failure,
            1,
            Arc::new(rules::lists::Lists::default()),
            catalog.clone(),
        ));
        let shards: Arc<[Mutex<Shard>]> = (0..2)
            .map(|_| {
                let features = FeatureEngine::new(catalog.clone(), router.hasher().clone());
                Mutex::new(Shard::new(features, Windows::new(Vec::new(), &config.watermark)))
            })
            .collect();
        let parkers: Vec<Parker> = (0..2).map(|_| Parker::new()).collect();
        let wake: Arc<[Unparker]> = parkers.iter().map(|p| p.unparker().clone()).collect();
        let (out_tx, out_rx) = bounded(1024);
        let halted = Arc::new(AtomicBool::new(false));
        let (mut txs, mut workers) = (Vec::new(), Vec::new());
        for (index, parker) in parkers.into_iter().enumerate() {
            let (tx, rx) = bounded(64);
            txs.push(tx);
            let worker = Worker::new(Setup {
                index,
                workers: 2,
                halted: halted.clone(),
                wake: wake.clone(),
                config: &config,
                counters: Arc::new(Counters::default()),
                out_tx: out_tx.clone(),
                registry: registry.clone(),
                shards: shards.clone(),
                drain_within: Duration::from_millis(1),
            });
            workers.push((worker, rx, parker));
        }
        let idle = workers.pop();
        let (first, rx, parker) = workers.pop().expect("worker 0");
        let handles = vec![std::thread::spawn(move || first.run(rx, parker, Restored::default()))];
        let features = Arc::new(catalog.snapshot().to_vec());
        Two { router, features, rules: registry.current(), wake, txs, out_rx, handles, idle }
    }

    impl Two {
        /// An id for `field` that worker `owner` owns.
        fn owned(&self, prefix: &str, owner: usize) -> String {
            (0..)
                .map(|i| format!("{prefix}-{i}"))
                .find(|id| self.router.owner_of_hash(self.router.hasher().hash128(id.as_bytes())) == owner)
                .expect("some id")
        }

        /// Batch `seq` of epoch `epoch`: one payment of `account` with `card`.
        fn batch(&self, seq: u64, epoch: u64, account: &str, card: &str) -> Arc<Shared> {
            let payment = Payment {
                id: format!("t{seq}").as_str().into(),
                ts_ms: 1_000 * seq as i64,
                channel: Channel::Card,
                kind: Kind::Purchase,
                amount: 1,
                currency: *b"USD",
                account: account.into(),
                card: Some(Card { token: card.into(), country: None, present: None }),
                merchant: None,
                counterparty: None,
                device: None,
                ip: None,
                geo: None,
                attrs: Vec::new(),
            };
            let plan = Plan {
                router: &self.router,
                rules: self.rules.clone(),
                features: self.features.clone(),
                fields: [KeyField::Account].into_iter().collect(),
                chain: None,
                carried: Vec::new(),
                homes: smallvec::SmallVec::new(),
                wake: self.wake.clone(),
                seq,
                epoch,
            };
            Arc::new(Shared::new(vec![Item { payment, ingested_at_us: 0, partition: 0, hop: 0 }], plan))
        }

        fn send(&self, worker: usize, msg: WorkerMsg) {
            self.txs[worker].send(msg).expect("worker running");
            self.wake[worker].unpark();
        }

        /// The ids of the next `n` decisions, waiting up to `within` for each.
        fn decided(&self, n: usize, within: Duration) -> Vec<String> {
            let mut ids = Vec::new();
            while ids.len() < n {
                match self.out_rx.recv_timeout(within) {
                    Ok(SinkMsg::Output { out, .. }) => {
                        for line in out.decisions.lines().split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                            let d: serde_json::Value = serde_json::from_slice(line).expect("record");
                            ids.push(d["id"].as_str().expect("id").to_owned());
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            ids
        }

        fn start_second(&mut self) {
            let (second, rx, parker) = self.idle.take().expect("not started");
            self.handles.push(std::thread::spawn(move || second.run(rx, parker, Restored::default())));
        }
    }

    /// A worker waiting for another's features does them itself, in
    /// order, while that one is behind — but not before that one started
    /// (and loaded its state), nor past a barrier it has not taken; and
    /// the other then skips what was done for it.
    #[test]
    fn a_worker_does_the_features_of_one_behind_it_between_its_start_and_barrier() {
        let mut two = two();
        // Decided by worker 0 (the card's owner); the account's history
        // is worker 1's.
        let account = two.owned("acct", 1);
        let cards: Vec<String> = (0..4).map(|i| two.owned(&format!("card{i}"), 0)).collect();
        let batches: Vec<_> = (0..3).map(|i| two.batch(i + 1, 0, &account, &cards[i as usize])).collect();
        two.send(0, WorkerMsg::Batch(batches[0].clone()));
        assert!(two.decided(1, Duration::from_millis(300)).is_empty(), "not taken before worker 1 started");

        two.start_second();
        two.send(1, WorkerMsg::Batch(batches[0].clone()));
        assert_eq!(two.decided(1, Duration::from_secs(20)), ["t1"]);
        // Worker 1 is not sent the next two: worker 0 does its part.
        for b in &batches[1..] {
            two.send(0, WorkerMsg::Batch(b.clone()));
        }
        assert_eq!(two.decided(2, Duration::from_secs(20)), ["t2", "t3"], "decided without worker 1");
        let counts: Vec<f64> = batches.iter().map(|b| b.value(0, 0)).collect();
        assert_eq!(counts, [1.0, 2.0, 3.0], "the account's whole history, in order");

        // After a barrier worker 1 has not taken, its share waits for it.
        let after = two.batch(4, 1, &account, &cards[3]);
        two.send(0, WorkerMsg::Barrier(1));
        two.send(0, WorkerMsg::Batch(after.clone()));
        assert!(two.decided(1, Duration::from_millis(300)).is_empty(), "not taken past worker 1's barrier");
        assert!(!after.features_done());

        for b in &batches[1..] {
            two.send(1, WorkerMsg::Batch(b.clone()));
        }
        two.send(1, WorkerMsg::Barrier(1));
        two.send(1, WorkerMsg::Batch(after.clone()));
        assert_eq!(two.decided(1, Duration::from_secs(20)), ["t4"]);
        // Counted once: worker 1 skipped the batches done for it.
        assert_eq!(after.value(0, 0), 4.0);
        let Two { txs, handles, .. } = two;
        drop(txs);
        for h in handles {
            h.join().expect("worker");
        }
    }
}
