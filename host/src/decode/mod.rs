//! Decode and clean: JSON line → validated, normalised, tokenised [`Payment`].
//!
//! Every rejection carries a precise reason and goes to the dead-letter sink;
//! nothing is dropped silently. The raw PAN is replaced by its token here and
//! goes no further; raw lines kept for dead letters are redacted first
//! ([`redact`]).

mod dedup;
pub mod pan;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use crate::config::CleanConfig;
use crate::event::{Card, Party, Payment, Text};
pub use dedup::Dedup;
pub use pan::Tokenizer;
use vigil_abi::event::{GeoRef, encode_attr};
use vigil_abi::{Channel, Country, Kind};

/// Why an event was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The line is longer than `clean.max-event-bytes`.
    #[error("event is {len} bytes; the limit is {limit} (clean.max-event-bytes)")]
    TooLarge {
        /// Its length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// The raw bytes are not UTF-8, so not JSON text.
    #[error("not UTF-8: invalid byte sequence at byte {at}")]
    NotUtf8 {
        /// Offset of the first invalid byte.
        at: usize,
    },
    /// Not valid JSON, or not the event schema.
    #[error("{0}")]
    Json(String),
    /// A field is present but its value is not acceptable.
    #[error("field `{field}`: {problem}")]
    Invalid {
        /// The field, dotted for nested ones (`card.pan`).
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The id was already seen within `clean.dedup-horizon`.
    #[error("duplicate id `{0}` within the de-duplication horizon")]
    Duplicate(String),
}

impl DecodeError {
    /// A short stable code for counting rejections by kind.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotUtf8 { .. } => "not_utf8",
            DecodeError::Json(_) => "schema",
            DecodeError::Invalid { .. } => "invalid_field",
            DecodeError::Duplicate(_) => "duplicate",
        }
    }
}

fn invalid(field: &'static str, problem: impl Into<String>) -> DecodeError {
    DecodeError::Invalid { field, problem: problem.into() }
}

/// The event as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(deserialize_with = "event_time")]
    ts: i64,
    #[serde(borrow)]
    channel: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(deserialize_with = "minor_units")]
    amount: i64,
    #[serde(borrow)]
    currency: Cow<'a, str>,
    #[serde(borrow)]
    account: Cow<'a, str>,
    #[serde(borrow, default)]
    card: Option<RawCard<'a>>,
    #[serde(borrow, default)]
    merchant: Option<RawParty<'a>>,
    #[serde(borrow, default)]
    counterparty: Option<RawParty<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    device: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    ip: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    geo: Option<RawGeo<'a>>,
    #[serde(default)]
    attrs: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCard<'a> {
    #[serde(borrow)]
    pan: Cow<'a, str>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    country: Option<Cow<'a, str>>,
    #[serde(default)]
    present: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParty<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    mcc: Option<u16>,
    #[serde(borrow, default, deserialize_with = "opt_text")]
    country: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeo<'a> {
    #[serde(borrow, default, deserialize_with = "opt_text")]
    country: Option<Cow<'a, str>>,
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
}

/// An optional string, borrowed from the line unless it has escapes.
/// `#[serde(borrow)]` borrows a `Cow<str>` field, but one inside an
/// `Option` it always copies.
fn opt_text<'de: 'a, 'a, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text<'a>>::deserialize(d)?.map(|t| t.0))
}

/// `amount`: a JSON integer of minor units, never a float or a string.
fn minor_units<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer amount in minor units (e.g. 1250 for 12.50)")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            if v < 0 {
                return Err(E::custom(format!("amount must not be negative, got {v}")));
            }
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("amount {v} is too large")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            Err(E::custom(format!(
                "amount must be an integer in minor units, got the float {v}; money is never a float"
            )))
        }
    }
    d.deserialize_any(V)
}

/// `ts`: epoch milliseconds or an RFC 3339 string.
fn event_time<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = i64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("event time as epoch milliseconds or an RFC 3339 string")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
            if v < 0 {
                return Err(E::custom(format!("ts must not be before 1970, got {v}")));
            }
            Ok(v)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("ts {v} is out of range")))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
            Err(E::custom(format!("ts must be integer epoch milliseconds, got {v}")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
            let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map_err(|e| E::custom(format!("ts {v:?} is not RFC 3339: {e}")))?;
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
                .map_err(|_| E::custom(format!("ts {v:?} is out of range")))
        }
    }
    d.deserialize_any(V)
}

