//! `vigil check`: validate one module the way the daemon would, print its
//! manifest, and time a short self-run on a sample event.

use crate::error::FileError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Instant;
use vigil_abi::{Channel, Country, Kind, Manifest};

use super::RuleError;
use super::lists::Lists;
use super::{Loader, module_hash, read_manifest};
use crate::config::{Config, ConfigError};
use crate::decode::Tokenizer;
use crate::event::{Card, Party, Payment};
use crate::features::Catalog;

/// Why `vigil check` refuses a module, or could not check it.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A file or folder could not be read, written, created or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The rule sandbox could not be set up.
    #[error(transparent)]
    Sandbox(RuleError),
    /// The config's `[rules]`, `[features]` or `[currencies]` do not do.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configured lists could not be loaded.
    #[error(transparent)]
    Lists(#[from] super::lists::ListError),
    /// The sample event could not be encoded.
    #[error(transparent)]
    Encode(#[from] vigil_abi::event::EncodeError),
    /// The daemon would reject the module.
    #[error("{} rejected", path.display())]
    Rejected {
        /// The module.
        path: PathBuf,
        /// Why.
        source: RuleError,
    },
    /// A call on the sample event failed.
    #[error("{} fails on a sample event", path.display())]
    Sample {
        /// The module.
        path: PathBuf,
        /// How the call failed.
        source: RuleError,
    },
    /// A batch call on copies of the sample event failed.
    #[error("{} fails on a batch of sample events", path.display())]
    Batch {
        /// The module.
        path: PathBuf,
        /// How the call failed.
        source: RuleError,
    },
    /// A batch call decided an event otherwise than a call with it alone.
    #[error(
        "{} decides sample event {event} of a batch call as {} (score {batch_score}), but {} (score {alone_score}) when called with it alone",
        path.display(),
        batch_action.as_str(),
        alone_action.as_str()
    )]
    BatchDiffers {
        /// The module.
        path: PathBuf,
        /// The event's place in the batch.
        event: usize,
        /// The batch call's action for it.
        batch_action: vigil_abi::Action,
        /// The batch call's score for it.
        batch_score: i32,
        /// The action alone.
        alone_action: vigil_abi::Action,
        /// The score alone.
        alone_score: i32,
    },
}

/// What `vigil check` found.
#[derive(Debug)]
pub struct CheckReport {
    file: String,
    hash: String,
    size: usize,
    manifest: Manifest,
    params: Vec<(String, String)>,
    placeholder_lists: Vec<String>,
    calls: usize,
    median_ns: u64,
    p99_ns: u64,
    sample_action: String,
    fuel: u64,
    fuel_budget: u64,
    /// Events a batch call took at once, when the module takes batches.
    batch: Option<usize>,
    /// The trusted keys that signed it.
    signers: Vec<String>,
}

/// Validates `path` under `config` and measures a short self-run.
///
/// # Errors
/// When the module would be rejected by the daemon; the message names the
/// file and the cause.
pub fn check(config: &Config, path: &Path) -> Result<CheckReport, CheckError> {
    let bytes = std::fs::read(path).map_err(FileError::of("read", path))?;
    let hash = module_hash(&bytes);
    let sandbox = crate::rules::sandbox::Sandbox::from_config(config).map_err(CheckError::Sandbox)?;
    let rejected = |source| CheckError::Rejected { path: path.to_owned(), source };
    let trust = super::signing::Trust::from_config(&config.rules)?;
    if trust.required() {
        // Nothing of an unapproved module runs, not even its manifest.
        trust.precheck(path, &hash).map_err(|e| rejected(RuleError::Signature(e.into())))?;
    }
    let pre = sandbox.prepare(&bytes, &hash).map_err(rejected)?;
    let (manifest, _) = read_manifest(&sandbox, &pre).map_err(rejected)?;
    // Lists hold PANs only as tokens; a throwaway key is enough to load them here.
    let key = config.pan_key().unwrap_or_else(|_| b"vigil-check-placeholder-key".to_vec());
    let mut lists = Lists::load(&config.lists, &Tokenizer::new(&key))?;
    let placeholder_lists = lists.add_placeholders(&manifest.lists);
    let catalog = Catalog::with_currencies(&config.features, config.currencies.as_ref())?;
    let state_keys = config.state_keys();
    crate::features::check_state_keys(config, &catalog, state_keys.as_ref())?;
    let loader = Loader {
        sandbox: &sandbox,
        lists: &lists,
        catalog: &catalog,
        settings: &config.rule,
        default_on_failure: config.rules.on_failure,
        state_keys: state_keys.as_ref(),
    };
    let rule = loader.load(path, &bytes, &hash).map_err(rejected)?;
    let covered = super::signing::covered_settings(&rule.name, &config.rule, config.rules.on_failure);
    let signers = match trust.verify(path, &hash, &rule.name, &rule.version, &covered) {
        Ok(signers) => signers,
        Err(e) if trust.required() => return Err(rejected(RuleError::Signature(e.into()))),
        Err(e) => {
            eprintln!("warning: {}", crate::error::chain(&e));
            Vec::new()
        }
    };
    let features = vec![0.0; rule.features.len()];

    let mut encoded = Vec::new();
    sample_payment().encode(&mut encoded)?;
    let mut instance = rule.instantiate(&sandbox).map_err(rejected)?;
    let calls = 2_000;
    let mut times = Vec::with_capacity(calls);
    let mut sample_action = String::new();
    let mut fuel = 0;
    for _ in 0..calls {
        let start = Instant::now();
        let r = instance.call(&encoded, &rule.projection, &features);
        times.push(start.elapsed().as_nanos() as u64);
        match r {
            Ok(r) => {
                sample_action = r.action.as_str().to_owned();
                fuel = instance.last_fuel_used().unwrap_or(0);
            }
            Err(source) => return Err(CheckError::Sample { path: path.to_owned(), source }),
        }
    }
    times.sort_unstable();
    let batch = check_batch(&mut instance, &rule, &encoded, path)?;
    let params = {
        let decoded = vigil_abi::params::decode(&rule.params).unwrap_or_default();
        decoded.into_iter().map(|(n, v)| (n, v.to_string())).collect()
    };
    Ok(CheckReport {
        file: path.display().to_string(),
        hash,
        size: bytes.len(),
        manifest,
        params,
        placeholder_lists,
        calls,
        median_ns: times[calls / 2],
        p99_ns: times[calls * 99 / 100],
        sample_action,
        fuel,
        fuel_budget: config.rules.cpu_budget,
        batch,
        signers,
    })
}

