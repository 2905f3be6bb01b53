//! What a replay found: decisions by action, per-rule hits and, with
//! labels, precision, recall and F1 against the known fraud.
//!
//! Read back from the decisions file the pipeline wrote, so the figures are
//! those of the audit records a live run would have produced.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::BufRead as _;
use std::path::Path;

use super::ReplayError;

/// Known outcomes by transaction id.
#[derive(Debug, Default, Clone)]
pub struct Labels {
    /// Whether each labelled id is fraud.
    pub by_id: HashMap<String, bool>,
    /// The label's name, for the summary.
    pub name: String,
    /// Rows without a readable label.
    pub unlabelled: u64,
}

/// The parts of a decision record a replay reads.
#[derive(Debug, Clone, Deserialize)]
pub struct DecisionLine {
    /// Transaction id.
    pub id: String,
    /// Final action.
    pub action: String,
    /// Final score.
    pub score: i64,
    /// Final reasons.
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Each rule's outcome.
    #[serde(default)]
    pub rules: Vec<RuleLine>,
    /// Feature values read.
    #[serde(default)]
    pub features: BTreeMap<String, Option<f64>>,
    /// Event time, epoch ms.
    #[serde(default)]
    pub event_ts_ms: i64,
}

/// One rule's part of a decision record.
#[derive(Debug, Clone, Deserialize)]
pub struct RuleLine {
    /// Rule name.
    pub rule: String,
    /// enforce | shadow.
    #[serde(default)]
    pub mode: String,
    /// The rule's action.
    pub action: String,
    /// Why the call failed.
    #[serde(default)]
    pub error: Option<String>,
}

impl DecisionLine {
    /// Review or block.
    pub fn flagged(&self) -> bool {
        self.action != "allow"
    }
}

/// Reads every decision record in `path`, in file order.
///
/// # Errors
/// When the file cannot be read or holds a line that is not a decision.
pub fn read_decisions(path: &Path) -> Result<Vec<DecisionLine>, ReplayError> {
    let read = |source| crate::error::FileError { verb: "read", path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(read)?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(read)?;
        if line.is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|source| ReplayError::NotADecision {
            path: path.to_owned(),
            line: n as u64 + 1,
            source,
        })?);
    }
    Ok(out)
}

/// A confusion matrix, flagged (review or block) = predicted fraud.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Confusion {
    /// Flagged fraud.
    pub tp: u64,
    /// Flagged legitimate.
    pub fp: u64,
    /// Allowed fraud.
    pub fn_: u64,
    /// Allowed legitimate.
    pub tn: u64,
}

impl Confusion {
    /// Of the flagged, the share that is fraud.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }
    /// Of the fraud, the share flagged.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// Harmonic mean of precision and recall.
    pub fn f1(&self) -> Option<f64> {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// One rule's record over the replay.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RuleStats {
    /// enforce | shadow.
    pub mode: String,
    /// Events it judged.
    pub evaluated: u64,
    /// Reviews it asked for.
    pub review: u64,
    /// Blocks it asked for.
    pub block: u64,
    /// Failed calls.
    pub errors: u64,
    /// Against the labels: its hits (review or block) as predictions.
    pub confusion: Confusion,
}

impl RuleStats {
    /// Reviews and blocks.
    pub fn hits(&self) -> u64 {
        self.review + self.block
    }
}

/// Decisions within one hour of event time.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Hour {
    /// Decisions.
    pub decided: u64,
    /// Reviews and blocks.
    pub flagged: u64,
    /// Labelled fraud.
    pub fraud: u64,
    /// Labelled fraud that was flagged.
    pub caught: u64,
}

/// Counts from the pipeline itself.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Counts {
    /// Events read.
    pub events_in: u64,
    /// Events decided.
    pub decided: u64,
    /// Events dead-lettered.
    pub dead_lettered: u64,
    /// Events late for their windows.
    pub late: u64,
}

