//! The contract between the vigil host and its WebAssembly rules, ABI version 1.
//!
//! Both sides depend on this crate, so the layout is written down exactly once.
//!
//! # Calling convention
//!
//! A rule is a core WebAssembly module (not a component) that exports linear
//! memory as `memory` and the functions named in [`exports`]. The host:
//!
//! 1. calls [`exports::ABI_VERSION`] and refuses the module unless it returns
//!    [`ABI_VERSION`];
//! 2. reads the manifest: [`exports::MANIFEST`] returns `ptr << 32 | len` of a
//!    UTF-8 JSON [`Manifest`] in guest memory;
//! 3. asks for an input buffer with [`exports::BUFFER`]`(capacity) -> ptr` and
//!    for the output buffer with [`exports::OUTPUT`]`() -> ptr` (both pointers
//!    are stable until the next `BUFFER` call);
//! 4. writes the resolved parameters ([`params`]) into the input buffer and
//!    calls [`exports::CONFIGURE`]`(len) -> i32`; non-zero is the length of an
//!    error message in the output buffer;
//! 5. per event, copies the encoded event ([`event`]) into the input buffer and
//!    calls [`exports::EVALUATE`]`(len) -> i64`, a packed [`Outcome`] whose
//!    reason codes, if any, are in the output buffer separated by `\n`;
//! 6. or, when the module exports [`exports::EVALUATE_BATCH`], copies several
//!    encoded events into the input buffer behind a table of where each one
//!    lies ([`batch`]) and calls `EVALUATE_BATCH(count) -> i32`. The guest
//!    evaluates them in order and reports each outcome through the import
//!    [`imports::OUTCOME`] before it starts the next event, then returns
//!    `count`.
//!
//! A batch call keeps every per-event guarantee of step 5: each event starts
//! with the full CPU budget (the host resets it when the guest reports the
//! previous outcome), and a trap fails only the event being evaluated; the
//! host has the outcomes of those before it and carries on after it with a
//! new instance. What it saves is the entry into and exit from the sandbox
//! for all but one event of the batch, the largest fixed cost of a rule call.
//!
//! A rule may import only the functions listed in [`imports`], from module
//! [`imports::MODULE`].
//!
//! # Why this layout
//!
//! The event is encoded once per event into a fixed 128-byte header plus a
//! string area. Each rule gets a copy through its [`Projection`]: the header
//! through a precomputed byte mask and only the strings it declared, so a
//! field it did not declare never enters its memory. Reading a field in the guest is a
//! fixed-offset load; there is no parsing, no allocation and no per-rule
//! serialisation on the hot path.

pub mod batch;
pub mod event;
pub mod manifest;
pub mod params;

pub use event::{CardRef, Channel, Country, EventRef, EventView, Field, FieldMask, GeoRef, Kind, PartyRef, Projection};
pub use manifest::{Manifest, ManifestDef, ParamDef, ParamDefault, ParamSpec, ParamType};
pub use params::ParamValue;

/// The ABI version this crate describes. Bumped on any incompatible change.
pub const ABI_VERSION: i32 = 1;

/// Size of the guest's output buffer, in bytes. Reason codes beyond it are cut.
pub const OUTPUT_CAPACITY: usize = 4096;

/// Written by a guest at the start of its output buffer when it panics,
/// followed by the message length (`u32`) and the UTF-8 message, so the host
/// can say why a rule trapped. Reason codes are UTF-8 and never start with 0xFF.
pub const PANIC_MAGIC: [u8; 4] = [0xff, b'P', b'N', b'C'];

/// The longest key of a rule's keyed state, in bytes.
pub const STATE_MAX_KEY: usize = 256;
/// The longest value of a rule's keyed state, in bytes.
pub const STATE_MAX_VALUE: usize = 4096;

/// Names of the functions a rule module exports.
pub mod exports {
    /// `() -> i32`: the ABI version the module was built for.
    pub const ABI_VERSION: &str = "vigil_abi_version";
    /// `() -> i64`: `ptr << 32 | len` of the JSON manifest.
    pub const MANIFEST: &str = "vigil_manifest";
    /// `(capacity: i32) -> i32`: pointer to an input buffer of at least `capacity` bytes.
    pub const BUFFER: &str = "vigil_buffer";
    /// `() -> i32`: pointer to the output buffer of [`super::OUTPUT_CAPACITY`] bytes.
    pub const OUTPUT: &str = "vigil_output";
    /// `(len: i32) -> i32`: apply the parameters in the input buffer; 0 or an error length.
    pub const CONFIGURE: &str = "vigil_configure";
    /// `(len: i32) -> i64`: evaluate the event in the input buffer; a packed outcome.
    pub const EVALUATE: &str = "vigil_evaluate";
    /// `(count: i32) -> i32`, optional: evaluate the `count` events laid out
    /// in the input buffer as [`super::batch`] describes, reporting each
    /// outcome through [`super::imports::OUTCOME`]; returns `count`.
    pub const EVALUATE_BATCH: &str = "vigil_evaluate_batch";
    /// The exported linear memory.
    pub const MEMORY: &str = "memory";
}

