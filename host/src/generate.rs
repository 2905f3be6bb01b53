//! `vigil gen`: synthetic payment streams for demos, tests and benchmarks.
//!
//! A population of accounts, each with one card, a home country, device and
//! IP, makes everyday payments on the channels of its country (cards
//! everywhere, Alipay and WeChat Pay in China, bank transfers and wallets).
//! Into that stream go fraud patterns, each a short sequence of events in
//! event time:
//!
//! - **card testing**: a burst of tiny card-not-present payments at many
//!   merchants within minutes;
//! - **account takeover**: a new device in another country, then large
//!   transfers and cash-outs;
//! - **structuring**: several transfers just under a reporting threshold;
//! - **velocity spike**: a card used many times within ten minutes;
//! - **rapid movement of funds**: a large cash deposit moved out again
//!   within hours;
//! - **fan-in mule**: many accounts pay one account within hours, which
//!   then cashes out;
//! - **fan-out mule**: one account pays many others within hours.
//!
//! The output is canonical JSON lines in event-time order, deterministic
//! for a seed. With a label key each event says whether it belongs to a
//! pattern, for `vigil replay --label`; with a typology key, which one
//! (`card_testing`, …; null for everyday payments), for
//! `vigil replay --typology`.

use rand::rngs::SmallRng;
use rand::{RngExt as _, SeedableRng as _};
use serde_json::{Value, json};
use std::collections::BinaryHeap;
use std::io::Write;
use std::time::{Duration, Instant};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenOptions {
    /// Events in all.
    pub events: u64,
    /// Accounts (one card each): the key cardinality.
    pub accounts: u32,
    /// Share of events that belong to fraud patterns, 0..=1.
    pub fraud_share: f64,
    /// Everyday payments per account per day of event time, on average
    /// (the event-time rate is `accounts × per_day / 86400` per second).
    pub per_day: f64,
    /// Write at most this many events per second of wall time; 0 = as fast as possible.
    pub pace: f64,
    /// First event time, epoch ms.
    pub start_ms: i64,
    /// RNG seed: the same seed gives the same stream.
    pub seed: u64,
    /// Add this top-level key with the fraud label to each event.
    pub label: Option<String>,
    /// Add this top-level key with the pattern's name (null for everyday
    /// payments) to each event.
    pub typology: Option<String>,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions {
            events: 10_000,
            accounts: 10_000,
            fraud_share: 0.02,
            per_day: 5.0,
            pace: 0.0,
            start_ms: 1_735_689_600_000, // 2025-01-01T00:00:00Z
            seed: 1,
            label: None,
            typology: None,
        }
    }
}

/// Why a generator could not be made: an option out of range, named by
/// its flag.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// No accounts to pay from.
    #[error("--accounts must be at least 1")]
    NoAccounts,
    /// A fraud share outside 0..=1.
    #[error("--fraud-share must be between 0 and 1, got {got}")]
    FraudShare {
        /// The share given.
        got: f64,
    },
    /// A rate of payments per account per day that is not positive.
    #[error("--per-day must be a positive number of payments per account per day, got {got}")]
    PerDay {
        /// The rate given.
        got: f64,
    },
    /// A pace that is negative or not finite.
    #[error("--rate must be 0 (as fast as possible) or a positive number, got {got}")]
    Rate {
        /// The pace given.
        got: f64,
    },
}

/// The fraud patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pattern {
    /// Tiny card-not-present payments in a burst.
    CardTesting,
    /// New device and country, then large transfers.
    AccountTakeover,
    /// Transfers just under a threshold.
    Structuring,
    /// Many card payments in ten minutes.
    VelocitySpike,
    /// A large cash deposit moved out within hours.
    RapidMovement,
    /// Many accounts pay one, which cashes out.
    FanIn,
    /// One account pays many.
    FanOut,
}

impl Pattern {
    /// Every pattern, in the order [`GenSummary::patterns`] counts them.
    pub const ALL: [Pattern; 7] = [
        Pattern::CardTesting,
        Pattern::AccountTakeover,
        Pattern::Structuring,
        Pattern::VelocitySpike,
        Pattern::RapidMovement,
        Pattern::FanIn,
        Pattern::FanOut,
    ];

