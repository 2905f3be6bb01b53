//! Hostile and broken modules: each isolated with the right message while
//! the other rules keep deciding.

use crate::end_to_end::registry_for;
use crate::support::*;
use serde_json::{Value, json};
use vigil::decide::FailurePolicy;

fn chaos_event(id: &str) -> Value {
    let mut e = payment(id, 1_000);
    e["attrs"] = json!({"chaos": "1"});
    e
}

/// Runs chaos with `behaviour` on marked events only, beside large-amount.
fn run_chaos(behaviour: &str, on_failure: FailurePolicy) -> (Env, Vec<Value>) {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.install("chaos", "chaos.wasm");
    env.write_events(&[
        payment("calm-1", 500_000),
        chaos_event("wild-1"),
        payment("calm-2", 700),
        chaos_event("wild-2"),
    ]);
    let mut config = env.config(false);
    config.rules.cpu_budget = 2_000_000;
    config.rules.memory_cap = bytesize::ByteSize::mib(8);
    config.pipeline.workers = std::num::NonZeroU32::new(1);
    settings(&mut config, "chaos", |s| {
        s.on_failure = Some(on_failure);
        s.params.insert("behaviour".into(), behaviour.into());
        s.params.insert("only-attr".into(), "chaos".into());
    });
    let summary = run_to_end(config);
    assert_eq!(summary.decided, 4, "{summary:?}");
    let decisions = read_jsonl(&env.decisions());
    (env, decisions)
}

fn check_isolated(behaviour: &str, expected_error: &str) {
    let (_env, decisions) = run_chaos(behaviour, FailurePolicy::Review);
    let by_id = |id: &str| decisions.iter().find(|d| d["id"] == id).unwrap_or_else(|| panic!("no decision for {id}"));
    for id in ["wild-1", "wild-2"] {
        let d = by_id(id);
        let chaos = rule_outcome(d, "chaos").expect("chaos outcome");
        let err = chaos["error"].as_str().unwrap_or_else(|| panic!("{behaviour}: no error on {id}: {d}"));
        assert!(err.contains(expected_error), "{behaviour}: wanted {expected_error:?} in {err:?}");
        assert_eq!(chaos["action"], "review", "the failure policy applies");
        assert_eq!(d["action"], "review");
        let other = rule_outcome(d, "large-amount").expect("large-amount still runs");
        assert!(other.get("error").is_none());
    }
    // After each failure the instance is rebuilt: the next calm event is fine.
    let calm = by_id("calm-2");
    assert!(rule_outcome(calm, "chaos").expect("chaos").get("error").is_none(), "{calm}");
    assert_eq!(calm["action"], "allow");
    assert_eq!(by_id("calm-1")["action"], "review", "large-amount keeps deciding");
}

#[test]
fn an_infinite_loop_is_cut_off_at_the_cpu_budget() {
    check_isolated("loop", "CPU budget");
}

#[test]
fn unbounded_memory_growth_hits_the_cap() {
    check_isolated("grow", "memory cap");
}

#[test]
fn deep_recursion_is_a_stack_overflow_trap() {
    check_isolated("recurse", "stack overflow");
}

#[test]
fn a_panic_is_a_trap_with_its_message() {
    check_isolated("panic", "panicked: chaos rule told to panic");
}

#[test]
fn repeated_failures_quarantine_the_rule() {
    let env = Env::new();
    env.install("chaos", "chaos.wasm");
    env.install("large_amount", "large_amount.wasm");
    let events: Vec<Value> = (0..8).map(|i| payment(&format!("t{i}"), 1_000 + i)).collect();
    env.write_events(&events);
    let mut config = env.config(false);
    config.rules.quarantine_after = std::num::NonZeroU32::new(3).expect("3");
    config.pipeline.workers = std::num::NonZeroU32::new(1);
    settings(&mut config, "chaos", |s| {
        s.params.insert("behaviour".into(), "panic".into());
    });
    run_to_end(config);
    let decisions = read_jsonl(&env.decisions());
    let errors: Vec<String> = (0..8)
        .map(|i| {
            let d = decision_for(&env.decisions(), &format!("t{i}")).expect("decision");
            rule_outcome(&d, "chaos").expect("chaos")["error"].as_str().expect("error").to_owned()
        })
        .collect();
    assert!(errors[..3].iter().all(|e| e.contains("panicked")), "{errors:?}");
    assert!(errors[3..].iter().all(|e| e.contains("quarantined")), "{errors:?}");
    assert!(decisions.iter().all(|d| rule_outcome(d, "large-amount").is_some_and(|o| o.get("error").is_none())));
}

#[test]
fn broken_modules_are_rejected_by_name_and_the_good_ones_still_decide() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let wat = |text: &str| wat::parse_str(text).expect("wat");
    std::fs::write(env.rules().join("random.wasm"), [0x42u8, 0x17, 0x99, 0x00, 0xff, 0x10, 0x20, 0x30]).expect("write");
    std::fs::write(
        env.rules().join("uses-wasi.wasm"),
        wat(r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))) (memory (export "memory") 1))"#),
    )
    .expect("write");
    std::fs::write(
        env.rules().join("no-abi.wasm"),
        wat(r#"(module (memory (export "memory") 1) (func (export "run")))"#),
    )
    .expect("write");
    std::fs::write(
        env.rules().join("wrong-abi.wasm"),
        wat(r#"(module (memory (export "memory") 1)
            (func (export "vigil_abi_version") (result i32) i32.const 99)
            (func (export "vigil_manifest") (result i64) i64.const 0)
            (func (export "vigil_buffer") (param i32) (result i32) i32.const 1024)
            (func (export "vigil_output") (result i32) i32.const 8192)
            (func (export "vigil_configure") (param i32) (result i32) i32.const 0)
            (func (export "vigil_evaluate") (param i32) (result i64) i64.const 0))"#),
    )
    .expect("write");

    let config = env.config(false);
    let report = registry_for(&config).rescan();
    let reason = |file: &str| {
        report
            .rejected
            .iter()
            .find(|(p, _)| p.ends_with(file))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{file} was not rejected: {report:?}"))
    };
    assert!(reason("random.wasm").contains("not a WebAssembly module"));
    assert!(reason("uses-wasi.wasm").contains("wasi_snapshot_preview1::fd_write"));
    assert!(reason("no-abi.wasm").contains("missing the vigil rule ABI exports"));
    assert!(reason("wrong-abi.wasm").contains("rule ABI v99"));
    assert_eq!(report.loaded.len(), 1);

    env.write_events(&[payment("p1", 2_000_000)]);
    let summary = run_to_end(config);
    assert_eq!(summary.decided, 1);
    let d = decision_for(&env.decisions(), "p1").expect("decision");
    assert_eq!(rule_names(&d), ["large-amount"]);
    assert_eq!(d["action"], "block");
}