/// A rejected event as the dead-letter output records it: why, where it
/// came from, and a copy of the line with every place a card number could
/// be removed, cut to `clean.max-dead-letter-bytes`.
#[derive(Debug, serde::Serialize)]
pub struct DeadLetter<'a> {
    /// Why it was rejected.
    pub reason: String,
    /// The reason's stable code ([`DecodeError::code`]).
    pub code: &'static str,
    /// The source's name.
    pub source: &'a str,
    /// The line number, or the Kafka offset.
    pub line: u64,
    /// The line, redacted, and cut when long.
    pub raw: String,
    /// The redacted line's length when `raw` holds only its start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_bytes: Option<usize>,
    /// When it was rejected, µs since the epoch.
    pub at_us: i64,
}

/// The longest reason a dead letter keeps: a parser's message can quote
/// the whole input.
const MAX_REASON_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(mut text: String, max: usize) -> (String, Option<usize>) {
    if text.len() <= max {
        return (text, None);
    }
    let len = text.len();
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, Some(len))
}

/// Limits and keys for cleaning, from `[clean]`.
#[derive(Debug)]
pub struct Decoder {
    tokenizer: Tokenizer,
    max_dead_letter_bytes: usize,
    max_event_bytes: usize,
    max_field_bytes: usize,
    max_attrs: usize,
    /// Event times accepted: `clean.earliest` to `clean.max-future` past
    /// the clock.
    earliest_ms: i64,
    max_future_ms: i64,
    /// The latest event time accepted without reading the clock again:
    /// `max_future_ms` past its last reading. Read again only for an event
    /// past it, so nearly no event costs a clock read.
    latest_ms: i64,
    dedup: Dedup,
}

impl Decoder {
    /// A decoder with the limits of `clean` and a PAN key.
    pub fn new(clean: &CleanConfig, tokenizer: Tokenizer) -> Self {
        let horizon_ms = i64::try_from(clean.dedup_horizon.as_millis()).unwrap_or(i64::MAX);
        let hasher = crate::keyed::KeyedHash::new(tokenizer.derive(b"vigil keyed hash"));
        Self {
            tokenizer,
            max_dead_letter_bytes: clean.max_dead_letter_bytes.get(),
            max_event_bytes: clean.max_event_bytes,
            max_field_bytes: clean.max_field_bytes,
            max_attrs: clean.max_attrs,
            earliest_ms: clean.earliest.map_or(0, |t| t.as_ms()),
            max_future_ms: i64::try_from(clean.max_future.as_millis()).unwrap_or(i64::MAX),
            latest_ms: i64::MIN,
            dedup: Dedup::new(horizon_ms, hasher),
        }
    }

    /// The de-duplication set, for checkpoints.
    pub fn dedup_mut(&mut self) -> &mut Dedup {
        &mut self.dedup
    }

    /// Decodes, validates, tokenises and de-duplicates one line.
    ///
    /// # Errors
    /// [`DecodeError`] saying exactly why the event is rejected.
    pub fn decode(&mut self, line: &str) -> Result<Payment, DecodeError> {
        let payment = self.parse(line)?;
        self.admit(&payment)?;
        Ok(payment)
    }

    /// Decodes, validates and tokenises one line: everything but the
    /// de-duplication, so lines can be parsed on several threads at once.
    ///
    /// # Errors
    /// [`DecodeError`] saying exactly why the event is rejected.
    pub fn parse(&self, line: &str) -> Result<Payment, DecodeError> {
        if line.len() > self.max_event_bytes {
            return Err(self.too_large(line.len() as u64));
        }
        let raw: RawEvent<'_> = serde_json::from_str(line).map_err(|e| DecodeError::Json(e.to_string()))?;
        self.validate(raw)
    }

