//! Decide: combine the rules' outcomes into one decision and its audit record.
//!
//! The final action is the most severe outcome of the enforcing rules; shadow
//! rules are evaluated and recorded but never change it. Scores of enforcing
//! rules add up; their reason codes are collected in rule order.
//!
//! A record names the rule set that decided it (`rule_set`, whose contents
//! the rule-sets output holds) and, compact by default, lists only the rules
//! that had something to say: see [`RuleOutcome::is_quiet`].

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use vigil_abi::Action;

/// The version of the decision record's shape, in its `schema` field.
pub const SCHEMA: u32 = 2;

/// Which rules a decision record lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordShape {
    /// Only the rules that did not quietly allow (see
    /// [`RuleOutcome::is_quiet`]): the record does not grow with the rules.
    #[default]
    Compact,
    /// Every rule's outcome.
    Full,
}

/// Whether a rule's outcome counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The outcome takes part in the final decision.
    #[default]
    Enforce,
    /// The outcome is recorded only, e.g. for a new version under trial.
    Shadow,
    /// The outcome takes part for a deterministic share of entities (the
    /// rule's `canary-percent` of its `canary-key`) and is recorded only
    /// for the rest: a new version meets real traffic gradually.
    Canary,
}

impl Mode {
    /// Its name in the config and in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
            Mode::Canary => "canary",
        }
    }
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

/// A rule's reason codes for one event: one without a heap allocation (a
/// firing rule usually gives one).
pub type Reasons = smallvec::SmallVec<[Arc<str>; 1]>;

/// Which rule version an outcome is from: the same for all its outcomes,
/// so each outcome holds it by one shared pointer.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RuleLabel {
    /// Rule name.
    pub rule: Box<str>,
    /// Rule version.
    pub version: Box<str>,
    /// SHA-256 of the module, hex.
    pub module: Box<str>,
    /// `rule`, `version`, `module` and the outcomes' `mode` rendered as the
    /// start of the JSON object, once per rule version (see
    /// [`rendered_head`]); empty: rendered per record.
    #[serde(skip)]
    pub json_head: Box<str>,
}

impl RuleLabel {
    /// The label with these fields (`json_head`: see the field), made the
    /// first time it is asked for and kept for the life of the process.
    /// Outcomes hold it by a plain reference, which costs nothing to copy or
    /// drop: as an `Arc` cloned for every outcome, the locked increment
    /// waited behind the stores of the outcomes before it, a tenth of the
    /// worker's cycles with a hundred rules (`perf record` of `vigil run`,
    /// the bench's row 9 set-up). One is kept per rule build and mode ever
    /// run, a few hundred bytes each.
    pub fn intern(rule: &str, version: &str, module: &str, json_head: &str) -> &'static RuleLabel {
        static LABELS: std::sync::Mutex<Vec<&'static RuleLabel>> = std::sync::Mutex::new(Vec::new());
        let wanted = RuleLabel {
            rule: rule.into(),
            version: version.into(),
            module: module.into(),
            json_head: json_head.into(),
        };
        let mut labels = LABELS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(&known) = labels.iter().find(|&&l| *l == wanted) {
            return known;
        }
        let made: &'static RuleLabel = Box::leak(Box::new(wanted));
        labels.push(made);
        made
    }
}

/// Whether a rule's result says nothing: it allows, with no score and no
/// reason. From an enforcing rule, such a result changes no decision.
#[inline]
pub fn says_nothing(action: Action, score: i32, reasons: &Reasons) -> bool {
    action == Action::Allow && score == 0 && reasons.is_empty()
}

/// What one rule said about one event.
#[derive(Debug, Clone, Serialize)]
pub struct RuleOutcome {
    /// The rule version.
    #[serde(flatten)]
    pub label: &'static RuleLabel,
    /// Enforce, shadow or canary.
    pub mode: Mode,
    /// With [`Mode::Canary`], whether the event is in the canary's share,
    /// so the outcome counts; `None` in the other modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_canary: Option<bool>,
    /// The rule's action (its failure outcome if it failed).
    pub action: Action,
    /// The rule's score.
    pub score: i32,
    /// The rule's reason codes.
    #[serde(skip_serializing_if = "Reasons::is_empty")]
    pub reasons: Reasons,
    /// Time spent on the rule for this event, nanoseconds: the call and
    /// the host's handling of it. Within a batch call, from the previous
    /// event's outcome to this one's; the first event of a call also
    /// carries copying the call's events into the sandbox and entering it.
    pub latency_ns: u64,
    /// Why the call failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The constant start of a rule outcome's JSON object, up to and including
/// the comma after `mode`.
pub fn rendered_head(rule: &str, version: &str, module: &str, mode: Mode) -> String {
    #[derive(Serialize)]
    struct Head<'a> {
        rule: &'a str,
        version: &'a str,
        module: &'a str,
        mode: Mode,
    }
    let mut json = serde_json::to_string(&Head { rule, version, module, mode }).unwrap_or_default();
    json.pop(); // the closing brace
    json.push(',');
    json
}

