//! The encoded payment event: a fixed header followed by a string area.
//!
//! ```text
//! offset size field
//!      0    2 layout tag (= ABI_VERSION)
//!      2    2 reserved
//!      4    4 presence bits, one per Field (1 << field as u32)
//!      8    8 ts: event time, epoch milliseconds (i64)
//!     16    8 amount: integer minor units (i64)
//!     24    3 currency: ISO 4217 code, ASCII
//!     27    1 channel code (Channel)
//!     28    1 kind code (Kind)
//!     29    1 card present: 0 unknown, 1 present, 2 not present
//!     30    2 card issuing country, ISO 3166-1 alpha-2
//!     32    2 merchant category code (u16)
//!     34    2 merchant country
//!     36    2 counterparty country
//!     38    2 geo country
//!     40    8 geo latitude (f64)
//!     48    8 geo longitude (f64)
//!     56   64 eight string slots (u32 offset, u32 len), see StrSlot
//!    120    4 features offset (u32), written per rule by the host
//!    124    4 features count (u32); features are f64 values in manifest order
//!    128    … string bytes
//! ```
//!
//! All integers are little-endian. Offsets are from the start of the buffer.
//! A field a rule did not declare has its presence bit cleared, its fixed bytes
//! zeroed and its string bytes overwritten with zeros ([`project`]).

use core::fmt;

/// Size of the fixed header.
pub const HEADER_LEN: usize = 128;

const OFF_TAG: usize = 0;
const OFF_PRESENT: usize = 4;
const OFF_TS: usize = 8;
const OFF_AMOUNT: usize = 16;
const OFF_CURRENCY: usize = 24;
const OFF_CHANNEL: usize = 27;
const OFF_KIND: usize = 28;
const OFF_CARD_PRESENT: usize = 29;
const OFF_CARD_COUNTRY: usize = 30;
const OFF_MCC: usize = 32;
const OFF_MERCHANT_COUNTRY: usize = 34;
const OFF_COUNTERPARTY_COUNTRY: usize = 36;
const OFF_GEO_COUNTRY: usize = 38;
const OFF_GEO_LAT: usize = 40;
const OFF_GEO_LON: usize = 48;
const OFF_SLOTS: usize = 56;
/// Where the host writes the offset of the per-rule feature block.
pub const OFF_FEATURES: usize = 120;
/// Where the host writes the number of f64 feature values.
pub const OFF_FEATURES_COUNT: usize = 124;

/// The string slots, in slot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
enum StrSlot {
    Id = 0,
    Account = 1,
    Card = 2,
    Merchant = 3,
    Counterparty = 4,
    Device = 5,
    Ip = 6,
    Attrs = 7,
}

/// A field of the event, as a rule declares it in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Field {
    /// Transaction id.
    Id = 0,
    /// Event time.
    Ts = 1,
    /// Payment channel.
    Channel = 2,
    /// Payment kind.
    Kind = 3,
    /// Amount in minor units.
    Amount = 4,
    /// ISO 4217 currency.
    Currency = 5,
    /// Account id.
    Account = 6,
    /// Card token, issuing country and presence.
    Card = 7,
    /// Merchant id, MCC and country.
    Merchant = 8,
    /// Counterparty id and country.
    Counterparty = 9,
    /// Device id.
    Device = 10,
    /// IP address.
    Ip = 11,
    /// Geolocation: country, latitude, longitude.
    Geo = 12,
    /// Free-form attributes.
    Attrs = 13,
}

impl Field {
    /// Every field, in bit order.
    pub const ALL: [Field; 14] = [
        Field::Id,
        Field::Ts,
        Field::Channel,
        Field::Kind,
        Field::Amount,
        Field::Currency,
        Field::Account,
        Field::Card,
        Field::Merchant,
        Field::Counterparty,
        Field::Device,
        Field::Ip,
        Field::Geo,
        Field::Attrs,
    ];

