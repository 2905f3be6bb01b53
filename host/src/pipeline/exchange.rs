//! The exchange: which worker owns which entity, and the batch all workers
//! share while each does its part of it.
//!
//! Every entity — a card, a party (account or counterparty), a device, an
//! IP, a merchant — has exactly one owner among the workers, chosen by the
//! keyed hash of its id ([`Router`]). The owner keeps the entity's look-back
//! features, its windows and the rules' state that belongs to it, and sees
//! every event of it in source order. So every value equals what one
//! worker computing everything would get, whatever the worker count.
//!
//! The source hands each batch to every worker as one [`Shared`] batch,
//! with each event's key hashes and their owners worked out once. A batch
//! goes through three phases on every worker:
//!
//! ```text
//!              worker 0                         worker 1
//!  features    its keys' features, windows      its keys' features, windows
//!              ──────────── all features of the batch are in ────────────
//!  rules       rules whose entity it owns       rules whose entity it owns
//!              ─────────── every outcome of the batch is in ─────────────
//!  decide      records of the events it decides records of the events it decides
//! ```
//!
//! The second wait is only for batches with rules run away from their
//! events' deciders (rules keeping state per a key other than the
//! partition key): otherwise every outcome is already with its decider.
//!
//! Features go into the batch's value table, one cell per event and
//! feature, each written by the one worker that owns the key; outcomes go
//! to the worker deciding the event (the owner of its partition key). A
//! worker waits for the others only between phases of one batch, and does
//! the features of the batches behind it meanwhile; rather than wait for
//! another worker's features of a batch, it does them itself when that
//! worker is not at them ([`super::shard`]). A batch none of whose
//! work crosses workers (every key of each event owned by its decider: all
//! features kept per the partition key) needs no waiting at all.

use crossbeam_utils::sync::Unparker;
use smallvec::SmallVec;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::hop::Chain;
use crate::decide::RuleOutcome;
use crate::event::{KeyField, Payment};
use crate::features::Feature;
use crate::keyed::KeyedHash;
use crate::rules::RuleSet;

/// Which worker owns which key.
#[derive(Debug, Clone)]
pub struct Router {
    workers: usize,
    hasher: KeyedHash,
    /// The key events are decided by (`pipeline.partition-key`); events
    /// without one are decided by their account's owner.
    decide_by: KeyField,
    /// Whether every key belongs to the worker of the input partition of
    /// the event that touched it rather than to its hash's (Kafka: state
    /// follows partitions, which hold one key's events when producers key
    /// by the partition key — the only key state may then be kept per).
    by_partition: bool,
}

impl Router {
    /// Routes over `workers`, knowing keys by their hashes under `hasher`.
    pub fn new(workers: usize, hasher: KeyedHash, decide_by: KeyField, by_partition: bool) -> Self {
        Self { workers: workers.max(1), hasher, decide_by, by_partition }
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The hash keys are known by.
    pub fn hasher(&self) -> &KeyedHash {
        &self.hasher
    }

    /// The worker that owns the key with `hash`.
    pub fn owner_of_hash(&self, hash: u128) -> usize {
        ((hash as u64) % self.workers as u64) as usize
    }

    /// The worker that owns state written from input `partition` (Kafka).
    pub fn owner_of_partition(&self, partition: u32) -> usize {
        partition as usize % self.workers
    }

    /// Whether keys follow input partitions (see [`Router::new`]).
    pub fn by_partition(&self) -> bool {
        self.by_partition
    }

    /// The owner of a key with `hash` touched from input `partition`.
    fn owner(&self, hash: u128, partition: u32) -> usize {
        if self.by_partition { self.owner_of_partition(partition) } else { self.owner_of_hash(hash) }
    }
}

/// One event of a batch.
#[derive(Debug)]
pub struct Item {
    /// The event.
    pub payment: Payment,
    /// When it was read, µs since the epoch.
    pub ingested_at_us: i64,
    /// The input partition it came from (Kafka); 0 otherwise.
    pub partition: u32,
    /// The hop it is at, when its group keeps state per several keys
    /// ([`super::hop`]); 0 otherwise.
    pub hop: u8,
}

/// Per event of a batch at a hop, the feature values the hops before
/// worked out, by name (kept beside the events, which stay as small as
/// they are without hops).
pub type Carried = Vec<Vec<(crate::event::Text, f64)>>;

/// An event's key of one field: its hash and its owner.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The keyed hash.
    pub hash: u128,
    /// The worker that owns it.
    pub owner: u8,
}

