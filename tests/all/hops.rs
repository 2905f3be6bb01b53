//! A Kafka group keeping state per several keys (`kafka.state-keys`):
//! each event visits the owner of each of its keys through the group's
//! repartition topics, so features kept per every key kind and the rules'
//! state are exactly what one worker reading the same events in order
//! gives — with two daemons, after one leaves and after one is killed.

use crate::broker::Broker;
use crate::daemon::Daemon;
use crate::support::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// The order events visit their keys' owners: the input's partition key
/// first, the rules' state key (many-keys keeps its per account) last.
const STATE_KEYS: &str = r#"["card", "device", "ip", "merchant", "counterparty", "account"]"#;

/// The spaces with a repartition topic: every key but the input's.
const SPACES: [&str; 4] = ["device", "ip", "merchant", "account"];

/// `n` payments whose keys cross each other (accounts pay with several
/// cards, devices and IPs are shared, transfers go between accounts), each
/// with its ids of every key, parties (accounts and counterparties) in one
/// space; some transfers go from an account to itself.
fn events(n: usize, seed: u64) -> Vec<(Value, Vec<String>)> {
    let mut rng = Rng(seed);
    let t0 = 1_717_200_000_000i64;
    (0..n)
        .map(|i| {
            let account = format!("acct-{}", rng.below(40));
            let device = format!("dev-{}", rng.below(30));
            let ip = format!("10.0.0.{}", rng.below(30));
            let mut e = json!({
                "id": format!("hop-{i}"),
                "ts": t0 + i as i64 * 7_000,
                "amount": 100 + rng.below(50_000),
                "currency": "USD",
                "account": account,
                "device": device,
                "ip": ip,
            });
            let mut keys = vec![format!("party:{account}"), format!("device:{device}"), format!("ip:{ip}")];
            // Every fortieth a transfer from an account to itself: one
            // party's state as payer and payee at once.
            let to_self = i % 40 == 5;
            if to_self || rng.below(3) == 0 {
                let to = if to_self { account.clone() } else { format!("acct-{}", rng.below(40)) };
                e["channel"] = "bank_transfer".into();
                e["kind"] = "transfer".into();
                e["counterparty"] = json!({"id": to, "country": "DE"});
                keys.push(format!("party:{to}"));
            } else {
                let card = rng.below(60);
                let merchant = format!("m-{}", rng.below(25));
                e["channel"] = "card".into();
                e["kind"] = "purchase".into();
                e["card"] = json!({"pan": format!("4{:015}", 1_000_000 + card), "country": "US", "present": true});
                e["merchant"] = json!({"id": merchant, "mcc": 5411, "country": "US"});
                keys.push(format!("card:{card}"));
                keys.push(format!("merchant:{merchant}"));
            }
            (e, keys)
        })
        .collect()
}

/// `events` in rounds, in order, no two events of a round sharing a key:
/// each round is sent once the one before is decided, so every key's
/// events reach its owner in the order a single reader takes them,
/// whichever partitions and daemons they pass through.
fn rounds(events: Vec<(Value, Vec<String>)>) -> Vec<Vec<Value>> {
    let mut out: Vec<Vec<Value>> = Vec::new();
    let mut keys: HashSet<String> = HashSet::new();
    for (e, ks) in events {
        if out.is_empty() || ks.iter().any(|k| keys.contains(k)) {
            out.push(Vec::new());
            keys.clear();
        }
        keys.extend(ks);
        out.last_mut().expect("a round").push(e);
    }
    out
}

/// What a decision says that timing does not change: features and score.
fn kept(d: &Value) -> Value {
    json!({"features": d["features"], "score": d["score"], "action": d["action"]})
}

/// Windows per three key kinds, one of them the rules' (the last hop's).
const WINDOWS: &str = r#"
[windows.account-5m]
type = "tumbling"
key = "account"
size = "5m"

[windows.device-session]
type = "session"
key = "device"
gap = "1m"

[windows.merchant-3m]
type = "tumbling"
key = "merchant"
size = "3m"

[watermark]
# Events of a round reach a hop in any order: none is late.
out-of-orderness = "10m"
"#;

/// Per id, what one worker reading `events` from a file decides.
fn reference(events: &[Value]) -> BTreeMap<String, Value> {
    reference_with_windows(events).0
}

