//! `vigil explain`: reproduce one recorded decision. The record names its
//! rule set; the rule-sets output maps that to each rule's module hash,
//! mode, failure outcome and parameters; the archive (`state/rule-archive`)
//! holds every module that was live. Each rule is run again, as it was,
//! over the same event with the feature values the record holds, and its
//! outcome is compared with the record's (a rule a compact record leaves
//! out must come out quiet again).
//!
//! What a record does not hold is said, not guessed: a rule that keeps
//! keyed state is run with empty state, and one that reads lists with the
//! lists as they are now; their rows are marked.

use crate::error::FileError;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use vigil_abi::Action;

use super::lists::Lists;
use super::{Canary, Loader, RuleError, module_hash};
use crate::config::{Config, ConfigError, RuleSettings};
use crate::decide::{FailurePolicy, Mode, RuleLabel, RuleOutcome};
use crate::decode::{Decoder, Tokenizer};
use crate::features::Catalog;

/// Why a decision cannot be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// A file or folder could not be read, written, created or removed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The decision records hold no such decision.
    #[error("{} holds no decision with id `{id}`", path.display())]
    NoDecision {
        /// The decision records.
        path: PathBuf,
        /// The decision's id.
        id: String,
    },
    /// The rule-sets output holds no rule set the decision names.
    #[error("{} holds no rule set `{set}` (decision `{id}` names it)", path.display())]
    NoRuleSet {
        /// The rule-sets output.
        path: PathBuf,
        /// The rule set's id.
        set: String,
        /// The decision's id.
        id: String,
    },
    /// The input holds no event with the decision's id.
    #[error("{} holds no event with id `{id}`", path.display())]
    NoEvent {
        /// The input.
        path: PathBuf,
        /// The id.
        id: String,
    },
    /// The config does not do (the PAN key, `[features]`, `[currencies]`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The event does not decode.
    #[error("the event `{id}` in {} does not decode", path.display())]
    Decode {
        /// The event's id.
        id: String,
        /// The input.
        path: PathBuf,
        /// Why not.
        source: crate::decode::DecodeError,
    },
    /// The event could not be encoded for the rules.
    #[error(transparent)]
    Encode(#[from] vigil_abi::event::EncodeError),
    /// The record's action is not one.
    #[error("the record's action")]
    Action {
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// The rule sandbox could not be set up.
    #[error(transparent)]
    Sandbox(RuleError),
    /// The configured lists could not be loaded.
    #[error(transparent)]
    Lists(#[from] super::lists::ListError),
    /// The rule set names no module hash for a rule.
    #[error("rule `{rule}`: the rule set names no module hash (64 hex digits)")]
    NoModuleHash {
        /// The rule.
        rule: String,
    },
    /// A rule's module is not in the archive.
    #[error("rule `{rule}`: module {} is not in the archive ({})", &module[..16], path.display())]
    NotArchived {
        /// The rule.
        rule: String,
        /// The module's hash.
        module: String,
        /// Where it would be.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// An archived module does not hash to its name.
    #[error("{} does not hash to its name: the archive was altered", path.display())]
    ArchiveAltered {
        /// The archived module.
        path: PathBuf,
    },
    /// A rule could not be loaded or instantiated as it ran.
    #[error("rule `{rule}`")]
    Rule {
        /// The rule.
        rule: String,
        /// Why not.
        source: RuleError,
    },
}

/// One rule's recorded and reproduced outcome.
#[derive(Debug)]
pub struct Row {
    /// The rule.
    pub rule: String,
    /// Its mode then.
    pub mode: Mode,
    /// What the record says (`quiet` for a rule a compact record left out).
    pub recorded: String,
    /// What running it again gave.
    pub reproduced: String,
    /// Whether the two agree.
    pub matches: bool,
    /// What limits the reproduction, if anything: keyed state or lists,
    /// which records do not hold.
    pub note: Option<String>,
}

impl Row {
    /// Whether a difference may come from what the record does not hold.
    pub fn limited(&self) -> bool {
        self.note.is_some()
    }
}

/// What `vigil explain` found.
#[derive(Debug)]
pub struct Explained {
    /// The decision.
    pub id: String,
    /// The rule set that decided it.
    pub rule_set: String,
    /// The recorded final action.
    pub recorded: Action,
    /// The final action of the reproduced outcomes.
    pub reproduced: Action,
    /// Per rule.
    pub rows: Vec<Row>,
}

impl Explained {
    /// Whether every rule and the final action came out as recorded.
    pub fn reproduced_exactly(&self) -> bool {
        self.recorded == self.reproduced && self.rows.iter().all(|r| r.matches)
    }
}

/// Where the record, the rule set and the event are read from.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    /// The events, as JSON lines: the event with the decision's id.
    pub input: &'a Path,
    /// The decision records.
    pub decisions: &'a Path,
    /// The rule-sets output.
    pub rule_sets: &'a Path,
}

/// The last JSON line of `path` whose `key` is `value`.
fn find_line(path: &Path, key: &str, value: &str) -> Result<Option<(String, serde_json::Value)>, ExplainError> {
    let text = std::fs::read_to_string(path).map_err(FileError::of("read", path))?;
    // A cheap look for the value before parsing a line.
    let needle = serde_json::to_string(value).unwrap_or_default();
    let mut found = None;
    for line in text.lines().filter(|l| l.contains(&needle)) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
            && v.get(key).and_then(|k| k.as_str()) == Some(value)
        {
            found = Some((line.to_owned(), v));
        }
    }
    Ok(found)
}

fn show(action: Action, score: i64, reasons: &[String]) -> String {
    match reasons.is_empty() {
        true => format!("{} {score}", action.as_str()),
        false => format!("{} {score} [{}]", action.as_str(), reasons.join(", ")),
    }
}

fn toml_value(v: &serde_json::Value) -> Option<toml::Value> {
    match v {
        serde_json::Value::Bool(b) => Some(toml::Value::Boolean(*b)),
        serde_json::Value::Number(n) if n.is_i64() => n.as_i64().map(toml::Value::Integer),
        serde_json::Value::Number(n) => n.as_f64().map(toml::Value::Float),
        serde_json::Value::String(s) => Some(toml::Value::String(s.clone())),
        _ => None,
    }
}

/// Reproduces decision `id`.
///
/// # Errors
/// When the record, its rule set, the event or an archived module cannot
/// be found or read.
pub fn explain(config: &Config, id: &str, from: Sources<'_>) -> Result<Explained, ExplainError> {
    let (_, decision) = find_line(from.decisions, "id", id)?
        .ok_or_else(|| ExplainError::NoDecision { path: from.decisions.to_owned(), id: id.to_owned() })?;
    let set_id = decision["rule_set"].as_str().unwrap_or_default().to_owned();
    let (_, set) = find_line(from.rule_sets, "rule_set", &set_id)?.ok_or_else(|| ExplainError::NoRuleSet {
        path: from.rule_sets.to_owned(),
        set: set_id.clone(),
        id: id.to_owned(),
    })?;
    let (line, _) = find_line(from.input, "id", id)?
        .ok_or_else(|| ExplainError::NoEvent { path: from.input.to_owned(), id: id.to_owned() })?;
    let tokenizer = Tokenizer::new(&config.pan_key()?);
    let payment = Decoder::new(&config.clean, tokenizer.clone())
        .parse(&line)
        .map_err(|source| ExplainError::Decode { id: id.to_owned(), path: from.input.to_owned(), source })?;
    let mut encoded = Vec::new();
    payment.encode(&mut encoded)?;
    let recorded = serde_json::from_value::<Action>(decision["action"].clone())
        .map_err(|source| ExplainError::Action { source })?;
    let listed: BTreeMap<String, &serde_json::Value> = decision["rules"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| Some((r["rule"].as_str()?.to_owned(), r))).collect())
        .unwrap_or_default();
    let features = decision["features"].as_object().cloned().unwrap_or_default();

    let sandbox = super::sandbox::Sandbox::from_config(config).map_err(ExplainError::Sandbox)?;
    let lists = Lists::load(&config.lists, &tokenizer)?;
    let catalog = Catalog::with_currencies(&config.features, config.currencies.as_ref())?;
    let archive = config.state.dir.join(super::changes::ARCHIVE_DIR);
    let mut outcomes = Vec::new();
    let mut rows = Vec::new();
    for entry in set["rules"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = entry["rule"].as_str().unwrap_or_default().to_owned();
        let hash = entry["module"].as_str().unwrap_or_default();
        if !super::changes::is_module_hash(hash) {
            return Err(ExplainError::NoModuleHash { rule: name });
        }
        let path = archive.join(format!("{hash}.wasm"));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(source) => return Err(ExplainError::NotArchived { rule: name, module: hash.to_owned(), path, source }),
        };
        if module_hash(&bytes) != hash {
            return Err(ExplainError::ArchiveAltered { path });
        }
        let mut settings = RuleSettings {
            mode: serde_json::from_value(entry["mode"].clone()).unwrap_or_default(),
            on_failure: serde_json::from_value::<FailurePolicy>(entry["on_failure"].clone()).ok(),
            canary_percent: entry["canary_percent"].as_f64(),
            canary_key: serde_json::from_value(entry["canary_key"].clone()).ok(),
            ..RuleSettings::default()
        };
        for (k, v) in entry["params"].as_object().into_iter().flatten() {
            if let Some(v) = toml_value(v) {
                settings.params.insert(k.clone(), v);
            }
        }
        let plain = BTreeMap::new();
        let loader = |s| Loader {
            sandbox: &sandbox,
            lists: &lists,
            catalog: &catalog,
            settings: s,
            default_on_failure: config.rules.on_failure,
            state_keys: None,
        };
        let in_rule = |source| ExplainError::Rule { rule: name.clone(), source };
        let base = loader(&plain).load(&path, &bytes, hash).map_err(in_rule)?;
        let rule = if *base.name == *name {
            loader(&BTreeMap::from([(name.clone(), settings)])).load(&path, &bytes, hash)
        } else {
            settings.of = Some(base.name.to_string());
            let mine = BTreeMap::from([(name.clone(), settings)]);
            loader(&mine).instances(&base).map(|mut v| v.remove(0))
        }
        .map_err(in_rule)?;
        let all = catalog.snapshot();
        let mut values = Vec::with_capacity(rule.features.len());
        let mut missing = Vec::new();
        for &i in &rule.features {
            let fname = all.get(i).map(|f| f.name.to_string()).unwrap_or_default();
            match features.get(&fname).and_then(serde_json::Value::as_f64) {
                Some(v) => values.push(v),
                None => {
                    // NaN is written as null: an empty value.
                    if !features.contains_key(&fname) {
                        missing.push(fname);
                    }
                    values.push(f64::NAN);
                }
            }
        }
        let mut notes = Vec::new();
        if rule.home.is_some() {
            notes.push("keeps keyed state, which records do not hold: run with empty state".to_owned());
        }
        if !rule.manifest.lists.is_empty() {
            notes.push(format!(
                "reads lists {}, whose contents at the time records do not hold: run with their contents now",
                rule.manifest.lists.join(", ")
            ));
        }
        if !missing.is_empty() {
            notes.push(format!("features not in the record: {}", missing.join(", ")));
        }
        let mut instance = rule.instantiate(&sandbox).map_err(in_rule)?;
        let mut entity = Vec::new();
        if let Some(home) = rule.home
            && let Some(key) = payment.key(home)
        {
            super::state::entity_key(home.space(), key, &mut entity);
        }
        instance.set_event(0, payment.ts_ms, &entity);
        let in_canary = rule.canary.map(|c: Canary| c.includes(payment.key(c.key).map(Canary::id_hash)));
        let (action, score, reasons, error) = match instance.call(&encoded, &rule.projection, &values) {
            Ok(r) => (r.action, r.score, r.reasons, None),
            Err(e) => {
                (rule.on_failure.action(), 0, crate::decide::Reasons::new(), Some(crate::error::chain(&e).to_string()))
            }
        };
        outcomes.push(RuleOutcome {
            label: RuleLabel::intern(&name, &rule.version, hash, ""),
            mode: rule.mode,
            in_canary,
            action,
            score,
            reasons,
            latency_ns: 0,
            error,
        });
        rows.push((name, rule.mode, notes));
    }
    let (reproduced, _, _) = crate::decide::combine(&outcomes);
    let reproduced = match outcomes.iter().any(|o| o.mode != Mode::Shadow) {
        true => reproduced,
        false => reproduced.max(config.rules.on_empty.action()),
    };
    let rows = rows
        .into_iter()
        .zip(&outcomes)
        .map(|((rule, mode, notes), o)| {
            let reasons: Vec<String> = o.reasons.iter().map(|r| r.to_string()).collect();
            let mut reproduced = show(o.action, i64::from(o.score), &reasons);
            if let Some(e) = &o.error {
                reproduced.push_str(&format!(" (failed: {e})"));
            }
            if let Some(c) = o.in_canary {
                reproduced.push_str(if c { " in canary share" } else { " outside canary share" });
            }
            let (recorded, matches) = match listed.get(&rule) {
                Some(r) => {
                    let action = serde_json::from_value::<Action>(r["action"].clone()).unwrap_or(Action::Allow);
                    let score = r["score"].as_i64().unwrap_or(0);
                    let rec_reasons: Vec<String> = r["reasons"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                        .unwrap_or_default();
                    let in_canary = r["in_canary"].as_bool();
                    let mut text = show(action, score, &rec_reasons);
                    if r.get("error").is_some() {
                        text.push_str(" (failed)");
                    }
                    if let Some(c) = in_canary {
                        text.push_str(if c { " in canary share" } else { " outside canary share" });
                    }
                    let same = (action, score, &rec_reasons, in_canary, r.get("error").is_some())
                        == (o.action, i64::from(o.score), &reasons, o.in_canary, o.error.is_some());
                    (text, same)
                }
                None => ("quiet".to_owned(), o.is_quiet(recorded)),
            };
            Row { rule, mode, recorded, reproduced, matches, note: (!notes.is_empty()).then(|| notes.join("; ")) }
        })
        .collect();
    Ok(Explained { id: id.to_owned(), rule_set: set_id, recorded, reproduced, rows })
}

