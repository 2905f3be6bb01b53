//! Native test helpers: build payments, set parameters, lists and feature
//! values, and run a rule exactly as the host would — same encoding, same
//! field masking — with plain `cargo test`.
//!
//! ```
//! use vigil_sdk::testing::{PaymentBuilder, TestContext};
//! let tx = PaymentBuilder::new("tx-1")
//!     .amount(1_999, "EUR")
//!     .card("tok_1", Some("FR"), Some(false))
//!     .geo_country("BR")
//!     .build();
//! assert_eq!(tx.payment().amount(), 1_999);
//! let ctx = TestContext::new().param("limit", 500).list("blocked", ["tok_1"]);
//! # let _ = ctx;
//! ```

use crate::context::{Context, Lists, State};
use crate::{Decision, Payment, Rule};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use vigil_abi::event::{self, CardRef, EventRef, GeoRef, PartyRef};
use vigil_abi::{Channel, Country, FieldMask, Kind, ParamValue};

/// Builds a test payment. Defaults: a card purchase of 1.00 USD from account
/// `acct-1` at event time 2024-01-01T00:00:00Z.
#[derive(Debug, Clone)]
#[must_use]
pub struct PaymentBuilder {
    id: String,
    ts_ms: i64,
    channel: Channel,
    kind: Kind,
    amount: i64,
    currency: [u8; 3],
    account: String,
    card: Option<(String, Option<Country>, Option<bool>)>,
    merchant: Option<(String, Option<u16>, Option<Country>)>,
    counterparty: Option<(String, Option<Country>)>,
    device: Option<String>,
    ip: Option<String>,
    geo: Option<GeoRef>,
    attrs: Vec<(String, String)>,
}

fn country(code: &str) -> Country {
    let b = code.as_bytes();
    assert!(b.len() == 2, "country codes have two letters, got {code:?}");
    Country([b[0], b[1]])
}

impl PaymentBuilder {
    /// A payment with transaction id `id`.
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            ts_ms: 1_704_067_200_000,
            channel: Channel::Card,
            kind: Kind::Purchase,
            amount: 100,
            currency: *b"USD",
            account: "acct-1".to_owned(),
            card: None,
            merchant: None,
            counterparty: None,
            device: None,
            ip: None,
            geo: None,
            attrs: Vec::new(),
        }
    }
    /// Amount in minor units and ISO 4217 currency.
    ///
    /// # Panics
    /// When `currency` is not three letters.
    pub fn amount(mut self, minor_units: i64, currency: &str) -> Self {
        let c = currency.as_bytes();
        assert!(c.len() == 3, "currency codes have three letters, got {currency:?}");
        self.amount = minor_units;
        self.currency = [c[0], c[1], c[2]];
        self
    }
    /// Event time, epoch milliseconds.
    pub fn ts_ms(mut self, ts_ms: i64) -> Self {
        self.ts_ms = ts_ms;
        self
    }
    /// Channel.
    pub fn channel(mut self, channel: Channel) -> Self {
        self.channel = channel;
        self
    }
    /// Kind.
    pub fn kind(mut self, kind: Kind) -> Self {
        self.kind = kind;
        self
    }
    /// Account id.
    pub fn account(mut self, account: &str) -> Self {
        self.account = account.to_owned();
        self
    }
    /// Card token, issuing country, and whether the card was present.
    pub fn card(mut self, token: &str, country_code: Option<&str>, present: Option<bool>) -> Self {
        self.card = Some((token.to_owned(), country_code.map(country), present));
        self
    }
    /// Merchant id, MCC and country.
    pub fn merchant(mut self, id: &str, mcc: Option<u16>, country_code: Option<&str>) -> Self {
        self.merchant = Some((id.to_owned(), mcc, country_code.map(country)));
        self
    }
    /// Counterparty id and country.
    pub fn counterparty(mut self, id: &str, country_code: Option<&str>) -> Self {
        self.counterparty = Some((id.to_owned(), country_code.map(country)));
        self
    }
    /// Device id.
    pub fn device(mut self, device: &str) -> Self {
        self.device = Some(device.to_owned());
        self
    }
    /// IP address.
    pub fn ip(mut self, ip: &str) -> Self {
        self.ip = Some(ip.to_owned());
        self
    }
    /// Geolocation country.
    pub fn geo_country(mut self, country_code: &str) -> Self {
        let geo = self.geo.get_or_insert_with(GeoRef::default);
        geo.country = Some(country(country_code));
        self
    }
    /// Geolocation coordinates.
    pub fn geo_lat_lon(mut self, lat: f64, lon: f64) -> Self {
        let geo = self.geo.get_or_insert_with(GeoRef::default);
        geo.lat_lon = Some((lat, lon));
        self
    }
    /// A free attribute.
    pub fn attr(mut self, key: &str, value: &str) -> Self {
        self.attrs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Encodes the payment as the host would.
    ///
    /// # Panics
    /// When the payment is too large for the layout.
    pub fn build(self) -> TestPayment {
        let mut attrs = Vec::new();
        for (k, v) in &self.attrs {
            event::encode_attr(k, v, &mut attrs).expect("test attribute fits the layout");
        }
        let ev = EventRef {
            id: &self.id,
            ts_ms: self.ts_ms,
            channel: self.channel,
            kind: self.kind,
            amount: self.amount,
            currency: self.currency,
            account: &self.account,
            card: self.card.as_ref().map(|(t, c, p)| CardRef { token: t, country: *c, present: *p }),
            merchant: self.merchant.as_ref().map(|(id, mcc, c)| PartyRef { id, mcc: *mcc, country: *c }),
            counterparty: self.counterparty.as_ref().map(|(id, c)| PartyRef { id, mcc: None, country: *c }),
            device: self.device.as_deref(),
            ip: self.ip.as_deref(),
            geo: self.geo,
            attrs: &attrs,
        };
        let mut bytes = Vec::new();
        event::encode(&ev, &mut bytes).expect("test payment fits the layout");
        TestPayment { bytes }
    }
}