    /// The dead letter of `record`, rejected for `err`: redacted, and no
    /// longer than `clean.max-dead-letter-bytes` (the line is cut to fit;
    /// a dead letter too large for a Kafka message would stop the output).
    pub fn dead_letter<'s>(
        &self,
        err: &DecodeError,
        source: &'s str,
        record: &crate::sources::Record,
        at_us: i64,
    ) -> DeadLetter<'s> {
        let (reason, _) = cut(err.redacted(), MAX_REASON_BYTES);
        // Room for the reason, the other fields and JSON escapes' growth.
        let room = self.max_dead_letter_bytes.saturating_sub(reason.len() + 256) / 2;
        let (raw, raw_bytes) = cut(redact(&record.line), room);
        DeadLetter { reason, code: err.code(), source, line: record.line_no, raw, raw_bytes, at_us }
    }

    /// The rejection of a line `len` bytes long, over the limit.
    pub fn too_large(&self, len: u64) -> DecodeError {
        DecodeError::TooLarge { len, limit: self.max_event_bytes }
    }

    /// De-duplicates a parsed event: call in input order.
    ///
    /// # Errors
    /// [`DecodeError::Duplicate`] when its id was seen within the horizon.
    pub fn admit(&mut self, payment: &Payment) -> Result<(), DecodeError> {
        self.check_time(payment.ts_ms)?;
        if !self.dedup.insert(&payment.id, payment.ts_ms) {
            return Err(DecodeError::Duplicate(payment.id.as_str().into()));
        }
        Ok(())
    }

    /// Refuses an event time too far ahead of the clock, or before the
    /// floor: one such event would move the watermark — closing windows and
    /// forgetting the ids de-duplication holds — by however far it is off.
    fn check_time(&mut self, ts_ms: i64) -> Result<(), DecodeError> {
        if ts_ms < self.earliest_ms {
            let at = crate::config::EventTime::from_ms(self.earliest_ms);
            return Err(invalid("ts", format!("{ts_ms} is before {at} (clean.earliest)")));
        }
        if ts_ms > self.latest_ms {
            self.latest_ms = crate::decide::now_us().div_euclid(1000).saturating_add(self.max_future_ms);
            if ts_ms > self.latest_ms {
                let ahead = std::time::Duration::from_millis((ts_ms - (self.latest_ms - self.max_future_ms)) as u64);
                return Err(invalid(
                    "ts",
                    format!(
                        "{ts_ms} is {} ahead of the clock; at most {} is accepted (clean.max-future; \
                         is it in microseconds or seconds rather than milliseconds?)",
                        humantime::format_duration(std::time::Duration::from_secs(ahead.as_secs())),
                        humantime::format_duration(std::time::Duration::from_millis(self.max_future_ms as u64)),
                    ),
                ));
            }
        }
        Ok(())
    }

    fn text(&self, field: &'static str, v: &str, required: bool) -> Result<Text, DecodeError> {
        let v = v.trim();
        if required && v.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if v.len() > self.max_field_bytes {
            return Err(invalid(
                field,
                format!("is {} bytes; the limit is {} (clean.max-field-bytes)", v.len(), self.max_field_bytes),
            ));
        }
        if has_control(v) {
            return Err(invalid(field, "contains control characters"));
        }
        // A card number sent in a field other than the card goes no
        // further than the card's own does.
        match self.tokenizer.tokenise_pans(v) {
            None => Ok(Text::from(v)),
            Some(t) if t.len() <= self.max_field_bytes => Ok(Text::from(t)),
            Some(t) => Err(invalid(
                field,
                format!(
                    "is {} bytes once the card numbers in it are tokenised; the limit is {} (clean.max-field-bytes)",
                    t.len(),
                    self.max_field_bytes
                ),
            )),
        }
    }

    fn validate(&self, raw: RawEvent<'_>) -> Result<Payment, DecodeError> {
        let id = self.text("id", &raw.id, true)?;
        let channel = Channel::from_name(raw.channel.trim()).ok_or_else(|| {
            invalid("channel", format!("unknown channel {:?}; expected one of {}", raw.channel, names(Channel::ALL)))
        })?;
        let kind = Kind::from_name(raw.kind.trim()).ok_or_else(|| {
            invalid("kind", format!("unknown kind {:?}; expected one of {}", raw.kind, names(Kind::ALL)))
        })?;
        let currency = currency(&raw.currency)?;
        let account = self.text("account", &raw.account, true)?;

        let card = match raw.card {
            None => None,
            Some(c) => {
                let digits = pan::pan_digits(&c.pan)
                    .ok_or_else(|| invalid("card.pan", "must be 12 to 19 digits (spaces and dashes allowed)"))?;
                Some(Card {
                    token: self.tokenizer.token(&digits).into(),
                    country: country("card.country", c.country.as_deref())?,
                    present: c.present,
                })
            }
        };
        let merchant = raw.merchant.map(|m| self.party("merchant.id", "merchant.country", m)).transpose()?;
        let counterparty =
            raw.counterparty.map(|m| self.party("counterparty.id", "counterparty.country", m)).transpose()?;
        if let Some(mcc) = merchant.as_ref().and_then(|m| m.mcc)
            && mcc > 9999
        {
            return Err(invalid("merchant.mcc", format!("{mcc} is not a 4-digit merchant category code")));
        }
        let device = raw.device.map(|d| self.text("device", &d, true)).transpose()?;
        let ip = raw.ip.map(|ip| normal_ip(&ip)).transpose()?;
        let geo = raw.geo.map(geo).transpose()?;
        let attrs = self.attrs(raw.attrs)?;
        Ok(Payment {
            id,
            ts_ms: raw.ts,
            channel,
            kind,
            amount: raw.amount,
            currency,
            account,
            card,
            merchant,
            counterparty,
            device,
            ip,
            geo,
            attrs,
        })
    }

    fn party(
        &self,
        id_field: &'static str,
        country_field: &'static str,
        p: RawParty<'_>,
    ) -> Result<Party, DecodeError> {
        Ok(Party {
            id: self.text(id_field, &p.id, true)?,
            mcc: p.mcc,
            country: country(country_field, p.country.as_deref())?,
        })
    }

    fn attrs(&self, attrs: Option<serde_json::Map<String, serde_json::Value>>) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::new();
        let Some(attrs) = attrs else { return Ok(out) };
        if attrs.len() > self.max_attrs {
            return Err(invalid(
                "attrs",
                format!("has {} entries; the limit is {} (clean.max-attrs)", attrs.len(), self.max_attrs),
            ));
        }
        for (k, v) in attrs {
            let key = self.text("attrs", &k, true)?;
            let value = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => continue,
                _ => {
                    return Err(invalid("attrs", format!("`{key}` must be a string, number or boolean")));
                }
            };
            let value = self.text("attrs", &value, false)?;
            encode_attr(&key, &value, &mut out).map_err(|e| invalid("attrs", e.to_string()))?;
        }
        Ok(out)
    }
}

