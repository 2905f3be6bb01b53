//! Golden outputs: the example rules over the bundled sample events must
//! decide exactly as recorded in `tests/golden/`. After an intended change,
//! regenerate with `VIGIL_BLESS=1 cargo test -p vigil --test all golden`
//! and review the diff.

use crate::support::*;
use serde_json::{Value, json};

fn stable_decision(d: &Value) -> Value {
    let rules: Vec<Value> = d["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| json!({"rule": r["rule"], "action": r["action"], "score": r["score"], "reasons": r.get("reasons").cloned().unwrap_or(json!([]))}))
        .collect();
    json!({"id": d["id"], "action": d["action"], "score": d["score"], "reasons": d["reasons"], "rules": rules})
}

fn compare(name: &str, mut got: Vec<Value>) {
    got.sort_by_key(|v| v.to_string());
    let text: String = got.iter().map(|v| format!("{v}\n")).collect();
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::write(&path, &text).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; generate it with VIGIL_BLESS=1", path.display()));
    for (i, (g, w)) in text.lines().zip(want.lines()).enumerate() {
        assert_eq!(g, w, "{name}: line {} differs", i + 1);
    }
    assert_eq!(text.lines().count(), want.lines().count(), "{name}: line count differs");
}

/// The example config's settings over `env`, so the golden file is what
/// `just run` shows.
fn example_config(env: &Env) -> vigil::config::Config {
    std::fs::copy(root().join("examples/events.jsonl"), env.events()).expect("copy sample");
    let mut config = vigil::config::Config::load(&root().join("examples/vigil.toml")).expect("example config");
    let test = env.config(false);
    config.source = test.source;
    config.sinks = test.sinks;
    // Every rule's outcome is recorded and compared.
    config.decisions = test.decisions;
    config.rules.dir = test.rules.dir;
    config.state = test.state;
    for list in config.lists.values_mut() {
        list.path = root().join(&list.path);
    }
    config
}

fn check_outputs(env: &Env) {
    compare("example-decisions.jsonl", read_jsonl(&env.decisions()).iter().map(stable_decision).collect());
    let dead = read_jsonl(&env.dead_letters())
        .iter()
        .map(|d| json!({"line": d["line"], "code": d["code"], "reason": d["reason"]}))
        .collect();
    compare("example-dead-letters.jsonl", dead);
}

#[test]
fn example_rules_decide_the_sample_as_recorded() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.install("blocklist", "blocklist.wasm");
    env.install("geo_mismatch", "geo_mismatch.wasm");
    env.install("velocity", "velocity.wasm");
    run_to_end(example_config(&env));
    check_outputs(&env);
}

/// The bench's "native rules" row is only a fair comparison if the linked-in
/// crates decide exactly as their wasm builds: same projection, features,
/// parameters, lists and keyed state.
#[test]
#[cfg(feature = "bench-native")]
fn the_rule_crates_linked_in_natively_decide_the_sample_as_their_wasm_builds() {
    let env = Env::new();
    let natives = vec![large_amount::RULE, blocklist::RULE, geo_mismatch::RULE, velocity::RULE];
    let overrides = vigil::app::Overrides { native_rules: natives, ..Default::default() };
    try_run_with(example_config(&env), overrides).expect("vigil run with native rules");
    check_outputs(&env);
    let decisions = read_jsonl(&env.decisions());
    let first = decisions.first().expect("decisions");
    let modules: Vec<&str> =
        first["rules"].as_array().expect("rules").iter().filter_map(|r| r["module"].as_str()).collect();
    assert_eq!(modules.len(), 4, "four rules ran: {first}");
}

#[test]
#[cfg(feature = "bench-native")]
fn a_native_rule_named_like_a_folder_rule_is_refused() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let overrides = vigil::app::Overrides { native_rules: vec![large_amount::RULE], ..Default::default() };
    let err = try_run_with(example_config(&env), overrides).expect_err("two rules with one name");
    let msg = format!("{err:#}");
    assert!(msg.contains("native rule `large-amount`") && msg.contains("already loaded from"), "{msg}");
    assert!(msg.contains("large_amount.wasm"), "{msg}");
}