/// A batch of events, as every worker shares it.
#[derive(Debug)]
pub struct Shared {
    /// The events, in source order.
    pub items: Vec<Item>,
    /// The rules that decide this batch: every worker takes up this set.
    pub rules: Arc<RuleSet>,
    /// The features computed for it (a catalog snapshot).
    pub features: Arc<Vec<Feature>>,
    /// Key fields some feature or window is kept per.
    pub fields: SmallVec<[KeyField; 6]>,
    /// The hops of a group keeping state per several keys: each event's
    /// hop says the one key field it is at here.
    pub chain: Option<Arc<Chain>>,
    /// With a chain, per event, the key fields it has state kept per here
    /// ([`Chain::fields_for`]).
    hop_fields: Vec<SmallVec<[KeyField; 2]>>,
    /// Where each group of rules runs: with the state of one key field, or
    /// (`None`, rules that keep no state) with the event's decider.
    pub homes: SmallVec<[Option<KeyField>; 2]>,
    /// Per event, per key field (by code): its key, for the fields in use.
    pub keys: Vec<[Option<Key>; 6]>,
    /// Per event, the worker that decides it.
    pub deciders: Vec<u8>,
    /// Whether some event has work on a worker other than its decider.
    pub cross: bool,
    /// Whether some event has rules run on a worker other than its
    /// decider (rules keeping state per a key the decider does not own):
    /// only then do its records wait for every worker's rules.
    pub outcomes_cross: bool,
    /// Feature values, `features.len()` per event, as `f64` bits: each
    /// cell written once, by the owner of its key, before `features_left`
    /// reaches zero.
    values: Box<[AtomicU64]>,
    /// Workers whose features of the batch are yet to be done (by them or
    /// by another worker, [`super::shard`]).
    features_left: AtomicUsize,
    /// Workers yet to finish their rules of the batch.
    rules_left: AtomicUsize,
    /// Per worker, per decider: the outcomes it computed for that
    /// decider's events, as (event, outcomes).
    outcomes: Box<[OnceLock<Vec<Outcomes>>]>,
    /// Wakes a worker waiting for a phase of some batch to complete.
    wake: Arc<[Unparker]>,
    /// The batch's number, from 1, in the order every worker reads them.
    pub seq: u64,
    /// How many messages other than batches (barriers, rebalances,
    /// restores) the source sent before it: a worker's features may be
    /// done by another only within the epoch its owner is in
    /// ([`super::shard`]).
    pub epoch: u64,
}

/// The value table of a batch at a hop: the values the hops before worked
/// out, by name; the others, not worked out yet, empty (NaN) until this
/// hop works out its own.
fn carried(items: &[Item], carried: &Carried, features: &[Feature]) -> Box<[AtomicU64]> {
    debug_assert!(carried.is_empty() || carried.len() == items.len(), "one carried list per event");
    let width = features.len();
    let values: Box<[AtomicU64]> = (0..items.len() * width).map(|_| AtomicU64::new(f64::NAN.to_bits())).collect();
    let index: std::collections::HashMap<&str, usize> =
        features.iter().enumerate().map(|(i, f)| (f.name.as_ref(), i)).collect();
    for (e, brought) in carried.iter().enumerate().take(items.len()) {
        for (name, value) in brought {
            if let Some(&f) = index.get(name.as_str()) {
                values[e * width + f].store(value.to_bits(), Ordering::Relaxed);
            }
        }
    }
    values
}

/// Outcomes computed on one worker for another's events: (event, outcomes).
pub type Outcomes = Vec<(u32, Vec<RuleOutcome>)>;

/// Where a batch's events stand, as the source works them out.
#[derive(Debug)]
pub struct Plan<'a> {
    /// Who owns what.
    pub router: &'a Router,
    /// The rules that decide the batch.
    pub rules: Arc<RuleSet>,
    /// The features computed for it.
    pub features: Arc<Vec<Feature>>,
    /// Key fields some feature or window is kept per.
    pub fields: SmallVec<[KeyField; 6]>,
    /// See [`Shared::chain`].
    pub chain: Option<Arc<Chain>>,
    /// With a chain, what each event brings from the hops before.
    pub carried: Carried,
    /// Where each group of rules runs (see [`Shared::homes`]).
    pub homes: SmallVec<[Option<KeyField>; 2]>,
    /// Workers to wake when a phase completes.
    pub wake: Arc<[Unparker]>,
    /// See [`Shared::seq`].
    pub seq: u64,
    /// See [`Shared::epoch`].
    pub epoch: u64,
}