impl fmt::Display for Explained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "decision {} by rule set {}", self.id, self.rule_set)?;
        let width = self.rows.iter().map(|r| r.rule.len()).max().unwrap_or(4).max(4);
        writeln!(f, "  {:width$}  {:7}  {:32}  {:32}  ", "rule", "mode", "recorded", "reproduced")?;
        for r in &self.rows {
            let mark = match (r.matches, r.limited()) {
                (true, _) => "same",
                (false, false) => "DIFFERS",
                (false, true) => "CANNOT REPRODUCE (see note)",
            };
            writeln!(f, "  {:width$}  {:7}  {:32}  {:32}  {mark}", r.rule, r.mode.as_str(), r.recorded, r.reproduced)?;
            if let Some(note) = &r.note {
                writeln!(f, "  {:width$}  note: {note}", "")?;
            }
        }
        let limited: Vec<&str> =
            self.rows.iter().filter(|r| !r.matches && r.limited()).map(|r| r.rule.as_str()).collect();
        let verdict = match (self.reproduced_exactly(), self.rows.iter().any(|r| !r.matches && !r.limited())) {
            (true, _) => "reproduced exactly".to_owned(),
            (false, true) => "NOT reproduced: a rule decided otherwise with all it read recorded".to_owned(),
            (false, false) if limited.is_empty() => "NOT reproduced: the outcomes combine otherwise".to_owned(),
            (false, false) => format!(
                "cannot be reproduced exactly: {} read what records do not hold (see the notes)",
                limited.join(", ")
            ),
        };
        writeln!(
            f,
            "final action: recorded {}, reproduced {}: {verdict}",
            self.recorded.as_str(),
            self.reproduced.as_str(),
        )
    }
}