/// Everything the summary and the report show.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Analysis {
    /// Pipeline counts.
    pub counts: Counts,
    /// Decisions by action: allow, review, block.
    pub allow: u64,
    /// Reviews.
    pub review: u64,
    /// Blocks.
    pub block: u64,
    /// Per rule, by name.
    pub rules: BTreeMap<String, RuleStats>,
    /// The label's name, when labels were given.
    pub label: Option<String>,
    /// Decided events labelled fraud / legitimate, and without a label.
    pub fraud: u64,
    /// Decided events labelled legitimate.
    pub legit: u64,
    /// Decided events without a label.
    pub unlabelled: u64,
    /// Labelled fraud that never got a decision (dead-lettered).
    pub fraud_not_decided: u64,
    /// Overall: any review or block as the prediction.
    pub overall: Confusion,
    /// Final scores, with each event's label.
    #[serde(skip)]
    pub scores: Vec<(i64, Option<bool>)>,
    /// By hour of event time (start, epoch ms).
    pub hours: BTreeMap<i64, Hour>,
    /// Per typology, when typology labels were given (`--typology`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typologies: Option<TypologyTable>,
}

/// Each event's typology: the pattern it belongs to, or none.
#[derive(Debug, Default, Clone)]
pub struct Typologies {
    /// The label's name.
    pub name: String,
    /// By id: the typology, `None` for an everyday payment.
    pub by_id: HashMap<String, Option<String>>,
}

/// How the rule named after each typology (`card_testing` → rule
/// `card-testing`) does on its events, and how many everyday payments the
/// whole rule set flags.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TypologyTable {
    /// The label's name.
    pub label: String,
    /// One row per typology, by name.
    pub rows: Vec<TypologyRow>,
    /// Decided everyday payments (no typology).
    pub legit: u64,
    /// Of those, flagged (review or block) by the final decision.
    pub legit_flagged: u64,
}

/// One typology's row.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TypologyRow {
    /// The typology.
    pub typology: String,
    /// The rule named after it.
    pub rule: String,
    /// Whether that rule ran.
    pub rule_ran: bool,
    /// Decided events of the typology.
    pub events: u64,
    /// Of those, flagged by its rule.
    pub caught: u64,
    /// Events its rule flagged.
    pub rule_flagged: u64,
    /// Of those, of the typology.
    pub rule_right: u64,
    /// Events of the typology flagged by the final decision (any rule).
    pub caught_by_any: u64,
}

impl TypologyRow {
    /// Of the typology's events, the share its rule flagged.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.caught, self.events)
    }

    /// Of what its rule flagged, the share of the typology.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.rule_right, self.rule_flagged)
    }
}

impl TypologyTable {
    /// Tallies `decisions` against `typologies`.
    pub fn new(decisions: &[DecisionLine], typologies: &Typologies) -> Self {
        let mut rows: BTreeMap<String, TypologyRow> = BTreeMap::new();
        for t in typologies.by_id.values().flatten() {
            rows.entry(t.clone()).or_insert_with(|| TypologyRow {
                typology: t.clone(),
                rule: t.replace('_', "-"),
                ..TypologyRow::default()
            });
        }
        let mut table = TypologyTable { label: typologies.name.clone(), ..TypologyTable::default() };
        for d in decisions {
            let Some(typology) = typologies.by_id.get(&d.id) else { continue };
            match typology {
                None => {
                    table.legit += 1;
                    table.legit_flagged += u64::from(d.flagged());
                }
                Some(t) => {
                    if let Some(row) = rows.get_mut(t) {
                        row.events += 1;
                        row.caught_by_any += u64::from(d.flagged());
                    }
                }
            }
            for row in rows.values_mut() {
                let Some(r) = d.rules.iter().find(|r| r.rule == row.rule) else { continue };
                row.rule_ran = true;
                let flagged = r.action != "allow";
                let own = typology.as_deref() == Some(row.typology.as_str());
                row.rule_flagged += u64::from(flagged);
                row.rule_right += u64::from(flagged && own);
                row.caught += u64::from(flagged && own);
            }
        }
        table.rows = rows.into_values().collect();
        table
    }

    /// The share of everyday payments the rule set flags.
    pub fn legit_flagged_share(&self) -> Option<f64> {
        ratio(self.legit_flagged, self.legit)
    }
}

