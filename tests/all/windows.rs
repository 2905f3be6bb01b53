//! Windowed aggregates in event time: closed by the watermark, late events
//! to the side output with a reason.

use crate::support::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use vigil::config::WindowSpec;
use vigil::features::KeyField;

const T0: i64 = 1_717_200_000_000; // a whole minute

fn purchase(id: &str, merchant: &str, ts: i64, amount: i64) -> Value {
    json!({
        "id": id, "ts": ts, "channel": "card", "kind": "purchase", "amount": amount, "currency": "EUR",
        "account": format!("acct-{id}"), "merchant": {"id": merchant, "mcc": 5411},
    })
}

#[test]
fn tumbling_and_session_windows_match_a_recount_and_late_events_are_reported() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let mut events = Vec::new();
    let mut expected: BTreeMap<(String, i64), (u64, i64)> = BTreeMap::new();
    for i in 0..300i64 {
        let merchant = format!("m{}", i % 3);
        let ts = T0 + i * 1_000; // five minutes of payments, one a second
        let amount = 100 + i;
        events.push(purchase(&format!("t{i}"), &merchant, ts, amount));
        let start = (ts / 60_000) * 60_000;
        let e = expected.entry((merchant, start)).or_default();
        e.0 += 1;
        e.1 += amount;
    }
    // Far behind the watermark: late for its one-minute window.
    events.push(purchase("late-1", "m0", T0 + 10_000, 7));
    env.write_events(&events);

    let mut config = env.config(false);
    config.pipeline.partition_key = vigil::config::PartitionKey::Merchant;
    config.watermark.out_of_orderness = Duration::from_secs(5);
    config
        .windows
        .insert("merchant-1m".into(), WindowSpec::Tumbling { key: KeyField::Merchant, size: Duration::from_secs(60) });
    config.windows.insert(
        "merchant-session".into(),
        WindowSpec::Session { key: KeyField::Merchant, gap: Duration::from_secs(30) },
    );
    let summary = run_to_end(config);
    assert_eq!(summary.events_in, 301);
    assert_eq!(summary.decided, 301, "a late event is still decided");
    assert_eq!(summary.late, 2, "late for both windows: {summary:?}");

    let aggregates = read_jsonl(&env.path("out/aggregates.jsonl"));
    let tumbling: BTreeMap<(String, i64), (u64, i64)> = aggregates
        .iter()
        .filter(|a| a["window"] == "merchant-1m")
        .map(|a| {
            let key = (a["key"].as_str().expect("key").to_owned(), a["start_ms"].as_i64().expect("start"));
            (key, (a["count"].as_u64().expect("count"), a["sum"].as_i64().expect("sum")))
        })
        .collect();
    assert_eq!(tumbling, expected);
    // One session per merchant: payments every three seconds, gap 30 s.
    let sessions: Vec<&Value> = aggregates.iter().filter(|a| a["window"] == "merchant-session").collect();
    assert_eq!(sessions.len(), 3);
    assert!(sessions.iter().all(|s| s["count"] == 100));

    let late = read_jsonl(&env.path("out/late.jsonl"));
    assert_eq!(late.len(), 2);
    assert!(late.iter().all(|l| l["id"] == "late-1" && l["reason"].as_str().is_some_and(|r| r.contains("closed"))));
}
