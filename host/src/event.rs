//! The canonical payment event, after validation and tokenisation.
//!
//! Money is an integer amount of minor units with its ISO 4217 currency; the
//! card is a token, never a PAN. Nothing holding a raw PAN gets past
//! [`crate::decode`].

use vigil_abi::event::{self, CardRef, EncodeError, EventRef, GeoRef, PartyRef};
use vigil_abi::{Channel, Country, Kind};

/// An event's text field: kept inline up to 24 bytes (most ids, accounts,
/// devices and addresses), so an event is not one heap block per field.
pub type Text = compact_str::CompactString;

/// A validated payment event.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    /// Unique transaction id.
    pub id: Text,
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    /// Payment channel.
    pub channel: Channel,
    /// Payment kind.
    pub kind: Kind,
    /// Amount in minor units of `currency`; never negative.
    pub amount: i64,
    /// ISO 4217 code, upper case.
    pub currency: [u8; 3],
    /// Account id.
    pub account: Text,
    /// The card, tokenised.
    pub card: Option<Card>,
    /// The merchant.
    pub merchant: Option<Party>,
    /// The other side of a transfer.
    pub counterparty: Option<Party>,
    /// Device id.
    pub device: Option<Text>,
    /// IP address, normalised.
    pub ip: Option<Text>,
    /// Where the payment was made.
    pub geo: Option<GeoRef>,
    /// Free attributes, encoded for the rule ABI (see [`event::encode_attr`]).
    pub attrs: Vec<u8>,
}

/// A tokenised card.
#[derive(Debug, Clone, PartialEq)]
pub struct Card {
    /// Keyed-HMAC token of the PAN.
    pub token: Text,
    /// Issuing country.
    pub country: Option<Country>,
    /// Whether the card was present.
    pub present: Option<bool>,
}

/// A merchant or counterparty.
#[derive(Debug, Clone, PartialEq)]
pub struct Party {
    /// Its id.
    pub id: Text,
    /// Merchant category code.
    pub mcc: Option<u16>,
    /// Its country.
    pub country: Option<Country>,
}

/// An entity a payment belongs to: features, windows and rules' state are
/// kept per one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyField {
    /// The card token.
    Card,
    /// The account id: the party paying, money out.
    Account,
    /// The device id.
    Device,
    /// The IP address.
    Ip,
    /// The merchant id.
    Merchant,
    /// The counterparty id: the party paid in a transfer, money in. It is
    /// in the same key space as accounts: account `B`'s state holds what
    /// `B` sent and what it received.
    Counterparty,
}

/// The key space an entity's id is in. Each entity has exactly one owner,
/// chosen by the hash of its id in its space; an account and a
/// counterparty with the same id are one party, with one state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Card tokens.
    Card,
    /// Accounts and counterparties.
    Party,
    /// Devices.
    Device,
    /// IP addresses.
    Ip,
    /// Merchants.
    Merchant,
}

impl Space {
    /// Every space, in code order.
    pub const ALL: [Space; 5] = [Space::Card, Space::Party, Space::Device, Space::Ip, Space::Merchant];

    /// A stable code for stored state.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The space with `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }
}

impl KeyField {
    /// Every key, in code order.
    pub const ALL: [KeyField; 6] =
        [KeyField::Card, KeyField::Account, KeyField::Device, KeyField::Ip, KeyField::Merchant, KeyField::Counterparty];

    /// Its name in specs and config.
    pub fn name(self) -> &'static str {
        match self {
            KeyField::Card => "card",
            KeyField::Account => "account",
            KeyField::Device => "device",
            KeyField::Ip => "ip",
            KeyField::Merchant => "merchant",
            KeyField::Counterparty => "counterparty",
        }
    }

    /// The key named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// A stable code for stored state, and an index from 0 to 5.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The key with `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The space its ids are in.
    pub fn space(self) -> Space {
        match self {
            KeyField::Card => Space::Card,
            KeyField::Account | KeyField::Counterparty => Space::Party,
            KeyField::Device => Space::Device,
            KeyField::Ip => Space::Ip,
            KeyField::Merchant => Space::Merchant,
        }
    }
}

impl Payment {
    /// The event's id for `key`, if it has one.
    pub fn key(&self, key: KeyField) -> Option<&str> {
        match key {
            KeyField::Card => self.card.as_ref().map(|c| c.token.as_str()),
            KeyField::Account => Some(&self.account),
            KeyField::Device => self.device.as_deref(),
            KeyField::Ip => self.ip.as_deref(),
            KeyField::Merchant => self.merchant.as_ref().map(|m| m.id.as_str()),
            KeyField::Counterparty => self.counterparty.as_ref().map(|c| c.id.as_str()),
        }
    }

    /// Encodes the event once for all rules.
    ///
    /// # Errors
    /// [`EncodeError`] when the event does not fit the layout; validation
    /// limits make that unreachable for decoded events.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        fn party(p: &Party) -> PartyRef<'_> {
            PartyRef { id: &p.id, mcc: p.mcc, country: p.country }
        }
        let ev = EventRef {
            id: &self.id,
            ts_ms: self.ts_ms,
            channel: self.channel,
            kind: self.kind,
            amount: self.amount,
            currency: self.currency,
            account: &self.account,
            card: self.card.as_ref().map(|c| CardRef { token: &c.token, country: c.country, present: c.present }),
            merchant: self.merchant.as_ref().map(party),
            counterparty: self.counterparty.as_ref().map(party),
            device: self.device.as_deref(),
            ip: self.ip.as_deref(),
            geo: self.geo,
            attrs: &self.attrs,
        };
        event::encode(&ev, out)
    }

    /// The event [`Payment::encode`] wrote into `buf`; `None` when `buf`
    /// is not such an event (its id, currency, channel or kind missing).
    pub fn decode(buf: &[u8]) -> Option<Payment> {
        let v = event::EventView::new(buf);
        let currency: [u8; 3] = v.currency().as_bytes().try_into().ok()?;
        let party = |p: PartyRef<'_>| Party { id: p.id.into(), mcc: p.mcc, country: p.country };
        let mut attrs = Vec::new();
        for (key, value) in v.attrs() {
            event::encode_attr(key, value, &mut attrs).ok()?;
        }
        let (id, channel, kind) = (v.id(), v.channel()?, v.kind()?);
        if id.is_empty() {
            return None;
        }
        Some(Payment {
            id: id.into(),
            ts_ms: v.ts_ms(),
            channel,
            kind,
            amount: v.amount(),
            currency,
            account: v.account().into(),
            card: v.card().map(|c| Card { token: c.token.into(), country: c.country, present: c.present }),
            merchant: v.merchant().map(party),
            counterparty: v.counterparty().map(party),
            device: v.device().map(Into::into),
            ip: v.ip().map(Into::into),
            geo: v.geo(),
            attrs,
        })
    }
}
