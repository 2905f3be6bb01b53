//! Hardening: no card number leaves vigil, no event time poisons state, no
//! start fails open, no rule holds a worker through host calls, and what
//! vigil writes is its user's alone.

use crate::daemon::Daemon;
use crate::support::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Card numbers the input below carries, and the forms they are written in.
const PANS: [&str; 5] =
    ["4111111111111111", "5500000000000004", "378282246310005", "6011111111111117", "4000000000000002"];

fn spaced(pan: &str) -> String {
    pan.as_bytes().chunks(4).map(|c| std::str::from_utf8(c).expect("digits")).collect::<Vec<_>>().join(" ")
}

/// Every file under `dir` but `skip`, with what it holds.
fn files_under(dir: &std::path::Path, skip: &[std::path::PathBuf]) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if !skip.contains(&path) {
                out.push((path.clone(), std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    out
}

#[test]
fn no_card_number_that_came_in_appears_in_anything_vigil_writes() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.install("new_device", "new_device.wasm");
    let mut lines = Vec::new();
    // Dead letters: a PAN as a number, under an unknown key, in a line that
    // is not JSON, and in a line over the size limit.
    let mut numeric = payment("numeric-pan", 1_000);
    numeric["card"] = json!({"pan": 4111111111111111u64});
    lines.push(numeric.to_string());
    let mut unknown = payment("unknown-key", 1_000);
    unknown["card_number"] = json!(PANS[1]);
    lines.push(unknown.to_string());
    lines.push(format!("not json, card {} ref", spaced(PANS[2])));
    let mut huge = payment("huge", 1_000);
    huge["attrs"] = json!({"note": format!("{} {}", PANS[3], "x".repeat(20_000))});
    lines.push(huge.to_string());
    // Accepted events: a PAN in the id, the account, the device, a numeric
    // attribute and free text next to other digits.
    let mut accepted = payment(&format!("tx-{}", PANS[0]), 2_000);
    accepted["account"] = json!(format!("acct {}", PANS[2]));
    accepted["device"] = json!(PANS[3]);
    accepted["attrs"] = json!({"n": 5500000000000004u64, "note": format!("ref 2024 {}", PANS[0])});
    lines.push(accepted.to_string());
    let mut again = payment(&format!("tx2-{}", spaced(PANS[1])), 300_000);
    again["account"] = json!(format!("acct {}", PANS[2]));
    again["device"] = json!("other-device");
    lines.push(again.to_string());
    std::fs::write(env.events(), lines.join("\n") + "\n").expect("events");

    let config = env.toml("");
    let mut daemon = Daemon::start_logging(&env, &config, "vigil=debug");
    daemon.wait_for(Duration::from_secs(60), "every line decided or dead-lettered", || {
        (line_count(&env.decisions()) + line_count(&env.dead_letters()) == lines.len()).then_some(())
    });
    let (status, _) = daemon.stop();
    assert!(status.success());

    let decided = read_jsonl(&env.decisions());
    assert_eq!(decided.len(), 2, "{decided:?}");
    assert!(decided[1]["reasons"].to_string().contains("new_device"), "the account is the same account: {decided:?}");
    let dead = read_jsonl(&env.dead_letters());
    assert_eq!(dead.len(), 4);
    assert!(dead.iter().any(|d| d["reason"].as_str().is_some_and(|r| r.contains("invalid type: integer"))));

    let skip = [env.events(), config.clone()];
    let written = files_under(env.dir.path(), &skip);
    assert!(written.iter().any(|(p, _)| p.ends_with("vigil.log")), "the log is scanned too");
    assert!(written.iter().any(|(p, _)| p.extension().is_some_and(|e| e == "redb")), "and the state");
    for (path, bytes) in &written {
        let text = String::from_utf8_lossy(bytes);
        for pan in PANS {
            for form in [pan.to_owned(), spaced(pan)] {
                assert!(!text.contains(&form), "{} holds {form}", path.display());
            }
        }
    }
}

#[test]
fn an_event_far_in_the_future_is_dead_lettered_and_poisons_nothing() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let first = payment("first", 1_000);
    let mut micros = payment("micros", 1_000);
    micros["ts"] = json!(1_714_564_800_000_000i64);
    env.write_events(&[first.clone(), micros, first]);
    let summary = run_to_end(env.config(false));
    assert_eq!((summary.decided, summary.dead_lettered), (1, 2), "{summary:?}");
    let dead = read_jsonl(&env.dead_letters());
    assert!(dead[0]["reason"].as_str().is_some_and(|r| r.contains("clean.max-future")), "{}", dead[0]);
    assert_eq!(dead[1]["code"], "duplicate", "the first id is still remembered: {}", dead[1]);
}

