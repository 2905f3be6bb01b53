//! Features: per-key look-back aggregates in event time, computed once per
//! event and handed to the rules that declared them.
//!
//! A feature is declared in `[features]` (`card-count-10m = "count(card, 10m)"`)
//! or written inline in a rule's manifest (`features("count(card, 10m)")`).
//! The [`Catalog`] is shared; an inline feature no live rule reads any more
//! is retired from it — no longer computed, its series freed — and revived
//! (with no history) if a rule names it again. Each worker's [`FeatureEngine`]
//! keeps the state of the keys it owns — no locks per event — and every key
//! has exactly one owner (see `pipeline::exchange`), so a feature of any key
//! sees all of that key's events. Keys are known by their 128-bit keyed
//! hash, per key space: an account and a counterparty with the same id are
//! one party whose state holds both the money it sent (features kept per
//! `account`) and the money it received (per `counterparty`). Features
//! with the same key, window and filter share one series (see
//! [`lookback`]: exact windows, each event kept while a window needs it). Keys idle for
//! longer than their longest window are dropped, so memory follows the
//! active keys.
//!
//! A feature is computed for each event including that event. A feature
//! whose key the event lacks (e.g. no card) reads 0, or NaN for min/max/avg.

pub mod currency;
pub mod filter;
mod keys;
pub mod lookback;
pub mod sliding;
pub mod spec;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::config::ConfigError;
use crate::event::{Payment, Space};
use crate::keyed::KeyedHash;
use keys::{KeyTable, Slot};
use lookback::{DistinctSeries, NumSeries};
pub use spec::{Agg, DistinctField, FeatureSpec, KeyField, SpecError};

/// The most features the catalog holds live, configured and inline
/// together: each is computed for every event, so rules cannot add them
/// without end.
pub const MAX_FEATURES: usize = 512;

/// The most entries the catalog holds, live and retired: a retired entry
/// keeps its index (a name and a spec) until vigil restarts.
pub const MAX_CATALOG: usize = 4 * MAX_FEATURES;

/// A named feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// Its name: the config key, or the spec text when declared inline.
    pub name: Arc<str>,
    /// What it computes.
    pub spec: FeatureSpec,
    /// Computed: configured, or read by a live rule. A retired feature
    /// keeps its index, and no state.
    pub live: bool,
}

/// Every feature known to the daemon, in the order they were added.
#[derive(Debug, Default)]
pub struct Catalog {
    added: Mutex<Vec<Feature>>,
    snapshot: ArcSwap<Vec<Feature>>,
    /// How many come from `[features]`: those are never retired.
    configured: std::sync::atomic::AtomicUsize,
    /// `[currencies]`, for features over `base_amount`.
    rates: Option<Arc<currency::Rates>>,
}

impl Catalog {
    /// The features of `[features]`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `features.NAME` and the problem.
    pub fn from_config(features: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        Self::with_currencies(features, None)
    }

    /// The features of `[features]`, with `[currencies]` for those over
    /// `base_amount`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `features.NAME` or `currencies` and
    /// the problem.
    pub fn with_currencies(
        features: &BTreeMap<String, String>,
        currencies: Option<&crate::config::CurrencyConfig>,
    ) -> Result<Self, ConfigError> {
        let rates = currencies.map(currency::Rates::from_config).transpose()?.map(Arc::new);
        let catalog = Catalog { rates, ..Catalog::default() };
        for (name, text) in features {
            let invalid = |e: &dyn std::fmt::Display| ConfigError::invalid(format!("features.{name}"), e.to_string());
            let spec = FeatureSpec::parse(text).map_err(|e| invalid(&e))?;
            let spec = catalog.convertible(spec).map_err(|e| invalid(&e))?;
            catalog.push(Feature { name: name.as_str().into(), spec, live: true });
        }
        catalog.configured.store(features.len(), std::sync::atomic::Ordering::Relaxed);
        Ok(catalog)
    }

    /// `spec`, if what it reads can be computed: `base_amount` needs
    /// `[currencies]`.
    fn convertible(&self, spec: FeatureSpec) -> Result<FeatureSpec, FeatureError> {
        match spec.base && self.rates.is_none() {
            true => Err(FeatureError::NeedsCurrencies { spec: spec.to_string() }),
            false => Ok(spec),
        }
    }

    /// The currency table, if `[currencies]` is configured.
    pub fn rates(&self) -> Option<&Arc<currency::Rates>> {
        self.rates.as_ref()
    }

