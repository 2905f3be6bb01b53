//! Crash recovery: `kill -9` the real daemon at several points of a replay,
//! restart it, and get exactly the features (kept per several key kinds),
//! windows and rules' state of an uninterrupted one-worker run — no event
//! lost, none counted twice. Decisions after the last checkpoint may be
//! written twice; they carry the transaction id.

use crate::daemon::Daemon;
use crate::support::*;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const N: usize = 40_000;

fn events() -> Vec<String> {
    let countries = ["US", "FR", "BR", "DE", "GB"];
    let mut lines = Vec::with_capacity(N);
    for i in 0..N {
        // A replayed id now and then: it must stay a duplicate across restarts.
        let id = if i % 997 == 996 { format!("tx-{}", i - 5) } else { format!("tx-{i}") };
        let card = (i * 7919) % 300;
        lines.push(
            json!({
                "id": id,
                "ts": 1_717_200_000_000i64 + i as i64 * 1_500,
                "channel": "card", "kind": "purchase",
                "amount": 100 + (i * 37) % 90_000,
                "currency": "USD",
                "account": format!("acct-{}", card % 97),
                "card": {"pan": format!("4{:015}", 100_000 + card), "country": "US", "present": i % 3 == 0},
                "geo": {"country": countries[(i / 7 + card) % countries.len()]},
                // Shared by accounts and cards, so none of these keys
                // follows the partition key.
                "device": format!("dev-{}", (i * 31) % 151),
                "ip": format!("10.1.{}.{}", (i * 7) % 13, (i * 11) % 17),
                "merchant": {"id": format!("m-{}", (i * 5) % 23)},
            })
            .to_string(),
        );
    }
    lines
}

/// id → features and rule scores (many-keys scores with its state) of
/// every decision record for it, and the dead-lettered lines.
fn outcomes(env: &Env) -> (HashMap<String, Vec<Value>>, HashSet<u64>) {
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for d in read_jsonl(&env.decisions()) {
        let scores: Vec<Value> = d["rules"].as_array().into_iter().flatten().map(|r| r["score"].clone()).collect();
        let kept = json!({"features": d["features"], "scores": scores});
        by_id.entry(d["id"].as_str().expect("id").to_owned()).or_default().push(kept);
    }
    let dead = read_jsonl(&env.dead_letters()).iter().filter_map(|d| d["line"].as_u64()).collect();
    (by_id, dead)
}

/// (window, key, start) → every record of that window.
fn windows(env: &Env) -> std::collections::BTreeMap<(String, String, i64), Vec<Value>> {
    let mut out: std::collections::BTreeMap<(String, String, i64), Vec<Value>> = Default::default();
    for a in read_jsonl(&env.path("out/aggregates.jsonl")) {
        let k = (
            a["window"].as_str().unwrap_or("").to_owned(),
            a["key"].as_str().unwrap_or("").to_owned(),
            a["start_ms"].as_i64().unwrap_or(0),
        );
        out.entry(k).or_default().push(a);
    }
    out
}