/// Whether `s` holds a control character (`char::is_control`: U+0000–U+001F
/// and U+007F–U+009F), checked on bytes: in UTF-8 the first are single
/// bytes, and U+0080–U+009F are 0xC2 followed by 0x80–0x9F.
fn has_control(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter()
        .enumerate()
        .any(|(i, &c)| c < 0x20 || c == 0x7f || (c == 0xc2 && b.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n))))
}

fn names<T: fmt::Display>(all: &[T]) -> String {
    all.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// `ip` in its canonical text form.
fn normal_ip(raw: &str) -> Result<Text, DecodeError> {
    let ip = raw.trim();
    // An IPv4 address that parses is already canonical: the parser takes
    // exactly four decimal octets without leading zeros. Only IPv6 text
    // has other spellings (case, zero runs) to normalise.
    if ip.parse::<Ipv4Addr>().is_ok() {
        return Ok(Text::from(ip));
    }
    let parsed = ip.parse::<IpAddr>().map_err(|_| invalid("ip", format!("{raw:?} is not an IPv4 or IPv6 address")))?;
    Ok(compact_str::ToCompactString::to_compact_string(&parsed))
}

/// Which three-letter codes are ISO 4217 currencies: one bit per code
/// `AAA`..`ZZZ`, found once from `iso_currency`'s table, whose own look-up
/// compares the code against each name in turn.
static CURRENCIES: LazyLock<Vec<u64>> = LazyLock::new(|| {
    let mut bits = vec![0u64; (26 * 26 * 26usize).div_ceil(64)];
    for i in 0..26 * 26 * 26 {
        let code = [b'A' + (i / 676) as u8, b'A' + (i / 26 % 26) as u8, b'A' + (i % 26) as u8];
        if std::str::from_utf8(&code).ok().and_then(iso_currency::Currency::from_code).is_some() {
            bits[i / 64] |= 1 << (i % 64);
        }
    }
    bits
});

fn currency(raw: &str) -> Result<[u8; 3], DecodeError> {
    let not_iso = || invalid("currency", format!("{raw:?} is not an ISO 4217 currency code"));
    let code: [u8; 3] = raw.trim().as_bytes().try_into().map_err(|_| not_iso())?;
    let code = code.map(|b| b.to_ascii_uppercase());
    if !code.iter().all(u8::is_ascii_uppercase) {
        return Err(not_iso());
    }
    let i = code.iter().fold(0, |i, &b| i * 26 + usize::from(b - b'A'));
    if CURRENCIES[i / 64] & (1 << (i % 64)) != 0 { Ok(code) } else { Err(not_iso()) }
}

fn country(field: &'static str, raw: Option<&str>) -> Result<Option<Country>, DecodeError> {
    let Some(raw) = raw else { return Ok(None) };
    match raw.trim().as_bytes() {
        [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
            Ok(Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()])))
        }
        _ => Err(invalid(field, format!("{raw:?} is not an ISO 3166-1 alpha-2 country code"))),
    }
}

