//! Hot reload: a debounced watch on the rules folder that triggers a rescan.
//!
//! Debouncing waits for the folder to be quiet, so a file being copied is
//! loaded once, whole; the rescan also skips a file that is still changing
//! and ignores dot-files, so writing `.name.wasm` and renaming is always safe.

use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer, notify};
use std::sync::Arc;
use std::time::Duration;

use super::{RuleRegistry, is_rule_file, log_report};

/// A running watch; dropping it stops watching.
pub struct Watch {
    _debouncer: Debouncer<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watch")
    }
}

/// Starts watching `registry`'s folder.
///
/// # Errors
/// When the operating system refuses the watch (e.g. the folder is missing).
pub fn watch(registry: Arc<RuleRegistry>, debounce: Duration) -> notify::Result<Watch> {
    let dir = registry.dir().to_owned();
    let reg = registry.clone();
    let mut debouncer = new_debouncer(debounce, move |res: DebounceEventResult| match res {
        Ok(events) => {
            if events.iter().any(|e| is_rule_file(&e.path)) {
                let report = reg.rescan();
                log_report(&report, &reg);
            }
        }
        Err(e) => tracing::error!(error = %e, "rules folder watch error"),
    })?;
    debouncer
        .watcher()
        .watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching the rules folder for changes");
    Ok(Watch {
        _debouncer: debouncer,
    })
}