    /// The name used in manifests.
    pub const fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Ts => "ts",
            Field::Channel => "channel",
            Field::Kind => "kind",
            Field::Amount => "amount",
            Field::Currency => "currency",
            Field::Account => "account",
            Field::Card => "card",
            Field::Merchant => "merchant",
            Field::Counterparty => "counterparty",
            Field::Device => "device",
            Field::Ip => "ip",
            Field::Geo => "geo",
            Field::Attrs => "attrs",
        }
    }

    /// Looks a field up by its manifest name.
    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }

    fn fixed(self) -> &'static [(usize, usize)] {
        match self {
            Field::Ts => &[(OFF_TS, 8)],
            Field::Amount => &[(OFF_AMOUNT, 8)],
            Field::Currency => &[(OFF_CURRENCY, 3)],
            Field::Channel => &[(OFF_CHANNEL, 1)],
            Field::Kind => &[(OFF_KIND, 1)],
            Field::Card => &[(OFF_CARD_PRESENT, 1), (OFF_CARD_COUNTRY, 2)],
            Field::Merchant => &[(OFF_MCC, 2), (OFF_MERCHANT_COUNTRY, 2)],
            Field::Counterparty => &[(OFF_COUNTERPARTY_COUNTRY, 2)],
            Field::Geo => &[(OFF_GEO_COUNTRY, 2), (OFF_GEO_LAT, 16)],
            _ => &[],
        }
    }

    fn slot(self) -> Option<StrSlot> {
        match self {
            Field::Id => Some(StrSlot::Id),
            Field::Account => Some(StrSlot::Account),
            Field::Card => Some(StrSlot::Card),
            Field::Merchant => Some(StrSlot::Merchant),
            Field::Counterparty => Some(StrSlot::Counterparty),
            Field::Device => Some(StrSlot::Device),
            Field::Ip => Some(StrSlot::Ip),
            Field::Attrs => Some(StrSlot::Attrs),
            _ => None,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Field`]s, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FieldMask(pub u32);

impl FieldMask {
    /// Every field.
    pub const ALL: FieldMask = FieldMask((1 << Field::ALL.len()) - 1);
    /// No field.
    pub const NONE: FieldMask = FieldMask(0);

    /// Whether the set holds `field`.
    pub const fn contains(self, field: Field) -> bool {
        self.0 & field.bit() != 0
    }

    /// The set with `field` added.
    #[must_use]
    pub const fn with(self, field: Field) -> FieldMask {
        FieldMask(self.0 | field.bit())
    }

    /// The fields in the set, in bit order.
    pub fn fields(self) -> impl Iterator<Item = Field> {
        Field::ALL.into_iter().filter(move |f| self.contains(*f))
    }
}

impl FromIterator<Field> for FieldMask {
    fn from_iter<I: IntoIterator<Item = Field>>(iter: I) -> Self {
        iter.into_iter().fold(FieldMask::NONE, FieldMask::with)
    }
}

macro_rules! coded_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $code:literal => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vdoc])* $variant = $code,)+
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name used in events and manifests.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// Parses the name used in events.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($text => Some($name::$variant),)+ _ => None }
            }

            /// Parses the wire code.
            pub fn from_code(code: u8) -> Option<Self> {
                match code { $($code => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

coded_enum! {
    /// The payment channel.
    Channel {
        /// Bank card (credit, debit, prepaid).
        Card = 1 => "card",
        /// Alipay.
        Alipay = 2 => "alipay",
        /// WeChat Pay.
        Wechat = 3 => "wechat",
        /// Bank transfer (SEPA, ACH, FPS, …).
        BankTransfer = 4 => "bank_transfer",
        /// Other stored-value wallet.
        Wallet = 5 => "wallet",
    }
}

coded_enum! {
    /// What the payment does.
    Kind {
        /// Paying a merchant.
        Purchase = 1 => "purchase",
        /// Money back from a merchant.
        Refund = 2 => "refund",
        /// Account-to-account transfer.
        Transfer = 3 => "transfer",
        /// Withdrawal to cash or an outside account.
        CashOut = 4 => "cash_out",
        /// Top-up of the account.
        CashIn = 5 => "cash_in",
        /// Payout from a business to a person.
        Payout = 6 => "payout",
    }
}

/// An ISO 3166-1 alpha-2 country code, e.g. `Country(*b"US")`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Country(pub [u8; 2]);

impl Country {
    /// The code as text; empty if it is not ASCII.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Country({})", self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for Country {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Country {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Card data as a rule sees it: the token, never the PAN.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CardRef<'a> {
    /// Keyed-HMAC token of the PAN.
    pub token: &'a str,
    /// Issuing country, ISO 3166-1 alpha-2, if known.
    pub country: Option<Country>,
    /// Whether the card was physically present, if known.
    pub present: Option<bool>,
}

/// A merchant or counterparty.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PartyRef<'a> {
    /// Its id.
    pub id: &'a str,
    /// Merchant category code (merchants only).
    pub mcc: Option<u16>,
    /// Country, ISO 3166-1 alpha-2.
    pub country: Option<Country>,
}

/// Where the payment was made.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GeoRef {
    /// Country, ISO 3166-1 alpha-2.
    pub country: Option<Country>,
    /// Latitude and longitude in degrees.
    pub lat_lon: Option<(f64, f64)>,
}

/// The borrowed input of [`encode`]; the host builds it from its validated event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventRef<'a> {
    /// Transaction id.
    pub id: &'a str,
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    /// Payment channel.
    pub channel: Channel,
    /// Payment kind.
    pub kind: Kind,
    /// Amount in minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: [u8; 3],
    /// Account id.
    pub account: &'a str,
    /// Card, if any.
    pub card: Option<CardRef<'a>>,
    /// Merchant, if any.
    pub merchant: Option<PartyRef<'a>>,
    /// Counterparty, if any.
    pub counterparty: Option<PartyRef<'a>>,
    /// Device id, if any.
    pub device: Option<&'a str>,
    /// IP address, if any.
    pub ip: Option<&'a str>,
    /// Geolocation, if any.
    pub geo: Option<GeoRef>,
    /// Free attributes, pre-encoded with [`encode_attr`].
    pub attrs: &'a [u8],
}

/// Why an event could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoded event would exceed 4 GiB or an attribute exceeds 64 KiB.
    TooLarge,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("event too large to encode")
    }
}

impl std::error::Error for EncodeError {}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

fn country(c: Option<Country>) -> [u8; 2] {
    c.map_or([0, 0], |c| c.0)
}

/// Encodes `ev` into `out` (cleared first), all fields present.
///
/// # Errors
/// [`EncodeError::TooLarge`] when a length does not fit the layout.
pub fn encode(ev: &EventRef<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    out.clear();
    out.resize(HEADER_LEN, 0);
    let mut present = Field::Id.bit()
        | Field::Ts.bit()
        | Field::Channel.bit()
        | Field::Kind.bit()
        | Field::Amount.bit()
        | Field::Currency.bit()
        | Field::Account.bit();
    put(out, OFF_TAG, &(crate::ABI_VERSION as u16).to_le_bytes());
    put(out, OFF_TS, &ev.ts_ms.to_le_bytes());
    put(out, OFF_AMOUNT, &ev.amount.to_le_bytes());
    put(out, OFF_CURRENCY, &ev.currency);
    out[OFF_CHANNEL] = ev.channel as u8;
    out[OFF_KIND] = ev.kind as u8;

    push_str(out, StrSlot::Id, ev.id)?;
    push_str(out, StrSlot::Account, ev.account)?;
    if let Some(card) = ev.card {
        present |= Field::Card.bit();
        out[OFF_CARD_PRESENT] = match card.present {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        put(out, OFF_CARD_COUNTRY, &country(card.country));
        push_str(out, StrSlot::Card, card.token)?;
    }
    if let Some(m) = ev.merchant {
        present |= Field::Merchant.bit();
        put(out, OFF_MCC, &m.mcc.unwrap_or(0).to_le_bytes());
        put(out, OFF_MERCHANT_COUNTRY, &country(m.country));
        push_str(out, StrSlot::Merchant, m.id)?;
    }
    if let Some(c) = ev.counterparty {
        present |= Field::Counterparty.bit();
        put(out, OFF_COUNTERPARTY_COUNTRY, &country(c.country));
        push_str(out, StrSlot::Counterparty, c.id)?;
    }
    if let Some(d) = ev.device {
        present |= Field::Device.bit();
        push_str(out, StrSlot::Device, d)?;
    }
    if let Some(ip) = ev.ip {
        present |= Field::Ip.bit();
        push_str(out, StrSlot::Ip, ip)?;
    }
    if let Some(g) = ev.geo {
        present |= Field::Geo.bit();
        put(out, OFF_GEO_COUNTRY, &country(g.country));
        let (lat, lon) = g.lat_lon.unwrap_or((f64::NAN, f64::NAN));
        put(out, OFF_GEO_LAT, &lat.to_le_bytes());
        put(out, OFF_GEO_LON, &lon.to_le_bytes());
    }
    if !ev.attrs.is_empty() {
        present |= Field::Attrs.bit();
        let start = out.len();
        out.extend_from_slice(ev.attrs);
        set_slot(out, StrSlot::Attrs, start, ev.attrs.len())?;
    }
    put(out, OFF_PRESENT, &present.to_le_bytes());
    u32::try_from(out.len()).map_err(|_| EncodeError::TooLarge)?;
    Ok(())
}

/// Appends one attribute to an attribute blob for [`EventRef::attrs`].
///
/// # Errors
/// [`EncodeError::TooLarge`] when the key or value exceeds 64 KiB.
pub fn encode_attr(key: &str, value: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    for s in [key, value] {
        let len = u16::try_from(s.len()).map_err(|_| EncodeError::TooLarge)?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    Ok(())
}

fn push_str(out: &mut Vec<u8>, slot: StrSlot, s: &str) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(s.as_bytes());
    set_slot(out, slot, start, s.len())
}

fn set_slot(out: &mut [u8], slot: StrSlot, start: usize, len: usize) -> Result<(), EncodeError> {
    let start = u32::try_from(start).map_err(|_| EncodeError::TooLarge)?;
    let len = u32::try_from(len).map_err(|_| EncodeError::TooLarge)?;
    let at = OFF_SLOTS + slot as usize * 8;
    put(out, at, &start.to_le_bytes());
    put(out, at + 4, &len.to_le_bytes());
    Ok(())
}

/// A view restriction for one set of fields, computed once per rule.
///
/// Applying it copies the header through a byte mask (undeclared fixed
/// fields and string slots come out zero, presence bits cleared) and then
/// only the string bytes of declared fields: undeclared strings are never
/// copied at all.
#[derive(Clone)]
pub struct Projection {
    mask: FieldMask,
    header: [u8; HEADER_LEN],
    slots: Vec<StrSlot>,
}

impl fmt::Debug for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection").field("mask", &self.mask).finish_non_exhaustive()
    }
}

impl Projection {
    /// The projection showing the fields in `mask`.
    pub fn new(mask: FieldMask) -> Self {
        let mut header = [0xff; HEADER_LEN];
        put(&mut header, OFF_PRESENT, &mask.0.to_le_bytes());
        let mut slots = Vec::new();
        for field in Field::ALL {
            let declared = mask.contains(field);
            if !declared {
                for &(off, len) in field.fixed() {
                    header[off..off + len].fill(0);
                }
            }
            if let Some(slot) = field.slot() {
                if declared {
                    slots.push(slot);
                } else {
                    let at = OFF_SLOTS + slot as usize * 8;
                    header[at..at + 8].fill(0);
                }
            }
        }
        Self { mask, header, slots }
    }

    /// The fields shown.
    pub fn mask(&self) -> FieldMask {
        self.mask
    }

    /// Copies the encoded event `src` into `dst` (at least `src.len()`
    /// bytes) as this projection shows it. Bytes of `dst` that belong to
    /// undeclared strings are left as they were.
    ///
    /// # Panics
    /// When `dst` is shorter than `src` or `src` is shorter than the header.
    pub fn apply(&self, src: &[u8], dst: &mut [u8]) {
        let dst = &mut dst[..src.len()];
        if self.mask == FieldMask::ALL {
            dst.copy_from_slice(src);
            return;
        }
        for ((d, s), m) in dst[..HEADER_LEN].iter_mut().zip(&src[..HEADER_LEN]).zip(&self.header) {
            *d = s & m;
        }
        for &slot in &self.slots {
            let at = OFF_SLOTS + slot as usize * 8;
            let (start, len) = (read_u32(src, at) as usize, read_u32(src, at + 4) as usize);
            if let (Some(from), Some(to)) = (src.get(start..start + len), dst.get_mut(start..start + len)) {
                to.copy_from_slice(from);
            }
        }
    }

    /// Appends the encoded event `src` to `out` as this projection shows
    /// it, compacted: the masked header followed by the declared strings
    /// only, their slots pointing at where they now are. For an event
    /// [`encode`] wrote, what it shows reads the same as through
    /// [`Projection::apply`], in no more bytes.
    ///
    /// # Panics
    /// When `src` is shorter than the header.
    pub fn append(&self, src: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend(src[..HEADER_LEN].iter().zip(&self.header).map(|(s, m)| s & m));
        let event = |out: &Vec<u8>| out.len() - start;
        for &slot in &self.slots {
            let at = OFF_SLOTS + slot as usize * 8;
            let (from, len) = (read_u32(src, at) as usize, read_u32(src, at + 4) as usize);
            let bytes = src.get(from..from + len).unwrap_or_default();
            let to = event(out);
            out.extend_from_slice(bytes);
            put(&mut out[start..], at, &(to as u32).to_le_bytes());
            put(&mut out[start..], at + 4, &(bytes.len() as u32).to_le_bytes());
        }
    }
}

/// Copies `src` into `dst` showing only the fields in `mask`; see
/// [`Projection`], which callers projecting many events should keep.
///
/// # Panics
/// When `dst` is shorter than `src` or `src` is shorter than the header.
pub fn project(src: &[u8], mask: FieldMask, dst: &mut [u8]) {
    Projection::new(mask).apply(src, dst);
}

/// Appends a rule's feature values to an encoded (or projected) event and
/// points its header at them.
///
/// # Panics
/// When `buf` is shorter than the header.
pub fn append_features(buf: &mut Vec<u8>, values: &[f64]) {
    let off = buf.len();
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    set_feature_block(buf, off as u32, values.len() as u32);
}

/// Points the header of an encoded event at `count` f64 values at `offset`.
///
/// # Panics
/// When `buf` is shorter than the header.
pub fn set_feature_block(buf: &mut [u8], offset: u32, count: u32) {
    put(buf, OFF_FEATURES, &offset.to_le_bytes());
    put(buf, OFF_FEATURES_COUNT, &count.to_le_bytes());
}

#[inline]
fn read_u32(buf: &[u8], off: usize) -> u32 {
    buf.get(off..off + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_le_bytes)
}

#[inline]
fn read_u16(buf: &[u8], off: usize) -> u16 {
    buf.get(off..off + 2).and_then(|b| b.try_into().ok()).map_or(0, u16::from_le_bytes)
}

#[inline]
fn read_i64(buf: &[u8], off: usize) -> i64 {
    buf.get(off..off + 8).and_then(|b| b.try_into().ok()).map_or(0, i64::from_le_bytes)
}

#[inline]
fn read_f64(buf: &[u8], off: usize) -> f64 {
    f64::from_bits(read_i64(buf, off) as u64)
}

/// A read-only view of an encoded event. Every accessor is a bounds-checked
/// fixed-offset read; a malformed buffer yields empty values, never a panic.
#[derive(Clone, Copy)]
pub struct EventView<'a> {
    buf: &'a [u8],
    /// Written by the host's encoder, so its strings are UTF-8 and are not
    /// checked again (see [`EventView::from_host`]).
    from_host: bool,
}

impl fmt::Debug for EventView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventView")
            .field("id", &self.id())
            .field("amount", &self.amount())
            .field("currency", &self.currency())
            .finish_non_exhaustive()
    }
}

impl<'a> EventView<'a> {
    /// Wraps an encoded event.
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, from_host: false }
    }

    /// Wraps an event as the host's encoder wrote it, whose strings are
    /// therefore UTF-8 and are read without checking them again. Inside a
    /// rule that check was a sixth of a simple rule's instructions (and it
    /// was made even for strings the rule never read).
    ///
    /// # Safety
    /// Every string the view can read from `buf` must be UTF-8, as it is
    /// when `buf` is what [`encode`] wrote (which takes only `&str`s),
    /// whether or not [`Projection::apply`] masked it (or
    /// [`Projection::append`] compacted it) and a feature block follows it
    /// ([`set_feature_block`]). A rule's SDK gets exactly that
    /// from the host.
    #[inline]
    pub unsafe fn from_host(buf: &'a [u8]) -> Self {
        Self { buf, from_host: true }
    }

    /// The raw bytes.
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Whether `field` is present in this view (set in the event and declared by the rule).
    #[inline]
    pub fn has(&self, field: Field) -> bool {
        read_u32(self.buf, OFF_PRESENT) & field.bit() != 0
    }

    #[inline]
    fn str_slot(&self, slot: StrSlot) -> &'a str {
        self.text(self.bytes_slot(slot)).unwrap_or("")
    }

    #[inline]
    fn bytes_slot(&self, slot: StrSlot) -> &'a [u8] {
        let at = OFF_SLOTS + slot as usize * 8;
        let (start, len) = (read_u32(self.buf, at) as usize, read_u32(self.buf, at + 4) as usize);
        self.buf.get(start..start.saturating_add(len)).unwrap_or_default()
    }

    /// `bytes` of this view as text, if UTF-8.
    #[inline]
    fn text(&self, bytes: &'a [u8]) -> Option<&'a str> {
        if self.from_host {
            // SAFETY: the caller of `from_host` promised the view's strings
            // are UTF-8.
            return Some(unsafe { core::str::from_utf8_unchecked(bytes) });
        }
        text(bytes)
    }

    #[inline]
    fn country_at(&self, off: usize) -> Option<Country> {
        let c = [*self.buf.get(off)?, *self.buf.get(off + 1)?];
        (c != [0, 0]).then_some(Country(c))
    }

    /// Transaction id.
    #[inline]
    pub fn id(&self) -> &'a str {
        self.str_slot(StrSlot::Id)
    }
    /// Event time, epoch milliseconds.
    #[inline]
    pub fn ts_ms(&self) -> i64 {
        read_i64(self.buf, OFF_TS)
    }
    /// Amount in minor units.
    #[inline]
    pub fn amount(&self) -> i64 {
        read_i64(self.buf, OFF_AMOUNT)
    }
    /// ISO 4217 code; empty when not declared.
    #[inline]
    pub fn currency(&self) -> &'a str {
        self.buf
            .get(OFF_CURRENCY..OFF_CURRENCY + 3)
            .filter(|c| c[0] != 0)
            .and_then(|b| core::str::from_utf8(b).ok())
            .unwrap_or("")
    }
    /// Channel, if declared.
    #[inline]
    pub fn channel(&self) -> Option<Channel> {
        Channel::from_code(*self.buf.get(OFF_CHANNEL)?)
    }
    /// Kind, if declared.
    #[inline]
    pub fn kind(&self) -> Option<Kind> {
        Kind::from_code(*self.buf.get(OFF_KIND)?)
    }
    /// Account id.
    #[inline]
    pub fn account(&self) -> &'a str {
        self.str_slot(StrSlot::Account)
    }
    /// Card, if present and declared.
    #[inline]
    pub fn card(&self) -> Option<CardRef<'a>> {
        self.has(Field::Card).then(|| CardRef {
            token: self.str_slot(StrSlot::Card),
            country: self.country_at(OFF_CARD_COUNTRY),
            present: match self.buf.get(OFF_CARD_PRESENT) {
                Some(1) => Some(true),
                Some(2) => Some(false),
                _ => None,
            },
        })
    }
    /// Merchant, if present and declared.
    #[inline]
    pub fn merchant(&self) -> Option<PartyRef<'a>> {
        self.has(Field::Merchant).then(|| PartyRef {
            id: self.str_slot(StrSlot::Merchant),
            mcc: Some(read_u16(self.buf, OFF_MCC)).filter(|m| *m != 0),
            country: self.country_at(OFF_MERCHANT_COUNTRY),
        })
    }
    /// Counterparty, if present and declared.
    #[inline]
    pub fn counterparty(&self) -> Option<PartyRef<'a>> {
        self.has(Field::Counterparty).then(|| PartyRef {
            id: self.str_slot(StrSlot::Counterparty),
            mcc: None,
            country: self.country_at(OFF_COUNTERPARTY_COUNTRY),
        })
    }
    /// Device id, if present and declared.
    #[inline]
    pub fn device(&self) -> Option<&'a str> {
        self.has(Field::Device).then(|| self.str_slot(StrSlot::Device))
    }
    /// IP address, if present and declared.
    #[inline]
    pub fn ip(&self) -> Option<&'a str> {
        self.has(Field::Ip).then(|| self.str_slot(StrSlot::Ip))
    }
    /// Geolocation, if present and declared.
    #[inline]
    pub fn geo(&self) -> Option<GeoRef> {
        self.has(Field::Geo).then(|| {
            let (lat, lon) = (read_f64(self.buf, OFF_GEO_LAT), read_f64(self.buf, OFF_GEO_LON));
            GeoRef {
                country: self.country_at(OFF_GEO_COUNTRY),
                lat_lon: (!lat.is_nan() && !lon.is_nan()).then_some((lat, lon)),
            }
        })
    }
    /// The attribute `key`, if present and declared.
    #[inline]
    pub fn attr(&self, key: &str) -> Option<&'a str> {
        self.attrs().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    /// All attributes, in event order.
    #[inline]
    pub fn attrs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        // Read as bytes: the blob's length prefixes are not text.
        let blob = if self.has(Field::Attrs) { self.bytes_slot(StrSlot::Attrs) } else { &[] };
        AttrIter { blob, view: *self }
    }
    /// The per-rule feature values the host appended, in manifest order.
    #[inline]
    pub fn features(&self) -> impl Iterator<Item = f64> + 'a {
        let (off, count) = self.feature_block();
        let buf = self.buf;
        (0..count).map(move |i| read_f64(buf, off + i * 8))
    }
    /// The feature at `index` in manifest order, if the host sent it.
    #[inline]
    pub fn feature(&self, index: usize) -> Option<f64> {
        let (off, count) = self.feature_block();
        (index < count).then(|| read_f64(self.buf, off + index * 8))
    }
    #[inline]
    fn feature_block(&self) -> (usize, usize) {
        let off = read_u32(self.buf, OFF_FEATURES) as usize;
        let count = read_u32(self.buf, OFF_FEATURES_COUNT) as usize;
        // Never trust a count the buffer cannot hold.
        (off, count.min(self.buf.len().saturating_sub(off) / 8))
    }
}

/// `bytes` as text, if UTF-8.
///
/// An event's strings are nearly always ASCII, which is checked here eight
/// bytes at a time. In wasm, `core::str::from_utf8` walks short strings a
/// byte at a time: it was a tenth of a call of a rule reading four of them.
#[inline]
fn text(bytes: &[u8]) -> Option<&str> {
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut seen = 0u64;
    for chunk in chunks.by_ref() {
        seen |= u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
    }
    for &b in chunks.remainder() {
        seen |= u64::from(b);
    }
    if seen & HIGH_BITS == 0 {
        // SAFETY: no byte has its high bit set, so all are ASCII, and ASCII
        // is UTF-8.
        return Some(unsafe { core::str::from_utf8_unchecked(bytes) });
    }
    core::str::from_utf8(bytes).ok()
}

struct AttrIter<'a> {
    blob: &'a [u8],
    view: EventView<'a>,
}

impl<'a> AttrIter<'a> {
    fn take(&mut self) -> Option<&'a str> {
        let len = usize::from(u16::from_le_bytes(self.blob.get(..2)?.try_into().ok()?));
        let s = self.blob.get(2..2 + len)?;
        self.blob = &self.blob[2 + len..];
        self.view.text(s)
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = (&'a str, &'a str);
    fn next(&mut self) -> Option<Self::Item> {
        let k = self.take()?;
        let v = self.take()?;
        Some((k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The ASCII shortcut gives what the full check gives: for any
        /// bytes, for ASCII of any length, and for text with a byte changed.
        #[test]
        fn text_reads_as_the_full_check_does(
            bytes in proptest::collection::vec(any::<u8>(), 0..40),
            ascii in proptest::collection::vec(0u8..0x80, 0..40),
            words in "\\PC{0,16}",
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            prop_assert_eq!(text(&bytes), core::str::from_utf8(&bytes).ok());
            prop_assert_eq!(text(&ascii), core::str::from_utf8(&ascii).ok());
            prop_assert_eq!(text(words.as_bytes()), Some(words.as_str()));
            let mut changed = words.into_bytes();
            if !changed.is_empty() {
                let i = at.index(changed.len());
                changed[i] = byte;
            }
            prop_assert_eq!(text(&changed), core::str::from_utf8(&changed).ok());
        }
    }

    fn sample(attrs: &[u8]) -> EventRef<'_> {
        EventRef {
            id: "tx-1",
            ts_ms: 1_700_000_000_123,
            channel: Channel::Card,
            kind: Kind::Purchase,
            amount: 12_345,
            currency: *b"EUR",
            account: "acct-9",
            card: Some(CardRef { token: "tok_abc", country: Some(Country(*b"FR")), present: Some(false) }),
            merchant: Some(PartyRef { id: "m-1", mcc: Some(5411), country: Some(Country(*b"DE")) }),
            counterparty: None,
            device: Some("dev-7"),
            ip: Some("10.0.0.1"),
            geo: Some(GeoRef { country: Some(Country(*b"DE")), lat_lon: Some((52.5, 13.4)) }),
            attrs,
        }
    }

    /// [`sample`] with the attributes `attrs`, encoded.
    fn encoded(attrs: &[(&str, &str)]) -> Vec<u8> {
        let mut blob = Vec::new();
        for (k, v) in attrs {
            encode_attr(k, v, &mut blob).expect("fits");
        }
        let mut buf = Vec::new();
        encode(&sample(&blob), &mut buf).expect("encodes");
        buf
    }

    #[test]
    fn encode_then_view_gives_every_field_back() {
        let mut attrs = Vec::new();
        encode_attr("3ds", "false", &mut attrs).expect("fits");
        encode_attr("bin", "411111", &mut attrs).expect("fits");
        let ev = sample(&attrs);
        let mut buf = Vec::new();
        encode(&ev, &mut buf).expect("encodes");
        let v = EventView::new(&buf);
        assert_eq!(v.id(), "tx-1");
        assert_eq!(v.ts_ms(), 1_700_000_000_123);
        assert_eq!(v.amount(), 12_345);
        assert_eq!(v.currency(), "EUR");
        assert_eq!(v.channel(), Some(Channel::Card));
        assert_eq!(v.kind(), Some(Kind::Purchase));
        assert_eq!(v.account(), "acct-9");
        assert_eq!(v.card(), ev.card);
        assert_eq!(v.merchant(), ev.merchant);
        assert_eq!(v.counterparty(), None);
        assert_eq!(v.device(), Some("dev-7"));
        assert_eq!(v.ip(), Some("10.0.0.1"));
        assert_eq!(v.geo(), ev.geo);
        assert_eq!(v.attr("bin"), Some("411111"));
        assert_eq!(v.attrs().count(), 2);
        assert_eq!(v.features().count(), 0);
    }

    #[test]
    fn attributes_of_any_length_and_text_come_back() {
        // Length prefixes of 128 bytes and more are not ASCII, nor UTF-8.
        let long = "x".repeat(200);
        let buf = encoded(&[("note", &long), ("city", "Zürich"), (&"k".repeat(130), "v")]);
        let v = EventView::new(&buf);
        assert_eq!(v.attr("note"), Some(long.as_str()));
        assert_eq!(v.attr("city"), Some("Zürich"));
        assert_eq!(v.attrs().count(), 3);
    }

    #[test]
    fn a_view_from_the_host_reads_as_a_checked_one() {
        let buf = encoded(&[("city", "Zürich"), ("note", &"é".repeat(100))]);
        let masks = [FieldMask::ALL, [Field::Card, Field::Attrs].into_iter().collect(), FieldMask(0)];
        for mask in masks {
            let mut dst = vec![0; buf.len()];
            project(&buf, mask, &mut dst);
            append_features(&mut dst, &[1.5, 2.5]);
            let checked = EventView::new(&dst);
            // SAFETY: `dst` is what `encode` wrote, masked, with features.
            let trusted = unsafe { EventView::from_host(&dst) };
            assert_eq!((checked.id(), checked.account()), (trusted.id(), trusted.account()));
            assert_eq!(
                (checked.card(), checked.device(), checked.ip()),
                (trusted.card(), trusted.device(), trusted.ip())
            );
            assert_eq!(checked.merchant(), trusted.merchant());
            assert!(checked.attrs().eq(trusted.attrs()), "{mask:?}");
            assert!(checked.features().eq(trusted.features()));
        }
    }

    #[test]
    fn projection_blanks_undeclared_fields_and_their_bytes() {
        let ev = sample(&[]);
        let mut buf = Vec::new();
        encode(&ev, &mut buf).expect("encodes");
        let mask: FieldMask = [Field::Amount, Field::Currency].into_iter().collect();
        let mut dst = vec![0xAA; buf.len() + 10];
        project(&buf, mask, &mut dst);
        let v = EventView::new(&dst[..buf.len()]);
        assert_eq!(v.amount(), 12_345);
        assert_eq!(v.currency(), "EUR");
        assert_eq!(v.id(), "");
        assert_eq!(v.card(), None);
        assert_eq!(v.device(), None);
        assert_eq!(v.channel(), None);
        assert_eq!(v.ts_ms(), 0);
        assert!(!v.has(Field::Card) && v.has(Field::Amount));
        // No undeclared string survives anywhere in the copy.
        for secret in ["tok_abc", "acct-9", "dev-7", "tx-1", "10.0.0.1"] {
            assert!(!dst.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} leaked");
        }
    }

    proptest! {
        /// Whatever the fields shown and the attributes, a compacted event
        /// reads as the copied one, field by field, and is no longer.
        #[test]
        fn any_compacted_projection_reads_as_the_copied_one(
            mask in 0u32..(1 << Field::ALL.len()),
            attrs in proptest::collection::vec(("[a-z]{1,8}", "\\PC{0,12}"), 0..4),
        ) {
            let attrs: Vec<(&str, &str)> = attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let buf = encoded(&attrs);
            let projection = Projection::new(FieldMask(mask));
            let mut copied = vec![0; buf.len()];
            projection.apply(&buf, &mut copied);
            let mut compact = Vec::new();
            projection.append(&buf, &mut compact);
            prop_assert!(compact.len() <= copied.len());
            let (a, b) = (EventView::new(&copied), EventView::new(&compact));
            prop_assert_eq!((a.id(), a.account(), a.amount(), a.ts_ms()), (b.id(), b.account(), b.amount(), b.ts_ms()));
            prop_assert_eq!((a.card(), a.device(), a.ip(), a.geo()), (b.card(), b.device(), b.ip(), b.geo()));
            prop_assert_eq!((a.merchant(), a.counterparty(), a.currency()), (b.merchant(), b.counterparty(), b.currency()));
            prop_assert!(a.attrs().eq(b.attrs()));
            for field in Field::ALL {
                prop_assert_eq!(a.has(field), b.has(field));
            }
        }
    }

    #[test]
    fn a_compacted_projection_reads_as_the_copied_one_and_holds_nothing_else() {
        let buf = encoded(&[("city", "Zürich")]);
        let masks = [
            FieldMask::ALL,
            [Field::Card, Field::Attrs, Field::Amount].into_iter().collect(),
            [Field::Merchant, Field::Ip].into_iter().collect(),
            FieldMask(0),
        ];
        for mask in masks {
            let projection = Projection::new(mask);
            let mut copied = vec![0; buf.len()];
            projection.apply(&buf, &mut copied);
            let mut compact = b"before".to_vec();
            projection.append(&buf, &mut compact);
            let mut compact = compact.split_off(6);
            assert!(compact.len() <= buf.len(), "{mask:?}");
            append_features(&mut copied, &[1.5, 2.5]);
            append_features(&mut compact, &[1.5, 2.5]);
            let (a, b) = (EventView::new(&copied), EventView::new(&compact));
            assert_eq!((a.id(), a.account(), a.amount(), a.ts_ms()), (b.id(), b.account(), b.amount(), b.ts_ms()));
            assert_eq!((a.card(), a.device(), a.ip(), a.geo()), (b.card(), b.device(), b.ip(), b.geo()));
            assert_eq!((a.merchant(), a.counterparty(), a.currency()), (b.merchant(), b.counterparty(), b.currency()));
            assert!(a.attrs().eq(b.attrs()) && a.features().eq(b.features()), "{mask:?}");
            for field in Field::ALL {
                assert_eq!(a.has(field), b.has(field), "{field:?} in {mask:?}");
            }
            // SAFETY: `compact` is what `encode` wrote, projected, with features.
            let trusted = unsafe { EventView::from_host(&compact) };
            assert_eq!((trusted.card(), trusted.ip()), (b.card(), b.ip()));
            for (secret, field) in [("tok_abc", Field::Card), ("acct-9", Field::Account), ("10.0.0.1", Field::Ip)] {
                let kept = compact.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert_eq!(kept, mask.contains(field), "{secret} in {mask:?}");
            }
        }
    }

    #[test]
    fn all_mask_is_a_plain_copy() {
        let buf = encoded(&[("k", "v")]);
        let mut dst = vec![0; buf.len()];
        project(&buf, FieldMask::ALL, &mut dst);
        assert_eq!(dst, buf);
    }

    #[test]
    fn garbage_buffers_read_as_empty_without_panicking() {
        for junk in [&[][..], &[1, 2, 3][..], &[0xff; 200][..]] {
            let v = EventView::new(junk);
            let _ = (v.id(), v.card(), v.geo(), v.attrs().count(), v.features().count(), v.feature(3));
        }
    }

    #[test]
    fn field_names_round_trip() {
        for f in Field::ALL {
            assert_eq!(Field::from_name(f.name()), Some(f));
        }
        assert_eq!(Field::from_name("pan"), None);
    }
}
