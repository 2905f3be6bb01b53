//! The payment a rule looks at: a zero-copy view of the encoded event.

use vigil_abi::{CardRef, Channel, EventView, GeoRef, Kind, PartyRef};

/// One payment event. Fields the rule did not declare read as empty.
///
/// Money is an integer in minor units of [`Payment::currency`] (cents for
/// USD, yen for JPY); there are no floats for money anywhere in vigil.
#[derive(Debug, Clone, Copy)]
pub struct Payment<'a> {
    view: EventView<'a>,
}

impl<'a> Payment<'a> {
    /// Wraps an encoded event (see [`vigil_abi::event`]).
    pub fn from_bytes(bytes: &'a [u8]) -> Self {
        Self { view: EventView::new(bytes) }
    }

    /// Transaction id.
    pub fn id(&self) -> &'a str {
        self.view.id()
    }
    /// Event time, milliseconds since the Unix epoch.
    pub fn ts_ms(&self) -> i64 {
        self.view.ts_ms()
    }
    /// Amount in minor units of [`Payment::currency`].
    pub fn amount(&self) -> i64 {
        self.view.amount()
    }
    /// ISO 4217 currency code, e.g. `"USD"`.
    pub fn currency(&self) -> &'a str {
        self.view.currency()
    }
    /// Payment channel.
    pub fn channel(&self) -> Option<Channel> {
        self.view.channel()
    }
    /// Payment kind.
    pub fn kind(&self) -> Option<Kind> {
        self.view.kind()
    }
    /// Account id.
    pub fn account(&self) -> &'a str {
        self.view.account()
    }
    /// The card: a token of the PAN (never the PAN), issuing country, presence.
    pub fn card(&self) -> Option<CardRef<'a>> {
        self.view.card()
    }
    /// The merchant paid.
    pub fn merchant(&self) -> Option<PartyRef<'a>> {
        self.view.merchant()
    }
    /// The other side of a transfer.
    pub fn counterparty(&self) -> Option<PartyRef<'a>> {
        self.view.counterparty()
    }
    /// Device id.
    pub fn device(&self) -> Option<&'a str> {
        self.view.device()
    }
    /// IP address, as text.
    pub fn ip(&self) -> Option<&'a str> {
        self.view.ip()
    }
    /// Where the payment was made.
    pub fn geo(&self) -> Option<GeoRef> {
        self.view.geo()
    }
    /// A free attribute by key.
    pub fn attr(&self, key: &str) -> Option<&'a str> {
        self.view.attr(key)
    }
    /// All free attributes.
    pub fn attrs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.view.attrs()
    }

    pub(crate) fn view(&self) -> EventView<'a> {
        self.view
    }
}