#[test]
fn a_start_with_no_usable_rule_is_refused_naming_each_file() {
    let env = Env::new();
    std::fs::write(env.rules().join("broken.wasm"), b"\0asm not really").expect("write");
    env.write_events(&[payment("p", 1_000)]);
    let e = try_run_to_end(env.config(false)).expect_err("refused").to_string();
    assert!(e.contains("no rule can be used") && e.contains("broken.wasm") && e.contains("rules.allow-empty"), "{e}");
    assert_eq!(line_count(&env.decisions()), 0, "nothing decided");

    // Allowed explicitly, it runs, and with no enforcing rule every
    // decision takes rules.on-empty (review by default), saying why.
    let mut config = env.config(false);
    config.rules.allow_empty = true;
    let summary = run_to_end(config);
    assert_eq!(summary.decided, 1);
    let d = decision_for(&env.decisions(), "p").expect("decided");
    assert_eq!(d["action"], "review");
    assert_eq!(d["reasons"], json!(["no_enforcing_rule"]));
}

#[test]
fn an_unwritable_rule_cache_is_a_warning_when_compiling_works() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.write_events(&[payment("big", 500_000)]);
    let mut config = env.config(false);
    // Under a file: no folder can be made there, not even by root.
    let file = env.path("a-file");
    std::fs::write(&file, "").expect("write");
    config.state.dir = file.join("state");
    config.state.checkpoints = false;
    let summary = run_to_end(config);
    assert_eq!(summary.decided, 1);
    let d = decision_for(&env.decisions(), "big").expect("decided");
    assert_eq!(d["action"], "review", "the rule ran: {d}");
}