/// Host functions a rule may import.
pub mod imports {
    /// The only import module a rule may use.
    pub const MODULE: &str = "vigil";
    /// `(list: i32, ptr: i32, len: i32) -> i32`: 1 when the UTF-8 value at
    /// `ptr..ptr+len` is in the list with index `list` of the manifest's
    /// `lists`, else 0.
    pub const LIST_CONTAINS: &str = "list_contains";
    /// `(key_ptr: i32, key_len: i32, out_ptr: i32, out_cap: i32) -> i32`:
    /// copies the rule's stored value for the key into `out` (up to
    /// `out_cap` bytes) and returns its full length, or -1 when absent.
    pub const STATE_GET: &str = "state_get";
    /// `(key_ptr: i32, key_len: i32, val_ptr: i32, val_len: i32) -> i32`:
    /// stores the value for the key (an empty value removes it); 0, or -1
    /// when the key or value is over [`super::STATE_MAX_KEY`] /
    /// [`super::STATE_MAX_VALUE`] or the rule holds too many keys.
    pub const STATE_PUT: &str = "state_put";
    /// `(index: i32, outcome: i64)`: during [`super::exports::EVALUATE_BATCH`],
    /// event `index`'s packed [`super::Outcome`], with its reason codes in
    /// the output buffer. Events are reported in order, each exactly once.
    pub const OUTCOME: &str = "outcome";
    /// `(level: i32, ptr: i32, len: i32)`: a log line from the rule, UTF-8
    /// at `ptr..ptr+len`; level 0 error, 1 warn, 2 info, 3 debug. The host
    /// keeps at most [`super::LOG_MAX_BYTES`] of it, rate-limits it per
    /// rule and charges it to the call's fuel.
    pub const LOG: &str = "log";
}

/// The longest log line a rule can write ([`imports::LOG`]); longer ones
/// are cut.
pub const LOG_MAX_BYTES: usize = 1024;

/// What a rule decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Action {
    /// Let the payment through.
    #[default]
    Allow = 0,
    /// Let it through but send it to a human.
    Review = 1,
    /// Stop it.
    Block = 2,
}

impl Action {
    /// Parses the wire code of an action.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Allow),
            1 => Some(Self::Review),
            2 => Some(Self::Block),
            _ => None,
        }
    }

    /// The lower-case name used in records and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Review => "review",
            Self::Block => "block",
        }
    }
}

/// The packed return value of `vigil_evaluate`.
///
/// Bits 0..8 hold the action code, bits 8..24 the byte length of the reason
/// codes in the output buffer, bits 32..64 the score as an `i32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The action code; see [`Action::from_code`].
    pub action: u8,
    /// Bytes of `\n`-separated reason codes in the output buffer.
    pub reasons_len: u16,
    /// The rule's risk score for this event.
    pub score: i32,
}

impl Outcome {
    /// Packs the outcome into the `i64` the guest returns.
    pub fn pack(self) -> i64 {
        (i64::from(self.score) << 32) | (i64::from(self.reasons_len) << 8) | i64::from(self.action)
    }

    /// Unpacks the `i64` a guest returned.
    pub fn unpack(raw: i64) -> Self {
        Self { action: (raw & 0xff) as u8, reasons_len: ((raw >> 8) & 0xffff) as u16, score: (raw >> 32) as i32 }
    }
}

/// Packs a guest pointer and length into one `i64`, as `vigil_manifest` returns them.
pub fn pack_ptr_len(ptr: u32, len: u32) -> i64 {
    ((u64::from(ptr) << 32) | u64::from(len)) as i64
}

/// Splits a value made by [`pack_ptr_len`].
pub fn unpack_ptr_len(raw: i64) -> (u32, u32) {
    let raw = raw as u64;
    ((raw >> 32) as u32, raw as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_round_trips_including_negative_scores() {
        for score in [i32::MIN, -1, 0, 1, 40, i32::MAX] {
            for reasons_len in [0u16, 1, 4096, u16::MAX] {
                for action in 0u8..=2 {
                    let o = Outcome { action, reasons_len, score };
                    assert_eq!(Outcome::unpack(o.pack()), o);
                }
            }
        }
    }

    #[test]
    fn ptr_len_round_trips() {
        for (p, l) in [(0, 0), (1, 2), (u32::MAX, u32::MAX), (0x8000_0000, 17)] {
            assert_eq!(unpack_ptr_len(pack_ptr_len(p, l)), (p, l));
        }
    }
}