    /// Its name in typology labels.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::CardTesting => "card_testing",
            Pattern::AccountTakeover => "account_takeover",
            Pattern::Structuring => "structuring",
            Pattern::VelocitySpike => "velocity_spike",
            Pattern::RapidMovement => "rapid_movement",
            Pattern::FanIn => "fan_in",
            Pattern::FanOut => "fan_out",
        }
    }
}

/// Counts of what was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GenSummary {
    /// Events written.
    pub events: u64,
    /// Of those, in a fraud pattern.
    pub fraud: u64,
    /// Pattern occurrences started, by [`Pattern::ALL`] order.
    pub patterns: [u64; 7],
}

const COUNTRIES: [(&str, &str, u32); 8] = [
    ("US", "USD", 30),
    ("GB", "GBP", 10),
    ("DE", "EUR", 10),
    ("FR", "EUR", 8),
    ("CN", "CNY", 22),
    ("SG", "SGD", 5),
    ("BR", "BRL", 7),
    ("IN", "INR", 8),
];

const MERCHANTS: [(&str, u16); 12] = [
    ("grocer", 5411),
    ("fuel", 5541),
    ("restaurant", 5812),
    ("fastfood", 5814),
    ("games", 5816),
    ("electronics", 5732),
    ("apparel", 5651),
    ("pharmacy", 5912),
    ("online", 5999),
    ("travel", 4722),
    ("jewellery", 5944),
    ("taxi", 4121),
];

/// One account of the population.
struct Account {
    id: u32,
    country: usize,
}

/// An event waiting for its time, ordered so the heap pops the earliest.
struct Pending {
    ts: i64,
    seq: u64,
    event: Value,
    pattern: Pattern,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.ts, self.seq) == (o.ts, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.ts, o.seq).cmp(&(self.ts, self.seq))
    }
}

/// The generator: call [`Generator::write`] to produce the stream.
pub struct Generator {
    opts: GenOptions,
    rng: SmallRng,
    now_ms: i64,
    seq: u64,
    scheduled: u64,
    pending: BinaryHeap<Pending>,
    summary: GenSummary,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").field("opts", &self.opts).field("summary", &self.summary).finish_non_exhaustive()
    }
}

