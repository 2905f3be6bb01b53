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