impl fmt::Display for TypologyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "typologies (`{}`): each against the rule named after it", self.label)?;
        writeln!(
            f,
            "{:<18} {:<18} {:>7} {:>7} {:>9} {:>7}  {:>10}",
            "typology", "rule", "events", "caught", "precision", "recall", "any rule"
        )?;
        for r in &self.rows {
            let (precision, recall) = match r.rule_ran {
                true => (fmt_ratio(r.precision()), fmt_ratio(r.recall())),
                false => ("no rule".to_owned(), "-".to_owned()),
            };
            writeln!(
                f,
                "{:<18} {:<18} {:>7} {:>7} {:>9} {:>7}  {:>10}",
                r.typology,
                r.rule,
                r.events,
                r.caught,
                precision,
                recall,
                fmt_ratio(ratio(r.caught_by_any, r.events))
            )?;
        }
        writeln!(
            f,
            "everyday payments flagged: {} of {} ({})",
            self.legit_flagged,
            self.legit,
            fmt_ratio(self.legit_flagged_share())
        )
    }
}

const HOUR_MS: i64 = 3_600_000;

impl Analysis {
    /// Tallies `decisions` against `labels`.
    pub fn new(counts: Counts, decisions: &[DecisionLine], labels: Option<&Labels>) -> Analysis {
        let mut a = Analysis { counts, label: labels.map(|l| l.name.clone()), ..Analysis::default() };
        let mut decided_ids = std::collections::HashSet::with_capacity(decisions.len());
        for d in decisions {
            decided_ids.insert(d.id.as_str());
            match d.action.as_str() {
                "review" => a.review += 1,
                "block" => a.block += 1,
                _ => a.allow += 1,
            }
            let label = labels.and_then(|l| l.by_id.get(&d.id).copied());
            match label {
                Some(true) => a.fraud += 1,
                Some(false) => a.legit += 1,
                None => a.unlabelled += 1,
            }
            if let Some(fraud) = label {
                tally(&mut a.overall, d.flagged(), fraud);
            }
            for r in &d.rules {
                let s = a.rules.entry(r.rule.clone()).or_default();
                s.mode.clone_from(&r.mode);
                s.evaluated += 1;
                match r.action.as_str() {
                    "review" => s.review += 1,
                    "block" => s.block += 1,
                    _ => {}
                }
                s.errors += u64::from(r.error.is_some());
                if let Some(fraud) = label {
                    tally(&mut s.confusion, r.action != "allow", fraud);
                }
            }
            a.scores.push((d.score, label));
            let hour = a.hours.entry(d.event_ts_ms.div_euclid(HOUR_MS) * HOUR_MS).or_default();
            hour.decided += 1;
            hour.flagged += u64::from(d.flagged());
            hour.fraud += u64::from(label == Some(true));
            hour.caught += u64::from(label == Some(true) && d.flagged());
        }
        if let Some(l) = labels {
            a.fraud_not_decided =
                l.by_id.iter().filter(|(id, fraud)| **fraud && !decided_ids.contains(id.as_str())).count() as u64;
        }
        a
    }
}

fn tally(c: &mut Confusion, flagged: bool, fraud: bool) {
    match (flagged, fraud) {
        (true, true) => c.tp += 1,
        (true, false) => c.fp += 1,
        (false, true) => c.fn_ += 1,
        (false, false) => c.tn += 1,
    }
}

/// A share as `0.250`, or `-` when undefined.
pub fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| format!("{r:.3}"))
}

