//! Rules: WebAssembly modules loaded from the rules folder, validated, swapped
//! in live, and evaluated per event in a sandbox.
//!
//! - [`RuleRegistry`] owns the folder: a rescan loads new and changed files,
//!   keeps the previous version when a file is broken, unloads deleted ones,
//!   and publishes an immutable [`RuleSet`] through an `ArcSwap`.
//! - [`Evaluator`] is one worker's view: it picks up a new rule set between
//!   batches (an event boundary), keeps one instance per rule, and turns any
//!   failure into the rule's failure outcome, quarantining a rule after
//!   repeated failures in a row.

pub mod changes;
pub mod check;
pub mod explain;
pub mod lists;
#[cfg(feature = "bench-native")]
pub mod native;
pub mod sandbox;
pub mod signing;
pub mod state;
pub mod watch;

use arc_swap::ArcSwap;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use vigil_abi::{Field, FieldMask, Manifest, ParamType, ParamValue, Projection};
use wasmtime::InstancePre;

use crate::config::RuleSettings;
use crate::decide::{FailurePolicy, Mode, RuleOutcome};
use crate::features::Catalog;
use lists::{List, Lists};
use sandbox::{HostState, RuleInstance, Sandbox};
use state::RuleState;

/// The error a [`RuleError`] keeps as its cause: what wasmtime, the system,
/// a rule or a signature check said.
pub type Source = Arc<dyn std::error::Error + Send + Sync>;

/// Why a rule could not be loaded or a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuleError {
    /// The file could not be read.
    #[error("cannot read")]
    Io(
        /// What the system said.
        #[source]
        Arc<std::io::Error>,
    ),
    /// Not a valid WebAssembly module.
    #[error("does not compile{}", Said(what))]
    Compile {
        /// What failed or why, where the source does not say it all.
        what: Cow<'static, str>,
        /// What wasmtime or the system said, if anything.
        #[source]
        source: Option<Source>,
    },
    /// The module does not follow the vigil rule ABI.
    #[error("violates the rule ABI{}", Said(what))]
    Abi {
        /// What is wrong.
        what: Cow<'static, str>,
        /// What wasmtime said, if anything.
        #[source]
        source: Option<Source>,
    },
    /// The manifest is missing, malformed or inconsistent.
    #[error("bad manifest{}", Said(what))]
    Manifest {
        /// What is wrong, or the manifest that does not parse.
        what: Cow<'static, str>,
        /// Why it does not parse, if that is the problem.
        #[source]
        source: Option<Source>,
    },
    /// The rule's settings in the host config do not fit its manifest.
    #[error("bad settings{}", Said(what))]
    Config {
        /// What is wrong, or which settings.
        what: Cow<'static, str>,
        /// The error loading them met, if any.
        #[source]
        source: Option<Source>,
    },
    /// The rule trapped (panic, unreachable, stack overflow, bad access).
    #[error("trapped{}", Said(what))]
    Trap {
        /// How, where the source does not say (a panic's message).
        what: Cow<'static, str>,
        /// The trap wasmtime reported, if any.
        #[source]
        source: Option<Source>,
    },
    /// The call used up its CPU budget (fuel).
    #[error("ran past its CPU budget of {0} fuel")]
    OutOfFuel(
        /// The budget.
        u64,
    ),
    /// The call ran past its wall-clock backstop (`rules.call-timeout`).
    #[error("ran past its wall-clock backstop (rules.call-timeout)")]
    Timeout,
    /// The event's CPU budget across all rules was spent before this rule
    /// finished with it: not the rule's own failure.
    #[error("the event's CPU budget across all rules was used up (rules.event-budget)")]
    EventBudget,
    /// The rule asked for more memory than its cap.
    #[error("exceeded its memory cap of {0} bytes")]
    MemoryExceeded(
        /// The cap.
        usize,
    ),
    /// The rule is quarantined after repeated failures.
    #[error("quarantined after repeated failures")]
    Quarantined,
    /// The module is not signed as `rules.require-signature` asks.
    #[error("not approved")]
    Signature(
        /// Why not.
        #[source]
        Arc<signing::SigningError>,
    ),
}

/// `: TEXT` after a message, or nothing for no text.
struct Said<'a>(&'a str);

impl std::fmt::Display for Said<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            "" => Ok(()),
            what => write!(f, ": {what}"),
        }
    }
}

/// `e` as a [`Source`].
pub(crate) fn source(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Option<Source> {
    Some(Arc::from(e.into()))
}

/// The causes a rule call fails with, as [`RuleError::cause`] names them.
pub const CAUSES: [&str; 12] = [
    "io",
    "compile",
    "abi",
    "manifest",
    "config",
    "trap",
    "out_of_fuel",
    "timeout",
    "event_budget",
    "memory",
    "quarantined",
    "signature",
];

impl RuleError {
    /// A stable name of the kind of failure, one of [`CAUSES`].
    pub fn cause(&self) -> &'static str {
        CAUSES[self.cause_index()]
    }

    fn cause_index(&self) -> usize {
        match self {
            RuleError::Io(_) => 0,
            RuleError::Compile { .. } => 1,
            RuleError::Abi { .. } => 2,
            RuleError::Manifest { .. } => 3,
            RuleError::Config { .. } => 4,
            RuleError::Trap { .. } => 5,
            RuleError::OutOfFuel(_) => 6,
            RuleError::Timeout => 7,
            RuleError::EventBudget => 8,
            RuleError::MemoryExceeded(_) => 9,
            RuleError::Quarantined => 10,
            RuleError::Signature(_) => 11,
        }
    }

    /// This error as met loading the instance `[rule.NAME]` of `base`.
    fn in_instance(self, name: &str, base: &str) -> Self {
        RuleError::Config { what: format!("[rule.{name}] (an instance of `{base}`)").into(), source: source(self) }
    }

    /// [`RuleError::Compile`] saying `what`.
    pub fn compile(what: impl Into<Cow<'static, str>>) -> Self {
        RuleError::Compile { what: what.into(), source: None }
    }

    /// [`RuleError::Abi`] saying `what`.
    pub fn abi(what: impl Into<Cow<'static, str>>) -> Self {
        RuleError::Abi { what: what.into(), source: None }
    }

    /// [`RuleError::Manifest`] saying `what`.
    pub fn manifest(what: impl Into<Cow<'static, str>>) -> Self {
        RuleError::Manifest { what: what.into(), source: None }
    }

    /// [`RuleError::Config`] saying `what`.
    pub fn config(what: impl Into<Cow<'static, str>>) -> Self {
        RuleError::Config { what: what.into(), source: None }
    }

    /// [`RuleError::Trap`] saying `what`.
    pub fn trap(what: impl Into<Cow<'static, str>>) -> Self {
        RuleError::Trap { what: what.into(), source: None }
    }
}

/// A rule ready to run: validated module, manifest and resolved settings.
pub struct LoadedRule {
    /// Its name: the manifest's, or an instance's (`[rule.NAME] of = …`).
    pub name: Arc<str>,
    /// Manifest version.
    pub version: Arc<str>,
    /// SHA-256 of the module file, hex.
    pub hash: Arc<str>,
    /// The file it came from.
    pub path: PathBuf,
    /// The full manifest.
    pub manifest: Manifest,
    /// Enforce, shadow or canary.
    pub mode: Mode,
    /// With [`Mode::Canary`]: who is in its share.
    pub canary: Option<Canary>,
    /// The ids of the trusted keys that signed the module (see [`signing`]).
    pub signers: Vec<String>,
    /// Outcome when a call fails.
    pub on_failure: FailurePolicy,
    /// The fields the rule sees.
    pub projection: Projection,
    /// Catalog indices of the features it reads, in manifest order.
    pub features: Vec<usize>,
    /// The entity its keyed state belongs to (its manifest's `state`, the
    /// account by default), when it keeps state: the rule runs where that
    /// entity's state is. A rule that keeps none runs where the event is
    /// decided.
    pub home: Option<crate::event::KeyField>,
    params: Vec<u8>,
    /// The parameter values it runs with, by name, for the rule-set record.
    pub param_values: Vec<(String, ParamValue)>,
    lists: Arc<[Arc<List>]>,
    code: Code,
    health: Health,
    /// Instances made on the thread that loaded it, for workers to take up
    /// without instantiating themselves (see [`RuleRegistry::set_spares`]).
    spares: Mutex<Vec<Instance>>,
}

/// Which events a canary rule's outcome counts for: those whose entity
/// `key` falls in its share, by a hash of the entity's id salted with the
/// rule's name, so one entity is in or out on every event, in every run
/// and daemon, and different canaries pick different entities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Canary {
    /// The entity in or out as a whole.
    pub key: crate::event::KeyField,
    /// The share, in hundredths of a percent (0 to 10,000).
    pub basis_points: u32,
    salt: u64,
}

impl Canary {
    fn new(rule: &str, key: crate::event::KeyField, percent: f64) -> Self {
        Self {
            key,
            basis_points: (percent * 100.0).round().clamp(0.0, 10_000.0) as u32,
            salt: xxhash_rust::xxh3::xxh3_64(rule.as_bytes()),
        }
    }

    /// Whether the entity whose id hashes to `id_hash` (see
    /// [`Canary::id_hash`]) is in the share; an event without the entity
    /// is not.
    pub fn includes(&self, id_hash: Option<u64>) -> bool {
        id_hash.is_some_and(|h| {
            let mixed = xxhash_rust::xxh3::xxh3_64_with_seed(&h.to_le_bytes(), self.salt);
            (mixed % 10_000) < u64::from(self.basis_points)
        })
    }

    /// The hash of an entity id the share is taken over.
    pub fn id_hash(id: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(id.as_bytes())
    }
}

/// What runs a rule.
#[derive(Clone)]
enum Code {
    /// A WebAssembly module, compiled and linked.
    Wasm(InstancePre<HostState>),
    #[cfg(feature = "bench-native")]
    /// A rule crate linked into the host (see [`native`]).
    Native(vigil_sdk::Rule),
}

