//! The payment a rule looks at: a zero-copy view of the encoded event.

use vigil_abi::{CardRef, Channel, EventView, Field, FieldMask, GeoRef, Kind, PartyRef};

/// One payment event, showing the fields the rule declared in
/// `fields(...)`.
///
/// Reading a field the rule did not declare is a mistake the host cannot
/// see (it never copies that field into the rule's memory): in native
/// builds it panics with the field and what to add, so the rule's native
/// test of that path fails; a wasm build does not check, and the deployed
/// rule reads the field as empty.
///
/// Money is an integer in minor units of [`Payment::currency`] (cents for
/// USD, yen for JPY); there are no floats for money anywhere in vigil.
#[derive(Debug, Clone, Copy)]
pub struct Payment<'a> {
    view: EventView<'a>,
    /// Checked in native builds only (see `Payment::read`).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    declared: FieldMask,
}

impl<'a> Payment<'a> {
    /// Wraps an encoded event (see [`vigil_abi::event`]), every field
    /// readable.
    #[inline]
    pub fn from_bytes(bytes: &'a [u8]) -> Self {
        Self { view: EventView::new(bytes), declared: FieldMask::ALL }
    }

    /// Wraps an encoded event projected to `declared`, the fields a rule
    /// declared: reading another panics.
    #[inline]
    pub(crate) fn declared(bytes: &'a [u8], declared: FieldMask) -> Self {
        Self { view: EventView::new(bytes), declared }
    }

    /// Wraps an event the host encoded, projected to `declared`, without
    /// checking its strings again.
    ///
    /// # Safety
    /// As [`EventView::from_host`]: `bytes` is what the host passed for
    /// one event.
    #[inline]
    pub(crate) unsafe fn from_host(bytes: &'a [u8], declared: FieldMask) -> Self {
        // SAFETY: passed on to the caller.
        Self { view: unsafe { EventView::from_host(bytes) }, declared }
    }

    /// Panics unless the rule declared `field` — in native builds, where
    /// the rule's tests run. A wasm build is left without the check: it
    /// was not folded away, so it cost every call (the suite's row 1), and the host
    /// never gives it an undeclared field anyway.
    #[inline(always)]
    fn read(&self, field: Field) -> EventView<'a> {
        #[cfg(not(target_arch = "wasm32"))]
        if !self.declared.contains(field) {
            undeclared(field);
        }
        #[cfg(target_arch = "wasm32")]
        let _ = field;
        self.view
    }

    /// Transaction id.
    #[inline]
    pub fn id(&self) -> &'a str {
        self.read(Field::Id).id()
    }
    /// Event time, milliseconds since the Unix epoch.
    #[inline]
    pub fn ts_ms(&self) -> i64 {
        self.read(Field::Ts).ts_ms()
    }
    /// Amount in minor units of [`Payment::currency`].
    #[inline]
    pub fn amount(&self) -> i64 {
        self.read(Field::Amount).amount()
    }
    /// ISO 4217 currency code, e.g. `"USD"`.
    #[inline]
    pub fn currency(&self) -> &'a str {
        self.read(Field::Currency).currency()
    }
    /// Payment channel.
    #[inline]
    pub fn channel(&self) -> Option<Channel> {
        self.read(Field::Channel).channel()
    }
    /// Payment kind.
    #[inline]
    pub fn kind(&self) -> Option<Kind> {
        self.read(Field::Kind).kind()
    }
    /// Account id.
    #[inline]
    pub fn account(&self) -> &'a str {
        self.read(Field::Account).account()
    }
    /// The card: a token of the PAN (never the PAN), issuing country, presence.
    #[inline]
    pub fn card(&self) -> Option<CardRef<'a>> {
        self.read(Field::Card).card()
    }
    /// The merchant paid.
    #[inline]
    pub fn merchant(&self) -> Option<PartyRef<'a>> {
        self.read(Field::Merchant).merchant()
    }
    /// The other side of a transfer.
    #[inline]
    pub fn counterparty(&self) -> Option<PartyRef<'a>> {
        self.read(Field::Counterparty).counterparty()
    }
    /// Device id.
    #[inline]
    pub fn device(&self) -> Option<&'a str> {
        self.read(Field::Device).device()
    }
    /// IP address, as text.
    #[inline]
    pub fn ip(&self) -> Option<&'a str> {
        self.read(Field::Ip).ip()
    }
    /// Where the payment was made.
    #[inline]
    pub fn geo(&self) -> Option<GeoRef> {
        self.read(Field::Geo).geo()
    }
    /// A free attribute by key.
    #[inline]
    pub fn attr(&self, key: &str) -> Option<&'a str> {
        self.read(Field::Attrs).attr(key)
    }
    /// All free attributes.
    #[inline]
    pub fn attrs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.read(Field::Attrs);
        self.view.attrs()
    }

    pub(crate) fn view(&self) -> EventView<'a> {
        self.view
    }
}

#[cfg(not(target_arch = "wasm32"))]
#[cold]
#[inline(never)]
fn undeclared(field: Field) -> ! {
    panic!(
        "the rule reads the payment's `{field}`, which it did not declare: add `{field}` to `fields(...)` in its \
         #[rule] attribute (undeclared fields are never given to a rule)"
    )
}