fn json_str(buf: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// A JSON array of strings.
fn json_strs<'s>(buf: &mut Vec<u8>, strings: impl Iterator<Item = &'s str>) {
    buf.push(b'[');
    for (i, s) in strings.enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        json_str(buf, s);
    }
    buf.push(b']');
}

/// `v` as serde_json writes an `f64` (NaN and infinities as `null`).
/// Most feature values are whole numbers (counts, sums of minor units);
/// below 10^15 serde_json writes those as their digits and `.0`, which
/// the integer formatter does without the float formatter's work.
fn json_f64(buf: &mut Vec<u8>, v: f64) {
    if v.fract() == 0.0 && v.abs() < 1e15 && !(v == 0.0 && v.is_sign_negative()) {
        json_int(buf, v as i64);
        buf.extend_from_slice(b".0");
    } else {
        let _ = serde_json::to_writer(&mut *buf, &v);
    }
}

fn json_int(buf: &mut Vec<u8>, v: impl itoa::Integer) {
    buf.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

impl RuleOutcome {
    /// Whether a compact record leaves this outcome out: an enforcing rule
    /// that allowed, with no score, reason or error, or a shadow rule that
    /// agreed with the final action and did not fail. Replaying the record's
    /// rule set over the event gives it back (see docs/decision-records.md).
    pub fn is_quiet(&self, decided: Action) -> bool {
        if self.error.is_some() {
            return false;
        }
        match self.counts() {
            true => says_nothing(self.action, self.score, &self.reasons),
            false => self.action == decided,
        }
    }

    /// Whether the outcome takes part in the decision: an enforcing rule's,
    /// or a canary's for an event in its share.
    #[inline]
    pub fn counts(&self) -> bool {
        self.mode == Mode::Enforce || self.in_canary == Some(true)
    }

    fn write_json(&self, buf: &mut Vec<u8>) {
        let l = self.label;
        if l.json_head.is_empty() {
            buf.extend_from_slice(rendered_head(&l.rule, &l.version, &l.module, self.mode).as_bytes());
        } else {
            buf.extend_from_slice(l.json_head.as_bytes());
        }
        match self.in_canary {
            Some(true) => buf.extend_from_slice(b"\"in_canary\":true,"),
            Some(false) => buf.extend_from_slice(b"\"in_canary\":false,"),
            None => {}
        }
        buf.extend_from_slice(b"\"action\":\"");
        buf.extend_from_slice(self.action.as_str().as_bytes());
        buf.extend_from_slice(b"\",\"score\":");
        json_int(buf, self.score);
        if !self.reasons.is_empty() {
            buf.extend_from_slice(b",\"reasons\":");
            json_strs(buf, self.reasons.iter().map(|r| &**r));
        }
        buf.extend_from_slice(b",\"latency_ns\":");
        json_int(buf, self.latency_ns);
        if let Some(e) = &self.error {
            buf.extend_from_slice(b",\"error\":");
            json_str(buf, e);
        }
        buf.push(b'}');
    }
}

/// The audit record of one decision.
#[derive(Debug, Clone, Serialize)]
pub struct Decision<'a> {
    /// The record's shape version, [`SCHEMA`].
    pub schema: u32,
    /// Transaction id; downstream consumers drop repeats by it.
    pub id: &'a str,
    /// The final action.
    pub action: Action,
    /// Sum of the enforcing rules' scores.
    pub score: i64,
    /// Reason codes of the enforcing rules, in rule order.
    pub reasons: smallvec::SmallVec<[&'a str; 2]>,
    /// The rule set that decided: its id in the rule-sets output.
    pub rule_set: &'a str,
    /// The rules' outcomes, enforcing and shadow, as listed.
    pub rules: Listed<'a>,
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

impl Decision<'_> {
    /// Appends the record as one line of JSON — the bytes serde_json writes
    /// for it, without escaping each rule's constant fields again for every
    /// event (that escaping was the workers' largest single cost).
    pub fn write_json_line(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(b"{\"schema\":");
        json_int(buf, self.schema);
        buf.extend_from_slice(b",\"id\":");
        json_str(buf, self.id);
        buf.extend_from_slice(b",\"action\":\"");
        buf.extend_from_slice(self.action.as_str().as_bytes());
        buf.extend_from_slice(b"\",\"score\":");
        json_int(buf, self.score);
        buf.extend_from_slice(b",\"reasons\":");
        json_strs(buf, self.reasons.iter().copied());
        buf.extend_from_slice(b",\"rule_set\":");
        json_str(buf, self.rule_set);
        buf.extend_from_slice(b",\"rules\":[");
        let mut first = true;
        for o in self.rules.iter() {
            if !first {
                buf.push(b',');
            }
            first = false;
            o.write_json(buf);
        }
        buf.push(b']');
        if !self.features.is_empty() {
            buf.extend_from_slice(b",\"features\":{");
            for (i, (name, value)) in self.features.0.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                buf.extend_from_slice(name.json.as_bytes());
                json_f64(buf, *value);
            }
            buf.push(b'}');
        }
        buf.extend_from_slice(b",\"event_ts_ms\":");
        json_int(buf, self.event_ts_ms);
        buf.extend_from_slice(b",\"ingested_at_us\":");
        json_int(buf, self.ingested_at_us);
        buf.extend_from_slice(b",\"decided_at_us\":");
        json_int(buf, self.decided_at_us);
        buf.extend_from_slice(b"}\n");
    }
}

