//! The example rules over the bundled sample events, in-process.

use crate::support::*;
use serde_json::Value;
use vigil::decide::Mode;

fn example_env() -> (Env, vigil::config::Config) {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.install("blocklist", "blocklist.wasm");
    env.install("geo_mismatch", "geo_mismatch.wasm");
    std::fs::copy(root().join("examples/events.jsonl"), env.events()).expect("copy sample");
    let mut config = env.config(false);
    env.with_example_lists(&mut config);
    (env, config)
}

#[test]
fn every_sample_event_is_decided_or_dead_lettered() {
    let (env, config) = example_env();
    let summary = run_to_end(config);
    let lines = std::fs::read_to_string(env.events()).expect("events");
    let expected_in = lines.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    assert_eq!(summary.events_in, expected_in);
    assert_eq!(summary.events_in, summary.decided + summary.dead_lettered);

    let decisions = read_jsonl(&env.decisions());
    let alerts = read_jsonl(&env.alerts());
    let dead = read_jsonl(&env.dead_letters());
    assert_eq!(decisions.len() as u64, summary.decided);
    assert_eq!(dead.len() as u64, summary.dead_lettered);
    assert!(summary.dead_lettered >= 7, "the sample holds 7 bad lines: {summary:?}");

    // One outcome per rule in every record; alerts are exactly the non-allow decisions.
    for d in &decisions {
        assert_eq!(rule_names(d), ["blocklist", "geo-mismatch", "large-amount"], "{d}");
        for r in d["rules"].as_array().expect("rules") {
            assert!(r["module"].as_str().is_some_and(|m| m.len() == 16));
            assert!(r.get("error").is_none(), "{r}");
        }
    }
    let non_allow: Vec<&Value> = decisions.iter().filter(|d| d["action"] != "allow").collect();
    assert_eq!(alerts.len(), non_allow.len());
    assert!(!alerts.is_empty());
    assert!(alerts.iter().all(|a| a["action"] == "review" || a["action"] == "block"));

    // Each rule fired somewhere on the sample.
    let reasons: Vec<&str> = decisions
        .iter()
        .flat_map(|d| d["reasons"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    for want in ["card_blocklisted", "card_not_present_country_mismatch", "amount_over_block_limit"] {
        assert!(reasons.contains(&want), "no decision with reason {want}");
    }

    // No raw PAN anywhere in the outputs.
    for path in [env.decisions(), env.alerts(), env.dead_letters()] {
        let text = std::fs::read_to_string(&path).expect("output");
        for pan in ["4111 1111 1111 1111", "4111111111111111", "5500 0000 0000 0004", "5500000000000004"] {
            assert!(!text.contains(pan), "raw PAN in {}", path.display());
        }
    }
}

#[test]
fn a_decision_carries_the_audit_fields() {
    let (env, config) = example_env();
    run_to_end(config);
    let d = decision_for(&env.decisions(), "tx-00000").expect("decision");
    for key in ["id", "action", "score", "reasons", "rules", "event_ts_ms", "ingested_at_us", "decided_at_us"] {
        assert!(d.get(key).is_some(), "missing {key} in {d}");
    }
    let r = &d["rules"][0];
    for key in ["rule", "version", "module", "mode", "action", "score", "latency_ns"] {
        assert!(r.get(key).is_some(), "missing {key} in {r}");
    }
    assert!(d["decided_at_us"].as_i64() >= d["ingested_at_us"].as_i64());
}

#[test]
fn parameters_come_from_config() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.write_events(&[payment("small", 5_000), payment("mid", 50_000)]);
    let mut config = env.config(false);
    settings(&mut config, "large-amount", |s| {
        s.params.insert("review-above".into(), toml::Value::Integer(10_000));
    });
    run_to_end(config);
    let decisions = env.decisions();
    assert_eq!(decision_for(&decisions, "small").expect("small")["action"], "allow");
    assert_eq!(decision_for(&decisions, "mid").expect("mid")["action"], "review");
}

#[test]
fn shadow_rules_are_recorded_but_do_not_decide() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    // An enforcing rule that allows it: without one, rules.on-empty decides.
    env.install("geo_mismatch", "geo_mismatch.wasm");
    env.write_events(&[payment("huge", 5_000_000)]);
    let mut config = env.config(false);
    settings(&mut config, "large-amount", |s| s.mode = Mode::Shadow);
    let summary = run_to_end(config);
    let d = decision_for(&env.decisions(), "huge").expect("decision");
    let o = rule_outcome(&d, "large-amount").expect("outcome");
    assert_eq!(o["mode"], "shadow");
    assert_eq!(o["action"], "block");
    assert_eq!(d["action"], "allow");
    assert_eq!(summary.alerts, 0);
}

