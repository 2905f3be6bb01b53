//! vigil: a real-time payment risk engine with sandboxed WebAssembly rules.
//!
//! ```text
//!  source ─► decode/clean ─► partition ─► features, windows ─► rules (wasm) ─► decide ─► sinks
//!   file      validate,        hash(key)    look-back per key,    per event,      combine,   decisions,
//!             normalise,       → worker     tumbling/hopping/     sandboxed,      audit      alerts,
//!             tokenise PAN,                 session, watermarks   hot-reloaded    record     aggregates,
//!             dedup, DLQ                    (checkpointed state)                             late, dead letters
//! ```
//!
//! Events are JSON lines. Each is validated and normalised (integer minor
//! units, ISO 4217 currency, tokenised PAN), de-duplicated by id, and routed
//! by `hash(key) mod P` to the worker that owns its key. The worker encodes
//! the event once and calls every live rule — a WebAssembly module from the
//! rules folder — on a view restricted to the fields the rule declared. The
//! most severe enforcing outcome wins; the decision and every rule's outcome
//! go out as one audit record. A rejected event goes to dead letters with
//! its reason: `events in = decided + dead-lettered`, always.
//!
//! # Layout
//! - [`config`]: `vigil.toml`, documented field by field.
//! - [`keyed`]: keyed hashing of the ids and keys the input chooses.
//! - [`sources`]: where raw records come from (a file, or records in memory for replays).
//! - [`decode`]: validation, normalisation, PAN tokenisation, de-duplication.
//! - [`event`]: the canonical payment event.
//! - [`partition`]: key → worker.
//! - [`features`]: per-key look-back aggregates in event time.
//! - [`window`]: tumbling, hopping and session aggregates closed by the watermark.
//! - [`state`]: checkpoints in an embedded store, and restore.
//! - [`rules`]: loading, validation, hot reload and sandboxed evaluation.
//! - [`decide`]: combining outcomes into the decision record.
//! - [`sinks`]: decisions, alerts, aggregates, late events and dead letters out.
//! - [`pipeline`]: the threads and bounded channels between the stages.
//! - [`priority`]: lower thread priorities for background work.
//! - [`app`]: the daemon: startup, signals, drain.
//! - [`replay`]: batch replays of history files, backtests against labels, comparisons.
//! - [`generate`]: `vigil gen`, synthetic payment streams with injected fraud patterns.
//! - [`scaffold`]: `vigil new-rule`, a rule crate from the template.

pub mod config;
pub mod keyed;
pub mod sources;
pub mod decode;
pub mod event;
pub mod partition;
pub mod features;
pub mod window;
pub mod state;
pub mod rules;
pub mod decide;
pub mod sinks;
pub mod kafka;
pub mod pipeline;
pub mod priority;
pub mod stats;
mod hint;
pub mod admin;
pub mod app;
pub mod replay;
pub mod generate;
pub mod scaffold;