impl Code {
    /// Whether the rule may keep keyed state: a module that imports the
    /// state functions, or any native rule (nothing tells).
    fn keeps_state(&self) -> bool {
        match self {
            Code::Wasm(pre) => pre.module().imports().any(|i| {
                i.module() == vigil_abi::imports::MODULE
                    && [vigil_abi::imports::STATE_GET, vigil_abi::imports::STATE_PUT].contains(&i.name())
            }),
            #[cfg(feature = "bench-native")]
            Code::Native(_) => true,
        }
    }
}

impl std::fmt::Debug for LoadedRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedRule")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A rule version's health and counts since it loaded, for the admin
/// listener. Workers add to them once per batch.
#[derive(Debug)]
struct Health {
    consecutive: AtomicU32,
    failures: AtomicU64,
    quarantined: AtomicBool,
    /// Failures by [`RuleError::cause`], in [`CAUSES`] order.
    by_cause: [AtomicU64; CAUSES.len()],
    /// Each worker's counts of this rule.
    tallies: Mutex<Vec<Arc<Tally>>>,
}

/// One worker's counts of one rule, written by that worker alone once per
/// batch and summed when read: counters shared by the workers pass cache
/// lines between cores for every rule and event (the suite's row 9 at a
/// hundred rules shows it).
#[derive(Debug)]
#[repr(align(128))]
struct Tally {
    /// Outcomes, failed ones included.
    evaluations: AtomicU64,
    reviews: AtomicU64,
    blocks: AtomicU64,
    /// Time per event, averaged over each batch call.
    latency: crate::stats::Histogram,
}

impl Tally {
    /// Adds to a counter only this worker writes: no locked instruction.
    fn add(counter: &AtomicU64, n: u64) {
        if n > 0 {
            counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self {
            consecutive: AtomicU32::new(0),
            failures: AtomicU64::new(0),
            quarantined: AtomicBool::new(false),
            by_cause: Default::default(),
            tallies: Mutex::new(Vec::new()),
        }
    }
}

/// What a rule version did since it loaded ([`LoadedRule::counts`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleCounts {
    /// Events it gave an outcome for (failure outcomes included).
    pub evaluations: u64,
    /// Outcomes with action review.
    pub reviews: u64,
    /// Outcomes with action block.
    pub blocks: u64,
    /// Failed calls.
    pub failures: u64,
    /// Failed calls by cause, the causes seen.
    pub failures_by_cause: BTreeMap<&'static str, u64>,
    /// Whether it is quarantined.
    pub quarantined: bool,
}

impl LoadedRule {
    /// Whether the rule is quarantined.
    pub fn is_quarantined(&self) -> bool {
        self.health.quarantined.load(Ordering::Relaxed)
    }

    /// What it did since it loaded.
    pub fn counts(&self) -> RuleCounts {
        let h = &self.health;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let tallies = lock(&h.tallies);
        let sum = |f: fn(&Tally) -> &AtomicU64| tallies.iter().map(|t| load(f(t))).sum();
        RuleCounts {
            evaluations: sum(|t| &t.evaluations),
            reviews: sum(|t| &t.reviews),
            blocks: sum(|t| &t.blocks),
            failures: load(&h.failures),
            failures_by_cause: CAUSES
                .iter()
                .zip(&h.by_cause)
                .filter(|(_, n)| load(n) > 0)
                .map(|(c, n)| (*c, load(n)))
                .collect(),
            quarantined: self.is_quarantined(),
        }
    }

    /// Its time per event (averaged over each batch call), over every
    /// worker.
    pub fn latency(&self) -> crate::stats::Histogram {
        let all = crate::stats::Histogram::new(crate::stats::RULE_NS);
        for t in lock(&self.health.tallies).iter() {
            all.add(&t.latency);
        }
        all
    }

    /// A worker's counts of this rule, read with the others'.
    fn tally(&self) -> Arc<Tally> {
        let t = Arc::new(Tally {
            evaluations: AtomicU64::new(0),
            reviews: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            latency: crate::stats::Histogram::new(crate::stats::RULE_NS),
        });
        lock(&self.health.tallies).push(t.clone());
        t
    }

    /// Lifts a quarantine: the rule is called again from the next batch
    /// and quarantined again after as many consecutive failures. Returns
    /// whether it was quarantined.
    pub fn release(&self) -> bool {
        self.health.consecutive.store(0, Ordering::Relaxed);
        self.health.quarantined.swap(false, Ordering::Relaxed)
    }

    /// Its parameter values as a JSON object.
    pub fn params_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.param_values
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or(serde_json::Value::Null)))
            .collect()
    }

    /// The short module hash used in logs and records.
    pub fn short_hash(&self) -> &str {
        &self.hash[..16]
    }
}

/// The rules live at one moment, sorted by name.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Bumped on every change.
    pub generation: u64,
    /// The rules.
    pub rules: Vec<Arc<LoadedRule>>,
    /// The feature catalog as these rules read it: the features they read
    /// live, the inline ones no rule reads retired. Taken with the rules,
    /// so a batch never computes fewer features than its rules read.
    pub features: Arc<Vec<crate::features::Feature>>,
    /// What identifies the set in decision records: 16 hex digits of a
    /// SHA-256 over its [`RuleSet::record`] (empty for no rules).
    pub id: Arc<str>,
    /// The set as one JSON line of the rule-sets output: its id, and each
    /// rule's name, version, module hash, mode, failure outcome and
    /// parameters, with the features they read.
    pub record: Arc<str>,
}

impl RuleSet {
    fn new(generation: u64, rules: Vec<Arc<LoadedRule>>, features: Arc<Vec<crate::features::Feature>>) -> Self {
        #[derive(Serialize)]
        struct RuleEntry<'a> {
            rule: &'a str,
            version: &'a str,
            module: &'a str,
            mode: Mode,
            #[serde(skip_serializing_if = "Option::is_none")]
            canary_percent: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            canary_key: Option<crate::event::KeyField>,
            on_failure: FailurePolicy,
            params: serde_json::Map<String, serde_json::Value>,
            features: Vec<&'a str>,
        }
        let entries: Vec<RuleEntry<'_>> = rules
            .iter()
            .map(|r| RuleEntry {
                rule: &r.name,
                version: &r.version,
                module: &r.hash,
                mode: r.mode,
                canary_percent: r.canary.map(|c| f64::from(c.basis_points) / 100.0),
                canary_key: r.canary.map(|c| c.key),
                on_failure: r.on_failure,
                params: r.params_json(),
                features: r.features.iter().filter_map(|&i| features.get(i).map(|f| &*f.name)).collect(),
            })
            .collect();
        // Serialising plain data cannot fail.
        let rules_json = serde_json::to_string(&entries).unwrap_or_default();
        let id: Arc<str> = if rules.is_empty() { "".into() } else { module_hash(rules_json.as_bytes())[..16].into() };
        let record = format!(
            "{{\"schema\":{},\"rule_set\":{},\"rules\":{rules_json}}}\n",
            crate::decide::SCHEMA,
            serde_json::Value::from(&*id)
        )
        .into();
        drop(entries);
        Self { generation, rules, features, id, record }
    }
}

/// What a rescan did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Rules loaded or replaced: (name, version, file).
    pub loaded: Vec<(String, String, PathBuf)>,
    /// Files rejected, with the reason.
    pub rejected: Vec<(PathBuf, String)>,
    /// Rules unloaded because their file went away: (name, file).
    pub removed: Vec<(String, PathBuf)>,
}

#[derive(Debug)]
struct FileEntry {
    len: u64,
    modified: Option<SystemTime>,
    hash: String,
    /// Settings changed since it loaded: reload even if the file did not.
    stale: bool,
    /// Length and time of its signature file, if it has one: a new
    /// signature reloads it.
    sig: Option<(u64, Option<SystemTime>)>,
    /// The trusted keys (by [`RuleRegistry::set_trust`] count) its rules
    /// were approved under.
    trust_epoch: u64,
    /// The rules this file provides, if it loaded: its own, then the
    /// instances configured with `[rule.NAME] of = …`.
    rules: Vec<Arc<LoadedRule>>,
}

/// The rules folder and the live rule set.
pub struct RuleRegistry {
    sandbox: Sandbox,
    dir: PathBuf,
    /// The config's `[rule.*]` with [`RuleRegistry::modes`] applied.
    settings: Mutex<BTreeMap<String, RuleSettings>>,
    /// The config's `[rule.*]` as written.
    configured: Mutex<BTreeMap<String, RuleSettings>>,
    /// Modes set through the admin API, by rule name: they win over the
    /// config's.
    modes: Mutex<BTreeMap<String, Mode>>,
    default_on_failure: Mutex<FailurePolicy>,
    lists: Arc<Lists>,
    catalog: Arc<Catalog>,
    files: Mutex<BTreeMap<PathBuf, FileEntry>>,
    /// Rules linked into the host (see [`native`]), live beside the folder's.
    natives: Mutex<Vec<Arc<LoadedRule>>>,
    current: ArcSwap<RuleSet>,
    quarantine_after: u32,
    /// Instances to make of each new rule before it goes live.
    spares: AtomicUsize,
    /// Instances of rules workers no longer run, freed at the next rescan.
    retired: Mutex<Vec<Instance>>,
    /// The keys modules must be signed with, if any.
    trust: Mutex<signing::Trust>,
    /// How many times the trusted keys were set: a rule approved under
    /// other keys is not kept when its file is refused under these.
    trust_epoch: AtomicU64,
    /// Where changes are recorded and live modules archived (the daemon's;
    /// none in replays and checks).
    changes: std::sync::OnceLock<Arc<changes::ChangeLog>>,
    /// See [`RuleRegistry::keeping_state_per`].
    state_keys: Option<crate::config::StateKeys>,
}

impl std::fmt::Debug for RuleRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleRegistry").field("dir", &self.dir).finish_non_exhaustive()
    }
}

