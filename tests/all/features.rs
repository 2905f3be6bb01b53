//! Look-back features in event time, read by the velocity rule.

use crate::support::*;
use serde_json::{Value, json};

const MIN: i64 = 60_000;
const T0: i64 = 1_717_200_000_000;

fn card_payment(id: &str, pan: &str, ts: i64, amount: i64, country: &str) -> Value {
    json!({
        "id": id, "ts": ts, "channel": "card", "kind": "purchase", "amount": amount, "currency": "USD",
        "account": "acct-1", "card": {"pan": pan, "country": "US", "present": false},
        "geo": {"country": country},
    })
}

fn run(events: &[Value]) -> (Env, Vec<Value>) {
    let env = Env::new();
    env.install("velocity", "velocity.wasm");
    env.write_events(events);
    let mut config = env.config(false);
    config.pipeline.partition_key = vigil::config::PartitionKey::Card;
    run_to_end(config);
    let decisions = read_jsonl(&env.decisions());
    (env, decisions)
}

fn action(decisions: &[Value], id: &str) -> String {
    decisions.iter().find(|d| d["id"] == id).map(|d| d["action"].as_str().unwrap_or("").to_owned()).expect(id)
}

#[test]
fn velocity_fires_on_bursts_in_event_time_not_arrival_time() {
    let mut events = Vec::new();
    // Card A: seven payments a minute apart: the sixth in ten minutes is a burst.
    for i in 0..7 {
        events.push(card_payment(&format!("a{i}"), "4000 0000 0000 0002", T0 + i * MIN, 1_000, "US"));
    }
    // Card B: seven payments three minutes apart, all read in the same
    // instant: never more than four in any ten minutes of event time.
    for i in 0..7 {
        events.push(card_payment(&format!("b{i}"), "4000 0000 0000 0010", T0 + i * 3 * MIN, 1_000, "US"));
    }
    let (_env, decisions) = run(&events);
    for i in 0..5 {
        assert_eq!(action(&decisions, &format!("a{i}")), "allow", "a{i}");
    }
    assert_eq!(action(&decisions, "a5"), "review");
    assert_eq!(action(&decisions, "a6"), "review");
    for i in 0..7 {
        assert_eq!(action(&decisions, &format!("b{i}")), "allow", "b{i}");
    }
    // The record shows the features the rules read.
    let a5 = decisions.iter().find(|d| d["id"] == "a5").expect("a5");
    assert_eq!(a5["features"]["count(card, 10m)"], 6.0);
    assert_eq!(a5["features"]["sum(card, amount, 10m)"], 6_000.0);
}

#[test]
fn many_countries_in_an_hour_block_the_card() {
    let countries = ["US", "FR", "BR", "DE", "DE"];
    let events: Vec<Value> = countries
        .iter()
        .enumerate()
        .map(|(i, c)| card_payment(&format!("c{i}"), "4000 0000 0000 0028", T0 + i as i64 * 15 * MIN, 500, c))
        .collect();
    let (_env, decisions) = run(&events);
    assert_eq!(action(&decisions, "c2"), "allow", "three countries is the limit");
    assert_eq!(action(&decisions, "c3"), "block");
    // An hour after the first payment, US has left the window: FR, BR, DE remain.
    assert_eq!(action(&decisions, "c4"), "allow");
    let c4 = decisions.iter().find(|d| d["id"] == "c4").expect("c4");
    assert_eq!(c4["features"]["distinct(card, geo.country, 1h)"], 3.0);
}

#[test]
fn a_rule_naming_an_unknown_feature_is_refused() {
    let env = Env::new();
    env.install("velocity", "velocity.wasm");
    let mut config = env.config(false);
    config.features.insert("typo".into(), "count(card, 10 minutes please)".into());
    let err = try_run_to_end(config).expect_err("bad feature config");
    assert!(err.to_string().contains("features.typo"), "{err}");
}
