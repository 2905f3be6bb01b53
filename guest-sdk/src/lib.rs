//! Write vigil risk rules in Rust.
//!
//! A rule is one function that looks at a payment and returns a [`Decision`].
//! The [`rule`] attribute turns it into a WebAssembly module vigil loads from
//! its rules folder, and into an ordinary Rust function you unit-test with
//! `cargo test` — no wasm involved.
//!
//! ```
//! use vigil_sdk::prelude::*;
//!
//! /// Reviews card payments above a limit; blocks far above it.
//! #[rule(
//!     name = "large-amount",
//!     fields(amount, currency, channel),
//!     params(review_above: i64 = 100_000, block_above: i64 = 1_000_000),
//! )]
//! fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
//!     let p = Params::of(ctx);
//!     if tx.amount() > p.block_above {
//!         Decision::block(90).reason("amount_over_block_limit")
//!     } else if tx.amount() > p.review_above {
//!         Decision::review(40).reason("amount_over_review_limit")
//!     } else {
//!         Decision::allow()
//!     }
//! }
//!
//! # fn main() {
//! use vigil_sdk::testing::{evaluate as run, PaymentBuilder, TestContext};
//! let tx = PaymentBuilder::new("tx-1").amount(250_000, "USD").build();
//! let d = run(&RULE, &tx, &TestContext::new());
//! assert_eq!(d.action, Action::Review);
//! let d = run(&RULE, &tx, &TestContext::new().param("review_above", 500_000));
//! assert_eq!(d.action, Action::Allow);
//! # }
//! ```
//!
//! # What the attribute takes
//!
//! - `name = "..."`, `version = "..."`: default to the crate's name and version.
//! - `description = "..."`: defaults to the first line of the function's doc comment.
//! - `fields(...)`: the event fields the rule reads. The rule is given
//!   **only** these: reading another panics in its native tests, naming the
//!   field to add. One of `id`, `ts`, `channel`, `kind`, `amount`,
//!   `currency`, `account`, `card`, `merchant`, `counterparty`, `device`,
//!   `ip`, `geo`, `attrs`.
//! - `params(name: type = default, ...)`: parameters the host config can set
//!   per rule without recompiling; `type` is `i64`, `f64`, `bool` or `str`.
//!   The attribute generates `Params`, one field per parameter:
//!   `Params::of(ctx).name`.
//! - `features(name = "count(card, 10m)", ...)`: look-back features the host
//!   computes per event. Named ones are fields of the generated `Features`
//!   (`Features::of(ctx).name`, and `Features::NAME` is the spec, for
//!   tests); `features("...")` without a name is read with
//!   [`Context::feature`].
//! - `lists("name", ...)`: named lists (block/allow lists) the host loads from
//!   files; look values up with [`Context::in_list`].
//! - `state = account`: the entity whose keyed state the rule keeps.
//!
//! A misspelt name is a compile error at its use: a field of `Params` or
//! `Features` that does not exist, and, in the rule function's own body, a
//! string literal given to `ctx.param_i64`, `ctx.feature` or `ctx.in_list`
//! that the attribute does not declare (or a parameter read with the wrong
//! type). Names passed as constants, or read in helper functions, are
//! checked when the rule runs, as before: its native tests catch them.
//!
//! The attribute also defines `pub static RULE: vigil_sdk::Rule`, the rule's
//! manifest and entry point, used by [`testing`].
//!
//! # Limits the host enforces
//!
//! Each call has a CPU budget and each instance a memory cap (both set in the
//! host config). A rule that panics, loops, or runs out of memory gets its
//! configured failure outcome for that event; after repeated failures in a
//! row it is quarantined until a new version is deployed.

mod context;
mod decision;
mod payment;
#[cfg(feature = "native")]
pub mod native;
pub mod testing;

#[doc(hidden)]
pub mod __private;

pub use context::Context;
pub use decision::{Decision, Reasons};
pub use payment::Payment;
pub use vigil_abi as abi;
pub use vigil_abi::{Action, CardRef as Card, Channel, Country, GeoRef as Geo, Kind, PartyRef as Party};
pub use vigil_sdk_macros::rule;

/// A compiled-in rule: its manifest and its function. Made by [`rule`].
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// What the rule declares.
    pub manifest: abi::ManifestDef,
    /// The rule itself.
    pub evaluate: fn(&Payment<'_>, &Context<'_>) -> Decision,
    /// The rule as a host process calls it ([`native`]): `evaluate` with
    /// this manifest's parameter, list and feature names resolved when it
    /// was compiled, as they are in its wasm build. Not in a wasm build,
    /// which has its own entry points.
    #[cfg(all(feature = "native", not(target_arch = "wasm32")))]
    pub native: native::Entry,
}

/// How much a rule's log line ([`Context::log`]) matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum Level {
    /// Something is wrong.
    Error = 0,
    /// Something looks wrong.
    Warn = 1,
    /// Worth knowing.
    Info = 2,
    /// Only while investigating.
    Debug = 3,
}

/// Everything a rule file needs: `use vigil_sdk::prelude::*;`.
pub mod prelude {
    pub use crate::{Action, Card, Channel, Context, Country, Decision, Geo, Kind, Level, Party, Payment, rule};
}