/// The SHA-256 of a module, hex: its identity in records and the cache.
pub fn module_hash(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// Logs what a rescan did: loads at info, rejections at error.
pub fn log_report(report: &ScanReport, registry: &RuleRegistry) {
    let set = registry.current();
    for (name, version, path) in &report.loaded {
        tracing::info!(rule = %name, version = %version, file = %path.display(), "rule loaded");
    }
    for (path, reason) in &report.rejected {
        let kept = set.rules.iter().find(|r| r.path == *path);
        match kept {
            Some(r) => tracing::error!(
                file = %path.display(), error = %reason, kept_version = %r.version,
                "rule file rejected; the previous version keeps running"
            ),
            None => tracing::error!(file = %path.display(), error = %reason, "rule file rejected"),
        }
    }
    for (name, path) in &report.removed {
        tracing::info!(rule = %name, file = %path.display(), "rule unloaded: its file was removed");
    }
}

/// A change-log entry about `rule` as it is now.
pub fn rule_entry(change: &str, rule: &LoadedRule, cause: &str) -> changes::Entry {
    changes::Entry {
        change: change.into(),
        rule: Some(rule.name.to_string()),
        version: Some(rule.version.to_string()),
        module: Some(rule.hash.to_string()),
        signers: rule.signers.clone(),
        file: Some(rule.path.display().to_string()),
        mode: Some(rule.mode.as_str().into()),
        params: Some(serde_json::Value::Object(rule.params_json())),
        cause: cause.into(),
        ..changes::Entry::default()
    }
}

/// Whether `path` names a rule module or a module's signature file, whose
/// changes the folder watch reloads.
pub fn is_rule_or_signature_file(path: &Path) -> bool {
    is_rule_file(path) || path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".wasm.sig"))
}

/// Whether `path` names a rule module the folder scan should consider.
pub fn is_rule_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && name.ends_with(".wasm")
}

impl RuleRegistry {
    /// A registry over `dir`; call [`RuleRegistry::rescan`] to load it.
    pub fn new(
        sandbox: Sandbox,
        dir: PathBuf,
        settings: BTreeMap<String, RuleSettings>,
        default_on_failure: FailurePolicy,
        quarantine_after: u32,
        lists: Arc<Lists>,
        catalog: Arc<Catalog>,
    ) -> Self {
        Self {
            sandbox,
            dir,
            settings: Mutex::new(settings.clone()),
            configured: Mutex::new(settings),
            modes: Mutex::new(BTreeMap::new()),
            default_on_failure: Mutex::new(default_on_failure),
            lists,
            catalog,
            files: Mutex::new(BTreeMap::new()),
            natives: Mutex::new(Vec::new()),
            current: ArcSwap::from_pointee(RuleSet::new(0, Vec::new(), Arc::default())),
            quarantine_after: quarantine_after.max(1),
            spares: AtomicUsize::new(1),
            retired: Mutex::new(Vec::new()),
            trust: Mutex::new(signing::Trust::default()),
            trust_epoch: AtomicU64::new(0),
            changes: std::sync::OnceLock::new(),
            state_keys: None,
        }
    }

    /// Refuses, as they load, the rules whose look-back features would be
    /// kept per a key not in `keys`, or whose keyed state per another than
    /// its deciding key (when it is `Some`): with a Kafka source, state
    /// follows the partitions of the topics keyed by those keys, so state
    /// per any other would be split between the daemons of a group.
    #[must_use]
    pub fn keeping_state_per(mut self, keys: Option<crate::config::StateKeys>) -> Self {
        self.state_keys = keys;
        self
    }

    /// Records every rule change from now on in `log`, and archives each
    /// module that goes live there.
    pub fn set_change_log(&self, log: Arc<changes::ChangeLog>) {
        let _ = self.changes.set(log);
    }

    /// Appends `entry` to the change log, if there is one.
    pub fn record_change(&self, entry: changes::Entry) {
        if let Some(log) = self.changes.get() {
            log.record(entry);
        }
    }

