//! `vigil replay --compare A B`: the same events, from the same empty state,
//! through two rule sets; where do their decisions differ?
//!
//! A and B are each a `.wasm` module (run alone) or a rules folder. Both
//! runs share everything else — config, features, windows, lists — so a
//! difference is the rules' doing. It answers offline what a shadow rule
//! (`[rule.NAME] mode = "shadow"`) records live: the decision the candidate
//! would have made next to the one that was made.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use super::analysis::{self, Analysis, DecisionLine, fmt_ratio};
use super::{Input, Outputs, ReplayError, run_once};
use crate::config::Config;

/// How many differing decisions the summary shows.
const EXAMPLES: usize = 10;

/// The result of a comparison.
#[derive(Debug)]
pub struct Comparison {
    /// What A was.
    pub a: String,
    /// What B was.
    pub b: String,
    /// A's replay.
    pub analysis_a: Analysis,
    /// B's replay.
    pub analysis_b: Analysis,
    /// Ids decided by both.
    pub both: u64,
    /// Of those, decided differently (action, score or reasons).
    pub different: u64,
    /// Action changes, A's action → B's, with counts.
    pub transitions: BTreeMap<(String, String), u64>,
    /// Same action, but a different score or reasons.
    pub same_action_changed: u64,
    /// Decided by A only (B dead-lettered or lost them).
    pub only_a: u64,
    /// Decided by B only.
    pub only_b: u64,
    /// The first differing decisions in event time.
    pub examples: Vec<(DecisionLine, DecisionLine)>,
}

/// Rules folder for one side: a module is copied alone into `scratch`.
fn rules_dir(side: &Path, scratch: &Path) -> Result<PathBuf, ReplayError> {
    if side.is_dir() {
        return Ok(side.to_owned());
    }
    if !side.is_file() {
        return Err(ReplayError::CompareSide { path: side.to_owned() });
    }
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).map_err(crate::error::FileError::of("create", scratch))?;
    let name = side.file_name().ok_or_else(|| ReplayError::NoFileName { path: side.to_owned() })?;
    std::fs::copy(side, scratch.join(name)).map_err(|source| ReplayError::Copy {
        from: side.to_owned(),
        to: scratch.to_owned(),
        source,
    })?;
    Ok(scratch.to_owned())
}

/// Replays `input` with rules `a`, then with rules `b`, writing each run's
/// outputs to `out/a` and `out/b`, and compares the decisions.
///
/// # Errors
/// As [`super::replay`].
pub fn compare(
    config: &Config,
    input: Input,
    a: &Path,
    b: &Path,
    out: &Path,
    progress: bool,
) -> Result<Comparison, ReplayError> {
    let mut runs = Vec::new();
    for (tag, side) in [("a", a), ("b", b)] {
        let outputs = Outputs { dir: out.join(tag) };
        let rules = rules_dir(side, &out.join(format!("rules-{tag}")))?;
        let (counts, _) = run_once(config, &input.name, input.records.clone(), &rules, &outputs, progress)?;
        let decisions = analysis::read_decisions(&outputs.decisions())?;
        let analysis = Analysis::new(counts, &decisions, input.labels.as_ref());
        let html = super::report::render(&format!("{} with rules {}", input.name, side.display()), &analysis);
        super::write(&outputs.report(), html)?;
        runs.push((decisions, analysis));
    }
    let (decisions_b, analysis_b) = runs.pop().expect("two runs");
    let (decisions_a, analysis_a) = runs.pop().expect("two runs");
    let mut c = diff(decisions_a, decisions_b);
    c.a = a.display().to_string();
    c.b = b.display().to_string();
    c.analysis_a = analysis_a;
    c.analysis_b = analysis_b;
    Ok(c)
}

fn same(x: &DecisionLine, y: &DecisionLine) -> bool {
    x.action == y.action && x.score == y.score && x.reasons == y.reasons
}

