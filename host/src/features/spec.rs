//! Feature specs: `count(card, 10m)`, `sum(card, amount, 10m)`,
//! `distinct(card, geo.country, 1h)` — what to aggregate, per which key,
//! over how much event time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::filter::Filter;
pub use crate::event::KeyField;

/// A value whose distinct count a feature keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DistinctField {
    /// `geo.country`.
    GeoCountry,
    /// `merchant` (id).
    Merchant,
    /// `merchant.country`.
    MerchantCountry,
    /// `device`.
    Device,
    /// `ip`.
    Ip,
    /// `card` (token).
    Card,
    /// `account`.
    Account,
    /// `currency`.
    Currency,
    /// `counterparty` (id).
    Counterparty,
}

impl DistinctField {
    const ALL: [(&'static str, DistinctField); 9] = [
        ("geo.country", DistinctField::GeoCountry),
        ("merchant", DistinctField::Merchant),
        ("merchant.country", DistinctField::MerchantCountry),
        ("device", DistinctField::Device),
        ("ip", DistinctField::Ip),
        ("card", DistinctField::Card),
        ("account", DistinctField::Account),
        ("currency", DistinctField::Currency),
        ("counterparty", DistinctField::Counterparty),
    ];

    /// Its name in specs.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, k)| *k == self).map_or("?", |(n, _)| n)
    }

    /// A stable code for stored state.
    pub fn code(self) -> u8 {
        Self::ALL.iter().position(|(_, k)| *k == self).unwrap_or(0) as u8
    }

    /// The field with `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).map(|(_, k)| *k)
    }
}

/// What a feature computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Agg {
    /// Number of payments.
    Count,
    /// Sum of amounts (minor units; currencies are not converted).
    Sum,
    /// Smallest amount.
    Min,
    /// Largest amount.
    Max,
    /// Mean amount.
    Avg,
    /// Number of distinct values of a field.
    Distinct(DistinctField),
    /// Milliseconds since the key's previous event within the window;
    /// empty when there is none.
    SinceLast,
    /// Milliseconds since the key's first event in vigil's history, at
    /// most the window.
    FirstSeen,
}

/// One look-back feature.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeatureSpec {
    /// The aggregate.
    pub agg: Agg,
    /// Kept per this key.
    pub key: KeyField,
    /// Look-back, event-time milliseconds.
    pub window_ms: i64,
    /// Only events that pass count, if set.
    pub filter: Option<Arc<Filter>>,
    /// Over `base_amount`: each amount converted to the base currency of
    /// `[currencies]` (see [`super::currency`]).
    pub base: bool,
    /// A party's inflows (`count_in`, `sum_in`, `distinct_senders`): read
    /// for the event's account (`key` is [`KeyField::Account`]) from the
    /// events in which that party was the counterparty.
    pub inflow: bool,
}

/// The number of buckets a window is cut into once a key holds too many
/// events to keep each (see [`super::lookback`]): its edge then moves in
/// steps of `window / BUCKETS`.
pub const BUCKETS: i64 = 60;

/// The longest feature spec accepted, filter included.
pub const MAX_SPEC_BYTES: usize = 1024;

/// The longest look-back accepted.
pub const MAX_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

impl FeatureSpec {
    /// Bucket width in milliseconds.
    pub fn bucket_ms(&self) -> i64 {
        (self.window_ms / BUCKETS).max(1)
    }

    /// Number of buckets the window spans.
    pub fn buckets(&self) -> i64 {
        (self.window_ms + self.bucket_ms() - 1) / self.bucket_ms()
    }

    /// The key field whose events feed the feature's series: `key`, or
    /// the counterparty for a party's inflows.
    pub fn series_key(&self) -> KeyField {
        if self.inflow { KeyField::Counterparty } else { self.key }
    }

    /// The key fields the feature needs its events routed by: the one it
    /// is read for and the one feeding it.
    pub fn fields(&self) -> impl Iterator<Item = KeyField> + use<> {
        let (a, b) = (self.key, self.series_key());
        std::iter::once(a).chain((b != a).then_some(b))
    }

