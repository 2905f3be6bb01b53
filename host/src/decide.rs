//! Decide: combine the rules' outcomes into one decision and its audit record.
//!
//! The final action is the most severe outcome of the enforcing rules; shadow
//! rules are evaluated and recorded but never change it. Scores of enforcing
//! rules add up; their reason codes are collected in rule order.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use vigil_abi::Action;

/// Whether a rule's outcome counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The outcome takes part in the final decision.
    #[default]
    Enforce,
    /// The outcome is recorded only, e.g. for a new version under trial.
    Shadow,
}

/// The outcome a rule gets when a call fails (trap, timeout, out of memory,
/// ABI violation) or the rule is quarantined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Fail open.
    #[default]
    Allow,
    /// Send to review.
    Review,
    /// Fail closed.
    Block,
}

impl FailurePolicy {
    /// The action applied on failure.
    pub fn action(self) -> Action {
        match self {
            FailurePolicy::Allow => Action::Allow,
            FailurePolicy::Review => Action::Review,
            FailurePolicy::Block => Action::Block,
        }
    }
}

/// What one rule said about one event.
#[derive(Debug, Clone, Serialize)]
pub struct RuleOutcome {
    /// Rule name.
    pub rule: Arc<str>,
    /// Rule version.
    pub version: Arc<str>,
    /// SHA-256 of the module, hex.
    pub module: Arc<str>,
    /// Enforce or shadow.
    pub mode: Mode,
    /// The rule's action (its failure outcome if it failed).
    pub action: Action,
    /// The rule's score.
    pub score: i32,
    /// The rule's reason codes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Arc<str>>,
    /// Time spent in the call, nanoseconds.
    pub latency_ns: u64,
    /// Why the call failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The audit record of one decision.
#[derive(Debug, Clone, Serialize)]
pub struct Decision<'a> {
    /// Transaction id; downstream consumers drop repeats by it.
    pub id: &'a str,
    /// The final action.
    pub action: Action,
    /// Sum of the enforcing rules' scores.
    pub score: i64,
    /// Reason codes of the enforcing rules, in rule order.
    pub reasons: Vec<&'a str>,
    /// Every rule's outcome, enforcing and shadow.
    pub rules: &'a [RuleOutcome],
    /// The feature values the live rules read for this event.
    #[serde(skip_serializing_if = "FeatureValues::is_empty")]
    pub features: FeatureValues<'a>,
    /// Event time, epoch milliseconds.
    pub event_ts_ms: i64,
    /// When the event was read, epoch microseconds.
    pub ingested_at_us: i64,
    /// When the decision was made, epoch microseconds.
    pub decided_at_us: i64,
}

/// Feature values by name, written as a JSON object (NaN as null).
#[derive(Debug, Clone, Copy)]
pub struct FeatureValues<'a>(pub &'a [(&'a str, f64)]);

impl FeatureValues<'_> {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for FeatureValues<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            m.serialize_entry(name, value)?;
        }
        m.end()
    }
}

/// Combines outcomes into the final action, score and reasons.
pub fn combine(outcomes: &[RuleOutcome]) -> (Action, i64, Vec<&str>) {
    let mut action = Action::Allow;
    let mut score = 0i64;
    let mut reasons = Vec::new();
    for o in outcomes.iter().filter(|o| o.mode == Mode::Enforce) {
        action = action.max(o.action);
        score += i64::from(o.score);
        reasons.extend(o.reasons.iter().map(|r| &**r));
    }
    (action, score, reasons)
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(mode: Mode, action: Action, score: i32, reason: &str) -> RuleOutcome {
        RuleOutcome {
            rule: "r".into(),
            version: "1".into(),
            module: "h".into(),
            mode,
            action,
            score,
            reasons: vec![reason.into()],
            latency_ns: 0,
            error: None,
        }
    }

    #[test]
    fn most_severe_enforcing_outcome_wins() {
        let o = [
            outcome(Mode::Enforce, Action::Review, 30, "a"),
            outcome(Mode::Enforce, Action::Allow, 5, "b"),
            outcome(Mode::Shadow, Action::Block, 100, "c"),
        ];
        let (action, score, reasons) = combine(&o);
        assert_eq!(action, Action::Review);
        assert_eq!(score, 35);
        assert_eq!(reasons, ["a", "b"]);
    }

    #[test]
    fn no_rules_means_allow() {
        assert_eq!(combine(&[]), (Action::Allow, 0, vec![]));
    }
}