    /// Sets the keys modules must be signed with (`[rules]`
    /// `trusted-keys`, `require-signature`, `signatures-required`); every
    /// rule is checked against them at the next rescan.
    pub fn set_trust(&self, trust: signing::Trust) {
        {
            let mut held = lock(&self.trust);
            if *held == trust {
                return;
            }
            *held = trust;
        }
        self.trust_epoch.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).values_mut().for_each(|f| f.stale = true);
    }

    /// Whether modules must be signed, and with them their settings.
    pub fn signatures_required(&self) -> bool {
        lock(&self.trust).required()
    }

    /// The config's `[rule.NAME]` (defaults when it has none).
    pub fn configured(&self, name: &str) -> RuleSettings {
        lock(&self.configured).get(name).cloned().unwrap_or_default()
    }

    /// Makes `n` instances of each rule that goes live from now on — one
    /// per worker — on the thread that loads it, so a worker taking up a
    /// new rule set only swaps them in: the hot-swap pause is then no
    /// longer an instantiation (tens to hundreds of µs, more when the
    /// worker is preempted meanwhile).
    pub fn set_spares(&self, n: usize) {
        self.spares.store(n.max(1), Ordering::Relaxed);
    }

    /// The live rule set.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// The watched folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces per-rule settings (on config reload); every rule is reloaded
    /// with them at the next rescan.
    pub fn set_settings(&self, settings: BTreeMap<String, RuleSettings>, default_on_failure: FailurePolicy) {
        *lock(&self.configured) = settings;
        *lock(&self.default_on_failure) = default_on_failure;
        self.apply_modes();
        lock(&self.files).values_mut().for_each(|f| f.stale = true);
    }

    /// Sets the modes that win over the config's (the admin API's), by
    /// rule name; takes effect at the next [`RuleRegistry::rescan`], which
    /// reloads only the rules whose mode changed.
    pub fn set_modes(&self, modes: BTreeMap<String, Mode>) {
        let before = lock(&self.settings).clone();
        *lock(&self.modes) = modes;
        self.apply_modes();
        let after = lock(&self.settings).clone();
        let mode = |s: &BTreeMap<String, RuleSettings>, n: &str| s.get(n).map(|r| r.mode).unwrap_or_default();
        for f in lock(&self.files).values_mut() {
            if f.rules.iter().any(|r| mode(&before, &r.name) != mode(&after, &r.name)) {
                f.stale = true;
            }
        }
    }

    /// The modes that win over the config's.
    pub fn modes(&self) -> BTreeMap<String, Mode> {
        lock(&self.modes).clone()
    }

    /// The mode the config gives rule `name`.
    pub fn configured_mode(&self, name: &str) -> Mode {
        lock(&self.configured).get(name).map(|s| s.mode).unwrap_or_default()
    }

    fn apply_modes(&self) {
        let mut settings = lock(&self.configured).clone();
        for (name, mode) in lock(&self.modes).iter() {
            settings.entry(name.clone()).or_default().mode = *mode;
        }
        *lock(&self.settings) = settings;
    }

    /// The names of the modules the last scans rejected.
    pub fn rejected_files(&self) -> Vec<PathBuf> {
        lock(&self.files).iter().filter(|(_, f)| f.rules.is_empty()).map(|(p, _)| p.clone()).collect()
    }

    /// Brings the live rule set in line with the folder. Never fails as a
    /// whole: a file that cannot be loaded is reported and skipped, keeping
    /// the previous version of its rule.
    pub fn rescan(&self) -> ScanReport {
        // Freed after the lock is released: a worker taking up a rule set
        // hands its old instances over under this lock, and must not wait
        // for these to be freed (in one statement, the guard would live
        // until they were).
        let retired = std::mem::take(&mut *lock(&self.retired));
        drop(retired);
        let mut report = ScanReport::default();
        // Recorded in order, before the new set is published; when the scan
        // unloads a rule, after it, so that no event read after the log says
        // the rule went is decided by it (batches planned before keep the
        // set they were planned with).
        let mut changes: Vec<changes::Entry> = Vec::new();
        let mut files = lock(&self.files);
        let present = match list_rule_files(&self.dir) {
            Ok(p) => p,
            Err(e) => {
                report.rejected.push((self.dir.clone(), format!("cannot list the rules folder: {e}")));
                return report;
            }
        };
        // Files gone first: a rule whose file was renamed is unloaded from
        // the old one, then loaded from the new, and stays live in the log.
        let gone: Vec<PathBuf> = files.keys().filter(|p| !present.contains(*p)).cloned().collect();
        for path in gone {
            for rule in files.remove(&path).map(|e| e.rules).unwrap_or_default() {
                report.removed.push((rule.name.to_string(), path.clone()));
                let mut entry = rule_entry("unload", &rule, "file removed");
                entry.previous_module = entry.module.take();
                changes.push(entry);
            }
        }
        for path in &present {
            let Ok(meta) = std::fs::metadata(path) else {
                continue;
            };
            let (len, modified) = (meta.len(), meta.modified().ok());
            let sig = std::fs::metadata(signing::sig_path(path)).ok().map(|m| (m.len(), m.modified().ok()));
            if let Some(entry) = files.get(path)
                && entry.len == len
                && entry.modified == modified
                && entry.sig == sig
                && !entry.stale
            {
                continue;
            }
            let bytes = match std::fs::read(path) {
                Ok(b) => b,
                Err(e) => {
                    report.rejected.push((path.clone(), crate::error::chain(&RuleError::Io(e.into())).to_string()));
                    continue;
                }
            };
            let hash = module_hash(&bytes);
            let previous = files.get(path);
            if previous.is_some_and(|p| p.hash == hash && !p.stale && p.sig == sig) {
                if let Some(e) = files.get_mut(path) {
                    (e.len, e.modified) = (len, modified);
                }
                continue;
            }
            let natives = lock(&self.natives);
            let other_names: Vec<(String, PathBuf)> = files
                .iter()
                .filter(|(p, _)| *p != path && present.contains(p))
                .flat_map(|(p, e)| e.rules.iter().map(|r| (r.name.to_string(), p.clone())))
                .chain(natives.iter().map(|r| (r.name.to_string(), r.path.clone())))
                .collect();
            drop(natives);
            let result = self.load_with_instances(path, &bytes, &hash).and_then(|rules| {
                for rule in &rules {
                    if let Some((_, other)) = other_names.iter().find(|(n, _)| **n == *rule.name) {
                        return Err(RuleError::manifest(format!(
                            "rule name `{}` is already loaded from {}",
                            rule.name,
                            other.display()
                        )));
                    }
                }
                Ok(rules)
            });
            match result {
                Ok(rules) => {
                    for rule in &rules {
                        report.loaded.push((rule.name.to_string(), rule.version.to_string(), path.clone()));
                    }
                    if let Some(log) = self.changes.get() {
                        for rule in &rules {
                            let here = previous.and_then(|p| p.rules.iter().find(|r| r.name == rule.name));
                            // Live before: in this run, or as the log last had it
                            // (unless this scan unloaded it).
                            let unloaded =
                                changes.iter().any(|e| e.change == "unload" && e.rule.as_deref() == Some(&*rule.name));
                            let was = here
                                .map(|w| w.hash.to_string())
                                .or_else(|| if unloaded { None } else { log.live_module(&rule.name) });
                            let cause = match (previous, was.as_deref()) {
                                (None, None) => "file added",
                                (None, Some(w)) if w == hash => "daemon started",
                                (Some(p), _) if p.hash == hash && p.sig != sig => "signature changed",
                                (Some(p), _) if p.hash == hash => "settings changed",
                                (_, Some(w)) if w != hash && log.archived(&hash) => "rollback to a version live before",
                                _ => "file changed",
                            };
                            let change = match (here, was.as_deref()) {
                                (None, None) => "load",
                                (None, Some(w)) if w == hash => "load",
                                _ => "replace",
                            };
                            let mut entry = rule_entry(change, rule, cause);
                            entry.previous_module = was;
                            changes.push(entry);
                        }
                        log.archive(&hash, &bytes, path);
                    }
                    let rules = rules.into_iter().map(Arc::new).collect();
                    let trust_epoch = self.trust_epoch.load(Ordering::Relaxed);
                    files
                        .insert(path.clone(), FileEntry { len, modified, hash, stale: false, sig, trust_epoch, rules });
                }
                Err(e) => {
                    // A file still being written fails to compile; it is not
                    // broken yet, so wait for the write to finish.
                    let changed =
                        std::fs::metadata(path).map(|m| (m.len(), m.modified().ok())).ok() != Some((len, modified));
                    if changed {
                        continue;
                    }
                    // The previous version keeps running, unless it was
                    // approved under keys no longer trusted.
                    let now = self.trust_epoch.load(Ordering::Relaxed);
                    let approved = |p: &FileEntry| p.trust_epoch == now || !lock(&self.trust).required();
                    let (keep, trust_epoch) = match previous {
                        Some(p) if approved(p) => (p.rules.clone(), p.trust_epoch),
                        Some(p) => {
                            for rule in &p.rules {
                                tracing::error!(rule = %rule.name, file = %path.display(), error = %crate::error::chain(&e),
                                    "rule unloaded: not approved under the trusted keys now configured");
                                report.removed.push((rule.name.to_string(), path.clone()));
                                let mut entry =
                                    rule_entry("unload", rule, "not approved under the trusted keys now configured");
                                entry.previous_module = entry.module.take();
                                changes.push(entry);
                            }
                            (Vec::new(), now)
                        }
                        None => (Vec::new(), now),
                    };
                    let why = crate::error::chain(&e).to_string();
                    report.rejected.push((path.clone(), why.clone()));
                    changes.push(changes::Entry {
                        change: "refuse".into(),
                        module: Some(hash.clone()),
                        previous_module: previous.map(|p| p.hash.clone()),
                        file: Some(path.display().to_string()),
                        cause: why,
                        ..changes::Entry::default()
                    });
                    files.insert(
                        path.clone(),
                        FileEntry { len, modified, hash, stale: false, sig, trust_epoch, rules: keep },
                    );
                }
            }
        }
        let unloads = changes.iter().any(|e| e.change == "unload");
        if !unloads {
            for entry in changes.drain(..) {
                self.record_change(entry);
            }
        }
        self.publish(&files);
        for entry in changes {
            self.record_change(entry);
        }
        report
    }

    /// Publishes the folder's rules and the native ones, if they changed.
    fn publish(&self, files: &BTreeMap<PathBuf, FileEntry>) {
        let mut rules: Vec<Arc<LoadedRule>> = files.values().flat_map(|e| e.rules.iter().cloned()).collect();
        rules.extend(lock(&self.natives).iter().cloned());
        rules.sort_by(|a, b| a.name.cmp(&b.name));
        let old = self.current.load();
        let features = self.catalog.retain_used(|i| rules.iter().any(|r| r.features.contains(&i)));
        let same = old.rules.len() == rules.len()
            && old.rules.iter().zip(&rules).all(|(a, b)| Arc::ptr_eq(a, b))
            && old.features == features;
        if !same {
            let spares = self.spares.load(Ordering::Relaxed);
            for rule in rules.iter().filter(|r| !old.rules.iter().any(|o| Arc::ptr_eq(o, r))) {
                let mut made = lock(&rule.spares);
                while made.len() < spares {
                    // It instantiated once when loaded; a failure now is
                    // retried, and accounted for, where a worker calls it.
                    let Ok(instance) = rule.instantiate(&self.sandbox) else { break };
                    made.push(instance);
                }
            }
            self.current.store(Arc::new(RuleSet::new(old.generation + 1, rules, features)));
        }
    }

    #[cfg(feature = "bench-native")]
    /// Adds rule crates linked into the host (see [`native`]) to the live
    /// set, beside the folder's rules. They stay until the registry goes.
    ///
    /// # Errors
    /// The rule's name and why it cannot run, or that a live rule has its name.
    pub fn add_native(&self, rules: &[vigil_sdk::Rule]) -> Result<(), (String, RuleError)> {
        let files = lock(&self.files);
        for rule in rules {
            let name = rule.manifest.name.to_owned();
            let loaded = self.loader(&lock(&self.settings)).load_native(rule).map_err(|e| (name.clone(), e))?;
            let mut natives = lock(&self.natives);
            let taken =
                files.values().flat_map(|e| e.rules.iter()).chain(natives.iter()).find(|r| r.name == loaded.name);
            if let Some(other) = taken {
                let e =
                    RuleError::manifest(format!("rule name `{name}` is already loaded from {}", other.path.display()));
                return Err((name, e));
            }
            natives.push(Arc::new(loaded));
        }
        self.publish(&files);
        Ok(())
    }

    fn loader<'a>(&'a self, settings: &'a BTreeMap<String, RuleSettings>) -> Loader<'a> {
        Loader {
            sandbox: &self.sandbox,
            lists: &self.lists,
            catalog: &self.catalog,
            settings,
            default_on_failure: *lock(&self.default_on_failure),
            state_keys: self.state_keys.as_ref(),
        }
    }

    /// Loads and validates one module without publishing it.
    ///
    /// # Errors
    /// [`RuleError`] saying why the module cannot run.
    pub fn load(&self, path: &Path, bytes: &[u8], hash: &str) -> Result<LoadedRule, RuleError> {
        let settings = lock(&self.settings).clone();
        self.loader(&settings).load(path, bytes, hash)
    }

    /// Loads one module and the instances of its rule configured with
    /// `[rule.NAME] of = …`, the module's own rule first.
    fn load_with_instances(&self, path: &Path, bytes: &[u8], hash: &str) -> Result<Vec<LoadedRule>, RuleError> {
        let settings = lock(&self.settings).clone();
        let trust = lock(&self.trust).clone();
        if trust.required() {
            // The module's hash and signatures before it is compiled: an
            // unapproved module never runs, not even to read its manifest.
            trust.precheck(path, hash).map_err(|e| RuleError::Signature(e.into()))?;
        }
        let loader = self.loader(&settings);
        let rule = loader.load(path, bytes, hash)?;
        let covered = signing::covered_settings(&rule.name, &settings, *lock(&self.default_on_failure));
        let signers = match trust.verify(path, hash, &rule.name, &rule.version, &covered) {
            Ok(signers) => signers,
            Err(e) if trust.required() => return Err(RuleError::Signature(e.into())),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %crate::error::chain(&e),
                    "the module's signature file does not fit it; loaded anyway, as no signature is required");
                Vec::new()
            }
        };
        let mut rules = loader.instances(&rule)?;
        rules.insert(0, rule);
        for r in &mut rules {
            r.signers.clone_from(&signers);
        }
        Ok(rules)
    }

    /// The names configured under `[rule.*]` that no loaded rule has, each
    /// with the rule it is an instance of (`of`), if it is one.
    pub fn unmatched_settings(&self) -> Vec<(String, Option<String>)> {
        let set = self.current();
        lock(&self.configured)
            .iter()
            .filter(|(k, _)| !set.rules.iter().any(|r| *r.name == **k))
            .map(|(k, s)| (k.clone(), s.of.clone()))
            .collect()
    }
}

/// Reads and checks a module's manifest from an instance with no
/// parameters applied; returns it with the fields it declares.
///
/// # Errors
/// [`RuleError`] when the module does not instantiate or its manifest is bad.
pub fn read_manifest(sandbox: &Sandbox, pre: &InstancePre<HostState>) -> Result<(Manifest, FieldMask), RuleError> {
    let json = sandbox.instantiate_unconfigured(pre)?.manifest_json()?;
    let manifest: Manifest = serde_json::from_str(&json)
        .map_err(|e| RuleError::Manifest { what: json.clone().into(), source: source(e) })?;
    let mask = check_manifest(&manifest)?;
    Ok((manifest, mask))
}

/// What loading a rule needs besides its file.
#[derive(Debug, Clone, Copy)]
pub struct Loader<'a> {
    /// The sandbox to compile and run it in.
    pub sandbox: &'a Sandbox,
    /// Lists it may use.
    pub lists: &'a Lists,
    /// Features it may read.
    pub catalog: &'a Catalog,
    /// Per-rule settings from the config.
    pub settings: &'a BTreeMap<String, RuleSettings>,
    /// Failure outcome for rules that set none.
    pub default_on_failure: FailurePolicy,
    /// The keys rules may keep features and state per, when not every
    /// key (see [`RuleRegistry::keeping_state_per`]).
    pub state_keys: Option<&'a crate::config::StateKeys>,
}