#[test]
fn kill_9_at_several_points_loses_nothing_and_counts_nothing_twice() {
    let lines = events();
    let extra = "[pipeline]\npartition-key = \"card\"\nworkers = 2\n\n[windows.card-5m]\ntype = \"tumbling\"\nkey = \"card\"\nsize = \"5m\"\n\n\
                 [windows.device-5m]\ntype = \"tumbling\"\nkey = \"device\"\nsize = \"5m\"\n";

    // The reference: one uninterrupted run, on one worker.
    let reference = Env::new();
    reference.install("velocity", "velocity.wasm");
    reference.install("many_keys", "many_keys.wasm");
    std::fs::write(reference.events(), lines.join("\n") + "\n").expect("events");
    let mut config = reference.config(false);
    config.pipeline.partition_key = vigil::config::PartitionKey::Card;
    config.pipeline.workers = std::num::NonZeroU32::new(1);
    for (name, key) in [("card-5m", vigil::features::KeyField::Card), ("device-5m", vigil::features::KeyField::Device)]
    {
        config.windows.insert(name.into(), vigil::config::WindowSpec::Tumbling { key, size: Duration::from_secs(300) });
    }
    let summary = run_to_end(config);
    let want_windows = windows(&reference);
    assert!(want_windows.len() > 100, "{}", want_windows.len());
    assert_eq!(summary.events_in, N as u64);
    let (want, want_dead) = outcomes(&reference);
    assert!(!want_dead.is_empty(), "the input holds duplicates");

    // The crashing run: same input, two workers, killed twice mid-stream.
    let env = Env::new();
    env.install("velocity", "velocity.wasm");
    env.install("many_keys", "many_keys.wasm");
    std::fs::write(env.events(), lines.join("\n") + "\n").expect("events");
    let config = env.toml(extra);
    let text = std::fs::read_to_string(&config).expect("config").replace("[pipeline]\nworkers = 2\n", "");
    let text = text.replace("[state]\n", "[state]\ncheckpoint-interval = \"10ms\"\n");
    std::fs::write(&config, text).expect("config");

    let mut kills = Vec::new();
    for kill_at in [N / 4, N * 3 / 5] {
        let mut daemon = Daemon::start(&env, &config);
        daemon.wait_for(Duration::from_secs(120), "decisions to reach the kill point", || {
            (std::fs::metadata(env.decisions()).map(|m| m.len()).unwrap_or(0) > (kill_at * 200) as u64).then_some(())
        });
        daemon.child.kill().expect("kill -9");
        daemon.child.wait().expect("reap");
        let decided = line_count(&env.decisions());
        assert!(decided < N - N / 10, "killed too late to test anything: {decided} of {N} decided");
        kills.push(decided);
    }
    let mut daemon = Daemon::start(&env, &config);
    daemon.wait_for(Duration::from_secs(120), "every id decided or dead-lettered", || {
        // Every input line ends as a decision or a dead letter, and repeats
        // only add lines: count them before parsing every record, which
        // polled every 20 ms took the CPU the daemon needed.
        if line_count(&env.decisions()) + line_count(&env.dead_letters()) < N {
            return None;
        }
        let (got, dead) = outcomes(&env);
        (got.len() == want.len() && dead.len() >= want_dead.len()).then_some(())
    });
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("resuming from the last checkpoint"), "{log}");
    assert!(kills[1] > kills[0], "the second run made progress: {kills:?}");

    let (got, dead) = outcomes(&env);
    assert_eq!(got.len(), want.len(), "every id has a decision");
    assert_eq!(dead, want_dead, "the same lines are duplicates");
    let mut repeated = 0;
    for (id, records) in &got {
        let expected = &want[id][0];
        for features in records {
            assert_eq!(features, expected, "{id}: features differ from the uninterrupted run");
        }
        repeated += records.len() - 1;
    }
    // Window results: the same windows with the same contents (a window
    // emitted after the last checkpoint before a crash is emitted again).
    let got_windows = windows(&env);
    // The crashing run follows its file and was stopped, not exhausted:
    // windows still open then stay in its checkpoint instead of being
    // flushed as at the end of the reference's input.
    let last_ts = 1_717_200_000_000i64 + (N as i64 - 1) * 1_500;
    for (k, records) in &want_windows {
        match got_windows.get(k) {
            Some(got) => assert!(got.iter().all(|r| r == &records[0]), "window {k:?} differs"),
            None => assert!(records[0]["end_ms"].as_i64() > Some(last_ts - 5_000), "window {k:?} lost"),
        }
    }
    assert!(got_windows.keys().all(|k| want_windows.contains_key(k)));
    // Only events after a checkpoint are decided again.
    assert!(repeated < N / 4, "{repeated} repeated decisions");
}