    fn push(&self, feature: Feature) -> usize {
        let mut added = self.lock();
        added.push(feature);
        self.snapshot.store(Arc::new(added.clone()));
        added.len() - 1
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Feature>> {
        self.added.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The index of the feature a rule names: a configured name, or a spec
    /// such as `count(card, 10m)` (added on first use; it then starts with
    /// no history).
    ///
    /// # Errors
    /// [`FeatureError`] when the name is neither, or the catalog is full.
    pub fn resolve(&self, name: &str) -> Result<usize, FeatureError> {
        let current = self.snapshot();
        if let Some(i) = current.iter().position(|f| &*f.name == name && f.live) {
            return Ok(i);
        }
        let spec =
            FeatureSpec::parse(name).map_err(|source| FeatureError::Unknown { name: name.to_owned(), source })?;
        let spec = self.convertible(spec)?;
        // Re-check under the lock: another loader may have added it.
        let mut added = self.lock();
        let held = added.iter().position(|f| f.spec == spec && &*f.name == name);
        if let Some(i) = held
            && added[i].live
        {
            return Ok(i);
        }
        let live = added.iter().filter(|f| f.live).count();
        if live >= MAX_FEATURES {
            return Err(FeatureError::TooMany { name: name.to_owned(), nth: live + 1 });
        }
        if let Some(i) = held {
            // Retired: revived at its index, with no history.
            added[i].live = true;
            self.snapshot.store(Arc::new(added.clone()));
            return Ok(i);
        }
        if added.len() >= MAX_CATALOG {
            return Err(FeatureError::CatalogFull { name: name.to_owned() });
        }
        drop(added);
        Ok(self.push(Feature { name: name.into(), spec, live: true }))
    }

    /// Retires the inline features no rule reads (`used(index)` false) and
    /// revives those read again, returning the catalog as it then is.
    /// Configured features stay live.
    pub fn retain_used(&self, used: impl Fn(usize) -> bool) -> Arc<Vec<Feature>> {
        let mut added = self.lock();
        let configured = self.configured.load(std::sync::atomic::Ordering::Relaxed);
        let mut changed = false;
        for (i, f) in added.iter_mut().enumerate().skip(configured) {
            let live = used(i);
            changed |= f.live != live;
            f.live = live;
        }
        if changed {
            self.snapshot.store(Arc::new(added.clone()));
        }
        self.snapshot()
    }

    /// The features now.
    pub fn snapshot(&self) -> Arc<Vec<Feature>> {
        self.snapshot.load_full()
    }
}

/// Where a feature's value comes from in a key's state.
#[derive(Debug, Clone, Copy)]
enum Source {
    Num {
        series: usize,
    },
    Distinct {
        series: usize,
    },
    /// A recency series, in the distinct slots (see [`lookback::Recency`]).
    Recent {
        series: usize,
    },
    /// A party's inflows: two numeric series added up, what it received
    /// as counterparty and its cash deposits as account.
    Flow {
        received: usize,
        deposited: usize,
    },
}

impl Source {
    /// The series it reads: (numeric, index).
    fn series(self) -> smallvec::SmallVec<[(bool, usize); 2]> {
        match self {
            Source::Num { series } => smallvec::smallvec![(true, series)],
            Source::Distinct { series } | Source::Recent { series } => smallvec::smallvec![(false, series)],
            Source::Flow { received, deposited } => smallvec::smallvec![(true, received), (true, deposited)],
        }
    }
}

/// The numeric series of `space` for events of `key` passing `filter`,
/// made if new (or revived); `id` tells it from others in stored state.
fn num_series(
    space: &mut SpacePlan,
    key: KeyField,
    s: &FeatureSpec,
    filter: Option<Arc<filter::Filter>>,
    id: u64,
) -> usize {
    let series = series_for(&mut space.num, (key, s.bucket_ms(), s.buckets(), id), |x| &mut x.2);
    space.num_filters.resize(space.num.len(), None);
    space.num_filters[series] = filter;
    space.num_base.resize(space.num.len(), false);
    space.num_base[series] = s.base;
    series
}

#[derive(Debug, Clone, Copy)]
struct Planned {
    agg: Agg,
    key: KeyField,
    source: Source,
    bucket_ms: i64,
    span: i64,
    window_ms: i64,
    /// Computed; false once retired from the catalog.
    live: bool,
}

/// What an entity keeps: the series of every feature of its space, those
/// kept per each of its key fields (an account's money out, as a
/// counterparty its money in).
#[derive(Debug, Default)]
struct KeyState {
    newest_ms: i64,
    /// The input partition of the event that last touched the key: with
    /// Kafka, the partition whose changelog carries this state.
    partition: u32,
    /// The checkpoint epoch the key last changed in, [`CLEAN`] once a
    /// checkpoint has it: the key is listed in its space's `dirty` while
    /// this is the engine's `epoch`, and in `frozen` (changed before the
    /// checkpoint being taken, not yet serialised into it) while this is
    /// the engine's `frozen`.
    changed: u8,
    /// Whether the key's state was handed to a checkpoint (or restored
    /// from one): only then may a stored state need deleting when it
    /// expires.
    stored: bool,
    // Inline for the usual handful of series: a key is one allocation-free
    // map entry until it holds several buckets.
    num: smallvec::SmallVec<[NumSeries; 2]>,
    distinct: smallvec::SmallVec<[DistinctSeries; 1]>,
}

/// One key space's features and the states of its keys.
#[derive(Debug, Default)]
struct SpacePlan {
    /// (key field it follows, bucket width, span, filter id) of each
    /// numeric series. A series no live feature reads has its span
    /// negated: it is not kept (each key's is empty) until a feature needs
    /// it again.
    num: Vec<(KeyField, i64, i64, u64)>,
    /// (key field, distinct field, bucket width, span, filter id) of each
    /// distinct series, likewise.
    distinct: Vec<(KeyField, DistinctField, i64, i64, u64)>,
    /// The filter of each numeric series, if it has one: only events that
    /// pass are added to it.
    num_filters: Vec<Option<Arc<filter::Filter>>>,
    /// The filter of each distinct series.
    distinct_filters: Vec<Option<Arc<filter::Filter>>>,
    /// Whether each numeric series adds amounts converted to the base
    /// currency.
    num_base: Vec<bool>,
    /// The longest window, for expiry.
    longest_ms: i64,
    /// Per key field (by code): indices (in catalog order) of the features
    /// kept per that field.
    features: [Vec<usize>; 6],
    states: KeyTable<KeyState>,
    /// Slots of the keys changed since the last checkpoint, each listed once
    /// while its state is marked with the engine's epoch: 4 bytes a key
    /// instead of a hash-set entry. A slot freed since (key expired or
    /// moved) reads as a clean state and is skipped; one reused by a new
    /// key is listed again and taken once.
    dirty: Vec<Slot>,
    /// Slots of the keys the checkpoint being taken still has to serialise:
    /// the `dirty` list at its barrier. Same rules as `dirty`.
    frozen: Vec<Slot>,
}

/// The key spaces features are kept in, by [`Space::code`]: finding one is
/// an index rather than a search, and it is found several times an event.
#[derive(Debug, Default)]
struct Spaces([Option<SpacePlan>; Space::ALL.len()]);

impl Spaces {
    fn get(&self, space: &Space) -> Option<&SpacePlan> {
        self.0[usize::from(space.code())].as_ref()
    }

    fn get_mut(&mut self, space: &Space) -> Option<&mut SpacePlan> {
        self.0[usize::from(space.code())].as_mut()
    }

    /// `space`'s plan, an empty one if it has none yet.
    fn or_default(&mut self, space: Space) -> &mut SpacePlan {
        self.0[usize::from(space.code())].get_or_insert_with(SpacePlan::default)
    }

    /// The spaces in use, in [`Space::ALL`] order.
    fn iter_mut(&mut self) -> impl Iterator<Item = (Space, &mut SpacePlan)> {
        Space::ALL.into_iter().zip(&mut self.0).filter_map(|(space, plan)| Some((space, plan.as_mut()?)))
    }

    fn values(&self) -> impl Iterator<Item = &SpacePlan> {
        self.0.iter().flatten()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut SpacePlan> {
        self.0.iter_mut().flatten()
    }
}

/// A key's `changed` once a checkpoint holds its state.
const CLEAN: u8 = 0;

impl KeyState {
    /// Whether the checkpoint being taken, whose keys are marked `frozen`
    /// ([`CLEAN`] when none is), has still to serialise this key.
    fn is_frozen(&self, frozen: u8) -> bool {
        frozen != CLEAN && self.changed == frozen
    }
}

/// One worker's feature state: the keys it owns, of every space.
#[derive(Debug)]
pub struct FeatureEngine {
    catalog: Arc<Catalog>,
    /// Hashes keys (when the engine is given events, not hashes) and the
    /// values distinct counts keep: both the input's to choose.
    hasher: KeyedHash,
    planned: Vec<Planned>,
    spaces: Spaces,
    values: Vec<f64>,
    newest_ms: i64,
    events: u64,
    /// Keys expired since the last checkpoint, as the deletes the next one
    /// starts with: listed as they expire, so the barrier only takes the
    /// list (listed there, 60k expiries held each worker of the suite's
    /// row 8 for over a millisecond at once).
    expired: Vec<crate::state::FeatureDelta>,
    /// The input partition of the events being computed.
    partition: u32,
    /// The checkpoint being taken, if one is.
    snapshot: Option<Snapshot>,
    /// The epoch keys changed now are marked with: 1 or 2, taking turns at
    /// each barrier. Two are enough, because a checkpoint is finished
    /// before the next begins: by then no key is left marked with the
    /// older one. So a barrier marks nothing key by key (the state bench's
    /// "of which the barrier" reads 0.0 ms at 1M keys).
    epoch: u8,
    /// The epoch of the keys the checkpoint being taken still has to
    /// serialise, [`CLEAN`] when none is being taken.
    frozen: u8,
    /// How much a busy key's series keeps exactly.
    limits: lookback::Limits,
}

/// A checkpoint's feature changes, serialised a slice at a time after its
/// barrier (see [`FeatureEngine::begin_snapshot`]).
#[derive(Debug)]
struct Snapshot {
    worker: u16,
    /// The keys expired since the last checkpoint, as they were listed: a
    /// list of their own, so the barrier neither copies them nor grows
    /// them into room for `out` (up to hundreds of thousands of keys, many
    /// megabytes, copied in a thread's heap: up to 3.5 ms of row 8's
    /// barriers).
    deletes: Vec<crate::state::FeatureDelta>,
    /// The keys changed, serialised as of the barrier.
    out: Vec<crate::state::FeatureDelta>,
    /// Where each key is serialised before it is copied out at its size.
    scratch: Vec<u8>,
}

impl Snapshot {
    /// Adds `state` as it is now: the state at the barrier as long as it
    /// is taken before the key next changes.
    fn add(&mut self, space: Space, shape: &SpaceShape<'_>, hash: u128, state: &KeyState) {
        self.out.push(crate::state::FeatureDelta {
            kind: space.code(),
            hash,
            worker: self.worker,
            partition: state.partition,
            state: Some(shape.serialise(state, &mut self.scratch)),
        });
    }
}

/// The series shapes of one space, which a stored key carries.
struct SpaceShape<'a> {
    num: &'a [(KeyField, i64, i64, u64)],
    distinct: &'a [(KeyField, DistinctField, i64, i64, u64)],
}

impl SpaceShape<'_> {
    /// `state` as a [`StoredKey`], serialised from the live series: no copy
    /// of them. It is written into `scratch` and copied out, so the result
    /// is one allocation of its exact size instead of a vector grown (and
    /// copied) by doubling.
    fn serialise(&self, state: &KeyState, scratch: &mut Vec<u8>) -> Vec<u8> {
        let (num, distinct) = (self.num, self.distinct);
        let stored = StoredKeyRef {
            newest_ms: state.newest_ms,
            num: Seq(|| {
                num.iter()
                    .zip(&state.num)
                    .filter(|((_, _, s, _), _)| *s > 0)
                    .map(|(&(k, b, s, f), series)| (k.code(), b, s, f, series))
            }),
            distinct: Seq(|| {
                distinct
                    .iter()
                    .zip(&state.distinct)
                    .filter(|((_, _, _, s, _), _)| *s > 0)
                    .map(|(&(k, f, b, s, x), series)| (k.code(), f.code(), b, s, x, series))
            }),
        };
        scratch.clear();
        // Serialising plain data into a Vec cannot fail.
        *scratch = postcard::to_extend(&stored, std::mem::take(scratch)).unwrap_or_default();
        scratch.as_slice().to_vec()
    }
}

/// One key's state as stored in a checkpoint. Series carry their shape
/// (key field, bucket width, span, field, filter id) so state survives
/// features being added or removed between runs: a series no feature uses
/// any more is dropped, a new one starts empty.
#[derive(Debug, Serialize, Deserialize)]
struct StoredKey {
    newest_ms: i64,
    num: Vec<(u8, i64, i64, u64, NumSeries)>,
    distinct: Vec<(u8, u8, i64, i64, u64, DistinctSeries)>,
}

/// [`StoredKey`]'s fields, borrowed: serialises to the same bytes.
#[derive(Serialize)]
struct StoredKeyRef<N, D> {
    newest_ms: i64,
    num: N,
    distinct: D,
}

/// A sequence serialised straight from an iterator, which it walks twice:
/// postcard writes the length first.
struct Seq<F>(F);

impl<F, I> Serialize for Seq<F>
where
    F: Fn() -> I,
    I: Iterator<Item: Serialize>,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some((self.0)().count()))?;
        for item in (self.0)() {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

/// Refuses configured features and windows kept per a key state cannot
/// be kept per exactly: with a Kafka source, one not in `kafka.state-keys`
/// ([`crate::config::Config::state_keys`]; the input's partitions spread
/// keyed state over the daemons of a group, and a partition holds all of
/// one key's events only for the key its topic is partitioned by). Rules
/// are checked as they load (the rule loader's `state_keys`).
///
/// # Errors
/// [`ConfigError::Invalid`] naming `kafka.state-keys` and the feature or
/// window.
pub fn check_state_keys(
    config: &crate::config::Config,
    catalog: &Catalog,
    state_keys: Option<&crate::config::StateKeys>,
) -> Result<(), ConfigError> {
    use crate::config::WindowSpec;
    let Some(allowed) = state_keys else {
        return Ok(());
    };
    let features = catalog.snapshot();
    let windows = config.windows.iter().map(|(name, w)| {
        let (WindowSpec::Tumbling { key, .. } | WindowSpec::Hopping { key, .. } | WindowSpec::Session { key, .. }) = w;
        (format!("window `{name}`"), *key)
    });
    let kept = features
        .iter()
        .filter(|f| f.live)
        .flat_map(|f| f.spec.fields().map(|k| (format!("feature `{}`", f.name), k)))
        .chain(windows);
    for (what, key) in kept {
        if !allowed.keys.contains(&key) {
            return Err(ConfigError::invalid("kafka.state-keys", not_kept(&what, key, allowed)));
        }
    }
    Ok(())
}

/// Why `what`, kept per `key`, cannot be kept exactly with a Kafka source
/// keeping state per `allowed`.
pub fn not_kept(what: &str, key: KeyField, allowed: &crate::config::StateKeys) -> String {
    let names: Vec<&str> = allowed.keys.iter().map(|k| k.name()).collect();
    format!(
        "{what} is kept per {key}, but with a Kafka source state is kept only per the keys of kafka.state-keys \
         ({names}), each by the daemon that owns the key's partition; add {key} to kafka.state-keys (and create \
         its topics), or read a file",
        key = key.name(),
        names = names.join(", "),
    )
}

/// Why a rule's feature cannot be kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// Neither a configured name nor a spec.
    #[error("feature `{name}` is not configured under [features] and is not a spec")]
    Unknown {
        /// The name the rule gave.
        name: String,
        /// Why it is not a spec.
        source: SpecError,
    },
    /// It adds base-currency amounts without `[currencies]`.
    #[error(
        "`{spec}` adds amounts in a base currency (base_amount), but [currencies] is not configured; add \
         [currencies] with a base and rates"
    )]
    NeedsCurrencies {
        /// The spec.
        spec: String,
    },
    /// More live features than the catalog keeps.
    #[error("feature `{name}` would be the catalog's {nth}th; it holds at most {MAX_FEATURES} features")]
    TooMany {
        /// The name the rule gave.
        name: String,
        /// The count it would make.
        nth: usize,
    },
    /// No room left for another feature, live or retired.
    #[error(
        "feature `{name}` cannot be added: the catalog holds {MAX_CATALOG} features, live and retired; restart vigil \
         to drop the retired ones"
    )]
    CatalogFull {
        /// The name the rule gave.
        name: String,
    },
}