impl Loader<'_> {
    /// Compiles, validates and configures one module: everything short of
    /// publishing it.
    ///
    /// # Errors
    /// [`RuleError`] saying why the module cannot run.
    pub fn load(&self, path: &Path, bytes: &[u8], hash: &str) -> Result<LoadedRule, RuleError> {
        let pre = self.sandbox.prepare(bytes, hash)?;
        let (manifest, mask) = read_manifest(self.sandbox, &pre)?;
        let name = manifest.name.clone();
        self.finish(path, hash, &name, manifest, mask, Code::Wasm(pre))
    }

    /// The further instances of `rule` configured with `[rule.NAME] of =
    /// "<its name>"`, each under its own name and settings.
    ///
    /// # Errors
    /// The first that cannot run, naming its `[rule.NAME]`.
    pub fn instances(&self, rule: &LoadedRule) -> Result<Vec<LoadedRule>, RuleError> {
        let mask = check_manifest(&rule.manifest)?;
        self.settings
            .iter()
            .filter(|(name, s)| s.of.as_deref() == Some(&*rule.name) && **name != *rule.name)
            .map(|(name, _)| {
                self.finish(&rule.path, &rule.hash, name, rule.manifest.clone(), mask, rule.code.clone())
                    .map_err(|e| e.in_instance(name, &rule.name))
            })
            .collect()
    }

    #[cfg(feature = "bench-native")]
    /// Validates and configures a rule crate linked into the host, as
    /// [`Loader::load`] does a module; its path reads `native:NAME`.
    ///
    /// # Errors
    /// [`RuleError`] saying why the rule cannot run.
    pub fn load_native(&self, rule: &vigil_sdk::Rule) -> Result<LoadedRule, RuleError> {
        let json = rule.manifest.to_json();
        let manifest: Manifest = serde_json::from_str(&json)
            .map_err(|e| RuleError::Manifest { what: json.clone().into(), source: source(e) })?;
        let mask = check_manifest(&manifest)?;
        let path = PathBuf::from(format!("native:{}", manifest.name));
        let name = manifest.name.clone();
        self.finish(&path, &module_hash(json.as_bytes()), &name, manifest, mask, Code::Native(*rule))
    }

    /// Refuses a rule that reads `features` or keeps its state per `home`
    /// when either is kept per a key [`Loader::state_keys`] does not allow.
    fn check_state_key(&self, features: &[usize], home: Option<crate::event::KeyField>) -> Result<(), RuleError> {
        let Some(allowed) = self.state_keys else {
            return Ok(());
        };
        let catalog = self.catalog.snapshot();
        for f in features.iter().filter_map(|&i| catalog.get(i)) {
            if let Some(other) = f.spec.fields().find(|k| !allowed.keys.contains(k)) {
                let what = format!("its feature `{}`", f.name);
                return Err(RuleError::config(crate::features::not_kept(&what, other, allowed)));
            }
        }
        match home {
            Some(home) if home != allowed.deciding => Err(RuleError::config(format!(
                "its keyed state (`state = …` in `#[rule]`) is kept per {home}, but with a Kafka source rules run \
                 where an event's last key in kafka.state-keys is owned, and keep state only per that key \
                 ({deciding}); keep it per {deciding}, or list {home} last in kafka.state-keys",
                home = home.name(),
                deciding = allowed.deciding.name(),
            ))),
            _ => Ok(()),
        }
    }

    /// Resolves the settings, parameters, lists and features of the rule
    /// `name` runs (its manifest's, or an instance's).
    fn finish(
        &self,
        path: &Path,
        hash: &str,
        name: &str,
        manifest: Manifest,
        mask: FieldMask,
        code: Code,
    ) -> Result<LoadedRule, RuleError> {
        let settings = self.settings.get(name).cloned().unwrap_or_default();
        let (params, param_values) = resolve_params(name, &manifest, &settings)?;
        let mut resolved = Vec::with_capacity(manifest.lists.len());
        for name in &manifest.lists {
            let list = self.lists.get(name).ok_or_else(|| {
                RuleError::config(format!(
                    "uses list `{name}`, which is not configured; add [lists.{name}] with a path to the config"
                ))
            })?;
            resolved.push(list);
        }
        let lists: Arc<[Arc<List>]> = resolved.into();
        let features = manifest
            .features
            .iter()
            .map(|f| self.catalog.resolve(f).map_err(|e| RuleError::manifest(crate::error::chain(&e).to_string())))
            .collect::<Result<Vec<usize>, RuleError>>()?;
        let home = code.keeps_state().then(|| {
            manifest
                .state
                .as_deref()
                .and_then(crate::event::KeyField::from_name)
                .unwrap_or(crate::event::KeyField::Account)
        });
        // A native rule may keep state whether or not it does (nothing
        // tells); only the state it declares is checked.
        let declared = match &code {
            Code::Wasm(_) => home,
            #[cfg(feature = "bench-native")]
            Code::Native(_) => home.filter(|_| manifest.state.is_some()),
        };
        self.check_state_key(&features, declared)?;
        let canary = match (settings.mode, settings.canary_percent) {
            (Mode::Canary, Some(p)) => {
                Some(Canary::new(name, settings.canary_key.unwrap_or(crate::event::KeyField::Account), p))
            }
            (Mode::Canary, None) => {
                return Err(RuleError::config(format!(
                    "`rule.{name}` is in canary mode without a share: set rule.{name}.canary-percent"
                )));
            }
            _ => None,
        };
        let rule = LoadedRule {
            name: name.into(),
            version: manifest.version.as_str().into(),
            hash: hash.into(),
            path: path.to_owned(),
            mode: settings.mode,
            canary,
            signers: Vec::new(),
            on_failure: settings.on_failure.unwrap_or(self.default_on_failure),
            projection: Projection::new(mask),
            features,
            home,
            params,
            param_values,
            lists,
            code,
            health: Health::default(),
            spares: Mutex::new(Vec::new()),
            manifest,
        };
        // Configure once with the real parameters, exactly as workers will;
        // the first worker to take the rule up takes this instance.
        let first = rule.instantiate(self.sandbox)?;
        lock(&rule.spares).push(first);
        Ok(rule)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn list_rule_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if is_rule_file(&path) && entry.file_type().is_ok_and(|t| t.is_file()) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// The most features one rule may declare.
pub const MAX_RULE_FEATURES: usize = 64;

fn check_manifest(m: &Manifest) -> Result<FieldMask, RuleError> {
    if m.abi != vigil_abi::ABI_VERSION {
        return Err(RuleError::manifest(format!("manifest is for ABI v{}", m.abi)));
    }
    let valid_name =
        |s: &str| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid_name(&m.name) {
        return Err(RuleError::manifest(format!(
            "rule name {:?} must be 1-64 characters of letters, digits, `-`, `_` or `.`",
            m.name
        )));
    }
    if m.features.len() > MAX_RULE_FEATURES {
        return Err(RuleError::manifest(format!(
            "declares {} features; a rule may read at most {MAX_RULE_FEATURES}",
            m.features.len()
        )));
    }
    if let Some(state) = &m.state
        && crate::event::KeyField::from_name(state).is_none()
    {
        return Err(RuleError::manifest(format!(
            "state belongs to unknown entity `{state}`; it is one of card, account, counterparty, device, ip, merchant"
        )));
    }
    let mut mask = FieldMask::NONE;
    for f in &m.fields {
        let field = Field::from_name(f).ok_or_else(|| RuleError::manifest(format!("unknown field `{f}`")))?;
        mask = mask.with(field);
    }
    Ok(mask)
}

/// A rule's parameters as (name, value), in the manifest's order.
type ParamValues = Vec<(String, ParamValue)>;

/// Resolves a rule's parameters: defaults from its manifest, overridden by
/// `[rule.NAME.params]`, type-checked; returned encoded for
/// `vigil_configure` and as values for the rule-set record.
fn resolve_params(name: &str, m: &Manifest, settings: &RuleSettings) -> Result<(Vec<u8>, ParamValues), RuleError> {
    // Config keys are kebab-case, Rust parameter names snake_case: both match.
    let norm = |k: &str| k.replace('-', "_");
    for key in settings.params.keys() {
        if !m.params.iter().any(|p| norm(&p.name) == norm(key)) {
            let known: Vec<&str> = m.params.iter().map(|p| p.name.as_str()).collect();
            return Err(RuleError::config(format!(
                "`rule.{}.params.{key}`: the rule has no such parameter (it has: {})",
                name,
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )));
        }
    }
    let mut out = Vec::new();
    let mut values = Vec::with_capacity(m.params.len());
    for p in &m.params {
        let given = settings.params.iter().find(|(k, _)| norm(k) == norm(&p.name)).map(|(_, v)| v);
        let value = match given {
            None => coerce(&p.default, p.ty)
                .ok_or_else(|| RuleError::manifest(format!("default of `{}` is not a {}", p.name, p.ty)))?,
            Some(v) => toml_param(v, p.ty).ok_or_else(|| {
                let finite = if p.ty == ParamType::Float { " (a finite number)" } else { "" };
                RuleError::config(format!("`rule.{}.params.{}` must be {}{finite}, got {v}", name, p.name, p.ty))
            })?,
        };
        vigil_abi::params::encode_one(&p.name, &value, &mut out);
        values.push((p.name.clone(), value));
    }
    Ok((out, values))
}

fn coerce(v: &ParamValue, ty: ParamType) -> Option<ParamValue> {
    match (v, ty) {
        (ParamValue::Int(i), ParamType::Float) => Some(ParamValue::Float(*i as f64)),
        (v, ty) if v.ty() == ty => Some(v.clone()),
        _ => None,
    }
}

fn toml_param(v: &toml::Value, ty: ParamType) -> Option<ParamValue> {
    match (v, ty) {
        (toml::Value::Integer(i), ParamType::Int) => Some(ParamValue::Int(*i)),
        (toml::Value::Integer(i), ParamType::Float) => Some(ParamValue::Float(*i as f64)),
        // NaN and infinities compare and serialise oddly (a signature
        // could not tell them apart): a parameter is a finite number.
        (toml::Value::Float(x), ParamType::Float) if x.is_finite() => Some(ParamValue::Float(*x)),
        (toml::Value::Boolean(b), ParamType::Bool) => Some(ParamValue::Bool(*b)),
        (toml::Value::String(s), ParamType::Str) => Some(ParamValue::Str(s.clone())),
        _ => None,
    }
}

struct Slot {
    rule: Arc<LoadedRule>,
    instance: Option<Instance>,
    /// What its outcomes carry (interned: see [`crate::decide::RuleLabel::intern`]).
    label: &'static crate::decide::RuleLabel,
    /// The rule's keyed state on this worker; it outlives versions.
    state: RuleState,
    /// This worker's counts of the rule.
    tally: Arc<Tally>,
}

impl LoadedRule {
    /// A fresh instance of this rule, as a worker gets.
    ///
    /// # Errors
    /// [`RuleError`] when instantiation fails.
    pub fn instantiate(&self, sandbox: &Sandbox) -> Result<Instance, RuleError> {
        match &self.code {
            Code::Wasm(pre) => {
                let mut instance = sandbox.instantiate(pre, self.lists.clone(), &self.params)?;
                instance.set_log(sandbox.rule_log(&self.name, &self.version));
                Ok(Instance::Wasm(instance))
            }
            #[cfg(feature = "bench-native")]
            Code::Native(rule) => {
                native::NativeInstance::new(rule, &self.params, self.lists.clone()).map(Instance::Native)
            }
        }
    }

    /// Instances made for workers and not yet taken up by one (see
    /// [`RuleRegistry::set_spares`]).
    pub fn ready_instances(&self) -> usize {
        lock(&self.spares).len()
    }

    /// Whether the rule is linked into the host rather than a wasm module
    /// (only with the `bench-native` feature).
    pub fn is_native(&self) -> bool {
        !matches!(self.code, Code::Wasm(_))
    }
}

/// One worker's instance of a rule.
#[derive(Debug)]
pub enum Instance {
    /// A wasm instance in its sandbox.
    Wasm(RuleInstance),
    #[cfg(feature = "bench-native")]
    /// A rule linked into the host.
    Native(native::NativeInstance),
}

impl Instance {
    /// Evaluates one encoded event, showing the rule only the fields in
    /// `projection`, with the rule's feature values.
    ///
    /// # Errors
    /// [`RuleError`] on a failed call; the instance must not be used again.
    pub fn call(
        &mut self,
        event: &[u8],
        projection: &Projection,
        features: &[f64],
    ) -> Result<sandbox::CallResult, RuleError> {
        match self {
            Instance::Wasm(i) => i.call(event, projection, features),
            #[cfg(feature = "bench-native")]
            Instance::Native(i) => i.call(event, projection, features),
        }
    }

    /// Evaluates events `from..` of `batch` in order, each with the rule's
    /// `features` (catalog indices) from the batch, pushing each result and
    /// the time it ended to `results`. A module that takes batches gets
    /// several events a call; others, and native rules, one.
    ///
    /// # Errors
    /// The [`RuleError`] of the event after the last result pushed; the
    /// instance must not be used again.
    pub fn call_batch(
        &mut self,
        batch: &Batch,
        from: usize,
        projection: &Projection,
        features: &[usize],
        results: &mut Results,
    ) -> Result<(), RuleError> {
        match self {
            Instance::Wasm(i) if i.takes_batches() => return i.call_batch(batch, from, projection, features, results),
            #[cfg(feature = "bench-native")]
            Instance::Native(i) => return i.call_batch(batch, from, projection, features, results),
            Instance::Wasm(_) => {}
        }
        for i in from..batch.len() {
            let budget = results.budget(i);
            if budget == 0 {
                // The caller gives it its failure outcome, without a call.
                return Ok(());
            }
            self.set_event(batch.partitions[i], batch.times[i], batch.entity(i));
            results.features.clear();
            results.features.extend(features.iter().map(|&f| batch.value(i, f)));
            let (event, features) = (&batch.encoded[i], &results.features);
            let (result, used) = match self {
                Instance::Wasm(w) => {
                    let given = budget.min(w.budget());
                    let result = w.call_with(event, projection, features, given)?;
                    (result, given.saturating_sub(w.fuel_left()))
                }
                #[cfg(feature = "bench-native")]
                Instance::Native(n) => (n.call(event, projection, features)?, 0),
            };
            results.calls.push(result);
            results.ends.push(results.clock.raw());
            results.fuel.push(used);
        }
        Ok(())
    }

    /// Sets the event the next call is for: its input partition, whose
    /// keyed state the rule then writes, its event time and its entity's
    /// key.
    pub fn set_event(&mut self, partition: u32, ts_ms: i64, entity: &[u8]) {
        match self {
            Instance::Wasm(i) => i.set_event(partition, ts_ms, entity),
            #[cfg(feature = "bench-native")]
            Instance::Native(i) => i.set_event(partition, ts_ms, entity),
        }
    }

    /// Lends a rule's keyed state to the instance for the next calls.
    pub fn lend_state(&mut self, state: RuleState) {
        match self {
            Instance::Wasm(i) => i.lend_state(state),
            #[cfg(feature = "bench-native")]
            Instance::Native(i) => i.lend_state(state),
        }
    }

    /// Takes the keyed state back.
    pub fn take_state(&mut self) -> RuleState {
        match self {
            Instance::Wasm(i) => i.take_state(),
            #[cfg(feature = "bench-native")]
            Instance::Native(i) => i.take_state(),
        }
    }

    /// Fuel the last call used; none for a native rule.
    pub fn last_fuel_used(&self) -> Option<u64> {
        match self {
            Instance::Wasm(i) => Some(i.last_fuel_used()),
            #[cfg(feature = "bench-native")]
            Instance::Native(_) => None,
        }
    }
}

/// What a run of rule calls produced ([`Instance::call_batch`]).
#[derive(Debug)]
pub struct Results {
    /// One result per event, in order.
    pub calls: Vec<sandbox::CallResult>,
    /// The clock's raw reading as each call ended.
    pub ends: Vec<u64>,
    /// Fuel each call used (none for native rules).
    pub fuel: Vec<u64>,
    /// Reads the CPU's time-stamp counter.
    pub clock: quanta::Clock,
    /// Fuel each event of the batch has left of its budget across all
    /// rules, by index in the batch; none listed: no such budget.
    pub remaining: Vec<u64>,
    /// One event's feature values, for calls made one event at a time.
    features: Vec<f64>,
}

impl Results {
    /// Empty results, stamped by `clock`.
    pub fn new(clock: quanta::Clock) -> Self {
        Self {
            calls: Vec::new(),
            ends: Vec::new(),
            fuel: Vec::new(),
            clock,
            remaining: Vec::new(),
            features: Vec::new(),
        }
    }

    /// Forgets the results, keeping the buffers (and the budgets).
    pub fn clear(&mut self) {
        self.calls.clear();
        self.ends.clear();
        self.fuel.clear();
    }

    /// Fuel event `i` of the batch has left across all rules.
    pub fn budget(&self, i: usize) -> u64 {
        self.remaining.get(i).copied().unwrap_or(u64::MAX)
    }
}

/// One worker's rule runner.
pub struct Evaluator {
    registry: Arc<RuleRegistry>,
    generation: u64,
    slots: Vec<Slot>,
    /// Keyed state of rules not loaded now, kept for when they come back
    /// (and still checkpointed).
    parked: BTreeMap<String, RuleState>,
    /// The input partition restored entries are loaded as.
    partition: u32,
    /// Each call's result and end, timed from the CPU's time-stamp counter.
    results: Results,
    /// Fuel one event may use across all rules (`rules.event-budget`).
    event_budget: u64,
    /// Bytes each rule's keyed state may take (`rules.state-max-bytes`).
    state_max_bytes: usize,
    /// Whether outcomes that change nothing are left out (see
    /// [`Evaluator::leaving_out_quiet`]).
    leave_out_quiet: bool,
    /// How long a keyed-state entry outlives its last write, in event time
    /// (`rules.state-ttl`).
    state_ttl_ms: i64,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evaluator").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl Evaluator {
    /// A runner that follows `registry`'s live rule set.
    pub fn new(registry: Arc<RuleRegistry>) -> Self {
        let mut e = Self {
            registry,
            generation: u64::MAX,
            slots: Vec::new(),
            parked: BTreeMap::new(),
            partition: 0,
            results: Results::new(quanta::Clock::new()),
            event_budget: u64::MAX,
            state_max_bytes: state::STATE_MAX_BYTES,
            leave_out_quiet: false,
            state_ttl_ms: i64::MAX,
        };
        e.refresh();
        e
    }

    /// Bounds the fuel one event may use across all rules: once it is
    /// spent, the event's remaining rules get their failure outcome
    /// without a call.
    #[must_use]
    pub fn with_event_budget(mut self, fuel: u64) -> Self {
        self.event_budget = fuel;
        self
    }

    /// Forgets a keyed-state entry once it has not been written for `ttl`
    /// of event time (see [`Evaluator::age_state`]).
    #[must_use]
    pub fn with_state_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.state_ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        for state in self.slots.iter_mut().map(|s| &mut s.state).chain(self.parked.values_mut()) {
            state.set_ttl(self.state_ttl_ms);
        }
        self
    }

    /// Bounds each rule's keyed state on this worker to `bytes`.
    #[must_use]
    pub fn with_state_limit(mut self, bytes: usize) -> Self {
        self.state_max_bytes = bytes;
        for state in self.slots.iter_mut().map(|s| &mut s.state).chain(self.parked.values_mut()) {
            state.set_max_bytes(bytes);
        }
        self
    }

    /// Leaves out of [`Evaluator::evaluate`]'s lists the outcomes of
    /// enforcing rules that allowed with no score, reason or error: they
    /// change no decision, and a compact record does not list them
    /// ([`crate::decide::RuleOutcome::is_quiet`]). With a hundred rules,
    /// making, moving and dropping them was most of the outcomes' cost.
    #[must_use]
    pub fn leaving_out_quiet(mut self, leave_out: bool) -> Self {
        self.leave_out_quiet = leave_out;
        self
    }

    /// The entities the live rules' state belongs to: where each group of
    /// them runs (see [`Evaluator::evaluate_home`]).
    pub fn homes(&self) -> smallvec::SmallVec<[Option<crate::event::KeyField>; 2]> {
        let mut homes = smallvec::SmallVec::new();
        for s in &self.slots {
            if !homes.contains(&s.rule.home) {
                homes.push(s.rule.home);
            }
        }
        homes
    }

    /// Whether a live rule is a canary, so events need
    /// [`Batch::set_canary_ids`].
    pub fn canaries(&self) -> bool {
        self.slots.iter().any(|s| s.rule.canary.is_some())
    }

    /// Whether some live rule enforces and is not quarantined: without
    /// one, the final decision is no rule's — except for an event in a
    /// canary's share, which that canary decides.
    pub fn enforcing(&self) -> bool {
        self.slots.iter().any(|s| s.rule.mode == crate::decide::Mode::Enforce && !s.rule.is_quarantined())
    }

    /// Picks up a new rule set, if any, and instantiates its new rules;
    /// true when it did. Call between events only.
    pub fn refresh(&mut self) -> bool {
        let set = self.registry.current();
        self.refresh_to(&set)
    }

    /// Takes up `set` (a rule set the registry published), instantiating
    /// its new rules, unless it is the one in use; true when it did. Every
    /// worker takes up the same set for the same batch. Call between
    /// events only.
    pub fn refresh_to(&mut self, set: &RuleSet) -> bool {
        if set.generation == self.generation {
            return false;
        }
        let mut old = std::mem::take(&mut self.slots);
        for rule in &set.rules {
            let reuse = old.iter().position(|s| Arc::ptr_eq(&s.rule, rule));
            let slot = match reuse {
                Some(i) => old.swap_remove(i),
                None => {
                    // A new version takes over the keyed state of the old.
                    let mut state = match old.iter().position(|s| *s.label.rule == *rule.name) {
                        Some(i) => std::mem::take(&mut old[i].state),
                        None => self.parked.remove(&*rule.name).unwrap_or_default(),
                    };
                    state.set_max_bytes(self.state_max_bytes);
                    state.set_ttl(self.state_ttl_ms);
                    // Taken in a statement of its own, so the lock is not
                    // held while an instance is made below.
                    let spare = lock(&rule.spares).pop();
                    Slot {
                        label: crate::decide::RuleLabel::intern(
                            &rule.name,
                            &rule.version,
                            rule.short_hash(),
                            &crate::decide::rendered_head(&rule.name, &rule.version, rule.short_hash(), rule.mode),
                        ),
                        // Made when the rule loaded, else now rather than at
                        // the first call; a failure is retried, and
                        // accounted for, at the call.
                        instance: spare.or_else(|| rule.instantiate(&self.registry.sandbox).ok()),
                        tally: rule.tally(),
                        rule: rule.clone(),
                        state,
                    }
                }
            };
            self.slots.push(slot);
        }
        let mut retired = Vec::new();
        for gone in old {
            if !gone.state.is_empty() && !self.slots.iter().any(|s| s.label.rule == gone.label.rule) {
                self.parked.insert(gone.label.rule.to_string(), gone.state);
            }
            retired.extend(gone.instance);
        }
        // Freeing an instance (its store and linear memory) takes tens of
        // µs; the next rescan does it, off the event path.
        lock(&self.registry.retired).append(&mut retired);
        self.generation = set.generation;
        true
    }

    /// Keyed-state changes of every rule since the last call, for a
    /// checkpoint, each with the input partition that wrote it.
    pub fn take_state_delta(&mut self, worker: u16) -> Vec<crate::state::RuleStateDelta> {
        let mut out = Vec::new();
        let named = self.slots.iter_mut().map(|s| (s.label.rule.to_string(), &mut s.state));
        for (rule, state) in named.chain(self.parked.iter_mut().map(|(n, s)| (n.clone(), s))) {
            out.extend(state.take_dirty().into_iter().map(|(key, partition, value)| crate::state::RuleStateDelta {
                rule: rule.clone(),
                key,
                worker,
                partition,
                value,
            }));
        }
        out
    }

    /// Frees the keyed-state entries no event sees any more: not written
    /// for `rules.state-ttl` before the newest event time.
    pub fn age_state(&mut self) {
        for state in self.slots.iter_mut().map(|s| &mut s.state).chain(self.parked.values_mut()) {
            state.expire();
        }
    }

    /// Loads one keyed-state entry from a checkpoint, as written from the
    /// current partition (see [`Evaluator::set_partition`]).
    pub fn restore_state(&mut self, rule: &str, key: &[u8], value: &[u8], changed: bool) {
        let partition = self.partition;
        let state = match self.slots.iter_mut().find(|s| &*s.label.rule == rule) {
            Some(slot) => &mut slot.state,
            None => self.parked.entry(rule.to_owned()).or_default(),
        };
        state.set_max_bytes(self.state_max_bytes);
        state.set_ttl(self.state_ttl_ms);
        state.set_partition(partition);
        state.restore(key, value, changed);
    }

    /// Sets the input partition that [`Evaluator::restore_state`] loads
    /// entries as. (Events carry their own: see [`Batch::push`].)
    pub fn set_partition(&mut self, partition: u32) {
        self.partition = partition;
    }

    /// Forgets every rule's keyed state last written from one of
    /// `partitions` (moved to another daemon).
    pub fn drop_partitions(&mut self, partitions: &[u32]) {
        for state in self.slots.iter_mut().map(|s| &mut s.state).chain(self.parked.values_mut()) {
            state.drop_partitions(partitions);
        }
    }

    /// The generation of the rule set in use.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Catalog indices of the features some live rule reads.
    pub fn used_features(&self) -> Vec<usize> {
        let mut used: Vec<usize> = self.slots.iter().flat_map(|s| s.rule.features.iter().copied()).collect();
        used.sort_unstable();
        used.dedup();
        used
    }

    /// Runs every rule on each event of `batch`, leaving event `i`'s
    /// outcomes, one per rule in rule order, in `out[i]` (but for those
    /// [`Evaluator::leaving_out_quiet`] leaves out).
    ///
    /// Rule by rule: one rule's instance, code and linear memory stay in
    /// the cache across the batch, instead of five rules and the feature
    /// and record work of each event taking turns. A rule sees the events
    /// in their order, so its keyed state and its run of failures evolve as
    /// they would event by event.
    pub fn evaluate(&mut self, batch: &Batch, out: &mut Vec<Vec<RuleOutcome>>) {
        self.evaluate_home(batch, None, out);
    }

    /// [`Evaluator::evaluate`] for the rules of one home (all of them with
    /// `None`; see [`LoadedRule::home`]): those run together, where that
    /// entity's state is.
    /// The event budget is shared out between homes by their number of
    /// rules, so an event's rules together still spend at most all of it.
    pub fn evaluate_home(
        &mut self,
        batch: &Batch,
        home: Option<Option<crate::event::KeyField>>,
        out: &mut Vec<Vec<RuleOutcome>>,
    ) {
        if out.len() < batch.len() {
            out.resize_with(batch.len(), Vec::new);
        }
        for o in &mut out[..batch.len()] {
            o.clear();
        }
        let runs = |s: &Slot| home.is_none_or(|h| s.rule.home == h);
        let (group, all) = (self.slots.iter().filter(|s| runs(s)).count(), self.slots.len());
        let budget = match group == all {
            true => self.event_budget,
            false => (u128::from(self.event_budget) * group as u128 / all.max(1) as u128) as u64,
        };
        // Only when the event budget can bind: with every rule's call
        // budget together within it, no event can run it out, and the calls
        // need not measure what each event used.
        self.results.remaining.clear();
        let wasm = self.slots.iter().filter(|s| runs(s) && !s.rule.is_native()).count() as u64;
        let most = wasm.saturating_mul(self.registry.sandbox.fuel_per_call());
        if most > budget {
            self.results.remaining.resize(batch.len(), budget);
        }
        for slot in self.slots.iter_mut().filter(|s| runs(s)) {
            if let Some(instance) = &mut slot.instance {
                instance.lend_state(std::mem::take(&mut slot.state));
            }
            let mut from = 0;
            // Counted here and added to this worker's counts of the rule
            // once per batch.
            let (mut reviews, mut blocks) = (0u64, 0u64);
            let mut count = |action: vigil_abi::Action| {
                reviews += u64::from(action == vigil_abi::Action::Review);
                blocks += u64::from(action == vigil_abi::Action::Block);
            };
            let began = self.results.clock.raw();
            while from < batch.len() {
                let results = &mut self.results;
                if results.budget(from) == 0 {
                    count(slot.rule.on_failure.action());
                    out[from].push(slot.failed(RuleError::EventBudget, 0, batch, from));
                    from += 1;
                    continue;
                }
                // One clock read per event: each event's time ends where
                // the next one's starts. The time-stamp counter, read raw
                // and scaled only for the difference, costs less than half
                // the system's monotonic clock (see `decide::WallClock`).
                results.clear();
                let mut start = results.clock.raw();
                let run = slot.run(&self.registry, batch, from, results);
                let rule = &slot.rule;
                if !results.calls.is_empty() && rule.health.consecutive.load(Ordering::Relaxed) != 0 {
                    rule.health.consecutive.store(0, Ordering::Relaxed);
                }
                // Field by field, in place: moving each result out whole
                // (`drain`) copied it through the stack in pieces of
                // different widths, which stalled store forwarding.
                if !results.remaining.is_empty() {
                    for (left, used) in results.remaining[from..].iter_mut().zip(&results.fuel) {
                        *left = left.saturating_sub(*used);
                    }
                }
                for r in &results.calls {
                    count(r.action);
                }
                let quiet_allowed = self.leave_out_quiet && rule.mode == crate::decide::Mode::Enforce;
                for (r, &end) in results.calls.iter_mut().zip(&results.ends) {
                    if quiet_allowed && crate::decide::says_nothing(r.action, r.score, &r.reasons) {
                        start = end;
                        from += 1;
                        continue;
                    }
                    out[from].push(RuleOutcome {
                        label: slot.label,
                        mode: rule.mode,
                        in_canary: rule.canary.map(|c| c.includes(batch.canary_hash(from, c.key))),
                        action: r.action,
                        score: r.score,
                        reasons: std::mem::take(&mut r.reasons),
                        latency_ns: results.clock.delta_as_nanos(start, end),
                        error: None,
                    });
                    start = end;
                    from += 1;
                }
                let Err(e) = run else { continue };
                let latency_ns = results.clock.delta_as_nanos(start, results.clock.raw());
                if !matches!(e, RuleError::Quarantined) {
                    if let (RuleError::OutOfFuel(spent), Some(left)) = (&e, results.remaining.get_mut(from)) {
                        *left = left.saturating_sub(*spent);
                    }
                    if matches!(e, RuleError::EventBudget) {
                        // The event's doing, not the rule's: not counted
                        // towards quarantine, and the event's budget is spent.
                        if let Some(left) = results.remaining.get_mut(from) {
                            *left = 0;
                        }
                    } else {
                        self.registry.note_failure(rule, &e);
                    }
                    // A failed instance is not called again.
                    if let Some(mut failed) = slot.instance.take() {
                        slot.state = failed.take_state();
                    }
                }
                count(slot.rule.on_failure.action());
                out[from].push(slot.failed(e, latency_ns, batch, from));
                from += 1;
            }
            let spent_ns = self.results.clock.delta_as_nanos(began, self.results.clock.raw());
            if let Some(instance) = &mut slot.instance {
                slot.state = instance.take_state();
            }
            let t = &slot.tally;
            let n = batch.len() as u64;
            Tally::add(&t.evaluations, n);
            Tally::add(&t.reviews, reviews);
            Tally::add(&t.blocks, blocks);
            t.latency.observe_n(spent_ns / n.max(1), n);
        }
    }
}

