//! `vigil check`.

use crate::support::*;
use std::process::Command;

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vigil")).arg("check").arg(path).output().expect("run vigil check")
}

#[test]
fn check_prints_the_manifest_and_a_timing() {
    let out = check(&wasm("large_amount"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "name:        large-amount",
        "version:     1.0.0",
        "fields read: amount, currency",
        "review_above (int) = 100000",
        "self-run:",
        "fuel:",
        "batch calls: yes (8 sample events in one call decide as they do alone)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn check_lists_rules_needing_lists() {
    let out = check(&wasm("blocklist"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("lists:       blocked-cards, blocked-accounts, blocked-devices, blocked-ips"), "{text}");
}

#[test]
fn check_rejects_a_broken_file_naming_it_and_the_cause() {
    let env = Env::new();
    let path = env.path("junk.wasm");
    std::fs::write(&path, b"not wasm at all").expect("write");
    let out = check(&path);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("junk.wasm") && err.contains("not a WebAssembly module"), "{err}");
}

/// A module whose batch export blocks what its single call allows.
fn two_faced(with_batch: bool) -> Vec<u8> {
    let manifest =
        r#"{"abi":1,"name":"two-faced","version":"0","fields":["amount"],"params":[],"lists":[],"features":[]}"#;
    let batch = r#"(func (export "vigil_evaluate_batch") (param $n i32) (result i32) (local $i i32)
        (block $done (loop $next
            (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
            (call $outcome (local.get $i) (i64.const 2))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (local.get $n))"#;
    wat::parse_str(format!(
        r#"(module (import "vigil" "outcome" (func $outcome (param i32 i64)))
        (memory (export "memory") 2)
        (data (i32.const 16) "{}")
        (func (export "vigil_abi_version") (result i32) i32.const 1)
        (func (export "vigil_manifest") (result i64) i64.const {})
        (func (export "vigil_buffer") (param i32) (result i32) i32.const 65536)
        (func (export "vigil_output") (result i32) i32.const 8192)
        (func (export "vigil_configure") (param i32) (result i32) i32.const 0)
        (func (export "vigil_evaluate") (param i32) (result i64) i64.const 0)
        {})"#,
        manifest.replace('"', "\\\""),
        (16i64 << 32) | manifest.len() as i64,
        if with_batch { batch } else { "" },
    ))
    .expect("wat")
}

#[test]
fn check_rejects_a_batch_call_deciding_unlike_a_single_call() {
    let env = Env::new();
    let path = env.path("two-faced.wasm");
    std::fs::write(&path, two_faced(true)).expect("write");
    let out = check(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        err.contains("two-faced.wasm decides sample event 0 of a batch call as block (score 0), but allow (score 0)"),
        "{err}"
    );
    // The same module without the batch export passes, one event a call.
    std::fs::write(&path, two_faced(false)).expect("write");
    let out = check(&path);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("batch calls: no (one event a call"), "{text}");
}

/// With a Kafka daemon's config, `vigil check` refuses a rule whose state
/// the daemon could not keep exactly, as the daemon would.
#[test]
fn check_with_a_kafka_config_refuses_state_per_another_key() {
    let env = Env::new();
    let config = env.path("kafka.toml");
    std::fs::write(&config, KAFKA_BY_CARD).expect("write");
    let run = |module: &str| {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .arg("check")
            .arg(wasm(module))
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run vigil check")
    };
    let out = run("new_device");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keyed state") && err.contains("only per that key (card)"), "{err}");
    let out = run("velocity");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A configured feature kept per another key fails any check, as it stops the daemon.
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, text + "[features]\naccount-1h = \"count(account, 1h)\"\n").expect("write");
    let out = run("large_amount");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.state-keys") && err.contains("feature `account-1h`"), "{err}");
}
