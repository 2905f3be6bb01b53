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

#[test]
fn example_rules_decide_the_sample_as_recorded() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.install("blocklist", "blocklist.wasm");
    env.install("geo_mismatch", "geo_mismatch.wasm");
    env.install("velocity", "velocity.wasm");
    std::fs::copy(root().join("examples/events.jsonl"), env.events()).expect("copy sample");
    // The example config's settings, so the golden file is what `just run` shows.
    let mut config = vigil::config::Config::load(&root().join("examples/vigil.toml")).expect("example config");
    let test = env.config(false);
    config.source = test.source;
    config.sinks = test.sinks;
    config.rules.dir = test.rules.dir;
    config.state = test.state;
    for list in config.lists.values_mut() {
        list.path = root().join(&list.path);
    }
    run_to_end(config);
    compare("example-decisions.jsonl", read_jsonl(&env.decisions()).iter().map(stable_decision).collect());
    let dead = read_jsonl(&env.dead_letters())
        .iter()
        .map(|d| json!({"line": d["line"], "code": d["code"], "reason": d["reason"]}))
        .collect();
    compare("example-dead-letters.jsonl", dead);
}
