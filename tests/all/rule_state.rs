//! Rules' keyed state: kept per rule on the worker, checkpointed, restored.

use crate::daemon::Daemon;
use crate::support::*;
use serde_json::{Value, json};
use std::time::Duration;

fn login(id: &str, device: &str) -> String {
    json!({
        "id": id, "ts": 1_717_200_000_000i64, "channel": "wallet", "kind": "transfer",
        "amount": 50_000, "currency": "EUR", "account": "acct-7", "device": device,
    })
    .to_string()
}

fn action(env: &Env, id: &str) -> Value {
    wait_for(Duration::from_secs(30), id, || decision_for(&env.decisions(), id))["action"].clone()
}

#[test]
fn rule_state_survives_a_restart() {
    let env = Env::new();
    env.install("new_device", "new_device.wasm");
    let config = env.toml("");
    env.append_lines(&[login("a", "d1"), login("b", "d1")]);
    let daemon = Daemon::start(&env, &config);
    assert_eq!(action(&env, "a"), "allow");
    assert_eq!(action(&env, "b"), "allow");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");

    // After the restart the rule still knows acct-7's device.
    env.append_lines(&[login("c", "d1"), login("d", "d2")]);
    let daemon = Daemon::start(&env, &config);
    assert_eq!(action(&env, "c"), "allow", "d1 is remembered");
    assert_eq!(action(&env, "d"), "review", "d2 is new");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("resuming from the last checkpoint"), "{log}");
    assert_eq!(read_jsonl(&env.decisions()).len(), 4, "no event decided twice after a clean stop");
}

/// The native path (the bench's row 3) hands keyed state to a linked-in rule
/// crate as the wasm imports do.
#[test]
#[cfg(feature = "bench-native")]
fn a_natively_linked_rule_keeps_keyed_state_as_its_wasm_build() {
    let actions = |native: bool| {
        let env = Env::new();
        let mut overrides = vigil::app::Overrides::default();
        if native {
            overrides.native_rules = vec![new_device::RULE];
        } else {
            env.install("new_device", "new_device.wasm");
        }
        env.append_lines(&[login("a", "d1"), login("b", "d1"), login("c", "d2"), login("d", "d2")]);
        try_run_with(env.config(false), overrides).expect("vigil run");
        ["a", "b", "c", "d"].map(|id| decision_for(&env.decisions(), id).expect("decided")["action"].clone())
    };
    let wasm = actions(false);
    assert_eq!(wasm, [json!("allow"), json!("allow"), json!("review"), json!("allow")], "wasm build");
    assert_eq!(actions(true), wasm, "native build");
}

/// Counts an account's payments in its keyed state, and panics, before
/// touching the state, on a payment with the attribute `boom`.
#[cfg(feature = "bench-native")]
mod counter {
    use vigil_sdk::prelude::*;

    #[rule(name = "counter", fields(account, attrs))]
    fn evaluate(tx: &Payment, ctx: &Context) -> Decision {
        assert!(tx.attr("boom").is_none(), "told to fail");
        let n = ctx.state_get_i64(tx.account()).unwrap_or(0) + 1;
        ctx.state_put_i64(tx.account(), n);
        Decision::allow().score(n as i32)
    }
}

/// A failed call replaces the rule's instance; the keyed state the rule
/// built up until then carries over to the new one, in the same batch.
#[test]
#[cfg(feature = "bench-native")]
fn a_rule_failing_mid_batch_keeps_its_keyed_state() {
    let env = Env::new();
    let payment = |id: &str, boom: bool| {
        let mut p = serde_json::from_str::<Value>(&login(id, "d1")).expect("json");
        if boom {
            p["attrs"] = json!({ "boom": "1" });
        }
        p.to_string()
    };
    let ids = ["a", "b", "c", "x", "d", "y", "e"];
    env.append_lines(&ids.map(|id| payment(id, id == "x" || id == "y")));
    let overrides = vigil::app::Overrides { native_rules: vec![counter::RULE], ..Default::default() };
    try_run_with(env.config(false), overrides).expect("vigil run");
    let outcome = |id: &str| decision_for(&env.decisions(), id).expect("decided")["rules"][0].clone();
    for (id, n) in [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)] {
        assert_eq!(outcome(id)["score"], n, "{id}: the count goes on across the failures");
    }
    for id in ["x", "y"] {
        let error = outcome(id)["error"].as_str().map(str::to_owned).unwrap_or_default();
        assert!(error.contains("told to fail"), "{id}: {error}");
    }
}

/// A rule's keyed state outlives its last write by `rules.state-ttl` of event
/// time, across a restart too: then the rule no longer sees it.
#[test]
fn rule_state_not_written_for_the_ttl_is_forgotten() {
    const DAY: i64 = 86_400_000;
    let at = |id: &str, account: &str, device: &str, ms: i64| {
        let mut p = serde_json::from_str::<Value>(&login(id, device)).expect("json");
        p["account"] = json!(account);
        p["ts"] = json!(1_717_200_000_000i64 + ms);
        p.to_string()
    };
    let env = Env::new();
    env.install("new_device", "new_device.wasm");
    let config = |ttl_days: u64| {
        let mut c = env.config(false);
        c.rules.state_ttl = Duration::from_secs(ttl_days * 86_400);
        c
    };
    let action = |id: &str| decision_for(&env.decisions(), id).expect("decided")["action"].clone();
    // One run: acct-1 comes back after two days on another device.
    env.append_lines(&[
        at("a", "acct-1", "d1", 0),
        at("b", "acct-1", "d2", 2 * DAY),
        at("c", "acct-1", "d1", 2 * DAY + 1),
    ]);
    run_to_end(config(1));
    assert_eq!([action("a"), action("b"), action("c")], ["allow", "allow", "review"], "d1 forgotten, d2 learned");
    // Then a restart: acct-2's device, stored one day before, is seen
    // with a three-day TTL and forgotten with a one-day TTL.
    env.append_lines(&[at("d", "acct-2", "d1", 2 * DAY)]);
    run_to_end(config(3));
    env.append_lines(&[at("e", "acct-2", "d2", 3 * DAY + 1), at("f", "acct-3", "d1", 2 * DAY)]);
    run_to_end(config(3));
    assert_eq!(action("e"), "review", "kept within three days");
    env.append_lines(&[at("g", "acct-3", "d2", 3 * DAY + 1)]);
    run_to_end(config(1));
    assert_eq!(action("g"), "allow", "acct-3's d1, a day and a moment before, is forgotten");
}