impl Slot {
    /// The rule's outcome for an event whose call failed with `e`: its
    /// failure outcome, saying why.
    fn failed(&self, e: RuleError, latency_ns: u64, batch: &Batch, i: usize) -> RuleOutcome {
        RuleOutcome {
            label: self.label,
            mode: self.rule.mode,
            in_canary: self.rule.canary.map(|c| c.includes(batch.canary_hash(i, c.key))),
            action: self.rule.on_failure.action(),
            score: 0,
            reasons: crate::decide::Reasons::new(),
            latency_ns,
            error: Some(crate::error::chain(&e).to_string()),
        }
    }

    /// Calls the rule on events `from..` of `batch` until one fails, making
    /// an instance first if it has none (at the start, or after a failure);
    /// the instance holds the slot's keyed state from then on.
    fn run(
        &mut self,
        registry: &RuleRegistry,
        batch: &Batch,
        from: usize,
        results: &mut Results,
    ) -> Result<(), RuleError> {
        if self.rule.is_quarantined() {
            return Err(RuleError::Quarantined);
        }
        let instance = match &mut self.instance {
            Some(instance) => instance,
            None => {
                let mut made = self.rule.instantiate(&registry.sandbox)?;
                made.lend_state(std::mem::take(&mut self.state));
                self.instance.insert(made)
            }
        };
        instance.call_batch(batch, from, &self.rule.projection, &self.rule.features, results)
    }
}