impl Shared {
    /// The batch of `items`: their keys hashed and routed once, for all
    /// workers.
    pub fn new(items: Vec<Item>, plan: Plan<'_>) -> Self {
        let router = plan.router;
        let workers = router.workers();
        let mut keys = Vec::with_capacity(items.len());
        let mut deciders = Vec::with_capacity(items.len());
        let (mut cross, mut outcomes_cross) = (false, false);
        let all_wanted: SmallVec<[KeyField; 8]> =
            plan.fields.iter().copied().chain(plan.homes.iter().flatten().copied()).collect();
        let mut hop_fields = Vec::new();
        for item in &items {
            let at_hop: SmallVec<[KeyField; 2]>;
            let wanted: &[KeyField] = match &plan.chain {
                // Its hop's keys, whose last also keeps the rules' state.
                Some(chain) => {
                    let mut fields = chain.fields_for(item.hop, &item.payment);
                    hop_fields.push(fields.clone());
                    fields.extend_from_slice(chain.fields_at(item.hop));
                    at_hop = fields;
                    &at_hop
                }
                None => &all_wanted,
            };
            let p = &item.payment;
            let mut row: [Option<Key>; 6] = [None; 6];
            let mut hash_of = |field: KeyField| {
                let slot = &mut row[usize::from(field.code())];
                if slot.is_none()
                    && let Some(id) = p.key(field)
                {
                    let hash = router.hasher.hash128(id.as_bytes());
                    *slot = Some(Key { hash, owner: router.owner(hash, item.partition) as u8 });
                }
                *slot
            };
            let decider = match router.by_partition {
                true => router.owner_of_partition(item.partition),
                false => match hash_of(router.decide_by).or_else(|| hash_of(KeyField::Account)) {
                    Some(k) => usize::from(k.owner),
                    None => 0,
                },
            };
            for &field in wanted {
                if let Some(k) = hash_of(field) {
                    cross |= usize::from(k.owner) != decider;
                }
            }
            // As `home_owner`: a rule's home without the event's key runs
            // with its decider.
            outcomes_cross |= plan
                .homes
                .iter()
                .flatten()
                .any(|&h| row[usize::from(h.code())].is_some_and(|k| usize::from(k.owner) != decider));
            keys.push(row);
            deciders.push(decider as u8);
        }
        let width = plan.features.len();
        let values: Box<[AtomicU64]> = match &plan.chain {
            None => (0..items.len() * width).map(|_| AtomicU64::new(0)).collect(),
            Some(_) => carried(&items, &plan.carried, &plan.features),
        };
        Self {
            items,
            rules: plan.rules,
            features: plan.features,
            fields: plan.fields,
            chain: plan.chain,
            hop_fields,
            homes: plan.homes,
            keys,
            deciders,
            cross,
            outcomes_cross,
            values,
            features_left: AtomicUsize::new(workers),
            rules_left: AtomicUsize::new(workers),
            outcomes: (0..workers).map(|_| OnceLock::new()).collect(),
            wake: plan.wake,
            seq: plan.seq,
            epoch: plan.epoch,
        }
    }

    /// The key fields event `event` has state kept per here: in a chain,
    /// its hop's (none when its daemon only routes it); else every one.
    pub fn fields_of(&self, event: usize) -> &[KeyField] {
        match &self.chain {
            Some(_) => &self.hop_fields[event],
            None => &self.fields,
        }
    }

    /// Whether event `event` goes on to another hop rather than being
    /// decided here.
    pub fn forwards(&self, event: usize) -> bool {
        self.chain.as_ref().is_some_and(|c| !c.is_last(self.items[event].hop))
    }

    /// Features per event.
    pub fn width(&self) -> usize {
        self.features.len()
    }

    /// Sets feature `feature` of event `event`.
    pub fn set_value(&self, event: usize, feature: usize, value: f64) {
        self.values[event * self.width() + feature].store(value.to_bits(), Ordering::Relaxed);
    }

    /// Feature `feature` of event `event`: complete once
    /// [`Shared::features_done`] (or written by this worker).
    pub fn value(&self, event: usize, feature: usize) -> f64 {
        f64::from_bits(self.values[event * self.width() + feature].load(Ordering::Relaxed))
    }

    /// Every feature of event `event`, into `out`.
    pub fn values_of(&self, event: usize, out: &mut Vec<f64>) {
        let w = self.width();
        out.clear();
        out.extend(self.values[event * w..(event + 1) * w].iter().map(|v| f64::from_bits(v.load(Ordering::Relaxed))));
    }