/// Stored bytes that are not a key's feature state.
#[derive(Debug, thiserror::Error)]
pub enum BadFeatureState {
    /// The bytes do not decode.
    #[error("bad feature state")]
    Decode(#[from] postcard::Error),
    /// The key space is not one this vigil knows.
    #[error("unknown key space {0}")]
    Space(u8),
}

/// Checks that `bytes` is a stored key's state, as a checkpoint holds it.
///
/// # Errors
/// [`BadFeatureState`] when it is not.
pub fn check_stored(bytes: &[u8]) -> Result<(), BadFeatureState> {
    postcard::from_bytes::<StoredKey>(bytes).map(drop).map_err(BadFeatureState::Decode)
}

/// Events between slices of the sweep for idle keys.
const SWEEP_SLICE_EVENTS: u64 = 256;

/// Slices in a whole sweep: each looks at this share of every space's
/// slots, so each key is looked at once every 65,536 events.
const SWEEP_SLICES: usize = 256;

impl FeatureEngine {
    /// An engine computing every feature in `catalog`, knowing keys by
    /// their hashes under `hasher`.
    pub fn new(catalog: Arc<Catalog>, hasher: KeyedHash) -> Self {
        let mut e = Self {
            catalog,
            hasher,
            planned: Vec::new(),
            spaces: Spaces::default(),
            values: Vec::new(),
            newest_ms: i64::MIN,
            events: 0,
            expired: Vec::new(),
            partition: 0,
            snapshot: None,
            epoch: 1,
            frozen: CLEAN,
            limits: lookback::Limits::default(),
        };
        e.refresh();
        e
    }

    /// Keeps up to `limits` events and sightings per busy key's series
    /// exactly (`[state] exact-events`, `exact-sightings`).
    #[must_use]
    pub fn with_limits(mut self, limits: lookback::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Picks up features added to the catalog since the last call.
    pub fn refresh(&mut self) {
        let all = self.catalog.snapshot();
        self.refresh_to(&all);
    }

    /// Takes up `all` (a catalog snapshot): plans the features not planned
    /// yet, retires those retired, revives those revived. Every worker
    /// plans the same features for the same batch.
    pub fn refresh_to(&mut self, all: &[Feature]) {
        for (i, f) in all.iter().enumerate() {
            match self.planned.get(i) {
                None => {
                    let planned = self.plan(i, &f.spec);
                    self.planned.push(planned);
                }
                Some(p) if p.live == f.live => continue,
                Some(_) if f.live => self.planned[i] = self.plan(i, &f.spec),
                Some(_) => {}
            }
            if !f.live {
                self.retire(i);
            }
        }
        self.values.resize(self.planned.len(), 0.0);
    }

    /// Plans feature `i` (live): its series, made or shared or revived, and
    /// its place among its key field's features.
    fn plan(&mut self, i: usize, s: &FeatureSpec) -> Planned {
        let (bucket_ms, span, filter) = (s.bucket_ms(), s.buckets(), s.filter_id());
        let space = self.spaces.or_default(s.key.space());
        space.longest_ms = space.longest_ms.max(s.window_ms);
        let source = match s.agg {
            Agg::SinceLast | Agg::FirstSeen => {
                // Bucket width 0 marks a recency series: one per key and
                // filter, whatever its features' windows.
                let shape = (s.series_key(), DistinctField::Account, 0, 1, filter);
                let series = series_for(&mut space.distinct, shape, |x| &mut x.3);
                space.distinct_filters.resize(space.distinct.len(), None);
                space.distinct_filters[series].clone_from(&s.filter);
                Source::Recent { series }
            }
            Agg::Distinct(field) => {
                let shape = (s.series_key(), field, bucket_ms, span, filter);
                let series = series_for(&mut space.distinct, shape, |x| &mut x.3);
                space.distinct_filters.resize(space.distinct.len(), None);
                space.distinct_filters[series].clone_from(&s.filter);
                Source::Distinct { series }
            }
            Agg::Count | Agg::Sum if s.inflow => {
                // What the party received, and what it deposited in cash.
                let received = num_series(space, KeyField::Counterparty, s, s.filter.clone(), s.series_id());
                let cash_in = filter::Filter::Cmp(
                    filter::Field::Kind,
                    filter::Op::Eq,
                    filter::Value::Kind(vigil_abi::Kind::CashIn),
                );
                let both = match &s.filter {
                    Some(f) => filter::Filter::And(vec![cash_in, (**f).clone()]),
                    None => cash_in,
                };
                let deposits =
                    FeatureSpec { key: KeyField::Account, inflow: false, filter: Some(Arc::new(both)), ..s.clone() };
                let deposited = num_series(space, KeyField::Account, s, deposits.filter.clone(), deposits.series_id());
                Source::Flow { received, deposited }
            }
            _ => Source::Num { series: num_series(space, s.series_key(), s, s.filter.clone(), s.series_id()) },
        };
        space.features[usize::from(s.key.code())].push(i);
        Planned { agg: s.agg, key: s.key, source, bucket_ms, span, window_ms: s.window_ms, live: true }
    }

    /// Stops computing feature `i`; frees its series on every key unless
    /// another live feature reads it.
    fn retire(&mut self, i: usize) {
        let Some(p) = self.planned.get_mut(i) else { return };
        if !p.live {
            return;
        }
        p.live = false;
        let (key, source) = (p.key, p.source);
        let Some(space) = self.spaces.get_mut(&key.space()) else { return };
        space.features[usize::from(key.code())].retain(|&f| f != i);
        for (numeric, series) in source.series() {
            let shared = self
                .planned
                .iter()
                .any(|q| q.live && q.key.space() == key.space() && q.source.series().contains(&(numeric, series)));
            if shared {
                continue;
            }
            match numeric {
                true => {
                    space.num[series].2 = -space.num[series].2;
                    space.states.for_each_mut(|s| {
                        if let Some(x) = s.num.get_mut(series) {
                            *x = NumSeries::default();
                        }
                    });
                }
                false => {
                    space.distinct[series].3 = -space.distinct[series].3;
                    space.states.for_each_mut(|s| {
                        if let Some(x) = s.distinct.get_mut(series) {
                            *x = DistinctSeries::default();
                        }
                    });
                }
            }
        }
    }

    /// Number of features computed.
    pub fn len(&self) -> usize {
        self.planned.len()
    }

    /// Whether no feature is computed.
    pub fn is_empty(&self) -> bool {
        self.planned.is_empty()
    }

    /// The key fields some feature is kept per, or some series is fed by
    /// (a party's inflows are read for its account and fed as counterparty).
    pub fn fields(&self) -> impl Iterator<Item = KeyField> + '_ {
        KeyField::ALL.into_iter().filter(|&k| self.tracks(k))
    }

    /// Whether the events' keys of `field` update some state: a feature
    /// is kept per it, or a series is fed by it.
    pub fn tracks(&self, field: KeyField) -> bool {
        self.spaces.get(&field.space()).is_some_and(|s| {
            !s.features[usize::from(field.code())].is_empty()
                || s.num.iter().any(|x| x.0 == field && x.2 > 0)
                || s.distinct.iter().any(|x| x.0 == field && x.3 > 0)
        })
    }

    /// Indices (catalog order) of the features kept per `field`.
    pub fn features_of(&self, field: KeyField) -> &[usize] {
        self.spaces.get(&field.space()).map_or(&[], |s| &s.features[usize::from(field.code())])
    }