/// The events of a batch as the rules take them: each encoded, with its
/// input partition and every catalog feature's value at it.
#[derive(Debug, Default)]
pub struct Batch {
    /// Encoded events; buffers past `partitions.len()` are kept for reuse.
    encoded: Vec<Vec<u8>>,
    partitions: Vec<u32>,
    /// Event times, ms since the epoch.
    times: Vec<i64>,
    /// Feature values of every event; event `i`'s end at `ends[i]`.
    values: Vec<f64>,
    ends: Vec<usize>,
    /// The keys of the entities the rules' state belongs to, one after
    /// another; event `i`'s ends at `entity_ends[i]`.
    entities: Vec<u8>,
    entity_ends: Vec<usize>,
    /// With canary rules live: per event, the [`Canary::id_hash`] of each
    /// of its entities, by [`crate::event::KeyField`] code.
    canary: Vec<[Option<u64>; 6]>,
    /// The events as rules of each shape (fields and features) see them,
    /// laid out once for all rules of that shape.
    layouts: std::cell::RefCell<sandbox::Layouts>,
}

impl Batch {
    /// `n` copies of one encoded event, each with every catalog feature's
    /// value in `values`: a batch for checks and benchmarks.
    pub fn repeated(encoded: &[u8], values: &[f64], n: usize) -> Self {
        let mut batch = Self::default();
        for _ in 0..n {
            batch.buffer().extend_from_slice(encoded);
            batch.push(0, 0, values);
        }
        batch
    }