/// The outcomes a record lists: all with [`RecordShape::Full`], those not
/// quiet against the final action `decided` with [`RecordShape::Compact`].
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    /// Every rule's outcome.
    pub outcomes: &'a [RuleOutcome],
    /// Which of them to list.
    pub shape: RecordShape,
    /// The final action.
    pub decided: Action,
}

impl<'a> Listed<'a> {
    /// The outcomes listed, in rule order.
    pub fn iter(&self) -> impl Iterator<Item = &'a RuleOutcome> + use<'a> {
        let Listed { outcomes, shape, decided } = *self;
        outcomes.iter().filter(move |o| shape == RecordShape::Full || !o.is_quiet(decided))
    }
}

impl Serialize for Listed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// A feature's name, and the same as a JSON object key (quoted, escaped,
/// with its colon), rendered once rather than for every record.
#[derive(Debug, Clone)]
pub struct FeatureKey {
    /// The name.
    pub name: Box<str>,
    json: Box<str>,
}

impl FeatureKey {
    /// The key for feature `name`.
    pub fn new(name: &str) -> Self {
        let mut json = Vec::with_capacity(name.len() + 3);
        json_str(&mut json, name);
        json.push(b':');
        Self { name: name.into(), json: String::from_utf8_lossy(&json).into() }
    }
}

/// Feature values by name, written as a JSON object (NaN as null).
#[derive(Debug, Clone, Copy)]
pub struct FeatureValues<'a>(pub &'a [(&'a FeatureKey, f64)]);

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
        for (key, value) in self.0 {
            m.serialize_entry(&*key.name, value)?;
        }
        m.end()
    }
}

/// The reason a decision carries when no enforcing rule was live to make
/// it, and `rules.on-empty` did.
pub const NO_ENFORCING_RULE: &str = "no_enforcing_rule";

/// Combines outcomes into the final action, score and reasons.
pub fn combine(outcomes: &[RuleOutcome]) -> (Action, i64, smallvec::SmallVec<[&str; 2]>) {
    let mut action = Action::Allow;
    let mut score = 0i64;
    let mut reasons = smallvec::SmallVec::new();
    for o in outcomes.iter().filter(|o| o.counts()) {
        action = action.max(o.action);
        score += i64::from(o.score);
        // Pushed one by one: `extend` reserves from the size hint first,
        // a cost for every rule, and most rules give no code.
        for r in &o.reasons {
            reasons.push(&**r);
        }
    }
    (action, score, reasons)
}

/// Wall-clock time read through the CPU's time-stamp counter (`quanta`): a
/// read costs less than half the system clock's. It is anchored
/// to the system clock when made, and a worker makes one per batch, so the
/// two can only drift apart over the length of a batch.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    anchor_us: i64,
    at: quanta::Instant,
}

impl WallClock {
    /// Anchors to the system clock now.
    pub fn new() -> Self {
        Self { anchor_us: now_us(), at: quanta::Instant::now() }
    }

