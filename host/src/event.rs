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

impl Payment {
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
}
