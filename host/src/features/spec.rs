//! Feature specs: `count(card, 10m)`, `sum(card, amount, 10m)`,
//! `distinct(card, geo.country, 1h)` — what to aggregate, per which key,
//! over how much event time.

use std::fmt;
use std::time::Duration;

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
}

/// One look-back feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeatureSpec {
    /// The aggregate.
    pub agg: Agg,
    /// Kept per this key.
    pub key: KeyField,
    /// Look-back, event-time milliseconds.
    pub window_ms: i64,
}

/// The number of buckets a window is cut into: the window's edge moves in
/// steps of `window / BUCKETS`.
pub const BUCKETS: i64 = 60;

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

    /// Parses `agg(key[, field], window)`.
    ///
    /// # Errors
    /// A message saying what is wrong and what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let (agg, rest) = t.split_once('(').ok_or_else(|| usage(t, "missing `(`"))?;
        let args = rest.strip_suffix(')').ok_or_else(|| usage(t, "missing `)` at the end"))?;
        let args: Vec<&str> = args.split(',').map(str::trim).collect();
        let key = |s: &str| {
            KeyField::from_name(s).ok_or_else(|| {
                usage(t, &format!("unknown key `{s}`; keys are card, account, counterparty, device, ip, merchant"))
            })
        };
        let window = |s: &str| -> Result<i64, String> {
            let d = humantime::parse_duration(s).map_err(|e| usage(t, &format!("bad window `{s}`: {e}")))?;
            if d.is_zero() || d > MAX_WINDOW {
                return Err(usage(t, "the window must be between 1ms and 30 days"));
            }
            Ok(d.as_millis() as i64)
        };
        let spec = match (agg.trim(), args.as_slice()) {
            ("count", [k, w]) => FeatureSpec { agg: Agg::Count, key: key(k)?, window_ms: window(w)? },
            (a @ ("sum" | "min" | "max" | "avg"), [k, f, w]) => {
                if *f != "amount" {
                    return Err(usage(t, &format!("`{a}` works on `amount`, not `{f}`")));
                }
                let agg = match a {
                    "sum" => Agg::Sum,
                    "min" => Agg::Min,
                    "max" => Agg::Max,
                    _ => Agg::Avg,
                };
                FeatureSpec { agg, key: key(k)?, window_ms: window(w)? }
            }
            ("distinct", [k, f, w]) => {
                let field = DistinctField::ALL.iter().find(|(n, _)| n == f).map(|(_, d)| *d).ok_or_else(|| {
                    let names: Vec<&str> = DistinctField::ALL.iter().map(|(n, _)| *n).collect();
                    usage(t, &format!("cannot count distinct `{f}`; fields are {}", names.join(", ")))
                })?;
                FeatureSpec { agg: Agg::Distinct(field), key: key(k)?, window_ms: window(w)? }
            }
            _ => return Err(usage(t, "wrong aggregate or number of arguments")),
        };
        Ok(spec)
    }
}

fn usage(text: &str, problem: &str) -> String {
    format!(
        "feature `{text}`: {problem}; write count(KEY, WINDOW), sum|min|max|avg(KEY, amount, WINDOW) \
         or distinct(KEY, FIELD, WINDOW), e.g. count(card, 10m)"
    )
}

impl fmt::Display for FeatureSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = humantime::format_duration(Duration::from_millis(self.window_ms as u64));
        let key = self.key.name();
        match self.agg {
            Agg::Count => write!(f, "count({key}, {w})"),
            Agg::Sum => write!(f, "sum({key}, amount, {w})"),
            Agg::Min => write!(f, "min({key}, amount, {w})"),
            Agg::Max => write!(f, "max({key}, amount, {w})"),
            Agg::Avg => write!(f, "avg({key}, amount, {w})"),
            Agg::Distinct(d) => write!(f, "distinct({key}, {}, {w})", d.name()),
        }
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
        ] {
            let spec = FeatureSpec::parse(text).expect(text);
            assert_eq!(FeatureSpec::parse(&spec.to_string()), Ok(spec), "{text}");
        }
        let s = FeatureSpec::parse(" count( device , 90s ) ").expect("spaces");
        assert_eq!((s.key, s.window_ms), (KeyField::Device, 90_000));
    }

    #[test]
    fn bad_specs_say_why() {
        let e = |t: &str| FeatureSpec::parse(t).expect_err(t);
        assert!(e("count(card)").contains("number of arguments"));
        assert!(e("count(pan, 10m)").contains("unknown key `pan`"));
        assert!(e("sum(card, fee, 10m)").contains("works on `amount`"));
        assert!(e("distinct(card, colour, 1h)").contains("cannot count distinct"));
        assert!(e("count(card, 31days)").contains("30 days"));
        assert!(e("count(card, soon)").contains("bad window"));
    }

    #[test]
    fn buckets_cover_the_window() {
        for w in [1, 59, 60, 61, 600_000, 2_592_000_000] {
            let s = FeatureSpec { agg: Agg::Count, key: KeyField::Card, window_ms: w };
            assert!(s.buckets() * s.bucket_ms() >= w);
            assert!((s.buckets() - 1) * s.bucket_ms() < w);
        }
    }
}