fn pct(part: u64, whole: u64) -> String {
    ratio(part, whole).map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// The text summary `vigil replay` prints: stable for the same input, rules
/// and config (no timings), so it can be kept as a golden file.
impl fmt::Display for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "events      {} read, {} decided, {} dead-lettered, {} late for their windows",
            c.events_in, c.decided, c.dead_lettered, c.late
        )?;
        let n = self.allow + self.review + self.block;
        writeln!(
            f,
            "decisions   allow {} ({}), review {} ({}), block {} ({})",
            self.allow,
            pct(self.allow, n),
            self.review,
            pct(self.review, n),
            self.block,
            pct(self.block, n)
        )?;
        if let Some(label) = &self.label {
            writeln!(
                f,
                "labels      `{label}`: {} fraud, {} legitimate, {} unlabelled among decided events",
                self.fraud, self.legit, self.unlabelled
            )?;
            if self.fraud_not_decided > 0 {
                writeln!(f, "            {} fraud events were dead-lettered, not decided", self.fraud_not_decided)?;
            }
        }
        writeln!(f)?;
        let width = self.rules.keys().map(String::len).max().unwrap_or(4).max(7);
        write!(f, "{:width$}  {:7}  {:>7}  {:>7}  {:>7}  {:>6}", "rule", "mode", "hits", "review", "block", "errors")?;
        if self.label.is_some() {
            write!(f, "  {:>5}  {:>5}  {:>9}  {:>6}  {:>5}", "tp", "fp", "precision", "recall", "f1")?;
        }
        writeln!(f)?;
        for (name, s) in &self.rules {
            write!(
                f,
                "{name:width$}  {:7}  {:>7}  {:>7}  {:>7}  {:>6}",
                s.mode,
                s.hits(),
                s.review,
                s.block,
                s.errors
            )?;
            if self.label.is_some() {
                let m = &s.confusion;
                write!(
                    f,
                    "  {:>5}  {:>5}  {:>9}  {:>6}  {:>5}",
                    m.tp,
                    m.fp,
                    fmt_ratio(m.precision()),
                    fmt_ratio(m.recall()),
                    fmt_ratio(m.f1())
                )?;
            }
            writeln!(f)?;
        }
        if self.label.is_some() {
            let m = &self.overall;
            writeln!(f)?;
            writeln!(f, "overall (flagged = review or block)")?;
            writeln!(f, "              fraud    legit")?;
            writeln!(f, "  flagged  {:>8} {:>8}", m.tp, m.fp)?;
            writeln!(f, "  allowed  {:>8} {:>8}", m.fn_, m.tn)?;
            writeln!(
                f,
                "  precision {}  recall {}  f1 {}",
                fmt_ratio(m.precision()),
                fmt_ratio(m.recall()),
                fmt_ratio(m.f1())
            )?;
        }
        if let Some(t) = &self.typologies {
            writeln!(f)?;
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(id: &str, action: &str, rules: &[(&str, &str)]) -> DecisionLine {
        DecisionLine {
            id: id.into(),
            action: action.into(),
            score: if action == "allow" { 0 } else { 50 },
            reasons: vec![],
            rules: rules
                .iter()
                .map(|(r, a)| RuleLine { rule: (*r).into(), mode: "enforce".into(), action: (*a).into(), error: None })
                .collect(),
            features: BTreeMap::new(),
            event_ts_ms: 0,
        }
    }

    #[test]
    fn confusion_and_rates_follow_the_labels() {
        let decisions = [
            d("a", "review", &[("x", "review"), ("y", "allow")]),
            d("b", "block", &[("x", "allow"), ("y", "block")]),
            d("c", "allow", &[("x", "allow"), ("y", "allow")]),
            d("e", "allow", &[("x", "allow"), ("y", "allow")]),
            d("f", "review", &[("x", "review"), ("y", "allow")]),
        ];
        let labels = Labels {
            by_id: [("a", true), ("b", false), ("c", true), ("e", false), ("f", true), ("lost", true)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            name: "is_fraud".into(),
            unlabelled: 0,
        };
        let a = Analysis::new(Counts::default(), &decisions, Some(&labels));
        assert_eq!(a.overall, Confusion { tp: 2, fp: 1, fn_: 1, tn: 1 });
        assert_eq!((a.allow, a.review, a.block), (2, 2, 1));
        assert_eq!((a.fraud, a.legit, a.fraud_not_decided), (3, 2, 1));
        let x = &a.rules["x"];
        assert_eq!(x.confusion, Confusion { tp: 2, fp: 0, fn_: 1, tn: 2 });
        assert_eq!(x.confusion.precision(), Some(1.0));
        assert!((x.confusion.recall().expect("should succeed") - 2.0 / 3.0).abs() < 1e-9);
        assert!((x.confusion.f1().expect("should succeed") - 0.8).abs() < 1e-9);
        assert_eq!(a.rules["y"].confusion.precision(), Some(0.0));
        assert_eq!(Confusion::default().precision(), None);
    }
}