    /// The worker that runs the rules of `home` on event `event`: the owner
    /// of its key of that field, else its decider.
    pub fn home_owner(&self, event: usize, home: Option<KeyField>) -> usize {
        match home.and_then(|h| self.keys[event][usize::from(h.code())]) {
            Some(k) => usize::from(k.owner),
            None => usize::from(self.deciders[event]),
        }
    }

    /// One worker's features of the batch are done.
    pub fn features_finished(&self) {
        if self.features_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wake_all();
        }
    }

    /// Whether every worker's features of the batch are done.
    pub fn features_done(&self) -> bool {
        self.features_left.load(Ordering::Acquire) == 0
    }

    /// Worker `worker` finished its rules of the batch, with `outcomes`
    /// for each decider's events.
    pub fn rules_finished(&self, worker: usize, outcomes: Vec<Outcomes>) {
        // Set once per worker and batch: a second set cannot happen.
        let _ = self.outcomes[worker].set(outcomes);
        if self.rules_left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wake_all();
        }
    }

    /// Whether every worker has finished its rules of the batch.
    pub fn rules_done(&self) -> bool {
        self.rules_left.load(Ordering::Acquire) == 0
    }

    /// The outcomes worker `from` computed for `decider`'s events, once
    /// [`Shared::rules_done`].
    pub fn outcomes_for(&self, from: usize, decider: usize) -> &[(u32, Vec<RuleOutcome>)] {
        self.outcomes[from].get().and_then(|o| o.get(decider)).map_or(&[], Vec::as_slice)
    }

    /// Wakes every worker: the one that completed the phase goes on by
    /// itself, and an unpark costs one atomic swap unless its worker is
    /// parked.
    fn wake_all(&self) {
        unpark_all(&self.wake);
    }
}

