//! Exact state for every key: features, windows and rules' state kept per
//! any key kind give, with any partition key and worker count, exactly
//! what one worker gives.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use vigil::config::{PartitionKey, WindowSpec};
use vigil::features::KeyField;

/// `n` payments whose keys cross each other: accounts pay with many cards,
/// devices and IPs are shared by accounts, transfers go between accounts
/// (so a party both sends and receives), and a tenth of the events arrive
/// up to a minute out of order.
fn mixed_events(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    let t0 = 1_717_200_000_000i64;
    let mut lines = Vec::with_capacity(n);
    for i in 0..n {
        let account = rng.below(2_000);
        let jitter = if rng.below(10) == 0 { -(rng.below(60_000) as i64) } else { 0 };
        let ts = t0 + i as i64 * 200 + jitter;
        let mut e = json!({
            "id": format!("tx-{i}"),
            "ts": ts,
            "amount": 100 + rng.below(50_000),
            "currency": "USD",
            "account": format!("acct-{account}"),
            "device": format!("dev-{}", rng.below(700)),
            "ip": format!("10.0.{}.{}", rng.below(20), rng.below(200)),
        });
        if rng.below(4) == 0 {
            e["channel"] = "bank_transfer".into();
            e["kind"] = "transfer".into();
            e["counterparty"] = json!({"id": format!("acct-{}", rng.below(2_000)), "country": "DE"});
        } else {
            e["channel"] = "card".into();
            e["kind"] = "purchase".into();
            let card = rng.below(5_000);
            e["card"] = json!({"pan": format!("4{:015}", 1_000_000 + card), "country": "US", "present": true});
            e["merchant"] = json!({"id": format!("m-{}", rng.below(60)), "mcc": 5411, "country": "US"});
        }
        lines.push(e.to_string());
    }
    lines
}

/// What a run decided, without what timing changes: per id, the action,
/// score, reasons, every rule's outcome and the features; and every closed
/// window and late event.
struct Run {
    decisions: BTreeMap<String, Value>,
    windows: Vec<String>,
    late: Vec<String>,
}