/// A 16-digit PAN passing the Luhn check, from a number.
fn pan(n: u64) -> String {
    let body = format!("4{:014}", n % 100_000_000_000_000);
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

impl Generator {
    /// A generator for `opts`.
    ///
    /// # Errors
    /// Options out of range, naming the option.
    pub fn new(opts: GenOptions) -> Result<Generator, GenerateError> {
        if opts.accounts == 0 {
            return Err(GenerateError::NoAccounts);
        }
        if !(0.0..=1.0).contains(&opts.fraud_share) {
            return Err(GenerateError::FraudShare { got: opts.fraud_share });
        }
        if !(opts.per_day > 0.0 && opts.per_day.is_finite()) {
            return Err(GenerateError::PerDay { got: opts.per_day });
        }
        if !(opts.pace >= 0.0 && opts.pace.is_finite()) {
            return Err(GenerateError::Rate { got: opts.pace });
        }
        Ok(Generator {
            rng: SmallRng::seed_from_u64(opts.seed),
            now_ms: opts.start_ms,
            seq: 0,
            scheduled: 0,
            pending: BinaryHeap::new(),
            summary: GenSummary::default(),
            opts,
        })
    }

    fn account(&mut self) -> Account {
        let id = self.rng.random_range(0..self.opts.accounts);
        // The country follows from the id, so an account stays home.
        let total: u32 = COUNTRIES.iter().map(|c| c.2).sum();
        let mut pick = (u64::from(id).wrapping_mul(2_654_435_761) % u64::from(total)) as u32;
        let country = COUNTRIES
            .iter()
            .position(|c| {
                if pick < c.2 {
                    true
                } else {
                    pick -= c.2;
                    false
                }
            })
            .unwrap_or(0);
        Account { id, country }
    }

    /// An everyday amount in minor units: log-normal around 30.00.
    fn amount(&mut self) -> i64 {
        let z: f64 = (0..6).map(|_| self.rng.random::<f64>()).sum::<f64>() - 3.0; // ~N(0, 0.71)
        ((8.0 + 1.3 * z).exp()).round().max(50.0) as i64
    }

    fn base(&mut self, a: &Account, ts: i64) -> serde_json::Map<String, Value> {
        let (country, currency, _) = COUNTRIES[a.country];
        self.seq += 1;
        let mut e = serde_json::Map::new();
        e.insert("id".into(), json!(format!("g{}-{}", self.opts.seed, self.seq)));
        e.insert("ts".into(), json!(ts));
        e.insert("currency".into(), json!(currency));
        e.insert("account".into(), json!(format!("acct-{:07}", a.id)));
        e.insert("device".into(), json!(format!("dev-{:07}", a.id)));
        e.insert("ip".into(), json!(format!("10.{}.{}.{}", a.id >> 16 & 255, a.id >> 8 & 255, a.id & 255)));
        e.insert("geo".into(), json!({ "country": country }));
        e
    }

    fn card(&self, a: &Account, present: bool) -> Value {
        json!({ "pan": pan(u64::from(a.id)), "country": COUNTRIES[a.country].0, "present": present })
    }

    fn merchant(&mut self, country: &str, pick: Option<usize>) -> Value {
        let i = pick.unwrap_or_else(|| self.rng.random_range(0..MERCHANTS.len()));
        let (name, mcc) = MERCHANTS[i];
        let n = self.rng.random_range(0..50);
        json!({ "id": format!("m-{name}-{}-{n}", country.to_ascii_lowercase()), "mcc": mcc, "country": country })
    }

    /// One everyday payment.
    fn normal(&mut self, ts: i64) -> Value {
        let a = self.account();
        let mut e = self.base(&a, ts);
        let country = COUNTRIES[a.country].0;
        let roll = self.rng.random_range(0..100);
        let (channel, kind) = match (country, roll) {
            ("CN", 0..40) => ("alipay", "purchase"),
            ("CN", 40..75) => ("wechat", "purchase"),
            (_, 0..80) => ("card", "purchase"),
            (_, 80..83) => ("card", "refund"),
            (_, 83..93) => ("wallet", "purchase"),
            _ => ("bank_transfer", "transfer"),
        };
        e.insert("channel".into(), json!(channel));
        e.insert("kind".into(), json!(kind));
        e.insert("amount".into(), json!(self.amount()));
        if channel == "card" {
            let present = self.rng.random_bool(0.6);
            e.insert("card".into(), self.card(&a, present));
        }
        if kind == "transfer" {
            e.insert("counterparty".into(), json!({ "id": format!("acct-{:07}", self.rng.random_range(0..self.opts.accounts)), "country": country }));
        } else {
            e.insert("merchant".into(), self.merchant(country, None));
        }
        Value::Object(e)
    }

    fn schedule(&mut self, ts: i64, event: Value, pattern: Pattern) {
        // Ties in time keep the order the pattern made them in.
        self.scheduled += 1;
        self.pending.push(Pending { ts, seq: self.scheduled, event, pattern });
    }

    /// A transfer (or cash-out, with no counterparty) from `a` at `ts`.
    fn transfer(&mut self, a: &Account, ts: i64, kind: &str, amount: i64, to: Option<String>) -> Value {
        let mut e = self.base(a, ts);
        e.insert("channel".into(), json!("bank_transfer"));
        e.insert("kind".into(), json!(kind));
        e.insert("amount".into(), json!(amount));
        if let Some(to) = to {
            e.insert("counterparty".into(), json!({ "id": to, "country": COUNTRIES[a.country].0 }));
        }
        Value::Object(e)
    }

    fn population_id(&mut self) -> String {
        format!("acct-{:07}", self.rng.random_range(0..self.opts.accounts))
    }

    /// Starts a pattern at `ts`: its events wait in the pending heap.
    fn start_pattern(&mut self, ts: i64) {
        let p = Pattern::ALL[self.rng.random_range(0..Pattern::ALL.len())];
        self.summary.patterns[p as usize] += 1;
        let a = self.account();
        let home = COUNTRIES[a.country].0;
        let foreign = loop {
            let c = COUNTRIES[self.rng.random_range(0..COUNTRIES.len())].0;
            if c != home {
                break c;
            }
        };
        let mut t = ts;
        match p {
            Pattern::CardTesting => {
                for _ in 0..self.rng.random_range(8..=15) {
                    let mut e = self.base(&a, t);
                    e.insert("channel".into(), json!("card"));
                    e.insert("kind".into(), json!("purchase"));
                    e.insert("amount".into(), json!(self.rng.random_range(100..500)));
                    e.insert("card".into(), self.card(&a, false));
                    let m = self.merchant(foreign, Some(8));
                    e.insert("merchant".into(), m);
                    e.insert("ip".into(), json!(format!("203.0.113.{}", self.rng.random_range(1..255))));
                    e.insert("geo".into(), json!({ "country": foreign }));
                    self.schedule(t, Value::Object(e), p);
                    t += self.rng.random_range(5_000..40_000);
                }
            }
            Pattern::AccountTakeover => {
                let device = format!("dev-new-{}", self.rng.random_range(0..1_000_000));
                let ip = format!("198.51.100.{}", self.rng.random_range(1..255));
                for step in 0..self.rng.random_range(3..=5) {
                    let mut e = self.base(&a, t);
                    e.insert("device".into(), json!(device));
                    e.insert("ip".into(), json!(ip));
                    e.insert("geo".into(), json!({ "country": foreign }));
                    let (kind, amount) = if step == 0 {
                        ("purchase", 100)
                    } else {
                        (if step % 2 == 1 { "transfer" } else { "cash_out" }, self.rng.random_range(200_000..800_000))
                    };
                    e.insert("channel".into(), json!(if step == 0 { "wallet" } else { "bank_transfer" }));
                    e.insert("kind".into(), json!(kind));
                    e.insert("amount".into(), json!(amount));
                    if kind == "purchase" {
                        let m = self.merchant(foreign, Some(8));
                        e.insert("merchant".into(), m);
                    } else {
                        e.insert(
                            "counterparty".into(),
                            json!({ "id": format!("mule-{}", self.rng.random_range(0..500)), "country": foreign }),
                        );
                    }
                    self.schedule(t, Value::Object(e), p);
                    t += self.rng.random_range(30_000..180_000);
                }
            }
            Pattern::Structuring => {
                for _ in 0..self.rng.random_range(3..=6) {
                    let mut e = self.base(&a, t);
                    e.insert("channel".into(), json!("bank_transfer"));
                    e.insert("kind".into(), json!("transfer"));
                    e.insert("amount".into(), json!(self.rng.random_range(900_000..1_000_000)));
                    e.insert("counterparty".into(), json!({ "id": format!("acct-{:07}", self.rng.random_range(0..self.opts.accounts)), "country": home }));
                    self.schedule(t, Value::Object(e), p);
                    t += self.rng.random_range(600_000..3_600_000);
                }
            }
            Pattern::RapidMovement => {
                let deposit = self.rng.random_range(500_000..2_000_000);
                let mut e = self.base(&a, t);
                e.insert("channel".into(), json!("bank_transfer"));
                e.insert("kind".into(), json!("cash_in"));
                e.insert("amount".into(), json!(deposit));
                self.schedule(t, Value::Object(e), p);
                let outs = self.rng.random_range(2..=4);
                let mut left = deposit * self.rng.random_range(85..=100) / 100;
                for i in 0..outs {
                    t += self.rng.random_range(600_000..5_400_000);
                    let amount = if i + 1 == outs { left } else { left / (outs - i) };
                    left -= amount;
                    let e = match self.rng.random_bool(0.5) {
                        true => {
                            let to = format!("ext-{}", self.rng.random_range(0..100_000));
                            self.transfer(&a, t, "transfer", amount, Some(to))
                        }
                        false => self.transfer(&a, t, "cash_out", amount, None),
                    };
                    self.schedule(t, e, p);
                }
            }
            Pattern::FanIn => {
                let mule = a;
                let mule_id = format!("acct-{:07}", mule.id);
                let mut received = 0;
                for _ in 0..self.rng.random_range(8..=15) {
                    let sender = self.account();
                    let amount = self.rng.random_range(20_000..90_000);
                    received += amount;
                    let e = self.transfer(&sender, t, "transfer", amount, Some(mule_id.clone()));
                    self.schedule(t, e, p);
                    t += self.rng.random_range(300_000..1_800_000);
                }
                let e = self.transfer(&mule, t, "cash_out", received * 9 / 10, None);
                self.schedule(t, e, p);
            }
            Pattern::FanOut => {
                for _ in 0..self.rng.random_range(10..=16) {
                    let to = self.population_id();
                    let amount = self.rng.random_range(20_000..90_000);
                    let e = self.transfer(&a, t, "transfer", amount, Some(to));
                    self.schedule(t, e, p);
                    t += self.rng.random_range(120_000..900_000);
                }
            }
            Pattern::VelocitySpike => {
                for _ in 0..self.rng.random_range(10..=20) {
                    let mut e = self.base(&a, t);
                    e.insert("channel".into(), json!("card"));
                    e.insert("kind".into(), json!("purchase"));
                    let amount = self.amount();
                    e.insert("amount".into(), json!(amount));
                    e.insert("card".into(), self.card(&a, true));
                    let m = self.merchant(home, None);
                    e.insert("merchant".into(), m);
                    self.schedule(t, Value::Object(e), p);
                    t += self.rng.random_range(10_000..50_000);
                }
            }
        }
    }

    /// Writes the stream to `out` as JSON lines.
    ///
    /// # Errors
    /// When `out` fails.
    pub fn write(mut self, out: &mut impl Write) -> std::io::Result<GenSummary> {
        let gap_ms = 86_400_000.0 / (f64::from(self.opts.accounts) * self.opts.per_day);
        let started = Instant::now();
        // Each pattern averages about 9 events.
        let start_p = self.opts.fraud_share / 9.0 / (1.0 - self.opts.fraud_share).max(1e-9);
        while self.summary.events < self.opts.events {
            let next_normal = self.now_ms;
            // Once the patterns under way fill the rest of the stream, finish
            // them rather than cut them off, so the fraud share holds.
            let draining = self.summary.events + self.pending.len() as u64 >= self.opts.events;
            let due = draining || self.pending.peek().is_some_and(|p| p.ts <= next_normal);
            let (event, pattern) = if due {
                let p = self.pending.pop().expect("draining means patterns are pending");
                (p.event, Some(p.pattern))
            } else {
                if self.rng.random_bool(start_p.min(1.0)) {
                    self.start_pattern(next_normal);
                }
                let e = self.normal(next_normal);
                let step = -gap_ms * (1.0 - self.rng.random::<f64>()).ln();
                self.now_ms += step.round() as i64;
                (e, None)
            };
            self.emit(out, event, pattern)?;
            if self.opts.pace > 0.0 && self.summary.events.is_multiple_of(64) {
                let due_at = Duration::from_secs_f64(self.summary.events as f64 / self.opts.pace);
                if let Some(wait) = due_at.checked_sub(started.elapsed()) {
                    out.flush()?;
                    std::thread::sleep(wait);
                }
            }
        }
        out.flush()?;
        Ok(self.summary)
    }

    fn emit(&mut self, out: &mut impl Write, mut event: Value, pattern: Option<Pattern>) -> std::io::Result<()> {
        let fraud = pattern.is_some();
        if let (Some(key), Some(map)) = (&self.opts.label, event.as_object_mut()) {
            map.insert(key.clone(), json!(fraud));
        }
        if let (Some(key), Some(map)) = (&self.opts.typology, event.as_object_mut()) {
            map.insert(key.clone(), json!(pattern.map(Pattern::name)));
        }
        serde_json::to_writer(&mut *out, &event)?;
        out.write_all(b"\n")?;
        self.summary.events += 1;
        self.summary.fraud += u64::from(fraud);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CleanConfig;
    use crate::decode::{Decoder, Tokenizer};

    fn generate(opts: GenOptions) -> (Vec<String>, GenSummary) {
        let mut out = Vec::new();
        let summary = Generator::new(opts).expect("valid options").write(&mut out).expect("write to memory");
        (String::from_utf8(out).expect("utf-8").lines().map(str::to_owned).collect(), summary)
    }

    #[test]
    fn every_event_is_valid_in_time_order_and_the_seed_repeats_the_stream() {
        let opts = GenOptions { events: 20_000, accounts: 500, fraud_share: 0.05, ..GenOptions::default() };
        let (lines, summary) = generate(opts.clone());
        assert_eq!(lines.len(), 20_000);
        assert_eq!(summary.events, 20_000);
        let mut decoder = Decoder::new(&CleanConfig::default(), Tokenizer::new(b"test-key"));
        let mut last = i64::MIN;
        for line in &lines {
            let p = decoder.decode(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert!(p.ts_ms >= last, "event time goes backwards at {line}");
            last = p.ts_ms;
        }
        assert_eq!(generate(opts.clone()).0, lines, "same seed, same stream");
        assert_ne!(generate(GenOptions { seed: 2, ..opts }).0, lines);
    }

    #[test]
    fn every_pattern_appears_and_the_fraud_share_is_near_the_asked_one() {
        let (_, s) = generate(GenOptions { events: 50_000, fraud_share: 0.05, ..GenOptions::default() });
        assert!(s.patterns.iter().all(|&n| n > 10), "{s:?}");
        let share = s.fraud as f64 / s.events as f64;
        assert!((0.03..0.08).contains(&share), "fraud share {share}");
        let (_, none) = generate(GenOptions { events: 5_000, fraud_share: 0.0, ..GenOptions::default() });
        assert_eq!((none.fraud, none.patterns), (0, [0; 7]));
    }

    #[test]
    fn labels_are_added_only_when_asked_and_keys_stay_within_the_population() {
        let (lines, s) = generate(GenOptions {
            events: 3_000,
            accounts: 50,
            label: Some("is_fraud".into()),
            ..GenOptions::default()
        });
        let labelled: u64 = lines
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).expect("json"))
            .inspect(|v| {
                let acct = v["account"].as_str().expect("account");
                assert!(acct["acct-".len()..].parse::<u32>().expect("number") < 50);
            })
            .filter(|v| v["is_fraud"] == true)
            .count() as u64;
        assert_eq!(labelled, s.fraud);
    }

    #[test]
    fn typology_labels_name_the_pattern_of_each_fraud_event() {
        let (lines, s) = generate(GenOptions {
            events: 20_000,
            accounts: 2_000,
            fraud_share: 0.05,
            label: Some("is_fraud".into()),
            typology: Some("typology".into()),
            ..GenOptions::default()
        });
        let mut seen = std::collections::BTreeMap::new();
        for v in lines.iter().map(|l| serde_json::from_str::<Value>(l).expect("json")) {
            assert_eq!(v["is_fraud"] == true, !v["typology"].is_null(), "{v}");
            if let Some(t) = v["typology"].as_str() {
                *seen.entry(t.to_owned()).or_insert(0u64) += 1;
            }
        }
        let names: Vec<&str> = Pattern::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>().len(), names.len(), "{seen:?}");
        assert_eq!(seen.values().sum::<u64>(), s.fraud);
    }

    #[test]
    fn pans_pass_the_luhn_check() {
        for n in [0, 1, 42, 99_999_999] {
            let p = pan(n);
            let sum: u32 = p
                .bytes()
                .rev()
                .enumerate()
                .map(|(i, b)| {
                    let d = u32::from(b - b'0');
                    if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }
                })
                .sum();
            assert_eq!((p.len(), sum % 10), (16, 0), "{p}");
        }
    }

    #[test]
    fn bad_options_name_the_flag() {
        let e = Generator::new(GenOptions { fraud_share: 2.0, ..GenOptions::default() }).expect_err("refused");
        assert!(e.to_string().contains("--fraud-share"));
        let e = Generator::new(GenOptions { accounts: 0, ..GenOptions::default() }).expect_err("refused");
        assert!(e.to_string().contains("--accounts"));
    }
}