/// [`reference`], and every window closed, as its JSON text.
fn reference_with_windows(events: &[Value]) -> (BTreeMap<String, Value>, HashSet<String>) {
    let env = Env::new();
    env.install("many_keys", "many_keys.wasm");
    env.write_events(events);
    let path = env.toml(WINDOWS);
    let mut config = vigil::config::Config::load(&path).expect("config");
    if let vigil::config::SourceConfig::File(f) = &mut config.source {
        f.follow = false;
    }
    config.pipeline.workers = std::num::NonZeroU32::new(1);
    config.state.checkpoints = false;
    run_to_end(config);
    let decisions =
        read_jsonl(&env.decisions()).iter().map(|d| (d["id"].as_str().expect("id").to_owned(), kept(d))).collect();
    assert!(read_jsonl(&env.path("out/late.jsonl")).is_empty(), "no event is late");
    (decisions, read_jsonl(&env.path("out/aggregates.jsonl")).iter().map(Value::to_string).collect())
}

async fn topics(broker: &Broker, group: &str) {
    let mut topics: Vec<(String, i32, bool)> = vec![
        ("payments".into(), 4, false),
        ("decisions".into(), 2, false),
        ("dead-letters".into(), 1, false),
        (format!("{group}-state"), 4, true),
    ];
    for space in SPACES {
        topics.push((format!("{group}-by-{space}"), 4, false));
        topics.push((format!("{group}-by-{space}-state"), 4, true));
    }
    let topics: Vec<(&str, i32, bool)> = topics.iter().map(|(t, p, c)| (t.as_str(), *p, *c)).collect();
    broker.create_topics(&topics).await;
}