    /// Keys currently tracked, over all spaces.
    pub fn tracked_keys(&self) -> usize {
        self.spaces.values().map(|k| k.states.len()).sum()
    }

    /// The hash a key of `space` is known by.
    pub fn hash_of(&self, key: &str) -> u128 {
        self.hasher.hash128(key.as_bytes())
    }

    /// Sets the input partition the next events come from; the keys they
    /// touch are then that partition's state.
    pub fn set_partition(&mut self, partition: u32) {
        self.partition = partition;
    }

    /// Forgets every key last touched from one of `partitions` (moved to
    /// another daemon), with its pending changes.
    pub fn drop_partitions(&mut self, partitions: &[u32]) {
        let (snapshot, frozen) = (&mut self.snapshot, self.frozen);
        for (space, plan) in self.spaces.iter_mut() {
            let shape = SpaceShape { num: &plan.num, distinct: &plan.distinct };
            plan.states.retain(|hash, s| {
                let keep = !partitions.contains(&s.partition);
                if !keep && s.is_frozen(frozen) {
                    // The checkpoint being taken still holds it.
                    if let Some(snap) = snapshot.as_mut() {
                        snap.add(space, &shape, hash, s);
                    }
                }
                keep
            });
        }
        self.expired.retain(|d| !partitions.contains(&d.partition));
    }

    /// Starts loading the state of the key of `field` with `hash` into the
    /// cache, before it is updated. With many keys a key's state is rarely
    /// in cache; waiting for it event by event is most of an update's
    /// time, while these look-ups overlap.
    pub fn prefetch(&self, field: KeyField, hash: u128) {
        if let Some(space) = self.spaces.get(&field.space()) {
            space.states.prefetch(hash);
        }
    }

    /// Starts loading the states of every key of `payments` (see
    /// [`FeatureEngine::prefetch`]), hashing them here: for a single
    /// engine given events, not hashes.
    pub fn prefetch_events<'p>(&self, payments: impl Iterator<Item = &'p Payment>) {
        for p in payments {
            for field in self.fields() {
                if let Some(key) = p.key(field) {
                    self.prefetch(field, self.hash_of(key));
                }
            }
        }
    }

    /// Notes the newest event time of the stream, for expiry: every worker
    /// sees every batch's, whichever keys it owns.
    pub fn observe(&mut self, ts_ms: i64) {
        self.newest_ms = self.newest_ms.max(ts_ms);
    }

    /// Adds `p` to the state of its key of `field`, whose hash is `hash`,
    /// and writes the value of every feature kept per `field` at `p` into
    /// `values` (indexed in catalog order).
    pub fn update(&mut self, p: &Payment, field: KeyField, hash: u128, values: &mut [f64]) {
        let Self { spaces, planned, partition, snapshot, epoch, frozen, hasher, newest_ms, catalog, limits, .. } = self;
        let rates = catalog.rates();
        let Some(plan) = spaces.get_mut(&field.space()) else {
            return;
        };
        let t = p.ts_ms;
        let space = field.space();
        let (slot, state) = plan.states.find_or_insert(hash);
        if state.changed != *epoch {
            if state.is_frozen(*frozen)
                && let Some(snap) = snapshot.as_mut()
            {
                // About to change: the checkpoint being taken gets it first.
                snap.add(space, &SpaceShape { num: &plan.num, distinct: &plan.distinct }, hash, state);
                state.stored = true;
            }
            state.changed = *epoch;
            plan.dirty.push(slot);
        }
        state.newest_ms = state.newest_ms.max(t);
        state.partition = *partition;
        if state.num.len() < plan.num.len() {
            state.num.reserve_exact(plan.num.len() - state.num.len());
            state.num.resize_with(plan.num.len(), NumSeries::default);
        }
        if state.distinct.len() < plan.distinct.len() {
            state.distinct.reserve_exact(plan.distinct.len() - state.distinct.len());
            state.distinct.resize_with(plan.distinct.len(), DistinctSeries::default);
        }
        for (((series, &(key, bucket_ms, span, _)), filter), &base) in
            state.num.iter_mut().zip(&plan.num).zip(&plan.num_filters).zip(&plan.num_base)
        {
            if key == field && span > 0 && filter.as_ref().is_none_or(|f| f.matches(p)) {
                // In base minor units, or left out when the currency has no rate.
                let amount = match base {
                    false => Some(p.amount),
                    true => rates.and_then(|r| r.to_base(p.amount, p.currency)),
                };
                if let Some(amount) = amount {
                    series.add(t, amount, bucket_ms, span, limits.events);
                }
            }
        }
        // Where the sweep drops idle keys: recency reads as if it had.
        let cutoff = newest_ms.saturating_sub(plan.longest_ms).saturating_sub(lookback::LATE_MS);
        for ((series, &(key, df, bucket_ms, span, _)), filter) in
            state.distinct.iter_mut().zip(&plan.distinct).zip(&plan.distinct_filters)
        {
            if key != field || span <= 0 || !filter.as_ref().is_none_or(|f| f.matches(p)) {
                continue;
            }
            if bucket_ms == 0 {
                series.seen_at(t, cutoff);
            } else if let Some(v) = distinct_value(p, df) {
                series.add(t, hasher.hash64(v.as_bytes()), bucket_ms, span, limits.sightings);
            }
        }
        let distinct_filters = &plan.distinct_filters;
        for &i in &plan.features[usize::from(field.code())] {
            let plan = &planned[i];
            values[i] = match plan.source {
                Source::Num { series } => {
                    let totals = state.num[series].totals(t, plan.window_ms, plan.bucket_ms, plan.span);
                    match plan.agg {
                        Agg::Count => totals.count as f64,
                        Agg::Sum => totals.sum as f64,
                        Agg::Min if totals.count > 0 => totals.min as f64,
                        Agg::Max if totals.count > 0 => totals.max as f64,
                        Agg::Avg if totals.count > 0 => totals.sum as f64 / totals.count as f64,
                        _ => f64::NAN,
                    }
                }
                Source::Distinct { series } => {
                    state.distinct[series].count(t, plan.window_ms, plan.bucket_ms, plan.span) as f64
                }
                Source::Flow { received, deposited } => {
                    let (w, bw, n) = (plan.window_ms, plan.bucket_ms, plan.span);
                    let (a, b) = (state.num[received].totals(t, w, bw, n), state.num[deposited].totals(t, w, bw, n));
                    match plan.agg {
                        Agg::Count => (a.count + b.count) as f64,
                        _ => a.sum.saturating_add(b.sum) as f64,
                    }
                }
                Source::Recent { series } => {
                    let s = &state.distinct[series];
                    match plan.agg {
                        Agg::SinceLast => {
                            let added = distinct_filters[series].as_ref().is_none_or(|f| f.matches(p));
                            let gap = s.since_last(t, added, cutoff);
                            gap.filter(|gap| *gap < plan.window_ms).map_or(f64::NAN, |g| g as f64)
                        }
                        _ => {
                            let first = s.first_seen(cutoff).filter(|f| *f <= t);
                            first.map_or(f64::NAN, |f| (t - f).min(plan.window_ms) as f64)
                        }
                    }
                }
            };
        }
    }

    /// Writes the value the features kept per `field` read for an event
    /// without that key into `values`: 0, or NaN for min, max and mean.
    pub fn empty(&self, field: KeyField, values: &mut [f64]) {
        for &i in self.features_of(field) {
            values[i] = empty_value(self.planned[i].agg);
        }
    }

    /// Counts one event towards the sweep for idle keys, which looks at a
    /// slice of the keys every so many events.
    pub fn tick(&mut self) {
        self.events += 1;
        if self.events.is_multiple_of(SWEEP_SLICE_EVENTS) {
            self.sweep(|slots| slots.div_ceil(SWEEP_SLICES));
        }
    }

    /// Adds `p` to every key it has and returns every feature's value for
    /// it, in catalog order: the whole computation on one engine, as a
    /// single worker does it.
    pub fn compute(&mut self, p: &Payment) -> &[f64] {
        if self.planned.is_empty() {
            return &self.values;
        }
        self.observe(p.ts_ms);
        let mut values = std::mem::take(&mut self.values);
        let fields: smallvec::SmallVec<[KeyField; 6]> = self.fields().collect();
        for field in fields {
            match p.key(field) {
                Some(key) => {
                    let hash = self.hash_of(key);
                    self.update(p, field, hash, &mut values);
                }
                None => self.empty(field, &mut values),
            }
        }
        self.values = values;
        self.tick();
        &self.values
    }

    /// Drops keys idle for longer than their space's longest window.
    pub fn expire(&mut self) {
        self.sweep(|slots| slots);
    }

    /// Drops the idle keys among the next `slots(n)` of each space's `n`
    /// slots, in slot order (see [`KeyTable::sweep`]). Updates run it a
    /// slice at a time, so no event waits for a whole sweep.
    fn sweep(&mut self, slots: impl Fn(usize) -> usize) {
        let (newest, frozen) = (self.newest_ms, self.frozen);
        for (space, plan) in self.spaces.iter_mut() {
            // Kept for late events as long as series keep their events.
            let cutoff = newest.saturating_sub(plan.longest_ms).saturating_sub(lookback::LATE_MS);
            let code = space.code();
            let (expired, snapshot) = (&mut self.expired, &mut self.snapshot);
            let shape = SpaceShape { num: &plan.num, distinct: &plan.distinct };
            plan.states.sweep(slots(plan.states.slots()), |hash, s| {
                let idle = s.newest_ms < cutoff;
                if idle {
                    let mut stored = s.stored;
                    if s.is_frozen(frozen)
                        && let Some(snap) = snapshot.as_mut()
                    {
                        snap.add(space, &shape, hash, s);
                        stored = true;
                    }
                    // A key born and gone between two checkpoints was
                    // never stored: nothing to delete.
                    if stored {
                        // No worker owns a deleted key.
                        let partition = s.partition;
                        expired.push(crate::state::FeatureDelta {
                            kind: code,
                            hash,
                            worker: 0,
                            partition,
                            state: None,
                        });
                    }
                }
                idle
            });
        }
    }