    /// What identifies the filter in stored state: a hash of its
    /// canonical text, 0 for none.
    pub fn filter_id(&self) -> u64 {
        self.filter.as_ref().map_or(0, |f| xxhash_rust::xxh3::xxh3_64(f.to_string().as_bytes()).max(1))
    }

    /// What tells the feature's series from others of its key and window
    /// in stored state: its filter, and whether it adds base amounts.
    pub fn series_id(&self) -> u64 {
        const BASE: u64 = 0x6261_7365_5f61_6d74; // "base_amt"
        if self.base { self.filter_id() ^ BASE } else { self.filter_id() }
    }

    /// Parses `agg(key[, field], window[, filter])`, or one of the flows
    /// of a party: `count_in(account, window[, filter])` (what it
    /// received: `count(counterparty, …)`), `sum_in(account, amount,
    /// window[, filter])` and `distinct_senders(account, window[, filter])`
    /// (`distinct(counterparty, account, …)`).
    ///
    /// # Errors
    /// A message saying what is wrong and what is accepted; a filter's
    /// mistakes name the character of `text` they are at.
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            let start: String = text.chars().take(40).collect();
            return Err(SpecError(format!(
                "feature `{start}…` is {} bytes long; a spec is at most {MAX_SPEC_BYTES}",
                text.len()
            )));
        }
        let t = text.trim();
        let lead = text.len() - text.trim_start().len();
        let (agg, rest) = t.split_once('(').ok_or_else(|| usage(t, "missing `(`"))?;
        let args = rest.strip_suffix(')').ok_or_else(|| usage(t, "missing `)` at the end"))?;
        // Split at the commas outside parentheses: a filter's `in (a, b)`
        // holds some. Each argument keeps its byte offset in `text`.
        let base = lead + agg.len() + 1;
        let mut parts: Vec<(usize, &str)> = Vec::new();
        let (mut depth, mut start) = (0i32, 0usize);
        for (i, c) in args.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push((base + start, &args[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push((base + start, &args[start..]));
        let args: Vec<&str> = parts.iter().map(|(_, a)| a.trim()).collect();
        let key = |s: &str| {
            KeyField::from_name(s).ok_or_else(|| {
                usage(t, &format!("unknown key `{s}`; keys are card, account, counterparty, device, ip, merchant"))
            })
        };
        let window = |s: &str| -> Result<i64, SpecError> {
            let d = humantime::parse_duration(s).map_err(|e| usage(t, &format!("bad window `{s}`: {e}")))?;
            if d.is_zero() || d > MAX_WINDOW {
                return Err(usage(t, "the window must be between 1ms and 30 days"));
            }
            Ok(d.as_millis() as i64)
        };
        let account = |s: &str, name: &str| match s {
            "account" => Ok(KeyField::Account),
            _ => Err(usage(t, &format!("`{name}` is kept per account (what the party received), not `{s}`"))),
        };
        let agg = agg.trim();
        // The arguments before the window, by aggregate.
        let fixed = match agg {
            "count" | "count_in" | "distinct_senders" | "since_last" => 2,
            // `first_seen(KEY)`, `first_seen(KEY, W)`: a window if the
            // second argument reads as one.
            "first_seen" if parts.get(1).is_some_and(|(_, a)| humantime::parse_duration(a.trim()).is_ok()) => 2,
            "first_seen" => 1,
            _ => 3,
        };
        let filter = match parts.get(fixed) {
            None => None,
            Some(_) if parts.len() > fixed + 1 => return Err(usage(t, "wrong number of arguments")),
            Some((offset, f)) => {
                let inner = f.len() - f.trim_start().len();
                let filter = Filter::parse(f.trim()).map_err(|(pos, e)| {
                    // Characters, not bytes, as people count them.
                    let before = text[..offset + inner].chars().count();
                    SpecError(format!("feature `{t}`: at character {}: {e}", before + pos))
                })?;
                Some(Arc::new(filter))
            }
        };
        let args = &args[..args.len().min(fixed)];
        let inflow = matches!(agg, "count_in" | "sum_in" | "distinct_senders");
        let mut base = false;
        let spec =
            |agg, key, window_ms, base| FeatureSpec { agg, key, window_ms, filter: filter.clone(), inflow, base };
        let mut spec = match (agg, args) {
            ("count", [k, w]) => spec(Agg::Count, key(k)?, window(w)?, false),
            ("since_last", [k, w]) => spec(Agg::SinceLast, key(k)?, window(w)?, false),
            ("first_seen", [k, w]) => spec(Agg::FirstSeen, key(k)?, window(w)?, false),
            ("first_seen", [k]) => spec(Agg::FirstSeen, key(k)?, MAX_WINDOW.as_millis() as i64, false),
            ("count_in", [k, w]) => spec(Agg::Count, account(k, "count_in")?, window(w)?, false),
            ("distinct_senders", [k, w]) => {
                spec(Agg::Distinct(DistinctField::Account), account(k, "distinct_senders")?, window(w)?, false)
            }
            (a @ ("sum" | "min" | "max" | "avg" | "sum_in" | "sum_out"), [k, f, w]) => {
                match *f {
                    "amount" => {}
                    "base_amount" => base = true,
                    _ => {
                        return Err(usage(t, &format!("`{a}` works on `amount` or `base_amount`, not `{f}`")));
                    }
                }
                let (agg, key) = match a {
                    "sum" => (Agg::Sum, key(k)?),
                    "sum_in" => (Agg::Sum, account(k, "sum_in")?),
                    "sum_out" => (Agg::Sum, account(k, "sum_out")?),
                    "min" => (Agg::Min, key(k)?),
                    "max" => (Agg::Max, key(k)?),
                    _ => (Agg::Avg, key(k)?),
                };
                spec(agg, key, window(w)?, base)
            }
            ("distinct", [k, f, w]) => {
                let field = DistinctField::ALL.iter().find(|(n, _)| n == f).map(|(_, d)| *d).ok_or_else(|| {
                    let names: Vec<&str> = DistinctField::ALL.iter().map(|(n, _)| *n).collect();
                    usage(t, &format!("cannot count distinct `{f}`; fields are {}", names.join(", ")))
                })?;
                spec(Agg::Distinct(field), key(k)?, window(w)?, false)
            }
            _ => return Err(usage(t, "wrong aggregate or number of arguments")),
        };
        if agg == "sum_out" {
            // What the party sent or took out: a filter on its own events.
            let out = Filter::parse("kind in (transfer, cash_out, payout)").map_err(|(_, e)| SpecError(e))?;
            let both = match spec.filter.take() {
                Some(f) => Filter::And(vec![out, (*f).clone()]),
                None => out,
            };
            return Ok(FeatureSpec { filter: Some(Arc::new(both)), ..spec });
        }
        Ok(spec)
    }
}

fn usage(text: &str, problem: &str) -> SpecError {
    SpecError(format!(
        "feature `{text}`: {problem}; write count(KEY, WINDOW), sum|min|max|avg(KEY, amount, WINDOW), \
         distinct(KEY, FIELD, WINDOW), since_last(KEY, WINDOW) or first_seen(KEY[, WINDOW]), \
         each with an optional filter after the window, \
         e.g. count(card, 10m, amount < 1000)"
    ))
}

/// A feature spec that does not parse: what is wrong, and what is
/// accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(String);

impl fmt::Display for FeatureSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = humantime::format_duration(Duration::from_millis(self.window_ms as u64));
        let key = self.key.name();
        let amount = if self.base { "base_amount" } else { "amount" };
        match (self.agg, self.inflow) {
            (Agg::Count, true) => write!(f, "count_in({key}, {w}")?,
            (Agg::Sum, true) => write!(f, "sum_in({key}, {amount}, {w}")?,
            (Agg::Distinct(_), true) => write!(f, "distinct_senders({key}, {w}")?,
            (agg, _) => match agg {
                Agg::SinceLast => write!(f, "since_last({key}, {w}")?,
                Agg::FirstSeen => write!(f, "first_seen({key}, {w}")?,
                Agg::Count => write!(f, "count({key}, {w}")?,
                Agg::Sum => write!(f, "sum({key}, {amount}, {w}")?,
                Agg::Min => write!(f, "min({key}, {amount}, {w}")?,
                Agg::Max => write!(f, "max({key}, {amount}, {w}")?,
                Agg::Avg => write!(f, "avg({key}, {amount}, {w}")?,
                Agg::Distinct(d) => write!(f, "distinct({key}, {}, {w}", d.name())?,
            },
        }
        if let Some(filter) = &self.filter {
            write!(f, ", {filter}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for text in [
            "count(card, 10m)",
            "sum(account, amount, 1h)",
            "distinct(card, geo.country, 1h)",
            "avg(ip, amount, 30days)",
            "count(card, 10m, amount < 1000)",
            "sum(account, amount, 1day, kind = transfer and channel in (alipay, wechat))",
            "distinct(account, counterparty, 7days, not kind in (refund, payout))",
            "since_last(card, 1day)",
            "sum(account, base_amount, 1day, kind = transfer)",
            "sum_in(account, base_amount, 1day)",
            "first_seen(device, 30days, amount > 0)",
        ] {
            let spec = FeatureSpec::parse(text).expect(text);
            assert_eq!(FeatureSpec::parse(&spec.to_string()), Ok(spec), "{text}");
        }
        let s = FeatureSpec::parse(" count( device , 90s ) ").expect("spaces");
        assert_eq!((s.key, s.window_ms), (KeyField::Device, 90_000));
    }

    #[test]
    fn bad_specs_say_why() {
        let e = |t: &str| FeatureSpec::parse(t).expect_err(t).to_string();
        assert!(e("count(card)").contains("number of arguments"));
        assert!(e("count(pan, 10m)").contains("unknown key `pan`"));
        assert!(e("sum(card, fee, 10m)").contains("works on `amount` or `base_amount`"));
        assert!(e("distinct(card, colour, 1h)").contains("cannot count distinct"));
        assert!(e("count(card, 31days)").contains("30 days"));
        assert!(e("count(card, soon)").contains("bad window"));
        let f = e("count(card, 10m, amount < 1000 and colour = red)");
        assert!(f.contains("at character 36: unknown field `colour`"), "{f}");
        assert!(e("count(card, 10m, amount < )").contains("expected a value"));
        assert!(e("count(card, 10m, amount < 5, kind = refund)").contains("number of arguments"));
        assert!(e("count_in(card, 1h)").contains("kept per account"));
        let first = FeatureSpec::parse("first_seen(device)").expect("no window");
        assert_eq!(first.window_ms, MAX_WINDOW.as_millis() as i64);
        let first = FeatureSpec::parse("first_seen(device, amount > 100)").expect("a filter, no window");
        assert!(first.filter.is_some());
    }

    #[test]
    fn flows_of_a_party_read_its_counterparty_series() {
        let p = |t: &str| FeatureSpec::parse(t).expect(t);
        for text in
            ["count_in(account, 1day)", "sum_in(account, amount, 1day)", "distinct_senders(account, 1day, amount > 0)"]
        {
            let spec = p(text);
            assert_eq!((spec.key, spec.series_key()), (KeyField::Account, KeyField::Counterparty), "{text}");
            assert_eq!(p(&spec.to_string()), spec, "{text}");
            assert_eq!(spec.fields().collect::<Vec<_>>(), [KeyField::Account, KeyField::Counterparty]);
        }
        assert_eq!(p("distinct_senders(account, 24h)").agg, Agg::Distinct(DistinctField::Account));
        assert_eq!(
            p("sum_out(account, amount, 1h)"),
            p("sum(account, amount, 1h, kind in (transfer, cash_out, payout))")
        );
        assert_eq!(
            p("sum_out(account, base_amount, 1h, amount > 5)"),
            p("sum(account, base_amount, 1h, kind in (transfer, cash_out, payout) and amount > 5)")
        );
        assert_eq!(p("count(card, 10m, amount<1000)").filter_id(), p("count(card, 10m, amount < 1000)").filter_id());
        assert_eq!(p("count(card, 10m)").filter_id(), 0);
    }

    #[test]
    fn buckets_cover_the_window() {
        for w in [1, 59, 60, 61, 600_000, 2_592_000_000] {
            let s = FeatureSpec {
                agg: Agg::Count,
                key: KeyField::Card,
                window_ms: w,
                filter: None,
                inflow: false,
                base: false,
            };
            assert!(s.buckets() * s.bucket_ms() >= w);
            assert!((s.buckets() - 1) * s.bucket_ms() < w);
        }
    }
}