fn config(env: &Env, broker: &Broker, group: &str) -> std::path::PathBuf {
    let text = format!(
        r#"
[source]
type = "kafka"
topic = "payments"

[kafka]
brokers = "{brokers}"
group-id = "{group}"
state-keys = {STATE_KEYS}

[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
# The test broker answers a fetch only when its wait is up, even once
# records have arrived (Kafka answers at once): each hop would add it.
"fetch.wait.max.ms" = "10"

[pipeline]
workers = 2
partition-key = "card"

[clean]
pan-key = "integration-test-key-0123456789"

[rules]
dir = {rules:?}

[sinks.decisions]
type = "kafka"
topic = "decisions"

[sinks.dead-letters]
type = "kafka"
topic = "dead-letters"

[sinks.rule-sets]
type = "file"
path = {rule_sets:?}

[decisions]
record = "full"

[sinks.aggregates]
type = "file"
path = {aggregates:?}

[sinks.late]
type = "file"
path = {late:?}

[state]
dir = {state:?}
checkpoint-interval = "200ms"
{WINDOWS}"#,
        brokers = broker.addr,
        rules = env.rules(),
        state = env.path("state"),
        rule_sets = env.path("out/rule-sets.jsonl"),
        aggregates = env.path("aggregates.jsonl"),
        late = env.path("late.jsonl"),
    );
    let path = env.path("vigil.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// Every decision on the topic, all copies of each (a replay may decide an
/// event again).
fn decided(broker: &Broker) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (id, v) in broker.read_all("decisions") {
        out.entry(id).or_default().push(serde_json::from_str(&v).expect("decision JSON"));
    }
    out
}

fn owns_input(d: &Daemon) -> bool {
    d.log()
        .lines()
        .rfind(|l| l.contains("partitions assigned") && l.contains("topic=payments"))
        .is_some_and(|l| !l.contains("owned=[]"))
}

/// Sends `rounds` one after another, each once the one before is decided.
fn send(broker: &Broker, survivor: &mut Daemon, rounds: &[Vec<Value>], what: &str) {
    for round in rounds {
        let records: Vec<(String, String)> =
            round.iter().map(|e| (e["card"]["pan"].as_str().unwrap_or("").to_owned(), e.to_string())).collect();
        broker.produce("payments", &records);
        let ids: HashSet<&str> = round.iter().map(|e| e["id"].as_str().expect("id")).collect();
        survivor.wait_for(Duration::from_secs(120), what, || {
            let d = decided(broker);
            ids.iter().all(|id| d.contains_key(*id)).then_some(())
        });
    }
}

/// Two daemons keep state per six key kinds; one stops with `stop` halfway;
/// every decision of every event equals one worker's.
fn exact_through(broker: &Broker, stop: &str) {
    tokio::runtime::Runtime::new().expect("runtime").block_on(topics(broker, "hops"));
    let (env_a, env_b) = (Env::new(), Env::new());
    let mut daemons = Vec::new();
    let port = crate::admin::free_port();
    for env in [&env_a, &env_b] {
        env.install("many_keys", "many_keys.wasm");
        let path = config(env, broker, "hops");
        if daemons.is_empty() {
            // The survivor serves metrics.
            let text = std::fs::read_to_string(&path).expect("config")
                + &format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n");
            std::fs::write(&path, text).expect("config");
        }
        daemons.push(Daemon::start(env, &path));
    }
    let mut b = daemons.pop().expect("b");
    let mut a = daemons.pop().expect("a");
    wait_for(Duration::from_secs(60), "both daemons to own input partitions", || {
        (owns_input(&a) && owns_input(&b)).then_some(())
    });

    let all = events(240, 0x0123_4567_89ab_cdef);
    let ordered: Vec<Value> = all.iter().map(|(e, _)| e.clone()).collect();
    let (want, windows) = reference_with_windows(&ordered);
    let rounds = rounds(all);
    assert!(rounds.len() > 10, "rounds: {}", rounds.len());
    let half = rounds.len() / 2;
    send(broker, &mut a, &rounds[..half], "the first half's decisions");
    // The second daemon took part: it decided some events.
    let log_b = b.log();
    assert!(log_b.contains("state kept per several keys"), "{log_b}");
    b.signal(stop);
    let _ = b.child.wait();
    send(broker, &mut a, &rounds[half..], "the survivor to decide the second half");

    // Each topic between hops reports its lag, all read by the survivor,
    // and the checkpoints of the pipeline reading it.
    a.wait_for(Duration::from_secs(30), "the lag and checkpoints of every topic between hops", || {
        let (_, m) = crate::admin::http(port, "GET", "/metrics", &[], "")?;
        let lags: Vec<&str> = m.lines().filter(|l| l.starts_with("vigil_hop_lag_records{")).collect();
        let every = SPACES.iter().all(|s| lags.iter().any(|l| l.contains(&format!("topic=\"hops-by-{s}\""))));
        let checkpointed = SPACES.iter().all(|s| {
            m.lines()
                .filter_map(|l| l.strip_prefix(&format!("vigil_hop_checkpoints_total{{topic=\"hops-by-{s}\"}} ")))
                .any(|n| n.parse::<u64>().is_ok_and(|n| n > 0))
        });
        (every && checkpointed && lags.iter().all(|l| l.ends_with(" 0"))).then_some(())
    });
    let (_, m) = crate::admin::http(port, "GET", "/metrics", &[], "").expect("metrics");
    for s in SPACES {
        for gauge in ["vigil_hop_checkpoint_age_seconds", "vigil_hop_checkpoint_duration_seconds"] {
            let line = format!("{gauge}{{topic=\"hops-by-{s}\"}} ");
            assert!(m.lines().any(|l| l.starts_with(&line)), "{line} in\n{m}");
        }
    }
    let got = decided(broker);
    let log = a.log();
    // Read to decided, over every hop: reported, not asserted (timing).
    let mut latency_ms: Vec<f64> = got
        .values()
        .flatten()
        .filter_map(|d| Some((d["decided_at_us"].as_i64()? - d["ingested_at_us"].as_i64()?) as f64 / 1000.0))
        .collect();
    latency_ms.sort_by(f64::total_cmp);
    eprintln!(
        "read to decided through {} hops: median {:.0} ms, max {:.0} ms",
        SPACES.len() + 1,
        latency_ms[latency_ms.len() / 2],
        latency_ms[latency_ms.len() - 1]
    );
    assert!(log.contains("restored keyed state from the changelog"), "state moved to the survivor:\n{log}");
    let mut differing = 0;
    for (id, w) in &want {
        let copies = got.get(id).unwrap_or_else(|| panic!("{id} undecided\n{log}"));
        for c in copies {
            if &kept(c) != w {
                if differing < 3 {
                    eprintln!("{id}\n  want {w}\n  got  {}", kept(c));
                }
                differing += 1;
            }
        }
    }
    assert_eq!(differing, 0, "{differing} decisions differ from one worker's reading the same events\n{log}");
    // The features of every kind took part, and history built up.
    let last = &want[&format!("hop-{}", ordered.len() - 1)]["features"];
    for name in ["count(account, 1h)", "count_in(account, 1h)", "sum(device, amount, 1h)", "count(ip, 30m)"] {
        assert!(last.get(name).is_some(), "{name} in {last}");
    }
    // Every window either daemon closed is one worker's, whole; a window
    // closed again after a kill (read again from the last checkpoint) is
    // the same window.
    let mut closed: HashSet<String> = HashSet::new();
    for env in [&env_a, &env_b] {
        assert!(read_jsonl(&env.path("late.jsonl")).is_empty(), "no event is late");
        closed.extend(read_jsonl(&env.path("aggregates.jsonl")).iter().map(Value::to_string));
    }
    let stray: Vec<&String> = closed.difference(&windows).take(3).collect();
    assert!(stray.is_empty(), "windows one worker did not close: {stray:?}");
    // The last ten minutes' windows stay open (the watermark trails by
    // that much, and the stream goes on).
    assert!(closed.len() * 10 >= windows.len() * 4, "closed {} of {} windows", closed.len(), windows.len());
    for kind in ["account-5m", "device-session", "merchant-3m"] {
        assert!(closed.iter().any(|w| w.contains(kind)), "a {kind} window closed");
    }
    let busiest = want.values().filter_map(|d| d["features"]["count(account, 1h)"].as_f64()).fold(0.0, f64::max);
    assert!(busiest >= 3.0, "accounts paid several times within the hour: {busiest}");
    let scores: Vec<i64> = want.values().filter_map(|d| d["score"].as_i64()).collect();
    assert!(scores.iter().any(|&s| s >= 3), "the rule's state per account counted up");
}

#[test]
fn features_per_six_key_kinds_are_exact_across_two_daemons_and_after_one_leaves() {
    exact_through(&Broker::start(), "-TERM");
}

/// On the mock cluster: tansu does not reassign a killed member's
/// partitions.
#[test]
fn features_per_six_key_kinds_stay_exact_after_a_daemon_is_killed() {
    exact_through(&Broker::mock(), "-KILL");
}

/// A repartition topic or its changelog missing, or with another partition
/// count than the input, stops startup naming it and how to create it; so
/// do a key listed twice and a rule keeping state per another key than the
/// last.
#[test]
fn missing_or_misshapen_repartition_topics_stop_startup_naming_them() {
    let broker = Broker::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let env = Env::new();
    env.install("many_keys", "many_keys.wasm");
    let path = config(&env, &broker, "short");
    rt.block_on(broker.create_topics(&[
        ("payments", 4, false),
        ("short-state", 4, true),
        ("short-by-device", 4, false),
        ("short-by-device-state", 4, true),
        ("short-by-merchant", 4, false),
        ("short-by-merchant-state", 2, true),
    ]));
    let e = run_err(&path);
    assert!(e.contains("kafka.state-keys") && e.contains("`short-by-ip` does not exist"), "{e}");
    assert!(
        e.contains("create `short-by-ip` and its compacted changelog `short-by-ip-state` with 4 partitions"),
        "{e}"
    );
    rt.block_on(broker.create_topics(&[("short-by-ip", 4, false), ("short-by-ip-state", 4, true)]));
    let e = run_err(&path);
    assert!(e.contains("the changelog `short-by-merchant-state` has 2 partitions; it needs 4"), "{e}");

    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, text.replace(STATE_KEYS, r#"["card", "account", "card"]"#)).expect("write");
    let e = format!("{:#}", vigil::config::Config::load(&path).expect_err("refused"));
    assert!(e.contains("kafka.state-keys") && e.contains("lists `card` twice"), "{e}");
    // A window per a key not listed stops the start, naming it.
    std::fs::write(&path, text.replace(STATE_KEYS, r#"["card", "account", "device"]"#)).expect("write");
    let e = run_err(&path);
    assert!(e.contains("kafka.state-keys") && e.contains("window `merchant-3m` is kept per merchant"), "{e}");
}

/// `vigil replay` with a config whose group keeps state per several keys
/// decides the history it is given in the process, every key exact, without
/// a broker (this one points nowhere).
#[test]
fn a_replay_with_a_cluster_s_config_runs_in_the_process() {
    let env = Env::new();
    env.install("many_keys", "many_keys.wasm");
    let text = std::fs::read_to_string(root().join("examples/vigil.kafka.toml"))
        .expect("example")
        .replace("127.0.0.1:9092", "127.0.0.1:1")
        .replace(r#"pan-key-env = "VIGIL_PAN_KEY""#, r#"pan-key = "integration-test-key-0123456789""#)
        .replace(r#"# state-keys = ["card", "device", "account"]"#, &format!("state-keys = {STATE_KEYS}"));
    assert!(text.contains("state-keys = ["), "the example names state-keys");
    let config = env.path("vigil.kafka.toml");
    std::fs::write(&config, text).expect("config");
    let events: Vec<Value> = events(200, 7).into_iter().map(|(e, _)| e).collect();
    let history = env.path("history.jsonl");
    std::fs::write(&history, events.iter().map(|e| format!("{e}\n")).collect::<String>()).expect("history");
    let out = env.path("replay");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["replay", "--quiet", "--config"])
        .arg(&config)
        .arg("--rules")
        .arg(env.rules())
        .arg("--out")
        .arg(&out)
        .arg(&history)
        .output()
        .expect("run vigil replay");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let want = reference(&events);
    let got: BTreeMap<String, Value> = read_jsonl(&out.join("decisions.jsonl"))
        .iter()
        .map(|d| (d["id"].as_str().expect("id").to_owned(), kept(d)))
        .collect();
    assert_eq!(got.len(), events.len());
    assert!(got == want, "the replay decides as one worker");
}