/// An encoded test payment.
#[derive(Debug, Clone)]
pub struct TestPayment {
    bytes: Vec<u8>,
}

impl TestPayment {
    /// The payment with every field visible.
    pub fn payment(&self) -> Payment<'_> {
        Payment::from_bytes(&self.bytes)
    }
}

/// Parameters, lists and feature values for a test call.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TestContext {
    params: Vec<(String, ParamValue)>,
    lists: HashMap<String, HashSet<String>>,
    features: HashMap<String, f64>,
    /// Shared by every call with this context (and its clones), so a
    /// sequence of calls sees what earlier ones stored.
    state: Rc<RefCell<HashMap<Vec<u8>, Vec<u8>>>>,
}

impl TestContext {
    /// Defaults for every parameter, empty lists, zero features.
    pub fn new() -> Self {
        Self::default()
    }
    /// Overrides a parameter, as host config would.
    pub fn param(mut self, name: &str, value: impl Into<TestParam>) -> Self {
        self.params.push((name.to_owned(), value.into().0));
        self
    }
    /// Sets the contents of a named list.
    pub fn list<I, S>(mut self, name: &str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.lists.insert(name.to_owned(), values.into_iter().map(Into::into).collect());
        self
    }
    /// Seeds the rule's keyed state.
    pub fn state(self, key: &str, value: &[u8]) -> Self {
        self.state.borrow_mut().insert(key.as_bytes().to_vec(), value.to_vec());
        self
    }

    /// What the rule has stored for `key` so far.
    pub fn stored(&self, key: &str) -> Option<Vec<u8>> {
        self.state.borrow().get(key.as_bytes()).cloned()
    }

    /// Sets a feature value for this call.
    pub fn feature(mut self, name: &str, value: f64) -> Self {
        self.features.insert(name.to_owned(), value);
        self
    }
}

/// A parameter value given to [`TestContext::param`].
#[derive(Debug, Clone)]
pub struct TestParam(ParamValue);