fn geo(g: RawGeo<'_>) -> Result<GeoRef, DecodeError> {
    let lat_lon = match (g.lat, g.lon) {
        (None, None) => None,
        (Some(lat), Some(lon)) => {
            if !(-90.0..=90.0).contains(&lat) {
                return Err(invalid("geo.lat", format!("{lat} is outside -90..90")));
            }
            if !(-180.0..=180.0).contains(&lon) {
                return Err(invalid("geo.lon", format!("{lon} is outside -180..180")));
            }
            Some((lat, lon))
        }
        _ => return Err(invalid("geo", "lat and lon must be given together")),
    };
    Ok(GeoRef { country: country("geo.country", g.country.as_deref())?, lat_lon })
}

/// A copy of a raw line safe to write to dead letters: the card is
/// replaced when the line parses as JSON, and then every place a card
/// number could be, in any field or free text, is (see [`pan::scrub_pans`]).
pub fn redact(line: &str) -> String {
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(line) else {
        return pan::scrub_pans(line).into_owned();
    };
    if let Some(card) = v.get_mut("card") {
        match card {
            serde_json::Value::Object(o) => {
                if let Some(p) = o.get_mut("pan") {
                    *p = serde_json::Value::String("[pan]".into());
                }
            }
            other => *other = serde_json::Value::String("[pan]".into()),
        }
    }
    scrub_value(&mut v);
    v.to_string()
}

/// Removes every place a card number could be from a parsed line, in
/// place, keeping it JSON: strings and keys are scrubbed, and a number
/// whose digits could hold a card number becomes the string `[pan]`. (Scrubbing the line
/// as text would turn every long number — an event time — into `[pan]`,
/// and the line into something that is not JSON.)
fn scrub_value(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let std::borrow::Cow::Owned(clean) = pan::scrub_pans(s) {
                *s = clean;
            }
        }
        Value::Number(n) => {
            // An integer is one when it passes the Luhn check (an event
            // time does not, mostly); a float's digits — `0.4111111111111111`
            // — are scrubbed as text is.
            let digits = n.to_string();
            let card = match n.is_f64() {
                false => pan::could_be_a_card_number(digits.trim_start_matches('-')),
                true => matches!(pan::scrub_pans(&digits), std::borrow::Cow::Owned(_)),
            };
            if card {
                *v = Value::String("[pan]".into());
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        Value::Object(fields) => {
            let keys: Vec<String> = fields.keys().filter(|k| pan::scrub_pans(k) != k.as_str()).cloned().collect();
            for key in keys {
                if let Some(value) = fields.remove(&key) {
                    fields.insert(pan::scrub_pans(&key).into_owned(), value);
                }
            }
            fields.values_mut().for_each(scrub_value);
        }
        Value::Null | Value::Bool(_) => {}
    }
}