    /// Microseconds since the Unix epoch, now.
    pub fn now_us(&self) -> i64 {
        let since = quanta::Instant::now().saturating_duration_since(self.at);
        self.anchor_us.saturating_add(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
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

    #[test]
    fn the_wall_clock_keeps_to_the_system_clock() {
        let clock = WallClock::new();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (before, stamped, after) = (now_us(), clock.now_us(), now_us());
        // Read between two system-clock reads, 30 ms after its anchor; a
        // few ms of slack for the counter's calibration.
        assert!(stamped >= before - 5_000 && stamped <= after + 5_000, "{before} <= {stamped} <= {after}");
        assert!(stamped - clock.anchor_us >= 25_000, "the counter did not advance: {}", stamped - clock.anchor_us);
    }

    fn outcome(mode: Mode, action: Action, score: i32, reason: &str) -> RuleOutcome {
        RuleOutcome {
            label: RuleLabel::intern("r", "1", "h", ""),
            in_canary: (mode == Mode::Canary).then_some(false),
            mode,
            action,
            score,
            reasons: smallvec::smallvec![reason.into()],
            latency_ns: 0,
            error: None,
        }
    }

    #[test]
    fn the_hand_written_record_is_what_serde_json_writes() {
        let mut shadow = outcome(Mode::Shadow, Action::Block, 90, "new \"device\"");
        shadow.reasons.push("second".into());
        shadow.error = Some("trapped: panicked at \"x\"\n(at src/lib.rs:3)".into());
        let mut quiet = outcome(Mode::Enforce, Action::Allow, 0, "");
        quiet.reasons.clear();
        quiet.latency_ns = 1_234_567;
        quiet.label = RuleLabel::intern("geo-mismatch", "1", "h", &rendered_head("geo-mismatch", "1", "h", quiet.mode));
        let mut canary = outcome(Mode::Canary, Action::Review, 10, "c");
        canary.in_canary = Some(true);
        let rules = [shadow, quiet, canary, outcome(Mode::Canary, Action::Block, 1, "d")];
        let keys =
            [FeatureKey::new("count(card, 10m)"), FeatureKey::new("avg(card, amount, 1h)"), FeatureKey::new("é\"")];
        let features = [(&keys[0], 3.0), (&keys[1], f64::NAN), (&keys[2], -0.5)];
        for (id, features) in [("tx-1", &features[..]), ("odd \"id\" \\ \u{1}", &[][..])] {
            let d = Decision {
                schema: SCHEMA,
                id,
                action: Action::Review,
                score: -7,
                reasons: smallvec::smallvec!["a", "b\tc"],
                rule_set: "0123456789abcdef",
                rules: Listed { outcomes: &rules, shape: RecordShape::Full, decided: Action::Review },
                features: FeatureValues(features),
                event_ts_ms: 1_717_200_000_000,
                ingested_at_us: i64::MIN,
                decided_at_us: 42,
            };
            let mut want = serde_json::to_vec(&d).expect("serde_json");
            want.push(b'\n');
            let mut got = Vec::new();
            d.write_json_line(&mut got);
            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
        }
    }

    proptest::proptest! {
        #[test]
        fn a_feature_value_is_written_as_serde_json_writes_it(
            whole in -(1i64 << 60)..(1 << 60),
            any in proptest::num::f64::ANY,
            small in -1e6f64..1e6,
        ) {
            let edges = [-0.0, 0.0, 1e15, -1e15, 1e15 - 1.0, 1e16, -1e16, 2e16, f64::INFINITY];
            for v in [whole as f64, (whole >> 10) as f64, any, small, small.trunc()].into_iter().chain(edges) {
                let mut got = Vec::new();
                json_f64(&mut got, v);
                proptest::prop_assert_eq!(String::from_utf8_lossy(&got), serde_json::to_string(&v).expect("f64"), "{:?}", v);
            }
        }
    }

    #[test]
    fn most_severe_enforcing_outcome_wins() {
        let o = [
            outcome(Mode::Enforce, Action::Review, 30, "a"),
            outcome(Mode::Enforce, Action::Allow, 5, "b"),
            outcome(Mode::Shadow, Action::Block, 100, "c"),
            outcome(Mode::Canary, Action::Block, 100, "out of the share"),
            RuleOutcome { in_canary: Some(true), ..outcome(Mode::Canary, Action::Review, 7, "in the share") },
        ];
        let (action, score, reasons) = combine(&o);
        assert_eq!(action, Action::Review);
        assert_eq!(score, 42);
        assert_eq!(reasons.as_slice(), ["a", "b", "in the share"]);
        assert!(!o[3].is_quiet(Action::Review), "a canary outside its share that disagrees is listed");
        assert!(!o[4].is_quiet(Action::Review), "a canary that counted and reviewed is listed");
    }

    #[test]
    fn no_rules_means_allow() {
        assert_eq!(combine(&[]), (Action::Allow, 0, smallvec::SmallVec::new()));
    }
}
