//! vigil's integration tests: one binary, a module per area.
//!
//! They need the rule modules built to wasm32 first; `just test` does that.

mod support;
mod broker;

mod check_cmd;
mod admin;
mod daemon;
mod end_to_end;
mod exact;
mod features;
mod golden;
mod governance;
mod hardening;
mod hops;
mod hostile;
mod hot_reload;
mod kafka;
mod malformed;
mod recovery;
mod registry;
mod replay;
mod rule_state;
mod scaffold;
mod windows;