/// A rule module, in WAT, whose every call looks a 60 KB key up in its
/// state a million times: a few instructions a call for the guest, 60 GB
/// of hashing for the host were the host's work not charged.
fn host_call_hog() -> Vec<u8> {
    let manifest = r#"{"abi":1,"name":"hog","version":"1.0.0","fields":[]}"#;
    wat::parse_str(format!(
        r#"(module
        (import "vigil" "state_get" (func $get (param i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 4)
        (data (i32.const 200000) "{manifest}")
        (func (export "vigil_abi_version") (result i32) i32.const 1)
        (func (export "vigil_manifest") (result i64) i64.const {packed})
        (func (export "vigil_buffer") (param i32) (result i32) i32.const 131072)
        (func (export "vigil_output") (result i32) i32.const 196608)
        (func (export "vigil_configure") (param i32) (result i32) i32.const 0)
        (func (export "vigil_evaluate") (param i32) (result i64) (local i32)
            (block $done (loop $next
                (br_if $done (i32.ge_u (local.get 1) (i32.const 1000000)))
                (drop (call $get (i32.const 0) (i32.const 60000) (i32.const 0) (i32.const 0)))
                (local.set 1 (i32.add (local.get 1) (i32.const 1)))
                (br $next)))
            i64.const 0))"#,
        manifest = manifest.replace('"', "\\\""),
        packed = vigil_abi::pack_ptr_len(200_000, manifest.len() as u32),
    ))
    .expect("valid wat")
}

#[test]
fn a_rule_cannot_hold_a_worker_through_host_calls_and_sigterm_still_drains() {
    let env = Env::new();
    std::fs::write(env.rules().join("hog.wasm"), host_call_hog()).expect("write");
    env.install("large_amount", "large_amount.wasm");
    let events: Vec<Value> = (0..20).map(|i| payment(&format!("p-{i}"), 500_000 + i)).collect();
    env.write_events(&events);
    let config = env.toml("");
    let mut daemon = Daemon::start(&env, &config);
    daemon.wait_for(Duration::from_secs(60), "every event decided", || {
        (line_count(&env.decisions()) == events.len()).then_some(())
    });
    let started = Instant::now();
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(started.elapsed() < Duration::from_secs(10), "drained in {:?}", started.elapsed());
    for d in read_jsonl(&env.decisions()) {
        let hog = rule_outcome(&d, "hog").expect("hog outcome");
        let err = hog["error"].as_str().unwrap_or_default();
        assert!(err.contains("CPU budget") || err.contains("quarantined"), "{d}");
        assert_eq!(d["action"], "review", "large-amount still decides: {d}");
    }
}

#[cfg(unix)]
#[test]
fn what_vigil_writes_is_its_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.write_events(&[payment("big", 500_000), json!({"broken": true})]);
    let config = env.toml("");
    let mut daemon = Daemon::start(&env, &config);
    daemon.wait_for(Duration::from_secs(60), "the events handled", || {
        (line_count(&env.decisions()) == 1 && line_count(&env.dead_letters()) == 1).then_some(())
    });
    let (status, _) = daemon.stop();
    assert!(status.success());
    let skip = [env.events(), config];
    let written = files_under(env.dir.path(), &skip);
    let outputs: Vec<_> = written.iter().filter(|(p, _)| !p.starts_with(env.rules())).collect();
    assert!(outputs.iter().any(|(p, _)| p.ends_with("state.redb")));
    assert!(outputs.iter().any(|(p, _)| p.ends_with("decisions.jsonl")));
    assert!(outputs.iter().any(|(p, _)| p.to_string_lossy().contains("wasm-cache")));
    for (path, _) in outputs {
        if path.ends_with("vigil.log") {
            continue; // made by the test, not by vigil
        }
        let mode = std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
    }
}

#[test]
fn an_events_budget_across_its_rules_bounds_what_one_payment_costs() {
    let env = Env::new();
    env.install("chaos", "chaos.wasm");
    env.install("large_amount", "large_amount.wasm");
    let mut wild = payment("wild", 500_000);
    wild["attrs"] = json!({"chaos": "1"});
    env.write_events(&[wild, payment("calm", 500_000)]);
    let mut config = env.config(false);
    config.rules.cpu_budget = 2_000_000;
    // Room for one call that uses its whole budget, and nothing after it.
    config.rules.event_budget = Some(2_000_000);
    config.pipeline.workers = std::num::NonZeroU32::new(1);
    settings(&mut config, "chaos", |s| {
        s.params.insert("behaviour".into(), "loop".into());
        s.params.insert("only-attr".into(), "chaos".into());
    });
    settings(&mut config, "large-amount", |s| s.on_failure = Some(vigil::decide::FailurePolicy::Block));
    run_to_end(config);
    let wild = decision_for(&env.decisions(), "wild").expect("decided");
    let chaos = rule_outcome(&wild, "chaos").expect("chaos ran first");
    assert!(chaos["error"].as_str().is_some_and(|e| e.contains("CPU budget")), "{wild}");
    let large = rule_outcome(&wild, "large-amount").expect("large-amount");
    assert!(large["error"].as_str().is_some_and(|e| e.contains("rules.event-budget")), "{wild}");
    assert_eq!(wild["action"], "block", "its failure outcome applies: {wild}");
    // The next payment has its own budget: both rules run.
    let calm = decision_for(&env.decisions(), "calm").expect("decided");
    assert!(calm["rules"].as_array().expect("rules").iter().all(|r| r.get("error").is_none()), "{calm}");
    assert_eq!(calm["action"], "review");
}