    /// The changes since the last checkpoint, all at once: the state of
    /// every key touched, and the keys expired.
    pub fn take_delta(&mut self, worker: u16) -> Vec<crate::state::FeatureDelta> {
        self.begin_snapshot(worker);
        self.finish_snapshot()
    }

    /// Starts the checkpoint at this barrier: marks the keys changed since
    /// the last one, and serialises none yet. [`Self::snapshot_step`] then
    /// serialises them a slice at a time, and an event about to change a
    /// marked key serialises it first, so the checkpoint holds every key as
    /// it was at the barrier while events keep flowing, rather than holding
    /// the worker for all of them at once (the state bench's "serialising
    /// them, after the barrier").
    ///
    /// A snapshot still being taken must be finished first
    /// ([`Self::finish_snapshot`]); it is then finished here, into this
    /// one's changes.
    pub fn begin_snapshot(&mut self, worker: u16) {
        debug_assert!(self.snapshot.is_none(), "a feature snapshot is already being taken");
        // Expiries first: a key that expired and came back since the last
        // checkpoint is then stored, not deleted, when the delta is applied.
        let dirty: usize = self.spaces.values().map(|k| k.dirty.len()).sum();
        let snap = match self.snapshot.take() {
            Some(mut old) => {
                self.serialise_frozen(&mut old, usize::MAX);
                // After the old one's stores, which they may delete.
                old.out.append(&mut self.expired);
                old.out.reserve(dirty);
                old
            }
            None => {
                // As many again by the next: its pages are touched as keys expire.
                let next = Vec::with_capacity(self.expired.len());
                let deletes = std::mem::replace(&mut self.expired, next);
                Snapshot { worker, deletes, out: Vec::with_capacity(dirty), scratch: Vec::new() }
            }
        };
        // The keys changed since the last barrier are those marked with
        // this epoch: they become the frozen ones as they are.
        for plan in self.spaces.values_mut() {
            plan.frozen = std::mem::take(&mut plan.dirty);
        }
        self.frozen = self.epoch;
        self.epoch = 3 - self.epoch;
        self.snapshot = Some(snap);
    }

    /// Keys the snapshot being taken has still to look at (some of them
    /// already taken when their key changed): 0 when none is being taken.
    pub fn snapshot_remaining(&self) -> usize {
        match self.snapshot {
            Some(_) => self.spaces.values().map(|k| k.frozen.len()).sum(),
            None => 0,
        }
    }

    /// Serialises up to `keys` more of the snapshot's keys; true when none
    /// is left (or no snapshot is being taken).
    pub fn snapshot_step(&mut self, keys: usize) -> bool {
        let Some(mut snap) = self.snapshot.take() else {
            return true;
        };
        let done = self.serialise_frozen(&mut snap, keys);
        self.snapshot = Some(snap);
        done
    }

    /// Serialises what is left of the snapshot and returns its changes:
    /// empty when none is being taken.
    pub fn finish_snapshot(&mut self) -> Vec<crate::state::FeatureDelta> {
        let [mut changes, stores] = self.finish_snapshot_parts();
        changes.extend(stores);
        changes
    }

    /// [`Self::finish_snapshot`]'s changes in two parts, to be applied in
    /// order, as they were listed: the deletes, then the keys changed.
    pub fn finish_snapshot_parts(&mut self) -> [Vec<crate::state::FeatureDelta>; 2] {
        let Some(mut snap) = self.snapshot.take() else {
            return [Vec::new(), Vec::new()];
        };
        self.serialise_frozen(&mut snap, usize::MAX);
        self.frozen = CLEAN;
        [snap.deletes, snap.out]
    }

    /// Serialises up to `budget` frozen keys into `snap`; true when none is
    /// left.
    fn serialise_frozen(&mut self, snap: &mut Snapshot, mut budget: usize) -> bool {
        let frozen = self.frozen;
        for (space, plan) in self.spaces.iter_mut() {
            let shape = SpaceShape { num: &plan.num, distinct: &plan.distinct };
            while budget > 0 {
                let Some(slot) = plan.frozen.pop() else { break };
                // A slot freed since, or taken when its key changed, is not
                // frozen any more.
                let Some((hash, state)) = plan.states.slot_mut(slot).filter(|(_, s)| s.is_frozen(frozen)) else {
                    continue;
                };
                state.changed = CLEAN;
                state.stored = true;
                snap.add(space, &shape, hash, state);
                budget -= 1;
            }
            if !plan.frozen.is_empty() {
                return false;
            }
        }
        true
    }

    /// Loads one key's stored state.
    ///
    /// # Errors
    /// [`BadFeatureState`] when the bytes are not a stored key.
    pub fn restore(&mut self, space_code: u8, hash: u128, bytes: &[u8], changed: bool) -> Result<(), BadFeatureState> {
        let stored: StoredKey = postcard::from_bytes(bytes)?;
        let Some(space) = Space::from_code(space_code) else {
            return Err(BadFeatureState::Space(space_code));
        };
        let Some(plan) = self.spaces.get_mut(&space) else {
            return Ok(()); // No feature uses this space any more.
        };
        let mut state = KeyState {
            newest_ms: stored.newest_ms,
            partition: self.partition,
            changed: if changed { self.epoch } else { CLEAN },
            stored: true,
            num: smallvec::smallvec![NumSeries::default(); plan.num.len()],
            distinct: smallvec::smallvec![DistinctSeries::default(); plan.distinct.len()],
        };
        for (k, b, s, x, series) in stored.num {
            let Some(key) = KeyField::from_code(k) else { continue };
            if let Some(i) = plan.num.iter().position(|&shape| shape == (key, b, s, x)) {
                state.num[i] = series;
            }
        }
        for (k, f, b, s, x, series) in stored.distinct {
            let (Some(key), Some(field)) = (KeyField::from_code(k), DistinctField::from_code(f)) else {
                continue;
            };
            if let Some(i) = plan.distinct.iter().position(|&shape| shape == (key, field, b, s, x)) {
                state.distinct[i] = series;
            }
        }
        self.newest_ms = self.newest_ms.max(state.newest_ms);
        let (slot, held) = plan.states.find_or_insert(hash);
        if held.is_frozen(self.frozen)
            && let Some(snap) = self.snapshot.as_mut()
        {
            snap.add(space, &SpaceShape { num: &plan.num, distinct: &plan.distinct }, hash, held);
        }
        let listed = held.changed == self.epoch;
        *held = state;
        if changed && !listed {
            plan.dirty.push(slot);
        }
        Ok(())
    }
}

/// The series of shape `item` in `v`: a live one, else a retired one
/// revived (its span, reached by `span`, negated back), else a new one.
fn series_for<T: PartialEq + Copy>(v: &mut Vec<T>, item: T, span: impl Fn(&mut T) -> &mut i64) -> usize {
    if let Some(i) = v.iter().position(|x| *x == item) {
        return i;
    }
    let mut retired = item;
    *span(&mut retired) = -*span(&mut retired);
    if let Some(i) = v.iter().position(|x| *x == retired) {
        v[i] = item;
        return i;
    }
    v.push(item);
    v.len() - 1
}

fn empty_value(agg: Agg) -> f64 {
    match agg {
        Agg::Min | Agg::Max | Agg::Avg => f64::NAN,
        _ => 0.0,
    }
}

