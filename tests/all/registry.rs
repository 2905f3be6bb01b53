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

/// A rule's inline features leave the computed set with the rule and come
/// back, at the same indices, with it.
#[test]
fn inline_features_go_with_the_last_rule_that_reads_them() {
    let env = Env::new();
    env.install("velocity", "velocity.wasm");
    env.install("spend_spike", "spend_spike.wasm");
    let registry = registry_for(&env.config(false));
    registry.rescan();
    let live = |registry: &vigil::rules::RuleRegistry| -> Vec<String> {
        registry.current().features.iter().filter(|f| f.live).map(|f| f.name.to_string()).collect()
    };
    assert_eq!(live(&registry).len(), 4, "{:?}", live(&registry));
    let indices = registry.current().rules.iter().find(|r| &*r.name == "velocity").expect("velocity").features.clone();

    std::fs::remove_file(env.rules().join("velocity.wasm")).expect("remove");
    registry.rescan();
    assert_eq!(live(&registry), ["sum(card, amount, 6h)"], "velocity's three are retired");
    assert_eq!(registry.current().features.len(), 4, "their indices are kept");

    env.install("velocity", "velocity.wasm");
    registry.rescan();
    assert_eq!(live(&registry).len(), 4);
    let again = registry.current().rules.iter().find(|r| &*r.name == "velocity").expect("velocity").features.clone();
    assert_eq!(again, indices);
}

/// `[rule.NAME] of = "…"` runs one module as several rules, each with its
/// own parameters and outcome; an instance's bad settings name its section.
#[test]
fn one_module_runs_as_several_rules_with_their_own_parameters() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.write_events(&[payment("small", 5_000), payment("large", 200_000)]);
    let mut config = env.config(false);
    for (name, review_above) in [("large-amount-low", 1_000), ("large-amount-high", 150_000)] {
        settings(&mut config, name, |s| {
            s.of = Some("large-amount".into());
            s.params.insert("review-above".into(), review_above.into());
        });
    }
    run_to_end(config.clone());
    let outcomes = |id: &str| -> Vec<(String, String)> {
        let d = decision_for(&env.decisions(), id).expect("decided");
        let rules = d["rules"].as_array().expect("rules").clone();
        rules
            .iter()
            .map(|r| (r["rule"].as_str().unwrap_or("").to_owned(), r["action"].as_str().unwrap_or("").to_owned()))
            .collect()
    };
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(
        outcomes("small"),
        pairs(&[("large-amount", "allow"), ("large-amount-high", "allow"), ("large-amount-low", "review")])
    );
    assert_eq!(
        outcomes("large"),
        pairs(&[("large-amount", "review"), ("large-amount-high", "review"), ("large-amount-low", "review")])
    );

    settings(&mut config, "large-amount-low", |s| {
        s.params.insert("no-such-param".into(), 1.into());
    });
    let report = registry_for(&config).rescan();
    assert!(report.loaded.is_empty(), "{report:?}");
    let (file, why) = &report.rejected[0];
    assert!(file.ends_with("large_amount.wasm"), "{file:?}");
    assert!(why.contains("[rule.large-amount-low]") && why.contains("no-such-param"), "{why}");
}

/// With a Kafka source, state can be kept only per the keys of
/// `kafka.state-keys`, rules' state per the last: a rule reading a feature,
/// or keeping its state, per another key is refused as it loads, naming
/// the feature or its state; the others load.
#[test]
fn rules_keeping_state_per_another_key_than_the_only_one_are_refused() {
    use vigil::config::StateKeys;
    use vigil::features::KeyField;
    let env = Env::new();
    env.install("velocity", "velocity.wasm");
    env.install("new_device", "new_device.wasm");
    env.install("large_amount", "large_amount.wasm");
    let config = env.config(false);
    let scan = |key: Option<KeyField>| {
        let registry = registry_for(&config).keeping_state_per(key.map(|k| StateKeys { keys: vec![k], deciding: k }));
        let report = registry.rescan();
        let mut live: Vec<String> = registry.current().rules.iter().map(|r| r.name.to_string()).collect();
        live.sort();
        let rejected: Vec<(String, String)> = report
            .rejected
            .iter()
            .map(|(file, why)| (file.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned(), why.clone()))
            .collect();
        (live, rejected)
    };

    let (live, rejected) = scan(None);
    assert_eq!(live, ["large-amount", "new-device", "velocity"], "{rejected:?}");

    // Per account: velocity reads features per card.
    let (live, rejected) = scan(Some(KeyField::Account));
    assert_eq!(live, ["large-amount", "new-device"], "{rejected:?}");
    let [(file, why)] = &rejected[..] else { panic!("{rejected:?}") };
    assert_eq!(file, "velocity.wasm");
    assert!(why.contains("feature `count(card, 10m)` is kept per card"), "{why}");
    assert!(why.contains("kafka.state-keys (account)"), "{why}");

    // Per card: new-device keeps its state per account.
    let (live, rejected) = scan(Some(KeyField::Card));
    assert_eq!(live, ["large-amount", "velocity"], "{rejected:?}");
    let [(file, why)] = &rejected[..] else { panic!("{rejected:?}") };
    assert_eq!(file, "new_device.wasm");
    assert!(why.contains("keyed state") && why.contains("kept per account"), "{why}");

    // Per card, then account: velocity's features per card and
    // new-device's state per the last key, account, are both kept.
    let registry = registry_for(&config).keeping_state_per(Some(StateKeys {
        keys: vec![KeyField::Card, KeyField::Account],
        deciding: KeyField::Account,
    }));
    let report = registry.rescan();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(registry.current().rules.len(), 3);
    // Per account, then card: new-device's state is not per the last.
    let registry = registry_for(&config)
        .keeping_state_per(Some(StateKeys { keys: vec![KeyField::Account, KeyField::Card], deciding: KeyField::Card }));
    let report = registry.rescan();
    let [(file, why)] = &report.rejected[..] else { panic!("{:?}", report.rejected) };
    assert!(file.ends_with("new_device.wasm") && why.contains("list account last in kafka.state-keys"), "{why}");
}