/// Events in the batch `vigil check` runs.
const CHECK_BATCH: usize = 8;

/// Runs copies of the sample event through one batch call, as the daemon
/// does, and checks each decides as a single call does; `None` when the
/// module takes one event a call.
fn check_batch(
    instance: &mut super::Instance,
    rule: &super::LoadedRule,
    encoded: &[u8],
    path: &Path,
) -> Result<Option<usize>, CheckError> {
    #[cfg_attr(not(feature = "bench-native"), allow(irrefutable_let_patterns))]
    let super::Instance::Wasm(wasm) = &*instance else { return Ok(None) };
    if !wasm.takes_batches() {
        return Ok(None);
    }
    let features = vec![0.0; rule.features.len()];
    let alone = instance
        .call(encoded, &rule.projection, &features)
        .map_err(|source| CheckError::Sample { path: path.to_owned(), source })?;
    let values = vec![0.0; rule.features.iter().max().map_or(0, |m| m + 1)];
    let batch = super::Batch::repeated(encoded, &values, CHECK_BATCH);
    let mut results = super::Results::new(quanta::Clock::new());
    instance
        .call_batch(&batch, 0, &rule.projection, &rule.features, &mut results)
        .map_err(|source| CheckError::Batch { path: path.to_owned(), source })?;
    for (i, r) in results.calls.iter().enumerate() {
        if (r.action, r.score, &r.reasons) != (alone.action, alone.score, &alone.reasons) {
            return Err(CheckError::BatchDiffers {
                path: path.to_owned(),
                event: i,
                batch_action: r.action,
                batch_score: r.score,
                alone_action: alone.action,
                alone_score: alone.score,
            });
        }
    }
    Ok(Some(CHECK_BATCH))
}

pub(crate) fn sample_payment() -> Payment {
    Payment {
        id: "check-sample-1".into(),
        ts_ms: 1_700_000_000_000,
        channel: Channel::Card,
        kind: Kind::Purchase,
        amount: 4_250,
        currency: *b"USD",
        account: "acct-sample".into(),
        card: Some(Card {
            token: "tok_000000000000000000000000".into(),
            country: Some(Country(*b"US")),
            present: Some(false),
        }),
        merchant: Some(Party { id: "merchant-sample".into(), mcc: Some(5999), country: Some(Country(*b"US")) }),
        counterparty: None,
        device: Some("device-sample".into()),
        ip: Some("192.0.2.10".into()),
        geo: None,
        attrs: Vec::new(),
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        writeln!(f, "ok: {} is a valid vigil rule (ABI v{})", self.file, m.abi)?;
        writeln!(f, "  name:        {}", m.name)?;
        writeln!(f, "  version:     {}", m.version)?;
        if !m.description.is_empty() {
            writeln!(f, "  description: {}", m.description)?;
        }
        writeln!(f, "  module:      sha256:{} ({} bytes)", self.hash, self.size)?;
        if !self.signers.is_empty() {
            writeln!(f, "  signed by:   {}", self.signers.join(", "))?;
        }
        writeln!(f, "  fields read: {}", if m.fields.is_empty() { "none".into() } else { m.fields.join(", ") })?;
        writeln!(f, "  features:    {}", if m.features.is_empty() { "none".into() } else { m.features.join(", ") })?;
        if m.params.is_empty() {
            writeln!(f, "  params:      none")?;
        } else {
            writeln!(f, "  params:")?;
            for p in &m.params {
                let value = self.params.iter().find(|(n, _)| *n == p.name).map_or("?", |(_, v)| v.as_str());
                writeln!(f, "    {} ({}) = {value}   [default {}]", p.name, p.ty, p.default)?;
            }
        }
        if !m.lists.is_empty() {
            writeln!(f, "  lists:       {}", m.lists.join(", "))?;
            if !self.placeholder_lists.is_empty() {
                writeln!(
                    f,
                    "  note: not configured, checked as empty: {} (the daemon needs [lists.NAME] for each)",
                    self.placeholder_lists.join(", ")
                )?;
            }
        }
        writeln!(
            f,
            "  self-run:    {} calls on a sample event: median {} ns, p99 {} ns per call (action: {})",
            self.calls, self.median_ns, self.p99_ns, self.sample_action
        )?;
        writeln!(
            f,
            "  fuel:        {} per call on the sample event (budget {}, rules.cpu-budget)",
            self.fuel, self.fuel_budget
        )?;
        match self.batch {
            Some(n) => writeln!(f, "  batch calls: yes ({n} sample events in one call decide as they do alone)"),
            None => writeln!(f, "  batch calls: no (one event a call; rebuild with the current vigil-sdk to batch)"),
        }
    }
}
