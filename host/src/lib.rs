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
//! Each module uses only modules above it in this list (no import cycles;
//! `layout_has_no_upward_imports` below keeps it so):
//! - [`error`]: printing an error with its causes.
//! - [`event`]: the canonical payment event and its key fields.
//! - [`decide`]: combining outcomes into the decision record.
//! - [`keyed`]: keyed hashing of the ids and keys the input chooses.
//! - [`stats`]: latency histograms and counters the admin listener exposes.
//! - [`priority`]: lower thread priorities for background work.
//! - [`generate`]: `vigil gen`, synthetic payment streams with injected fraud patterns.
//! - [`scaffold`]: `vigil new-rule`, a rule crate from the template.
//! - [`config`]: `vigil.toml`, documented field by field.
//! - [`kafka`]: the Kafka client settings, logging and partition ownership
//!   the Kafka source, sink and changelog share.
//! - [`partition`]: key → worker.
//! - [`window`]: tumbling, hopping and session aggregates closed by the watermark.
//! - [`sinks`]: decisions, alerts, aggregates, late events and dead letters
//!   out: files, stdout, Kafka.
//! - [`state`]: checkpoints in an embedded store, and restore; the Kafka
//!   changelog and its local snapshots.
//! - [`sources`]: where raw records come from: a file, records in memory
//!   for replays, or a Kafka consumer group.
//! - [`decode`]: validation, normalisation, PAN tokenisation, de-duplication.
//! - [`features`]: per-key look-back aggregates in event time.
//! - [`rules`]: loading, validation, hot reload and sandboxed evaluation.
//! - [`pipeline`]: the threads and bounded channels between the stages.
//! - [`admin`]: metrics, health and the admin API over HTTP.
//! - [`app`]: the daemon: startup, signals, drain.
//! - [`replay`]: batch replays of history files, backtests against labels, comparisons.

pub mod error;
pub mod event;
pub mod decide;
pub mod keyed;
mod hint;
pub mod stats;
pub mod priority;
pub mod generate;
pub mod scaffold;
pub mod config;
pub mod kafka;
pub mod partition;
pub mod window;
pub mod sinks;
pub mod state;
pub mod sources;
pub mod decode;
pub mod features;
pub mod rules;
pub mod pipeline;
pub mod admin;
pub mod app;
pub mod replay;

#[cfg(test)]
mod tests {
    /// The modules in the order of the layout above (`hint` beside
    /// `keyed`): a module's code outside its tests names only modules
    /// before it.
    const LAYERS: [&str; 23] = [
        "error",
        "event",
        "decide",
        "keyed",
        "hint",
        "stats",
        "priority",
        "generate",
        "scaffold",
        "config",
        "kafka",
        "partition",
        "window",
        "sinks",
        "state",
        "sources",
        "decode",
        "features",
        "rules",
        "pipeline",
        "admin",
        "app",
        "replay",
    ];

    fn sources(path: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).expect("read dir") {
                sources(&entry.expect("entry").path(), out);
            }
        } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
            out.push(path.to_owned());
        }
    }

    /// The first segment of every `crate::` path in `code`, groups
    /// (`crate::{a::X, b::{Y, Z}}`) included.
    fn crate_paths(code: &str) -> Vec<String> {
        let ident =
            |s: &str| -> String { s.trim().chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect() };
        let mut out = Vec::new();
        for used in code.split("crate::").skip(1) {
            let Some(group) = used.strip_prefix('{') else {
                out.push(ident(used));
                continue;
            };
            // The group's items at depth 0, up to its closing brace.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || item.is_empty() {
                    item.push(c);
                }
            }
            out.push(ident(&item));
        }
        out
    }

    #[test]
    fn crate_paths_are_read_in_groups_too() {
        let code = "use crate::a::X; use crate::{b::Y, c::{D, E}, f}; crate::g::h()";
        assert_eq!(crate_paths(code), ["a", "b", "c", "f", "g"]);
    }

    #[test]
    fn layout_has_no_upward_imports() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut upward = Vec::new();
        for (at, module) in LAYERS.iter().enumerate() {
            let mut files = Vec::new();
            sources(&src.join(module), &mut files);
            sources(&src.join(format!("{module}.rs")), &mut files);
            assert!(!files.is_empty(), "module `{module}` has no source");
            for file in files {
                let text = std::fs::read_to_string(&file).expect("read");
                // Code only: its unit tests and comments may name anything.
                let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
                // One line, so a `use` wrapped over several is read whole.
                let code: String =
                    code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join(" ");
                for name in crate_paths(&code) {
                    if let Some(pos) = LAYERS.iter().position(|m| *m == name)
                        && pos > at
                    {
                        upward.push(format!("{} uses {name}", file.display()));
                    }
                }
            }
        }
        let listed: std::collections::BTreeSet<_> = LAYERS.iter().collect();
        for entry in std::fs::read_dir(&src).expect("src") {
            let name = entry.expect("entry").file_name().to_string_lossy().trim_end_matches(".rs").to_owned();
            assert!(
                ["lib", "main"].contains(&name.as_str()) || listed.contains(&name.as_str()),
                "`{name}` is not in LAYERS"
            );
        }
        assert!(upward.is_empty(), "imports against the layout:\n{}", upward.join("\n"));
    }
}