/// Unparks every worker of `wake`.
pub(super) fn unpark_all(wake: &[Unparker]) {
    for w in wake {
        w.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Card, Party};
    use vigil_abi::{Channel, Kind};

    fn item(account: &str, card: Option<&str>, counterparty: Option<&str>) -> Item {
        Item {
            payment: Payment {
                id: "t".into(),
                ts_ms: 0,
                channel: Channel::Card,
                kind: Kind::Purchase,
                amount: 1,
                currency: *b"USD",
                account: account.into(),
                card: card.map(|c| Card { token: c.into(), country: None, present: None }),
                merchant: None,
                counterparty: counterparty.map(|c| Party { id: c.into(), mcc: None, country: None }),
                device: None,
                ip: None,
                geo: None,
                attrs: Vec::new(),
            },
            ingested_at_us: 0,
            partition: 0,
            hop: 0,
        }
    }

    fn shared(router: &Router, items: Vec<Item>, fields: &[KeyField]) -> Shared {
        shared_with_rules(router, items, fields, &[])
    }

    fn shared_with_rules(router: &Router, items: Vec<Item>, fields: &[KeyField], homes: &[Option<KeyField>]) -> Shared {
        let parker = crossbeam_utils::sync::Parker::new();
        let plan = Plan {
            router,
            rules: Arc::new(RuleSet::default()),
            features: Arc::new(Vec::new()),
            fields: fields.iter().copied().collect(),
            chain: None,
            carried: Vec::new(),
            homes: homes.iter().copied().collect(),
            wake: Arc::from(vec![parker.unparker().clone()]),
            seq: 1,
            epoch: 0,
        };
        Shared::new(items, plan)
    }

    #[test]
    fn an_account_and_a_counterparty_with_one_id_have_one_owner() {
        let router = Router::new(4, KeyedHash::for_tests(), KeyField::Card, false);
        let fields = [KeyField::Account, KeyField::Counterparty, KeyField::Card];
        let items: Vec<Item> = (0..64)
            .map(|i| item(&format!("party-{i}"), Some(&format!("card-{i}")), Some(&format!("party-{}", i + 1))))
            .collect();
        let b = shared(&router, items, &fields);
        for i in 0..63 {
            let paid = b.keys[i][usize::from(KeyField::Counterparty.code())].expect("counterparty");
            let payer = b.keys[i + 1][usize::from(KeyField::Account.code())].expect("account");
            assert_eq!((paid.hash, paid.owner), (payer.hash, payer.owner), "party-{} is one party", i + 1);
        }
        let deciders: std::collections::HashSet<u8> = b.deciders.iter().copied().collect();
        assert!(deciders.len() > 1, "events spread over the workers");
        assert!(b.cross, "accounts owned apart from their cards' deciders");
    }

    #[test]
    fn at_a_hop_each_event_has_its_hop_s_keys_and_the_values_carried_to_it() {
        use crate::features::Catalog;
        let chain = Chain::plan(KeyField::Card, &[KeyField::Card, KeyField::Counterparty, KeyField::Account], "g")
            .expect("a chain");
        let features: std::collections::BTreeMap<String, String> =
            [("a", "count(account, 1h)"), ("c", "count(card, 1h)"), ("p", "count(counterparty, 1h)")]
                .into_iter()
                .map(|(n, s)| (n.to_owned(), s.to_owned()))
                .collect();
        let features = Catalog::from_config(&features).expect("catalog").snapshot();
        let index = |name: &str| features.iter().position(|f| &*f.name == name).expect("feature");
        let router = Router::new(2, KeyedHash::for_tests(), KeyField::Card, true);
        let mut to_other = item("a1", None, Some("b1"));
        to_other.hop = 1;
        let carried = vec![vec![("c".into(), 4.0), ("gone".into(), 9.0)], Vec::new(), Vec::new()];
        let mut to_self = item("a2", None, Some("a2"));
        to_self.hop = 2;
        let mut decided = item("a3", None, Some("b3"));
        decided.hop = 2;
        let parker = crossbeam_utils::sync::Parker::new();
        let plan = Plan {
            router: &router,
            rules: Arc::new(RuleSet::default()),
            features: features.clone(),
            fields: SmallVec::new(),
            chain: Some(Arc::new(chain)),
            carried,
            homes: SmallVec::from_slice(&[Some(KeyField::Account)]),
            wake: Arc::from(vec![parker.unparker().clone()]),
            seq: 1,
            epoch: 0,
        };
        let b = Shared::new(vec![to_other, to_self, decided], plan);
        assert_eq!(b.fields_of(0), [KeyField::Counterparty]);
        // Kept at the first party hop already, as account then counterparty.
        assert!(b.fields_of(1).is_empty());
        assert_eq!(b.fields_of(2), [KeyField::Account]);
        // The rules' key is routed at the last hop even where its state
        // was kept before.
        assert!(b.keys[1][usize::from(KeyField::Account.code())].is_some());
        assert!(b.forwards(0) && !b.forwards(1) && !b.forwards(2));
        // What earlier hops worked out is there, the rest empty until here.
        assert_eq!(b.value(0, index("c")), 4.0);
        assert!(b.value(0, index("a")).is_nan() && b.value(2, index("c")).is_nan());
        assert!(!b.cross, "every key follows its partition's worker");
    }

    #[test]
    fn a_batch_whose_keys_all_follow_the_decider_does_not_cross() {
        let router = Router::new(4, KeyedHash::for_tests(), KeyField::Card, false);
        let items: Vec<Item> = (0..64).map(|i| item("a", Some(&format!("card-{i}")), None)).collect();
        let b = shared(&router, items, &[KeyField::Card]);
        assert!(!b.cross);
        // An event without a card is decided by its account's owner.
        let b = shared(&router, vec![item("acct-9", None, None)], &[KeyField::Card]);
        let hash = router.hasher().hash128(b"acct-9");
        assert_eq!(usize::from(b.deciders[0]), router.owner_of_hash(hash));
    }

    #[test]
    fn only_rules_kept_per_a_key_the_decider_does_not_own_send_outcomes_across() {
        let router = Router::new(2, KeyedHash::for_tests(), KeyField::Card, false);
        let items = || (0..64).map(|i| item(&format!("acct-{i}"), Some(&format!("card-{i}")), None)).collect();
        let fields = [KeyField::Card, KeyField::Account];
        // Rules keeping no state run with the decider; so do rules keeping
        // state per the card, which the decider owns.
        for homes in [&[None][..], &[Some(KeyField::Card)], &[None, Some(KeyField::Card)]] {
            let b = shared_with_rules(&router, items(), &fields, homes);
            assert!(b.cross, "accounts are owned apart from their cards' deciders");
            assert!(!b.outcomes_cross, "rules of {homes:?} run where their events are decided");
        }
        let b = shared_with_rules(&router, items(), &fields, &[None, Some(KeyField::Account)]);
        assert!(b.outcomes_cross, "rules keeping state per account run with the account's owner");
        // Without the account (here: no event has a counterparty), rules
        // kept per it run with the decider.
        let b = shared_with_rules(&router, items(), &fields, &[Some(KeyField::Counterparty)]);
        assert!(!b.outcomes_cross);
    }
}
