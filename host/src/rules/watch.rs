//! Hot reload: a debounced watch on the rules folder that triggers a rescan.
//!
//! Debouncing waits for the folder to be quiet, so a file being copied is
//! loaded once, whole; the rescan also skips a file that is still changing
//! and ignores dot-files, so writing `.name.wasm` and renaming is always safe.

use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer, notify};
use std::sync::Arc;
use std::time::Duration;

use super::{RuleRegistry, is_rule_or_signature_file, log_report};

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
            if events.iter().any(|e| is_rule_or_signature_file(&e.path)) {
                crate::priority::background();
                let report = reg.rescan();
                log_report(&report, &reg);
            }
        }
        Err(e) => tracing::error!(error = %e, "rules folder watch error"),
    })?;
    debouncer.watcher().watch(&dir, notify::RecursiveMode::NonRecursive)?;
    tracing::info!(dir = %dir.display(), "watching the rules folder for changes");
    Ok(Watch { _debouncer: debouncer })
}

/// Starts watching the list files; a changed file is reloaded whole and
/// swapped in, and a file that fails to load keeps its previous contents.
///
/// # Errors
/// When the operating system refuses a watch.
pub fn watch_lists(
    lists: Arc<super::lists::Lists>,
    config: std::collections::BTreeMap<String, crate::config::ListConfig>,
    tokenizer: crate::decode::Tokenizer,
    debounce: Duration,
) -> notify::Result<Option<Watch>> {
    if config.is_empty() {
        return Ok(None);
    }
    let files: Vec<std::path::PathBuf> =
        config.values().map(|l| std::path::absolute(&l.path).unwrap_or_else(|_| l.path.clone())).collect();
    let watched = files.clone();
    let mut debouncer = new_debouncer(debounce, move |res: DebounceEventResult| match res {
        Ok(events) => {
            let touched = events.iter().any(|e| {
                let p = std::path::absolute(&e.path).unwrap_or_else(|_| e.path.clone());
                watched.contains(&p)
            });
            if touched {
                crate::priority::background();
                let errors = lists.reload(&config, &tokenizer);
                for e in &errors {
                    tracing::error!(error = %crate::error::chain(e), "list reload failed; keeping its previous contents");
                }
                if errors.is_empty() {
                    tracing::info!("lists reloaded");
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "list watch error"),
    })?;
    let mut dirs: Vec<std::path::PathBuf> =
        files.iter().filter_map(|f| f.parent().map(std::path::Path::to_path_buf)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        debouncer.watcher().watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    Ok(Some(Watch { _debouncer: debouncer }))
}