impl DecodeError {
    /// The reason as a dead letter gives it: the message, with every place
    /// a card number could be removed — a parser's message may quote the
    /// input (``invalid type: integer `4111111111111111` ``).
    pub fn redacted(&self) -> String {
        pan::scrub_pans(&self.to_string()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> Decoder {
        Decoder::new(&CleanConfig::default(), Tokenizer::new(b"test-key-0123456789"))
    }

    const GOOD: &str = r#"{"id":"t1","ts":"2024-05-01T12:00:00Z","channel":"card","kind":"purchase","amount":1250,"currency":"usd","account":"a1","card":{"pan":"4111 1111 1111 1111","country":"us","present":false},"merchant":{"id":"m1","mcc":5411,"country":"DE"},"ip":"::ffff:10.0.0.1","geo":{"country":"de","lat":52.5,"lon":13.4},"attrs":{"3ds":false,"bin":"411111","n":3}}"#;

    proptest::proptest! {
        /// The byte-wise check agrees with `char::is_control` on any text,
        /// C1 controls (two bytes in UTF-8) included.
        #[test]
        fn control_characters_are_found_as_char_is_control_finds_them(
            s in proptest::string::string_regex("[\\x00-\\x{2000}]{0,12}").expect("regex")
        ) {
            proptest::prop_assert_eq!(has_control(&s), s.chars().any(char::is_control), "{:?}", s);
        }
    }

    #[test]
    fn currencies_and_countries_are_upper_cased_and_checked() {
        assert_eq!(currency(" eur ").expect("EUR"), *b"EUR");
        for bad in ["EU", "EURO", "XYZ", "€", "e\u{301}u"] {
            let e = currency(bad).expect_err(bad);
            assert!(e.to_string().contains("not an ISO 4217"), "{e}");
        }
        assert_eq!(country("geo.country", Some("fr")).expect("FR"), Some(Country(*b"FR")));
        assert_eq!(country("geo.country", None).expect("none"), None);
        for bad in ["F", "FRA", "F1", "ü"] {
            assert!(country("geo.country", Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_code_iso_currency_knows_is_a_currency_and_no_other() {
        let mut known = 0;
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                for c in b'A'..=b'Z' {
                    let code = [a, b, c];
                    let text = std::str::from_utf8(&code).expect("ASCII");
                    let iso = iso_currency::Currency::from_code(text).is_some();
                    assert_eq!(currency(text).is_ok(), iso, "{text}");
                    assert_eq!(currency(&text.to_ascii_lowercase()).is_ok(), iso, "{text}");
                    known += usize::from(iso);
                }
            }
        }
        assert!(known > 150, "only {known} currencies known");
    }

    proptest::proptest! {
        #[test]
        fn an_ipv4_address_is_kept_as_written_only_when_canonical(
            octets in proptest::collection::vec("[0-9]{1,4}", 4),
            pad in " {0,2}",
        ) {
            let text = octets.join(".");
            let written = format!("{pad}{text}{pad}");
            match text.parse::<IpAddr>() {
                Ok(ip) => proptest::prop_assert_eq!(normal_ip(&written).expect("valid"), ip.to_string()),
                Err(_) => proptest::prop_assert!(normal_ip(&written).is_err()),
            }
        }
    }

    #[test]
    fn ipv6_addresses_are_normalised() {
        assert_eq!(normal_ip(" 2001:DB8:0:0::1 ").expect("valid"), "2001:db8::1");
        assert_eq!(normal_ip("::ffff:10.0.0.1").expect("valid"), "::ffff:10.0.0.1");
        assert!(normal_ip("10.0.0.256").is_err());
    }

    #[test]
    fn optional_strings_are_read_with_and_without_escapes() {
        let plain = GOOD.replace(r#""ip":"#, r#""device":"dev-1","ip":"#);
        let escaped = GOOD
            .replace(r#""ip":"#, r#""device":"dev\u002d1","ip":"#)
            .replace(r#""country":"de""#, r#""country":"\u0064e""#);
        for line in [plain, escaped] {
            let p = decoder().parse(&line).expect("valid");
            assert_eq!(p.device.as_deref(), Some("dev-1"), "{line}");
            assert_eq!(p.geo.and_then(|g| g.country), Some(Country(*b"DE")), "{line}");
        }
        let null = GOOD.replace(r#""ip":"#, r#""device":null,"ip":"#);
        assert_eq!(decoder().parse(&null).expect("valid").device, None);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named_as_such() {
        let r = crate::sources::Record::from_bytes(b"{\"id\":\"a\xff\"}".to_vec(), 7, 0);
        assert_eq!(r.not_utf8_at, Some(8));
        assert_eq!(r.line, "{\"id\":\"a\u{fffd}\"}");
        let e = DecodeError::NotUtf8 { at: 8 };
        assert_eq!((e.to_string().as_str(), e.code()), ("not UTF-8: invalid byte sequence at byte 8", "not_utf8"));
    }

    #[test]
    fn a_good_event_is_normalised_and_tokenised() {
        let p = decoder().decode(GOOD).expect("valid");
        assert_eq!(p.ts_ms, 1_714_564_800_000);
        assert_eq!(&p.currency, b"USD");
        let card = p.card.clone().expect("card");
        assert!(card.token.starts_with("tok_"));
        assert_eq!(card.country, Some(Country(*b"US")));
        assert_eq!(p.geo.and_then(|g| g.country), Some(Country(*b"DE")));
        assert_eq!(p.ip.as_deref(), Some("::ffff:10.0.0.1"));
        assert!(!format!("{p:?}").contains("4111"), "the PAN must not survive decoding");
    }

    fn reject(line: &str) -> String {
        decoder().decode(line).expect_err("should be rejected").to_string()
    }

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(GOOD).expect("json");
        v[field] = serde_json::from_str(value).expect("json value");
        v.to_string()
    }

    #[test]
    fn each_bad_field_has_its_own_reason() {
        assert!(reject("{not json").contains("key must be a string"));
        assert!(reject(r#"{"id":"x"}"#).contains("missing field"));
        assert!(reject(&with("amount", "-5")).contains("must not be negative"));
        assert!(reject(&with("amount", "12.5")).contains("never a float"));
        assert!(reject(&with("amount", "\"12\"")).contains("integer amount in minor units"));
        assert!(reject(&with("currency", "\"XYZ\"")).contains("ISO 4217"));
        assert!(reject(&with("channel", "\"telepathy\"")).contains("unknown channel"));
        assert!(reject(&with("ts", "\"yesterday\"")).contains("RFC 3339"));
        assert!(reject(&with("ip", "\"999.1.1.1\"")).contains("ip"));
        assert!(reject(&with("id", "\"\"")).contains("field `id`: must not be empty"));
        assert!(reject(&with("id", &format!("\"{}\"", "x".repeat(300)))).contains("clean.max-field-bytes"));
        assert!(reject(&with("extra", "1")).contains("unknown field `extra`"));
        assert!(reject(&with("card", r#"{"pan":"4111-abc"}"#)).contains("card.pan"));
        assert!(reject(&with("attrs", r#"{"nested":{"a":1}}"#)).contains("attrs"));
        let huge = format!(r#"{{"id":"{}"}}"#, "x".repeat(20_000));
        assert!(reject(&huge).contains("clean.max-event-bytes"));
    }

    #[test]
    fn event_times_far_ahead_of_the_clock_or_before_the_floor_are_refused() {
        let mut d = decoder();
        let micros = with("ts", "1714564800000000");
        let e = d.decode(&micros).expect_err("the year 56,000").to_string();
        assert!(e.contains("clean.max-future") && e.contains("microseconds"), "{e}");
        let tomorrow = crate::decide::now_us() / 1000 + 23 * 3_600_000;
        d.decode(&with("ts", &tomorrow.to_string())).expect("within a day");
        let clean =
            CleanConfig { earliest: Some(crate::config::EventTime::from_ms(1_700_000_000_000)), ..Default::default() };
        let mut d = Decoder::new(&clean, Tokenizer::new(b"test-key-0123456789"));
        let e = d.decode(&with("ts", "1600000000000")).expect_err("before the floor").to_string();
        assert!(e.contains("clean.earliest") && e.contains("2023-11-14T22:13:20Z"), "{e}");
        d.decode(GOOD).expect("after it");
    }

    #[test]
    fn a_dead_letter_is_cut_to_its_limit_with_the_reason_kept() {
        let clean = CleanConfig {
            max_dead_letter_bytes: std::num::NonZeroUsize::new(4096).expect("non-zero"),
            ..Default::default()
        };
        let d = Decoder::new(&clean, Tokenizer::new(b"test-key-0123456789"));
        let line = format!(r#"{{"id":"é{}", broken"#, "é".repeat(10_000));
        let record = crate::sources::Record::from_bytes(line.clone().into_bytes(), 7, 0);
        let e = d.parse(&line).expect_err("too large");
        let letter = d.dead_letter(&e, "file:x", &record, 0);
        let json = serde_json::to_string(&letter).expect("JSON");
        assert!(json.len() <= 4096, "{} bytes", json.len());
        assert_eq!(letter.reason, e.redacted(), "the reason whole");
        assert_eq!(letter.raw_bytes, Some(line.len()), "and how long the line was");
        assert!(line.starts_with(&letter.raw), "its start, cut at a character");
    }

    #[test]
    fn duplicates_are_rejected_after_the_first() {
        let mut d = decoder();
        d.decode(GOOD).expect("first");
        assert_eq!(d.decode(GOOD).expect_err("dup").code(), "duplicate");
    }

    #[test]
    fn card_numbers_outside_the_card_are_tokenised() {
        let d = decoder();
        let token = d.tokenizer.token("4111111111111111");
        let line = with("id", "\"tx-4111111111111111\"")
            .replace(r#""account":"a1""#, r#""account":"4111 1111 1111 1111""#)
            .replace(r#""n":3"#, r#""n":4111111111111111,"note":"ref 2024 4111111111111111""#);
        let p = d.parse(&line).expect("valid");
        assert_eq!(p.id, format!("tx-{token}"));
        assert_eq!(p.account, token);
        let attrs = String::from_utf8_lossy(&p.attrs).into_owned();
        assert!(!attrs.contains("4111111111111111") && attrs.contains(&token), "{attrs}");
        assert!(!format!("{p:?}").contains("4111111111111111"));
    }

    #[test]
    fn reasons_do_not_repeat_a_card_number() {
        let e = decoder().parse(&with("card", r#"{"pan":4111111111111111}"#)).expect_err("a number");
        assert!(e.to_string().contains("4111111111111111"), "the parser quotes it: {e}");
        let reason = e.redacted();
        assert!(!reason.contains("4111111111111111") && reason.contains("invalid type"), "{reason}");
    }

    #[test]
    fn redaction_removes_the_pan_in_every_form() {
        for line in [
            r#"{"card_number":"4111111111111111","id":"x"}"#,
            r#"{"attrs":{"n":4111111111111111}}"#,
            r#"{"id":"ref 2024 4111111111111111"}"#,
            r#"{"account":"4111111111111111"} broken"#,
            r#"{"id":"\u00341\u00311111111111111"}"#,
            r#"{"4111111111111111":1}"#,
            r#"{"amount":0.4111111111111111}"#,
            r#"{"amount":4111111111111111.5}"#,
            r#"{"amount":-4111111111111111}"#,
        ] {
            let r = redact(line);
            assert!(!r.contains("4111111111111111") && !r.contains("111111111111"), "{line} -> {r}");
        }
        // Still JSON, with the event time as it was.
        let r: serde_json::Value = serde_json::from_str(&redact(&with("ts", "1717200000123"))).expect("JSON");
        assert_eq!(r["ts"], 1_717_200_000_123i64);
        assert!(!redact(GOOD).contains("4111 1111"));
        assert!(!redact(r#"{"card":"4111111111111111","x":1}"#).contains("4111111111111111"));
        assert!(!redact(r#"{"card":{"pan":"4111111111111111"}, broken"#).contains("4111111111111111"));
        assert!(!redact(r#"{"attrs":{"note":"card 4111111111111111"}}"#).contains("4111111111111111"));
        assert!(redact(GOOD).contains("\"ts\""));
    }
}