fn run(lines: &[String], workers: u32, partition_key: PartitionKey) -> Run {
    let env = Env::new();
    env.install("many_keys", "many_keys.wasm");
    env.install("velocity", "velocity.wasm");
    std::fs::write(env.events(), lines.join("\n") + "\n").expect("events");
    let mut config = env.config(false);
    config.pipeline.workers = std::num::NonZeroU32::new(workers);
    config.pipeline.partition_key = partition_key;
    config.state.checkpoints = false;
    config
        .windows
        .insert("account-5m".into(), WindowSpec::Tumbling { key: KeyField::Account, size: Duration::from_secs(300) });
    config
        .windows
        .insert("device-session".into(), WindowSpec::Session { key: KeyField::Device, gap: Duration::from_secs(120) });
    config
        .windows
        .insert("merchant-1m".into(), WindowSpec::Tumbling { key: KeyField::Merchant, size: Duration::from_secs(60) });
    let summary = run_to_end(config);
    assert_eq!(summary.events_in, lines.len() as u64);
    let mut decisions = BTreeMap::new();
    for d in read_jsonl(&env.decisions()) {
        let rules: Vec<Value> = d["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| json!({"rule": r["rule"], "action": r["action"], "score": r["score"], "reasons": r["reasons"], "error": r["error"]}))
            .collect();
        let id = d["id"].as_str().expect("id").to_owned();
        let kept = json!({"action": d["action"], "score": d["score"], "reasons": d["reasons"], "rules": rules, "features": d["features"]});
        assert!(decisions.insert(id, kept).is_none(), "one decision per event");
    }
    let sorted = |path: &std::path::Path| {
        let mut v: Vec<String> = read_jsonl(path).iter().map(Value::to_string).collect();
        v.sort();
        v
    };
    Run { decisions, windows: sorted(&env.path("out/aggregates.jsonl")), late: sorted(&env.path("out/late.jsonl")) }
}

fn assert_same(want: &Run, got: &Run, what: &str) {
    assert_eq!(got.decisions.len(), want.decisions.len(), "{what}: decisions");
    let mut differing = 0;
    for (id, w) in &want.decisions {
        if got.decisions.get(id) != Some(w) {
            if differing < 3 {
                eprintln!("{what}: {id}\n  want {w}\n  got  {:?}", got.decisions.get(id));
            }
            differing += 1;
        }
    }
    assert_eq!(differing, 0, "{what}: {differing} of {} decisions differ from one worker's", want.decisions.len());
    assert_eq!(got.windows.len(), want.windows.len(), "{what}: closed windows");
    assert!(got.windows == want.windows, "{what}: closed windows differ");
    assert!(got.late == want.late, "{what}: late events differ");
}

#[test]
fn every_key_is_exact_with_any_worker_count_and_partition_key() {
    let lines = mixed_events(100_000, 0x5eed_1234_abcd_ef01);
    let one = run(&lines, 1, PartitionKey::Card);
    assert!(one.windows.len() > 1_000, "windows of every kind close: {}", one.windows.len());
    let features = &one.decisions["tx-99999"]["features"];
    for name in [
        "count(card, 10m)",
        "count(account, 1h)",
        "distinct(account, card, 1h)",
        "sum(device, amount, 1h)",
        "count(ip, 30m)",
        "distinct(merchant, account, 10m)",
        "count(counterparty, 1h)",
        "count(card, 10m, amount < 10000)",
        "count_in(account, 1h)",
        "distinct_senders(account, 1h, kind = transfer)",
        "sum(account, amount, 1h, channel = bank_transfer and not amount < 20000)",
        "since_last(device, 30m)",
        "first_seen(ip, 1h)",
    ] {
        assert!(features.get(name).is_some(), "{name} in {features}");
    }
    // The filtered and inflow features are not all zero: they are tested.
    let nonzero = |name: &str| one.decisions.values().filter(|d| d["features"][name].as_f64() > Some(0.0)).count();
    for name in [
        "count(card, 10m, amount < 10000)",
        "count_in(account, 1h)",
        "distinct_senders(account, 1h, kind = transfer)",
        "since_last(device, 30m)",
        "first_seen(ip, 1h)",
    ] {
        assert!(nonzero(name) > 1_000, "{name}: {}", nonzero(name));
    }
    assert_same(&one, &run(&lines, 2, PartitionKey::Card), "2 workers, by card");
    assert_same(&one, &run(&lines, 4, PartitionKey::Card), "4 workers, by card");
    assert_same(&one, &run(&lines, 3, PartitionKey::Device), "3 workers, by device");
    // The rules' state is kept per account, so by account no outcome
    // crosses workers while features still do.
    assert_same(&one, &run(&lines, 2, PartitionKey::Account), "2 workers, by account");
}

/// The case that showed the split: one account paying with twelve cards
/// within six minutes, partitioned by card over two workers.
#[test]
fn an_account_paying_with_twelve_cards_sees_its_whole_history() {
    let lines: Vec<String> = (0..12)
        .map(|i| {
            json!({
                "id": format!("p{i}"), "ts": 1_717_200_000_000i64 + i * 30_000, "channel": "card",
                "kind": "purchase", "amount": 1_000, "currency": "USD", "account": "acct-mule",
                "card": {"pan": format!("4{:015}", 500 + i), "country": "US", "present": false},
            })
            .to_string()
        })
        .collect();
    let got = run(&lines, 2, PartitionKey::Card);
    for i in 0..12 {
        let f = &got.decisions[&format!("p{i}")]["features"];
        assert_eq!(f["count(account, 1h)"], (i + 1) as f64, "p{i}: {f}");
        assert_eq!(f["distinct(account, card, 1h)"], (i + 1) as f64, "p{i}: {f}");
        let score = &got.decisions[&format!("p{i}")]["rules"][0]["score"];
        assert_eq!(*score, i + 1, "p{i}: the rule's state of the account saw every payment before it");
    }
}

/// Money out and money in meet in one party: a transfer from A to B is in
/// B's history as money in, whichever worker decides either.
#[test]
fn a_counterparty_is_the_same_party_as_the_account() {
    let transfer = |id: &str, from: &str, to: &str, ts: i64| {
        json!({
            "id": id, "ts": 1_717_200_000_000i64 + ts, "channel": "bank_transfer", "kind": "transfer",
            "amount": 5_000, "currency": "EUR", "account": from, "counterparty": {"id": to},
        })
        .to_string()
    };
    let lines = vec![
        transfer("t1", "acct-a", "acct-mule", 0),
        transfer("t2", "acct-b", "acct-mule", 1_000),
        transfer("t3", "acct-c", "acct-mule", 2_000),
        transfer("t4", "acct-mule", "acct-x", 3_000),
    ];
    for workers in [1, 4] {
        let got = run(&lines, workers, PartitionKey::Account);
        let f = |id: &str| got.decisions[id]["features"].clone();
        assert_eq!(f("t3")["count(counterparty, 1h)"], 3.0, "the mule received three: {}", f("t3"));
        assert_eq!(f("t4")["count(account, 1h)"], 1.0, "and sent one: {}", f("t4"));
        assert_eq!(f("t4")["count(counterparty, 1h)"], 1.0, "acct-x received one: {}", f("t4"));
        assert_eq!(f("t4")["count_in(account, 1h)"], 3.0, "the mule, paying out, had received three: {}", f("t4"));
        assert_eq!(f("t4")["distinct_senders(account, 1h, kind = transfer)"], 3.0, "from three senders: {}", f("t4"));
        assert_eq!(f("t3")["count_in(account, 1h)"], 0.0, "acct-c received nothing: {}", f("t3"));
    }
}

/// A worker stopped by an output that cannot be written stops the others,
/// which may be waiting for its part of a batch, and vigil says which
/// output failed and why.
#[test]
fn a_full_output_stops_every_worker_and_names_the_file() {
    let env = Env::new();
    env.install("many_keys", "many_keys.wasm");
    std::fs::write(env.events(), mixed_events(20_000, 7).join("\n") + "\n").expect("events");
    let mut config = env.config(false);
    config.pipeline.workers = std::num::NonZeroU32::new(4);
    config.sinks.decisions = vigil::config::SinkConfig::File { path: "/dev/full".into() };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(try_run_to_end(config).map(|_| ()).map_err(|e| format!("{e:#}"))));
    let got = rx.recv_timeout(Duration::from_secs(120)).expect("vigil stops rather than hang");
    let e = got.expect_err("the decisions cannot be written");
    assert!(e.contains("the decisions file /dev/full") && e.contains("No space left on device"), "{e}");
}