#[test]
fn a_rule_with_unknown_parameters_is_refused_with_the_key_named() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let mut config = env.config(false);
    settings(&mut config, "large-amount", |s| {
        s.params.insert("reveiw-above".into(), toml::Value::Integer(1));
    });
    let registry = registry_for(&config);
    let report = registry.rescan();
    assert_eq!(report.rejected.len(), 1, "{report:?}");
    assert!(report.rejected[0].1.contains("rule.large-amount.params.reveiw-above"), "{report:?}");

    settings(&mut config, "large-amount", |s| {
        s.params.clear();
        s.params.insert("review-above".into(), toml::Value::String("lots".into()));
    });
    let report = registry_for(&config).rescan();
    assert!(report.rejected[0].1.contains("must be int"), "{report:?}");
}

#[test]
fn a_rule_using_an_unconfigured_list_is_refused() {
    let env = Env::new();
    env.install("blocklist", "blocklist.wasm");
    let report = registry_for(&env.config(false)).rescan();
    assert!(report.rejected[0].1.contains("[lists.blocked-cards]"), "{report:?}");
}

#[test]
fn duplicate_rule_names_are_refused() {
    let env = Env::new();
    env.install("large_amount", "a.wasm");
    env.install("large_amount_v2", "b.wasm");
    let report = registry_for(&env.config(false)).rescan();
    assert_eq!(report.loaded.len(), 1, "{report:?}");
    assert!(report.rejected[0].1.contains("already loaded"), "{report:?}");
}

/// A rule going live is instantiated for every worker as it loads, so a
/// worker taking it up only swaps an instance in; each takes its own.
#[test]
fn a_rule_going_live_is_instantiated_for_every_worker_as_it_loads() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let registry = std::sync::Arc::new(registry_for(&env.config(false)));
    // Before the count is set, as at start: the instance made to check
    // the rule is the only one, and the second worker makes its own.
    registry.rescan();
    let first = registry.current().rules[0].clone();
    assert_eq!(first.ready_instances(), 1);
    let _workers: Vec<_> = (0..2).map(|_| vigil::rules::Evaluator::new(registry.clone())).collect();
    assert_eq!(first.ready_instances(), 0);

    registry.set_spares(3);
    env.install("large_amount_v2", "large_amount.wasm");
    registry.rescan();
    let second = registry.current().rules[0].clone();
    assert_eq!(&*second.version, "2.0.0", "the new version is live");
    assert_eq!(second.ready_instances(), 3, "one per worker, made before it went live");
    let mut workers: Vec<_> = (0..3).map(|_| vigil::rules::Evaluator::new(registry.clone())).collect();
    assert_eq!(second.ready_instances(), 0, "each worker took one");
    // A rule that stays is not instantiated again.
    registry.rescan();
    assert!(workers.iter_mut().all(|w| !w.refresh()), "nothing changed");
    assert_eq!(second.ready_instances(), 0);
}