impl From<i64> for TestParam {
    fn from(v: i64) -> Self {
        Self(ParamValue::Int(v))
    }
}
impl From<i32> for TestParam {
    fn from(v: i32) -> Self {
        Self(ParamValue::Int(v.into()))
    }
}
impl From<f64> for TestParam {
    fn from(v: f64) -> Self {
        Self(ParamValue::Float(v))
    }
}
impl From<bool> for TestParam {
    fn from(v: bool) -> Self {
        Self(ParamValue::Bool(v))
    }
}
impl From<&str> for TestParam {
    fn from(v: &str) -> Self {
        Self(ParamValue::Str(v.to_owned()))
    }
}

/// A rule call prepared once and run many times: for benchmarking the
/// native rule against its wasm build.
#[derive(Debug)]
pub struct Prepared {
    rule: Rule,
    bytes: Vec<u8>,
    /// The fields the rule declared.
    declared: FieldMask,
    /// In manifest order.
    params: Vec<ParamValue>,
    lists: HashMap<String, HashSet<String>>,
    state: Rc<RefCell<HashMap<Vec<u8>, Vec<u8>>>>,
}

impl Prepared {
    /// Encodes and masks `tx` and resolves parameters, as [`evaluate`] does.
    ///
    /// # Panics
    /// As [`evaluate`].
    pub fn new(rule: &Rule, tx: &TestPayment, ctx: &TestContext) -> Self {
        let (bytes, declared, params) = prepare(rule, tx, ctx);
        Self { rule: *rule, bytes, declared, params, lists: ctx.lists.clone(), state: ctx.state.clone() }
    }

    /// Calls the rule function.
    pub fn run(&self) -> Decision {
        let m = &self.rule.manifest;
        let payment = Payment::declared(&self.bytes, self.declared);
        let context = Context::new(
            m.params,
            &self.params,
            Lists::Local(&self.lists),
            m.features,
            payment.view(),
            State::Local(&self.state),
        );
        (self.rule.evaluate)(&payment, &context)
    }
}

/// Runs `rule` on `tx` as the host would: only declared fields visible,
/// declared parameters with `ctx` overriding defaults, declared features.
///
/// # Panics
/// When `ctx` sets a parameter the rule does not declare or gives it the wrong
/// type, or names a list the rule does not declare — the same mistakes the
/// host rejects at load time.
pub fn evaluate(rule: &Rule, tx: &TestPayment, ctx: &TestContext) -> Decision {
    Prepared::new(rule, tx, ctx).run()
}

fn prepare(rule: &Rule, tx: &TestPayment, ctx: &TestContext) -> (Vec<u8>, FieldMask, Vec<ParamValue>) {
    let m = &rule.manifest;
    let mask: FieldMask = m
        .fields
        .iter()
        .map(|f| vigil_abi::Field::from_name(f).unwrap_or_else(|| panic!("unknown field `{f}`")))
        .collect();
    let mut bytes = vec![0; tx.bytes.len()];
    event::project(&tx.bytes, mask, &mut bytes);
    let features: Vec<f64> = m.features.iter().map(|f| ctx.features.get(*f).copied().unwrap_or(0.0)).collect();
    for name in ctx.features.keys() {
        assert!(m.features.contains(&name.as_str()), "rule `{}` declares no feature `{name}`", m.name);
    }
    event::append_features(&mut bytes, &features);

    let mut params: Vec<(String, ParamValue)> =
        m.params.iter().map(|p| (p.name.to_owned(), p.default.to_value())).collect();
    for (name, value) in &ctx.params {
        let Some(slot) = params.iter_mut().find(|(n, _)| n == name) else {
            panic!("rule `{}` declares no parameter `{name}`", m.name);
        };
        let value = match (&slot.1, value) {
            (ParamValue::Float(_), ParamValue::Int(i)) => ParamValue::Float(*i as f64),
            (want, got) if want.ty() == got.ty() => got.clone(),
            (want, got) => panic!("parameter `{name}` is {}, not {}", want.ty(), got.ty()),
        };
        slot.1 = value;
    }
    for name in ctx.lists.keys() {
        assert!(m.lists.contains(&name.as_str()), "rule `{}` declares no list `{name}`", m.name);
    }
    (bytes, mask, params.into_iter().map(|(_, v)| v).collect())
}
