//! `vigil new-rule`: the template makes a crate that passes its own tests,
//! builds to wasm32, and loads as a valid rule.

use crate::support::*;
use std::process::Command;

fn cargo(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(dir)
        .args(args)
        // Share the rules workspace's builds of the SDK and its macro deps.
        .env("CARGO_TARGET_DIR", root().join("rules/target"))
        .output()
        .expect("run cargo")
}

#[test]
fn a_new_rule_builds_passes_its_tests_and_checks_as_a_valid_module() {
    let env = Env::new();
    let ws = env.path("ws");
    std::fs::create_dir_all(&ws).expect("workspace dir");
    // A rules workspace like the repository's, with no members yet.
    let manifest = std::fs::read_to_string(root().join("rules/Cargo.toml")).expect("rules/Cargo.toml");
    let mut doc: toml_edit::DocumentMut = manifest.parse().expect("toml");
    doc["workspace"]["members"] = toml_edit::value(toml_edit::Array::new());
    doc["workspace"]["dependencies"]["vigil-sdk"]["path"] =
        toml_edit::value(root().join("guest-sdk").display().to_string());
    std::fs::write(ws.join("Cargo.toml"), doc.to_string()).expect("write workspace");
    std::fs::copy(root().join("rules/Cargo.lock"), ws.join("Cargo.lock")).expect("copy lock");

    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["new-rule", "card-testing", "--workspace"])
        .arg(&ws)
        .output()
        .expect("run vigil new-rule");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let readme = std::fs::read_to_string(ws.join("card-testing/README.md")).expect("README");
    assert!(readme.contains("cargo test -p card-testing") && readme.contains("vigil replay"), "{readme}");
    let lib = std::fs::read_to_string(ws.join("card-testing/src/lib.rs")).expect("lib.rs");
    let body = lib.split("fn evaluate").nth(1).and_then(|b| b.split("#[cfg(test)]").next()).expect("evaluate");
    assert!(body.lines().count() <= 10, "the rule body is about ten lines:\n{body}");

    let test = cargo(&ws, &["test", "-p", "card-testing"]);
    let stdout = String::from_utf8_lossy(&test.stdout);
    assert!(test.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&test.stderr));
    assert!(stdout.contains("test result: ok. 3 passed"), "{stdout}");

    let build = cargo(&ws, &["build", "--release", "--target", "wasm32-unknown-unknown", "-p", "card-testing"]);
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let module = root().join("rules/target/wasm32-unknown-unknown/release/card_testing.wasm");
    let check = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .current_dir(env.dir.path())
        .arg("check")
        .arg(&module)
        .output()
        .expect("run vigil check");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}\n{}", String::from_utf8_lossy(&check.stderr));
    for want in [
        "name:        card-testing",
        "fields read: amount, card",
        "features:    count(card, 10m)",
        "max_payments (int) = 5",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn new_rule_refuses_bad_names_and_existing_crates() {
    let env = Env::new();
    let ws = env.path("ws");
    std::fs::create_dir_all(ws.join("taken")).expect("dirs");
    std::fs::write(ws.join("Cargo.toml"), "[workspace]\nmembers = []\n").expect("workspace");
    for (name, want) in [("Card_Testing", "use lower-case letters"), ("taken", "already exists")] {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["new-rule", name, "--workspace"])
            .arg(&ws)
            .output()
            .expect("run vigil new-rule");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{name}: {err}");
    }
    assert_eq!(std::fs::read_to_string(ws.join("Cargo.toml")).expect("read"), "[workspace]\nmembers = []\n");
}
