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
    #[inline]
    pub fn from_bytes(bytes: &'a [u8]) -> Self {
        Self { view: EventView::new(bytes) }
    }

    /// Wraps an event the host encoded, without checking its strings again.
    ///
    /// # Safety
    /// As [`EventView::from_host`]: `bytes` is what the host passed for
    /// one event.
    #[inline]
    pub(crate) unsafe fn from_host(bytes: &'a [u8]) -> Self {
        // SAFETY: passed on to the caller.
        Self { view: unsafe { EventView::from_host(bytes) } }
    }

    /// Transaction id.
    #[inline]
    pub fn id(&self) -> &'a str {
        self.view.id()
    }
    /// Event time, milliseconds since the Unix epoch.
    #[inline]
    pub fn ts_ms(&self) -> i64 {
        self.view.ts_ms()
    }
    /// Amount in minor units of [`Payment::currency`].
    #[inline]
    pub fn amount(&self) -> i64 {
        self.view.amount()
    }
    /// ISO 4217 currency code, e.g. `"USD"`.
    #[inline]
    pub fn currency(&self) -> &'a str {
        self.view.currency()
    }
    /// Payment channel.
    #[inline]
    pub fn channel(&self) -> Option<Channel> {
        self.view.channel()
    }
    /// Payment kind.
    #[inline]
    pub fn kind(&self) -> Option<Kind> {
        self.view.kind()
    }
    /// Account id.
    #[inline]
    pub fn account(&self) -> &'a str {
        self.view.account()
    }
    /// The card: a token of the PAN (never the PAN), issuing country, presence.
    #[inline]
    pub fn card(&self) -> Option<CardRef<'a>> {
        self.view.card()
    }
    /// The merchant paid.
    #[inline]
    pub fn merchant(&self) -> Option<PartyRef<'a>> {
        self.view.merchant()
    }
    /// The other side of a transfer.
    #[inline]
    pub fn counterparty(&self) -> Option<PartyRef<'a>> {
        self.view.counterparty()
    }
    /// Device id.
    #[inline]
    pub fn device(&self) -> Option<&'a str> {
        self.view.device()
    }
    /// IP address, as text.
    #[inline]
    pub fn ip(&self) -> Option<&'a str> {
        self.view.ip()
    }
    /// Where the payment was made.
    #[inline]
    pub fn geo(&self) -> Option<GeoRef> {
        self.view.geo()
    }
    /// A free attribute by key.
    #[inline]
    pub fn attr(&self, key: &str) -> Option<&'a str> {
        self.view.attr(key)
    }
    /// All free attributes.
    #[inline]
    pub fn attrs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.view.attrs()
    }

    pub(crate) fn view(&self) -> EventView<'a> {
        self.view
    }
}