fn distinct_value(p: &Payment, field: DistinctField) -> Option<&str> {
    match field {
        DistinctField::GeoCountry => p.geo.as_ref().and_then(|g| g.country.as_ref()).map(|c| c.as_str()),
        DistinctField::Merchant => p.merchant.as_ref().map(|m| m.id.as_str()),
        DistinctField::MerchantCountry => p.merchant.as_ref().and_then(|m| m.country.as_ref()).map(|c| c.as_str()),
        DistinctField::Device => p.device.as_deref(),
        DistinctField::Ip => p.ip.as_deref(),
        DistinctField::Card => p.card.as_ref().map(|c| c.token.as_str()),
        DistinctField::Account => Some(&p.account),
        DistinctField::Currency => std::str::from_utf8(&p.currency).ok(),
        DistinctField::Counterparty => p.counterparty.as_ref().map(|c| c.id.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Card;
    use vigil_abi::{Channel, Country, GeoRef, Kind};

    fn pay(card: &str, ts_ms: i64, amount: i64, country: &str) -> Payment {
        let c = country.as_bytes();
        Payment {
            id: format!("{card}-{ts_ms}").into(),
            ts_ms,
            channel: Channel::Card,
            kind: Kind::Purchase,
            amount,
            currency: *b"USD",
            account: "acct".into(),
            card: Some(Card { token: card.into(), country: None, present: None }),
            merchant: None,
            counterparty: None,
            device: None,
            ip: None,
            geo: Some(GeoRef { country: Some(Country([c[0], c[1]])), lat_lon: None }),
            attrs: Vec::new(),
        }
    }

    fn engine(features: &[(&str, &str)]) -> FeatureEngine {
        let map = features.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
        FeatureEngine::new(Arc::new(Catalog::from_config(&map).expect("catalog")), KeyedHash::for_tests())
    }

    const MIN: i64 = 60_000;

    #[test]
    fn velocity_counts_in_event_time_per_key() {
        let mut e = engine(&[
            ("c", "count(card, 10m)"),
            ("s", "sum(card, amount, 10m)"),
            ("n", "distinct(card, geo.country, 1h)"),
        ]);
        // Catalog order is the config's sorted order: c, n, s.
        let v = e.compute(&pay("a", 0, 100, "US")).to_vec();
        assert_eq!(v, [1.0, 1.0, 100.0]);
        let v = e.compute(&pay("a", 5 * MIN, 50, "FR")).to_vec();
        assert_eq!(v, [2.0, 2.0, 150.0]);
        let v = e.compute(&pay("b", 5 * MIN, 7, "US")).to_vec();
        assert_eq!(v, [1.0, 1.0, 7.0], "another card has its own history");
        // 20 minutes later the first two have left the 10-minute window,
        // but not the hour.
        let v = e.compute(&pay("a", 25 * MIN, 1, "US")).to_vec();
        assert_eq!(v, [1.0, 2.0, 1.0]);
    }

    #[test]
    fn a_filtered_feature_counts_only_the_events_that_pass_and_matches_the_unfiltered_one_over_them() {
        // The same events, once through filtered features and once, only
        // those that pass, through unfiltered ones: the same values at
        // every passing event. (A filtered feature's value at an event
        // that does not pass is over the passing events before it.)
        let filtered = [
            ("c", "count(card, 10m, amount < 1000)"),
            ("n", "distinct(card, geo.country, 1h, amount < 1000 and geo.country != BR)"),
            ("s", "sum(card, amount, 10m, amount < 1000)"),
        ];
        let plain =
            [("c", "count(card, 10m)"), ("n", "distinct(card, geo.country, 1h)"), ("s", "sum(card, amount, 10m)")];
        let (mut f, mut u, mut u_br) = (engine(&filtered), engine(&plain), engine(&plain[1..2]));
        let countries = ["US", "FR", "BR", "DE"];
        let mut last = vec![0.0; 3];
        for i in 0..400i64 {
            let p = pay(
                ["a", "b"][(i % 2) as usize],
                i * 7_919 % (90 * MIN),
                (i * 613) % 2_000,
                countries[(i % 4) as usize],
            );
            let got = f.compute(&p).to_vec();
            if p.amount < 1000 {
                let want = u.compute(&p).to_vec();
                assert_eq!((got[0], got[2]), (want[0], want[2]), "event {i}");
                if countries[(i % 4) as usize] != "BR" {
                    assert_eq!(got[1], u_br.compute(&p)[0], "event {i}");
                }
                last = got;
            } else {
                assert!(got[0] <= last[0] + 400.0, "values stay finite");
            }
        }
        assert!(last[0] > 0.0, "some events passed");
        // State round-trips with its filters.
        let delta = f.take_delta(0);
        let mut restored = engine(&filtered);
        for d in &delta {
            restored.restore(d.kind, d.hash, d.state.as_deref().expect("state"), false).expect("restore");
        }
        let next = pay("a", 90 * MIN, 10, "US");
        assert_eq!(f.compute(&next).to_vec(), restored.compute(&next).to_vec());
        // A filter is part of a series' identity: other filters start empty.
        let mut other = engine(&[("c", "count(card, 10m, amount < 999)")]);
        for d in &delta {
            other.restore(d.kind, d.hash, d.state.as_deref().expect("state"), false).expect("restore");
        }
        assert_eq!(other.compute(&pay("a", 90 * MIN, 10, "US"))[0], 1.0);
    }

    #[test]
    fn a_party_s_inflows_are_what_it_received_as_counterparty() {
        let mut e = engine(&[
            ("in", "count_in(account, 1h)"),
            ("out", "count(account, 1h)"),
            ("s", "distinct_senders(account, 1h)"),
        ]);
        let transfer = |from: &str, to: &str, t: i64| Payment {
            kind: Kind::Transfer,
            account: from.into(),
            counterparty: Some(crate::event::Party { id: to.into(), mcc: None, country: None }),
            card: None,
            ..pay("x", t, 100, "US")
        };
        let v = e.compute(&transfer("a", "mule", 0)).to_vec();
        assert_eq!(v, [0.0, 1.0, 0.0], "a: nothing in, 1 out");
        e.compute(&transfer("b", "mule", MIN));
        e.compute(&transfer("b", "mule", 2 * MIN));
        // The mule pays out: its outflows, with what it received.
        let v = e.compute(&transfer("mule", "c", 3 * MIN)).to_vec();
        // Catalog order: in, out, s.
        assert_eq!(v, [3.0, 1.0, 2.0], "mule: 3 in from 2 senders, 1 out");
        // Cash deposited is money in too; money out is what it sent.
        let mut e = engine(&[("in", "sum_in(account, amount, 1h)"), ("out", "sum_out(account, amount, 1h)")]);
        let cash_in = Payment { kind: Kind::CashIn, account: "m".into(), card: None, ..pay("x", 0, 900, "US") };
        assert_eq!(e.compute(&cash_in).to_vec(), [900.0, 0.0]);
        e.compute(&Payment { amount: 50, ..transfer("z", "m", MIN) });
        let out = Payment { amount: 800, ..transfer("m", "y", 2 * MIN) };
        assert_eq!(e.compute(&out).to_vec(), [950.0, 800.0], "rapid movement is one comparison");
    }

    #[test]
    fn recency_reads_the_time_since_the_previous_and_the_first_event() {
        let mut e = engine(&[
            ("f", "first_seen(card)"),
            ("s", "since_last(card, 10m)"),
            ("sb", "since_last(card, 1h, amount >= 1000)"),
        ]);
        let v = |e: &mut FeatureEngine, t: i64, amount: i64| e.compute(&pay("a", t, amount, "US")).to_vec();
        let nan = |x: f64| x.is_nan();
        let first = v(&mut e, 0, 100);
        assert!(first[0] == 0.0 && nan(first[1]) && nan(first[2]), "{first:?}");
        let second = v(&mut e, 3 * MIN, 2_000);
        assert_eq!(second[..2], [(3 * MIN) as f64, (3 * MIN) as f64]);
        assert!(nan(second[2]), "the first large payment has no large one before it");
        let third = v(&mut e, 20 * MIN, 50);
        assert_eq!(third[0], (20 * MIN) as f64);
        assert!(nan(third[1]), "17 minutes is outside the 10-minute window");
        assert_eq!(third[2], (17 * MIN) as f64, "a small payment: since the last large one");
        let fourth = v(&mut e, 25 * MIN, 5_000);
        assert_eq!(fourth[1..], [(5 * MIN) as f64, (22 * MIN) as f64]);
        // State round-trips.
        let delta = e.take_delta(0);
        let mut restored = engine(&[
            ("f", "first_seen(card)"),
            ("s", "since_last(card, 10m)"),
            ("sb", "since_last(card, 1h, amount >= 1000)"),
        ]);
        for d in &delta {
            restored.restore(d.kind, d.hash, d.state.as_deref().expect("state"), false).expect("restore");
        }
        assert_eq!(v(&mut restored, 26 * MIN, 9_000), v(&mut e, 26 * MIN, 9_000));
    }

    #[test]
    fn base_amounts_add_across_currencies_and_need_a_rate_table() {
        let currencies = crate::config::CurrencyConfig {
            base: "USD".into(),
            rates: [("EUR".to_owned(), 1.5), ("JPY".to_owned(), 0.01)].into(),
        };
        let map = [("b", "sum(card, base_amount, 1h)"), ("m", "sum(card, amount, 1h)")]
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_string()))
            .collect();
        let catalog = Catalog::with_currencies(&map, Some(&currencies)).expect("catalog");
        let mut e = FeatureEngine::new(Arc::new(catalog), KeyedHash::for_tests());
        let pay_in = |t: i64, amount: i64, cur: &[u8; 3]| Payment { currency: *cur, ..pay("a", t, amount, "US") };
        assert_eq!(e.compute(&pay_in(0, 1_000, b"USD")).to_vec(), [1_000.0, 1_000.0]);
        assert_eq!(e.compute(&pay_in(1, 1_000, b"EUR")).to_vec(), [2_500.0, 2_000.0], "10.00 EUR is 15.00 USD");
        assert_eq!(e.compute(&pay_in(2, 500, b"JPY")).to_vec(), [3_000.0, 2_500.0], "500 yen is 5.00 USD");
        assert_eq!(e.compute(&pay_in(3, 700, b"GBP")).to_vec(), [3_000.0, 3_200.0], "no rate: left out");
        let e = Catalog::from_config(&map).expect_err("no table").to_string();
        assert!(e.contains("[currencies] is not configured"), "{e}");
        let catalog = Catalog::from_config(&BTreeMap::new()).expect("empty");
        assert!(
            catalog.resolve("avg(card, base_amount, 1h)").expect_err("inline too").to_string().contains("[currencies]")
        );
    }

    /// Every feature value of a generated run, a tenth of its events up to
    /// five minutes late, against a brute-force reference over each key's
    /// raw events: exactly `(t − W, t]`, events later than `t` that came
    /// earlier left out.
    #[test]
    fn every_feature_value_of_a_generated_run_is_exact_against_a_brute_force_reference() {
        exact_against_a_brute_force_reference(crate::generate::GenOptions {
            events: 20_000,
            accounts: 300,
            per_day: 40.0,
            seed: 77,
            ..Default::default()
        });
    }

    /// Hundreds of events per window and key: series past
    /// `sliding::SMALL`, read from their running totals.
    #[test]
    fn busy_keys_are_exact_against_a_brute_force_reference() {
        exact_against_a_brute_force_reference(crate::generate::GenOptions {
            events: 4_000,
            accounts: 4,
            per_day: 5_000.0,
            seed: 78,
            ..Default::default()
        });
    }

    /// Every feature value of a run of `opts`, a tenth of its events up to
    /// five minutes late, against a scan of every event of the key so far.
    fn exact_against_a_brute_force_reference(opts: crate::generate::GenOptions) {
        use rand::{RngExt as _, SeedableRng as _};
        let specs = [
            "count(card, 10m)",
            "sum(account, amount, 1h)",
            "min(card, amount, 30m)",
            "max(card, amount, 30m)",
            "avg(account, amount, 2h)",
            "distinct(account, merchant, 1h)",
            "distinct(card, geo.country, 6h)",
            "count(account, 1day, kind = transfer)",
            "sum(card, amount, 10m, amount < 1000)",
            "count(device, 90s)",
        ];
        let map: BTreeMap<String, String> = specs.iter().map(|s| (s.to_string(), s.to_string())).collect();
        let catalog = Arc::new(Catalog::from_config(&map).expect("catalog"));
        let order: Vec<FeatureSpec> = catalog.snapshot().iter().map(|f| f.spec.clone()).collect();
        let mut engine = FeatureEngine::new(catalog, KeyedHash::for_tests());
        let mut out = Vec::new();
        crate::generate::Generator::new(opts).expect("options").write(&mut out).expect("generate");
        let decoder =
            crate::decode::Decoder::new(&crate::config::CleanConfig::default(), crate::decode::Tokenizer::new(b"k"));
        let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
        let mut events: Vec<(i64, Payment)> = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| decoder.parse(l).expect("valid"))
            .map(|p| {
                let delay = if rng.random_bool(0.1) { rng.random_range(0..300_000) } else { 0 };
                (p.ts_ms + delay, p)
            })
            .collect();
        events.sort_by_key(|(arrives, _)| *arrives);
        let late = events.windows(2).filter(|w| w[1].1.ts_ms < w[0].1.ts_ms).count();
        assert!(late > events.len() / 40, "out-of-order events in the test: {late}");
        // Each key's events so far, in arrival order, per key field.
        let mut seen: std::collections::HashMap<(u8, &str), Vec<&Payment>> = Default::default();
        for (_, p) in &events {
            let got = engine.compute(p).to_vec();
            for field in KeyField::ALL {
                if let Some(key) = p.key(field) {
                    seen.entry((field.code(), key)).or_default().push(p);
                }
            }
            for (i, spec) in order.iter().enumerate() {
                let Some(key) = p.key(spec.key) else { continue };
                let in_window: Vec<&&Payment> = seen[&(spec.key.code(), key)]
                    .iter()
                    .filter(|q| q.ts_ms > p.ts_ms - spec.window_ms && q.ts_ms <= p.ts_ms)
                    .filter(|q| spec.filter.as_ref().is_none_or(|f| f.matches(q)))
                    .collect();
                let amounts = in_window.iter().map(|q| q.amount);
                let want = match spec.agg {
                    Agg::Count => in_window.len() as f64,
                    Agg::Sum => amounts.sum::<i64>() as f64,
                    Agg::Min => amounts.min().map_or(f64::NAN, |v| v as f64),
                    Agg::Max => amounts.max().map_or(f64::NAN, |v| v as f64),
                    Agg::Avg if in_window.is_empty() => f64::NAN,
                    Agg::Avg => amounts.sum::<i64>() as f64 / in_window.len() as f64,
                    Agg::Distinct(field) => {
                        let values: std::collections::HashSet<&str> =
                            in_window.iter().filter_map(|q| distinct_value(q, field)).collect();
                        values.len() as f64
                    }
                    _ => unreachable!("not in this test"),
                };
                let same = got[i] == want || (got[i].is_nan() && want.is_nan());
                assert!(same, "{} at {} ({}): got {}, want {}", spec, p.id, p.ts_ms, got[i], want);
            }
        }
    }

    /// `[state] exact-events` and `exact-sightings` bound what a busy key
    /// keeps exactly: past them its window's edge moves in 1/60 steps (an
    /// event 1.3 s inside a one-minute window left out) and distinct
    /// counts are estimated (here, of seven values, within one); within
    /// them every value is exact.
    #[test]
    fn busy_keys_past_the_configured_limits_count_in_buckets() {
        let config = crate::config::Config::parse(
            "[source]\ntype = \"file\"\npath = \"x\"\n[state]\nexact-events = 40\nexact-sightings = 40\n",
            std::path::Path::new("vigil.toml"),
        )
        .expect("config");
        let limits = lookback::Limits::from(&config.state);
        assert_eq!(limits, lookback::Limits { events: 40, sightings: 40 });
        let specs = [("c", "count(card, 1m)"), ("d", "distinct(card, geo.country, 1m)")];
        let mut exact = engine(&specs);
        let mut bounded = engine(&specs).with_limits(limits);
        let (mut differ, mut events) = (0, Vec::new());
        for i in 0..200i64 {
            let p = pay("c1", i * 700, 5, ["US", "GB", "FR", "DE", "NL", "SE", "NO"][(i % 7) as usize]);
            events.push(p.ts_ms);
            let want = events.iter().filter(|&&t| t > p.ts_ms - MIN).count() as f64;
            let got = exact.compute(&p).to_vec();
            assert_eq!(got[0], want, "exact within the default limits at {}", p.ts_ms);
            assert_eq!(got[1], (i + 1).min(7) as f64);
            let b = bounded.compute(&p).to_vec();
            differ += usize::from(got[0] != b[0]);
            assert!((b[1] - got[1]).abs() <= 1.0, "a sketch of seven values: {}", b[1]);
        }
        assert!(differ > 0, "a count past exact-events moves in bucket steps");
    }

    #[test]
    fn missing_keys_read_as_empty() {
        let mut e = engine(&[("c", "count(device, 10m)"), ("m", "max(device, amount, 10m)")]);
        let v = e.compute(&pay("a", 0, 100, "US")).to_vec();
        assert_eq!(v[0], 0.0);
        assert!(v[1].is_nan());
    }

    #[test]
    fn the_catalog_holds_a_bounded_number_of_features() {
        let catalog = Catalog::from_config(&BTreeMap::new()).expect("empty");
        for i in 0..MAX_FEATURES {
            catalog.resolve(&format!("count(card, {}s)", i + 1)).expect("room");
        }
        let e = catalog.resolve("count(card, 1d)").expect_err("full");
        assert!(matches!(e, FeatureError::TooMany { nth: 513, .. }) && e.to_string().contains("at most 512"), "{e}");
        assert!(catalog.resolve("count(card, 1s)").is_ok(), "one already held is found");
    }

    #[test]
    fn features_no_rule_reads_are_retired_freed_and_revived_empty() {
        let catalog = Arc::new(Catalog::from_config(&BTreeMap::new()).expect("empty"));
        let count = catalog.resolve("count(card, 10m)").expect("spec");
        let sum = catalog.resolve("sum(card, amount, 10m)").expect("spec");
        let geo = catalog.resolve("distinct(card, geo.country, 1h)").expect("spec");
        let mut e = FeatureEngine::new(catalog.clone(), KeyedHash::for_tests());
        for i in 0..3 {
            e.compute(&pay("a", i * MIN, 10, ["US", "FR", "BR"][i as usize]));
        }
        let card = e.spaces.get(&Space::Card).expect("card space");
        let slot = card.states.find(e.hash_of("a")).expect("held");
        // The count goes: its series stays for the sum. The distinct goes,
        // and its series is freed on every key.
        e.refresh_to(&catalog.retain_used(|i| i == sum));
        assert_eq!(e.features_of(KeyField::Card), [sum]);
        assert!(e.spaces.get(&Space::Card).expect("card space").num[0].2 > 0, "the sum's series is kept");
        assert!(e.spaces.get(&Space::Card).expect("card space").distinct[0].3 < 0, "the distinct series is retired");
        let (_, s) = e.spaces.get_mut(&Space::Card).and_then(|c| c.states.slot_mut(slot)).expect("state");
        assert!(s.distinct[0] == DistinctSeries::default(), "and freed");
        let v = e.compute(&pay("a", 3 * MIN, 10, "DE")).to_vec();
        assert_eq!(v[sum], 40.0, "the sum kept its history");
        assert!(catalog.snapshot().iter().filter(|f| f.live).count() == 1);
        // Named again, both come back at their indices; the distinct
        // starts with no history, the count reads the sum's series.
        assert_eq!(catalog.resolve("distinct(card, geo.country, 1h)"), Ok(geo));
        assert_eq!(catalog.resolve("count(card, 10m)"), Ok(count));
        e.refresh_to(&catalog.snapshot());
        let v = e.compute(&pay("a", 4 * MIN, 10, "US")).to_vec();
        assert_eq!((v[count], v[sum], v[geo]), (5.0, 50.0, 1.0));
        assert_eq!(e.spaces.get(&Space::Card).expect("card space").distinct.len(), 1, "the retired series is reused");
    }

    #[test]
    fn retired_features_do_not_count_against_the_bound() {
        let catalog = Catalog::from_config(&BTreeMap::new()).expect("empty");
        for round in 0..3 {
            for i in 0..MAX_FEATURES {
                catalog.resolve(&format!("count(card, {}s)", round * MAX_FEATURES + i + 1)).expect("room");
            }
            catalog.retain_used(|_| false);
        }
        assert_eq!(catalog.snapshot().iter().filter(|f| f.live).count(), 0);
        for i in 0..MAX_FEATURES {
            catalog.resolve(&format!("count(card, {}s)", 3 * MAX_FEATURES + i + 1)).expect("room");
        }
        catalog.retain_used(|_| false);
        let e = catalog.resolve("count(card, 1d)").expect_err("full");
        assert!(matches!(e, FeatureError::CatalogFull { .. }) && e.to_string().contains("restart vigil"), "{e}");
        assert_eq!(catalog.resolve("count(card, 1s)"), Ok(0), "a retired one is revived in place");
    }

    #[test]
    fn inline_specs_join_the_catalog_once() {
        let catalog = Catalog::from_config(&BTreeMap::new()).expect("empty");
        let a = catalog.resolve("count(card, 10m)").expect("spec");
        let b = catalog.resolve("count(card, 10m)").expect("spec");
        assert_eq!(a, b);
        assert!(catalog.resolve("card-count").expect_err("unknown").to_string().contains("not configured"));
    }

    #[test]
    fn state_survives_a_checkpoint_round_trip() {
        let features =
            [("c", "count(card, 10m)"), ("n", "distinct(card, geo.country, 1h)"), ("s", "sum(card, amount, 10m)")];
        let mut live = engine(&features);
        for (i, c) in ["US", "FR", "US", "BR"].iter().enumerate() {
            live.compute(&pay("a", i as i64 * MIN, 10, c));
        }
        let delta = live.take_delta(0);
        assert_eq!(delta.len(), 1);
        assert!(live.take_delta(0).is_empty(), "nothing changed since");
        let mut restored = engine(&features);
        for d in &delta {
            restored.restore(d.kind, d.hash, d.state.as_deref().expect("state"), false).expect("restore");
        }
        let next = pay("a", 5 * MIN, 10, "DE");
        assert_eq!(live.compute(&next).to_vec(), restored.compute(&next).to_vec());
    }

    #[test]
    fn idle_keys_expire_and_memory_stays_bounded() {
        let mut e = engine(&[("c", "count(card, 10m)")]);
        for i in 0..10_000 {
            e.compute(&pay(&format!("card-{i}"), i * 1_000, 1, "US"));
        }
        e.expire();
        // Event time ran 10,000 s; only keys seen in the last 10 minutes,
        // and the 10 minutes a late event may come after, remain.
        assert!(e.tracked_keys() <= 1_201, "{}", e.tracked_keys());
    }

    #[test]
    fn idle_keys_expire_as_events_flow_a_slice_at_a_time() {
        let mut e = engine(&[("c", "count(card, 10m)")]);
        let events = 3 * 65_536;
        for i in 0..events {
            e.compute(&pay(&format!("card-{i}"), i * 1_000, 1, "US"));
            // A slice looks at 1/256 of the slots every 256 events, so a
            // key idle past its window is gone about 65,536 events later
            // (a little more while the slab still grows): the keys held
            // stay near that, where without the sweep they would be all
            // `i` seen.
            if i % 4_096 == 0 && i > 80_000 {
                assert!(e.tracked_keys() < 80_000, "{} keys after {i} events", e.tracked_keys());
            }
        }
        assert!(e.tracked_keys() > 1_201, "not all at once: {}", e.tracked_keys());
        e.expire();
        assert!(e.tracked_keys() <= 1_201, "{}", e.tracked_keys());
    }

    #[test]
    fn a_key_that_expires_and_returns_between_checkpoints_is_stored_not_deleted() {
        let mut e = engine(&[("c", "count(card, 10m)")]);
        e.compute(&pay("a", 0, 1, "US"));
        e.take_delta(0);
        e.compute(&pay("b", 30 * MIN, 1, "US"));
        e.expire();
        e.compute(&pay("a", 31 * MIN, 1, "US"));
        // Applied in order, as a checkpoint store or the changelog does.
        let mut stored = std::collections::HashMap::new();
        for d in e.take_delta(0) {
            match d.state {
                Some(bytes) => stored.insert(d.hash, bytes),
                None => stored.remove(&d.hash),
            };
        }
        assert_eq!(stored.len(), 2, "both a and b are live");
        assert!(e.take_delta(0).is_empty(), "each change goes out once");
    }

    #[test]
    fn only_keys_a_checkpoint_holds_are_deleted_when_they_expire() {
        let mut e = engine(&[("c", "count(card, 10m)")]);
        e.compute(&pay("kept", 0, 1, "US"));
        assert_eq!(e.take_delta(0).len(), 1);
        // Born and gone between two checkpoints: never stored.
        e.compute(&pay("passing", MIN, 1, "US"));
        e.compute(&pay("late", 60 * MIN, 1, "US"));
        e.expire();
        let delta = e.take_delta(0);
        let deleted: Vec<u128> = delta.iter().filter(|d| d.state.is_none()).map(|d| d.hash).collect();
        let hash = |id: &str| e.hash_of(id);
        assert_eq!(deleted, [hash("kept")], "{delta:?}");
        assert_eq!(delta.iter().filter(|d| d.state.is_some()).map(|d| d.hash).collect::<Vec<_>>(), [hash("late")]);
    }

    #[test]
    fn a_restored_key_is_deleted_when_it_expires() {
        let mut e = engine(&[("c", "count(card, 10m)")]);
        e.compute(&pay("a", 0, 1, "US"));
        let stored = e.take_delta(0);
        let mut restored = engine(&[("c", "count(card, 10m)")]);
        for d in &stored {
            restored.restore(d.kind, d.hash, d.state.as_deref().expect("state"), false).expect("restore");
        }
        restored.compute(&pay("b", 60 * MIN, 1, "US"));
        restored.expire();
        let deleted: Vec<u128> =
            restored.take_delta(0).into_iter().filter(|d| d.state.is_none()).map(|d| d.hash).collect();
        assert_eq!(deleted, [stored[0].hash]);
    }

    #[test]
    fn key_spaces_are_found_where_their_code_says() {
        let mut spaces = Spaces::default();
        for space in Space::ALL {
            spaces.or_default(space).longest_ms = i64::from(space.code());
        }
        for (space, plan) in spaces.iter_mut() {
            assert_eq!(plan.longest_ms, i64::from(space.code()), "{space:?}");
        }
        assert_eq!(spaces.values().count(), Space::ALL.len());
    }

    /// Applies deltas in order, as a checkpoint store or the changelog does.
    fn apply(stored: &mut std::collections::HashMap<(u8, u128), Vec<u8>>, deltas: Vec<crate::state::FeatureDelta>) {
        for d in deltas {
            match d.state {
                Some(bytes) => stored.insert((d.kind, d.hash), bytes),
                None => stored.remove(&(d.kind, d.hash)),
            };
        }
    }

    /// A step of the run below.
    #[derive(Debug, Clone)]
    enum Step {
        /// An event for one of a few cards, at a minute offset.
        Event {
            card: u8,
            minute: i64,
        },
        Expire,
        /// Serialise up to this many keys of the snapshot being taken.
        Slice(usize),
        /// A barrier: the checkpoint being taken ends and another starts.
        Barrier,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0u8..12, 0i64..4).prop_map(|(card, minute)| Step::Event { card, minute }),
            1 => Just(Step::Expire),
            2 => (0usize..4).prop_map(Step::Slice),
            1 => Just(Step::Barrier),
        ]
    }

    proptest::proptest! {
        /// A snapshot taken a slice at a time while events go on changing
        /// keys holds exactly what taking it all at the barrier holds; and
        /// checkpoints applied in turn hold what one taken at the end does.
        #[test]
        fn a_snapshot_taken_in_slices_holds_the_state_at_its_barrier(
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let features = [("c", "count(card, 10m)"), ("n", "distinct(card, geo.country, 1h)")];
            let (mut whole, mut sliced, mut once) = (engine(&features), engine(&features), engine(&features));
            let (mut stored_whole, mut stored_sliced) = (Default::default(), Default::default());
            let mut t = 0;
            for step in steps {
                match step {
                    Step::Event { card, minute } => {
                        // Time runs on, so keys go idle and expire.
                        t += minute * MIN;
                        let p = pay(&format!("card-{card}"), t, 1, if card % 2 == 0 { "US" } else { "FR" });
                        proptest::prop_assert_eq!(whole.compute(&p).to_vec(), sliced.compute(&p).to_vec());
                        once.compute(&p);
                    }
                    Step::Expire => {
                        whole.expire();
                        sliced.expire();
                        once.expire();
                    }
                    Step::Slice(keys) => {
                        sliced.snapshot_step(keys);
                    }
                    Step::Barrier => {
                        // The snapshot begun at the previous barrier ends
                        // holding what the whole one took there.
                        apply(&mut stored_sliced, sliced.finish_snapshot());
                        proptest::prop_assert_eq!(&stored_sliced, &stored_whole);
                        apply(&mut stored_whole, whole.take_delta(0));
                        sliced.begin_snapshot(0);
                    }
                }
            }
            apply(&mut stored_sliced, sliced.finish_snapshot());
            proptest::prop_assert_eq!(&stored_sliced, &stored_whole);
            // And nothing changed since is lost or taken twice.
            apply(&mut stored_whole, whole.take_delta(0));
            apply(&mut stored_sliced, sliced.take_delta(0));
            proptest::prop_assert_eq!(&stored_sliced, &stored_whole);
            let mut stored_once = Default::default();
            apply(&mut stored_once, once.take_delta(0));
            proptest::prop_assert_eq!(&stored_sliced, &stored_once);
        }
    }
}