/// Joins two runs' decisions by id.
fn diff(a: Vec<DecisionLine>, b: Vec<DecisionLine>) -> Comparison {
    let mut by_id: HashMap<String, DecisionLine> = b.into_iter().map(|d| (d.id.clone(), d)).collect();
    let mut c = Comparison {
        a: String::new(),
        b: String::new(),
        analysis_a: Analysis::default(),
        analysis_b: Analysis::default(),
        both: 0,
        different: 0,
        transitions: BTreeMap::new(),
        same_action_changed: 0,
        only_a: 0,
        only_b: 0,
        examples: Vec::new(),
    };
    let mut differing = Vec::new();
    for da in a {
        let Some(db) = by_id.remove(&da.id) else {
            c.only_a += 1;
            continue;
        };
        c.both += 1;
        if same(&da, &db) {
            continue;
        }
        c.different += 1;
        if da.action == db.action {
            c.same_action_changed += 1;
        } else {
            *c.transitions.entry((da.action.clone(), db.action.clone())).or_default() += 1;
        }
        differing.push((da, db));
    }
    c.only_b = by_id.len() as u64;
    differing.sort_by(|x, y| (x.0.event_ts_ms, &x.0.id).cmp(&(y.0.event_ts_ms, &y.0.id)));
    differing.truncate(EXAMPLES);
    c.examples = differing;
    c
}

fn brief(d: &DecisionLine) -> String {
    let reasons = if d.reasons.is_empty() { String::new() } else { format!(" [{}]", d.reasons.join(", ")) };
    format!("{} {}{reasons}", d.action, d.score)
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "A  {}", self.a)?;
        writeln!(f, "B  {}", self.b)?;
        writeln!(
            f,
            "{} events decided by both: {} the same, {} different ({}); decided by A only {}, by B only {}",
            self.both,
            self.both - self.different,
            self.different,
            if self.both == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}%", self.different as f64 * 100.0 / self.both as f64)
            },
            self.only_a,
            self.only_b
        )?;
        if !self.transitions.is_empty() {
            writeln!(f, "action changes, A → B:")?;
            for ((from, to), n) in &self.transitions {
                writeln!(f, "  {from:>6} → {to:<6} {n:>8}")?;
            }
        }
        writeln!(f, "same action, different score or reasons: {}", self.same_action_changed)?;
        let (a, b) = (&self.analysis_a, &self.analysis_b);
        writeln!(f)?;
        writeln!(f, "              {:>10} {:>10}", "A", "B")?;
        writeln!(f, "  review      {:>10} {:>10}", a.review, b.review)?;
        writeln!(f, "  block       {:>10} {:>10}", a.block, b.block)?;
        if a.label.is_some() {
            let (ma, mb) = (&a.overall, &b.overall);
            writeln!(f, "  fraud caught{:>10} {:>10}", ma.tp, mb.tp)?;
            writeln!(f, "  false alarms{:>10} {:>10}", ma.fp, mb.fp)?;
            writeln!(f, "  precision   {:>10} {:>10}", fmt_ratio(ma.precision()), fmt_ratio(mb.precision()))?;
            writeln!(f, "  recall      {:>10} {:>10}", fmt_ratio(ma.recall()), fmt_ratio(mb.recall()))?;
            writeln!(f, "  f1          {:>10} {:>10}", fmt_ratio(ma.f1()), fmt_ratio(mb.f1()))?;
        }
        if !self.examples.is_empty() {
            writeln!(f)?;
            writeln!(f, "first {} differences in event time:", self.examples.len())?;
            for (da, db) in &self.examples {
                writeln!(f, "  {}  A: {}  →  B: {}", da.id, brief(da), brief(db))?;
                let features: Vec<String> = da
                    .features
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", v.map_or_else(|| "-".to_owned(), |v| v.to_string())))
                    .collect();
                if !features.is_empty() {
                    writeln!(f, "      features: {}", features.join(", "))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, ts: i64, action: &str, score: i64) -> DecisionLine {
        DecisionLine {
            id: id.into(),
            action: action.into(),
            score,
            reasons: vec![],
            rules: vec![],
            features: BTreeMap::new(),
            event_ts_ms: ts,
        }
    }

    #[test]
    fn differences_are_counted_by_kind_and_shown_in_event_time() {
        let a = vec![d("x", 3, "allow", 0), d("y", 1, "review", 30), d("z", 2, "block", 80), d("w", 0, "allow", 0)];
        let b = vec![d("z", 2, "block", 90), d("y", 1, "block", 90), d("x", 3, "allow", 0), d("v", 5, "allow", 0)];
        let c = diff(a, b);
        assert_eq!((c.both, c.different, c.same_action_changed, c.only_a, c.only_b), (3, 2, 1, 1, 1));
        assert_eq!(c.transitions[&("review".to_owned(), "block".to_owned())], 1);
        let ids: Vec<&str> = c.examples.iter().map(|(x, _)| x.id.as_str()).collect();
        assert_eq!(ids, ["y", "z"]);
    }
}