#[test]
fn a_quiet_daemon_checkpoints_what_it_read_before_a_kill() {
    let env = Env::new();
    env.install("velocity", "velocity.wasm");
    let lines: Vec<String> = events().into_iter().take(100).collect();
    std::fs::write(env.events(), lines.join("\n") + "\n").expect("events");
    let config = env.toml("");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("[state]\n", "[state]\ncheckpoint-interval = \"50ms\"\n");
    std::fs::write(&config, text).expect("config");
    let mut daemon = Daemon::start_logging(&env, &config, "vigil=debug");
    // The input goes quiet after 100 lines; the checkpoint still comes.
    daemon.wait_for(Duration::from_secs(60), "a checkpoint covering all 100 lines", || {
        daemon_log_has(&env, "line=100").then_some(())
    });
    daemon.child.kill().expect("kill -9");
    daemon.child.wait().expect("reap");
    let decided = read_jsonl(&env.decisions()).len();
    let mut daemon = Daemon::start(&env, &config);
    env.append_lines(&[lines[0].replace("tx-0", "tx-after")]);
    daemon.wait_for(Duration::from_secs(60), "the new event", || decision_for(&env.decisions(), "tx-after"));
    drop(daemon);
    assert_eq!(read_jsonl(&env.decisions()).len(), decided + 1, "nothing before the kill was decided again");
}

fn daemon_log_has(env: &Env, text: &str) -> bool {
    std::fs::read_to_string(env.path("vigil.log")).is_ok_and(|l| l.contains(text))
}

/// A restart with another worker count hands each key to the worker its
/// hash now maps to, and stores it again under that worker: a later
/// restart with the same count still finds every key, including those no
/// event touched in between.
#[test]
fn keys_survive_restarts_with_a_changed_worker_count() {
    let event = |id: String, card: usize, i: usize| {
        json!({
            "id": id,
            "ts": 1_717_200_000_000i64 + i as i64 * 100,
            "channel": "card", "kind": "purchase", "amount": 500, "currency": "USD",
            "account": format!("acct-{card}"),
            "card": {"pan": format!("4{:015}", 200_000 + card), "country": "US", "present": true},
        })
        .to_string()
    };
    // Phase A: 40 cards three times; B: only cards 0–3; C: every card once.
    let mut phases: Vec<Vec<String>> = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut i = 0;
    for round in 0..3 {
        for card in 0..40 {
            phases[0].push(event(format!("a-{round}-{card}"), card, i));
            i += 1;
        }
    }
    for card in 0..4 {
        phases[1].push(event(format!("b-{card}"), card, i));
        i += 1;
    }
    for card in 0..40 {
        phases[2].push(event(format!("c-{card}"), card, i));
        i += 1;
    }
    let config = |env: &Env, workers: u32| {
        let mut c = env.config(false);
        c.pipeline.partition_key = vigil::config::PartitionKey::Card;
        c.pipeline.workers = std::num::NonZeroU32::new(workers);
        c
    };
    let reference = Env::new();
    reference.install("velocity", "velocity.wasm");
    reference.install("many_keys", "many_keys.wasm");
    std::fs::write(reference.events(), phases.concat().join("\n") + "\n").expect("events");
    run_to_end(config(&reference, 3));
    let (want, _) = outcomes(&reference);

    let env = Env::new();
    env.install("velocity", "velocity.wasm");
    env.install("many_keys", "many_keys.wasm");
    std::fs::write(env.events(), String::new()).expect("events");
    for (phase, workers) in phases.iter().zip([2, 3, 3]) {
        env.append_lines(phase);
        run_to_end(config(&env, workers));
    }
    let (got, _) = outcomes(&env);
    assert_eq!(got.len(), want.len(), "every event decided once");
    for line in &phases[2] {
        let id = serde_json::from_str::<Value>(line).expect("json")["id"].as_str().expect("id").to_owned();
        assert_eq!(got[&id], want[&id], "{id}: its card's history was lost across the restarts");
    }
}