pub fn registry_for(config: &vigil::config::Config) -> vigil::rules::RuleRegistry {
    let tokenizer = vigil::decode::Tokenizer::new(&config.pan_key().expect("key"));
    let lists = vigil::rules::lists::Lists::load(&config.lists, &tokenizer).expect("lists");
    vigil::rules::RuleRegistry::new(
        vigil::rules::sandbox::Sandbox::from_config(config).expect("sandbox"),
        config.rules.dir.clone(),
        config.rule.clone(),
        config.rules.on_failure,
        config.rules.quarantine_after.get(),
        std::sync::Arc::new(lists),
        std::sync::Arc::new(vigil::features::Catalog::from_config(&config.features).expect("features")),
    )
}

/// A compact record lists the rules that did not quietly allow, names the
/// rule set whose contents the rule-sets output holds, and decides as the
/// full record does.
#[test]
fn a_compact_record_lists_what_fired_and_names_its_rule_set() {
    let run = |shape: vigil::decide::RecordShape| {
        let (env, mut config) = example_env();
        env.install("velocity", "velocity.wasm");
        settings(&mut config, "geo-mismatch", |s| s.mode = Mode::Shadow);
        settings(&mut config, "large-amount", |s| {
            s.params.insert("review-above".into(), 250_000.into());
            s.on_failure = Some(vigil::decide::FailurePolicy::Review);
        });
        config.decisions.record = shape;
        run_to_end(config);
        let by_id: std::collections::BTreeMap<String, Value> =
            read_jsonl(&env.decisions()).into_iter().map(|d| (d["id"].as_str().expect("id").to_owned(), d)).collect();
        (by_id, read_jsonl(&env.rule_sets()))
    };
    let (full, full_sets) = run(vigil::decide::RecordShape::Full);
    let (compact, sets) = run(vigil::decide::RecordShape::Compact);
    assert_eq!(sets.len(), 1, "one rule set decided, written once: {sets:?}");
    assert_eq!(sets, full_sets, "the same rules and settings are the same set");
    let set = &sets[0];
    assert_eq!(set["schema"], 2);
    let names: Vec<&str> = set["rules"].as_array().expect("rules").iter().filter_map(|r| r["rule"].as_str()).collect();
    assert_eq!(names, ["blocklist", "geo-mismatch", "large-amount", "velocity"]);
    let large = &set["rules"][2];
    assert_eq!(large["params"]["review_above"], 250_000, "{large}");
    assert_eq!(large["on_failure"], "review");
    assert_eq!(set["rules"][1]["mode"], "shadow");
    assert_eq!(set["rules"][3]["features"].as_array().map(Vec::len), Some(3));

    assert_eq!(compact.keys().collect::<Vec<_>>(), full.keys().collect::<Vec<_>>());
    let (mut listed, mut left_out) = (0, 0);
    for (id, c) in &compact {
        let f = &full[id];
        assert_eq!(c["schema"], 2);
        assert_eq!(c["rule_set"], set["rule_set"], "{c}");
        for key in ["action", "score", "reasons", "features"] {
            assert_eq!(c[key], f[key], "{id}: {key}");
        }
        let strip = |r: &Value| {
            let mut r = r.clone();
            r.as_object_mut().expect("outcome").remove("latency_ns");
            r
        };
        let want: Vec<Value> = f["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .filter(|r| {
                let quiet = if r["mode"] == "shadow" {
                    r["action"] == f["action"]
                } else {
                    r["action"] == "allow" && r["score"] == 0 && r.get("reasons").is_none()
                };
                !quiet || r.get("error").is_some()
            })
            .map(strip)
            .collect();
        let got: Vec<Value> = c["rules"].as_array().expect("rules").iter().map(strip).collect();
        assert_eq!(got, want, "{id}");
        listed += got.len();
        left_out += f["rules"].as_array().map_or(0, Vec::len) - got.len();
    }
    assert!(listed > 0 && left_out > listed, "listed {listed}, left out {left_out}");
}