    /// Event `i`'s entity key (see [`state::entity_key`]): empty when it
    /// has none.
    pub fn entity(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.entity_ends[i - 1] };
        &self.entities[start..self.entity_ends[i]]
    }

    /// Sets the key of the entity the rules' state belongs to for the
    /// event about to be pushed ([`Batch::push`]); an event pushed without
    /// one has none.
    pub fn set_entity(&mut self, space: crate::event::Space, id: &str) {
        let start = self.entity_ends.last().copied().unwrap_or(0);
        self.entities.truncate(start);
        state::entity_key(space, id, &mut self.entities);
    }

    /// Sets the entity hashes canary shares are taken over (see
    /// [`Canary`]) for the event about to be pushed; needed only while a
    /// canary rule is live ([`Evaluator::canaries`]).
    pub fn set_canary_ids(&mut self, payment: &crate::event::Payment) {
        let n = self.partitions.len();
        self.canary.resize(n + 1, [None; 6]);
        self.canary[n] = crate::event::KeyField::ALL.map(|k| payment.key(k).map(Canary::id_hash));
    }

    /// Event `i`'s [`Canary::id_hash`] of its entity `key`, if set.
    pub fn canary_hash(&self, i: usize, key: crate::event::KeyField) -> Option<u64> {
        self.canary.get(i).and_then(|h| h[usize::from(key.code())])
    }

    /// Makes the next rule calls lay the batch out again, as they do for
    /// each new batch: for benchmarks that time one batch over and over.
    #[doc(hidden)]
    pub fn forget_layouts(&self) {
        self.layouts.borrow_mut().clear();
    }

    /// Empties the batch, keeping its buffers.
    pub fn clear(&mut self) {
        self.layouts.get_mut().clear();
        self.canary.clear();
        self.partitions.clear();
        self.times.clear();
        self.values.clear();
        self.ends.clear();
        self.entities.clear();
        self.entity_ends.clear();
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.partitions.len()
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// The buffer to encode the next event into; [`Batch::push`] adds it.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        let next = self.partitions.len();
        if self.encoded.len() == next {
            self.encoded.push(Vec::with_capacity(512));
        }
        &mut self.encoded[next]
    }

    /// Adds the event encoded into [`Batch::buffer`], from input
    /// `partition`, at event time `ts_ms`, with every catalog feature's
    /// value at it.
    pub fn push(&mut self, partition: u32, ts_ms: i64, values: &[f64]) {
        self.layouts.get_mut().clear();
        self.partitions.push(partition);
        self.times.push(ts_ms);
        self.values.extend_from_slice(values);
        self.ends.push(self.values.len());
        // The key set since the last push, if any (see `set_entity`).
        self.entity_ends.push(self.entities.len());
    }

    /// Event `i`'s value of catalog feature `f`; NaN when it has none.
    pub fn value(&self, i: usize, f: usize) -> f64 {
        self.values(i).get(f).copied().unwrap_or(f64::NAN)
    }

    /// Event `i`'s feature values.
    pub fn values(&self, i: usize) -> &[f64] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.values[start..self.ends[i]]
    }
}

impl RuleRegistry {
    fn note_failure(&self, rule: &LoadedRule, e: &RuleError) {
        rule.health.by_cause[e.cause_index()].fetch_add(1, Ordering::Relaxed);
        let total = rule.health.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let consecutive = rule.health.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        // Log the first failures and then ever more sparsely, so a rule
        // failing on every event cannot flood the log.
        if total <= 10 || total.is_power_of_two() {
            tracing::warn!(
                rule = %rule.name, version = %rule.version, file = %rule.path.display(),
                failures = total, error = %crate::error::chain(e), on_failure = ?rule.on_failure,
                "rule call failed; applied its failure outcome"
            );
        }
        if consecutive >= self.quarantine_after && !rule.health.quarantined.swap(true, Ordering::Relaxed) {
            self.record_change(rule_entry(
                "quarantine",
                rule,
                &format!("{consecutive} failures in a row; last: {}", crate::error::chain(e)),
            ));
            tracing::error!(
                rule = %rule.name, version = %rule.version, file = %rule.path.display(),
                consecutive, last_error = %crate::error::chain(e),
                "rule quarantined: it is no longer called and its failure outcome applies until a new version is deployed"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_cannot_declare_features_without_end() {
        let manifest = |n: usize| Manifest {
            abi: vigil_abi::ABI_VERSION,
            name: "many".into(),
            version: "1.0.0".into(),
            description: String::new(),
            fields: Vec::new(),
            params: Vec::new(),
            lists: Vec::new(),
            features: (0..n).map(|i| format!("count(card, {}m)", i + 1)).collect(),
            state: None,
        };
        check_manifest(&manifest(MAX_RULE_FEATURES)).expect("within the limit");
        let e = check_manifest(&manifest(MAX_RULE_FEATURES + 1)).expect_err("over it").to_string();
        assert!(e.contains("at most 64"), "{e}");
    }
}
