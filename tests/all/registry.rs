//! The rule registry directly: compiled-artefact cache, partial files.

use crate::end_to_end::registry_for;
use crate::support::*;

fn cache_files(env: &Env) -> Vec<std::path::PathBuf> {
    let dir = env.path("state/wasm-cache");
    let mut files: Vec<_> =
        std::fs::read_dir(dir).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "cwasm"));
    files
}

#[test]
fn compiled_modules_are_cached_and_a_bad_cache_entry_is_recompiled() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let config = env.config(false);
    assert_eq!(registry_for(&config).rescan().loaded.len(), 1);
    let cached = cache_files(&env);
    assert_eq!(cached.len(), 1, "one artefact per module");
    let written = std::fs::metadata(&cached[0]).and_then(|m| m.modified()).expect("mtime");

    // A second start loads the artefact instead of compiling again.
    assert_eq!(registry_for(&config).rescan().loaded.len(), 1);
    assert_eq!(std::fs::metadata(&cached[0]).and_then(|m| m.modified()).expect("mtime"), written);

    // A corrupt artefact is not trusted: the module is compiled afresh.
    std::fs::write(&cached[0], b"garbage").expect("corrupt");
    let report = registry_for(&config).rescan();
    assert_eq!(report.loaded.len(), 1, "{report:?}");
    assert!(std::fs::metadata(&cached[0]).expect("meta").len() > 1000, "rewritten");
}

#[test]
fn a_half_written_module_is_not_loaded_and_the_finished_one_is() {
    let env = Env::new();
    let bytes = std::fs::read(wasm("large_amount")).expect("module");
    let path = env.rules().join("large_amount.wasm");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("half");
    let registry = registry_for(&env.config(false));
    let report = registry.rescan();
    assert!(report.loaded.is_empty());
    assert!(registry.current().rules.is_empty(), "a partial file never goes live");

    std::fs::write(&path, &bytes).expect("whole");
    let report = registry.rescan();
    assert_eq!(report.loaded.len(), 1, "{report:?}");
    assert_eq!(&*registry.current().rules[0].name, "large-amount");
}

#[test]
fn dot_files_and_temporaries_are_ignored() {
    let env = Env::new();
    std::fs::copy(wasm("large_amount"), env.rules().join(".large_amount.wasm")).expect("copy");
    std::fs::copy(wasm("large_amount"), env.rules().join("large_amount.wasm.part")).expect("copy");
    let report = registry_for(&env.config(false)).rescan();
    assert_eq!(report, vigil::rules::ScanReport::default());
}

/// The daemon compiles modules in a child process (`vigil compile-rule`);
/// what the child says about a broken module reaches the log as the cause,
/// and the good module it compiled goes live from the cache.
#[test]
fn the_daemon_compiles_in_a_child_process_and_relays_its_errors() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    std::fs::write(env.rules().join("broken.wasm"), b"\0asm\x01\0\0\0\x01\x7f\x7f").expect("broken module");
    let config = env.toml("");
    env.append_lines(&[payment("a", 2_000_000).to_string()]);
    let daemon = crate::daemon::Daemon::start(&env, &config);
    let decision = wait_for(std::time::Duration::from_secs(30), "a", || decision_for(&env.decisions(), "a"));
    assert_eq!(decision["action"], "block", "large-amount decided: {decision}");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    let line =
        log.lines().find(|l| l.contains("broken.wasm")).unwrap_or_else(|| panic!("no line names the file:\n{log}"));
    assert!(line.contains("rule file rejected") && line.contains("does not compile:"), "{line}");
    assert!(!line.contains("compiler process"), "the child's own message, not how it ended: {line}");
    assert_eq!(cache_files(&env).len(), 1, "the good module's artefact, written by the child");
}
