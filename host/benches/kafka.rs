//! `just bench` (second table): vigil through a real Kafka-protocol broker
//! (tansu, in memory, on loopback), in one run so the ratios hold.
//!
//! Rows:
//! 1. the broker alone: a plain consumer → producer copy of N preloaded
//!    events to another topic (what vigil's Kafka I/O costs with no engine);
//! 2. vigil on the same N events with the example rules, decisions to a
//!    topic; the ratio of the two says whether vigil is the bottleneck;
//! 3. event-to-decision latency at a steady 10,000 events/s: from the test
//!    producer handing an event to librdkafka to its decision arriving on
//!    the decisions topic (p50/p99/p99.9);
//! 4. restart to first decision, reading the whole changelog and from a
//!    local snapshot;
//! 5. rows 2 and 3 with state kept per the card and the account
//!    (`kafka.state-keys`): every event goes on through a repartition
//!    topic to its account's owner, which decides it — what a hop costs;
//!    its throughput also from the first decision on, which leaves out
//!    the hop consumers joining their groups.
//!
//! Needs tansu (`just broker`) and the rules (`just rules`). `--quick`
//! shrinks the sizes so CI proves it runs; its figures mean nothing.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};
use std::collections::HashMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tansu_bin() -> PathBuf {
    std::env::var_os("TANSU").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
        home.join("bin/tansu")
    })
}

fn start_tansu() -> (Tansu, String) {
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(tansu_bin())
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start tansu ({}): {e}; run `just broker`", tansu_bin().display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen within 30s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (Tansu(child), format!("127.0.0.1:{port}"))
}

fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

fn create_topics(rt: &tokio::runtime::Runtime, brokers: &str, topics: &[(&str, i32, bool)]) {
    let admin: AdminClient<DefaultClientContext> = client(brokers).create().expect("admin");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|&(n, p, compact)| {
            let t = NewTopic::new(n, p, TopicReplication::Fixed(1));
            if compact { t.set("cleanup.policy", "compact") } else { t }
        })
        .collect();
    for r in rt.block_on(admin.create_topics(&new, &AdminOptions::new())).expect("create") {
        r.expect("topic");
    }
}

fn producer(brokers: &str) -> ThreadedProducer<DefaultProducerContext> {
    client(brokers).set("linger.ms", "5").set("queue.buffering.max.messages", "1000000").create().expect("producer")
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, key: &[u8], value: &[u8]) {
    let mut rec = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((_, back)) => {
                rec = back;
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }
}

/// (account key, line) of `n` generated events.
fn events(n: u64, seed: u64) -> Vec<(String, String)> {
    let opts = vigil::generate::GenOptions { events: n, accounts: 20_000, seed, ..Default::default() };
    let mut out = Vec::new();
    vigil::generate::Generator::new(opts).expect("generator").write(&mut out).expect("generate");
    String::from_utf8(out)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            (v["account"].as_str().unwrap_or_default().to_owned(), l.to_owned())
        })
        .collect()
}

fn preload(brokers: &str, topic: &str, events: &[(String, String)]) {
    let p = producer(brokers);
    for (k, v) in events {
        send(&p, topic, k.as_bytes(), v.as_bytes());
    }
    p.flush(Duration::from_secs(120)).expect("flush");
}

/// Copies `n` records from `from` to `to` with a plain consumer and
/// producer; the time from the first record read to the last acknowledged.
fn passthrough(brokers: &str, from: &str, to: &str, n: u64) -> Duration {
    let consumer: BaseConsumer =
        client(brokers).set("group.id", "bench-copy").set("auto.offset.reset", "earliest").create().expect("consumer");
    consumer.subscribe(&[from]).expect("subscribe");
    let p = producer(brokers);
    let mut start = None;
    let mut copied = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while copied < n {
        assert!(Instant::now() < deadline, "copy stalled at {copied}");
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            start.get_or_insert_with(Instant::now);
            send(&p, to, m.key().unwrap_or_default(), m.payload().unwrap_or_default());
            copied += 1;
        }
    }
    p.flush(Duration::from_secs(120)).expect("flush");
    start.map(|s| s.elapsed()).unwrap_or_default()
}

fn config(work: &Path, brokers: &str, group: &str, topic: &str) -> vigil::config::Config {
    config_with(work, brokers, group, topic, false)
}

/// [`config`]; with `hops`, state kept per the card and the account
/// (`kafka.state-keys`): every event goes on through `<group>-by-account`
/// to its account's owner, which decides it.
fn config_with(work: &Path, brokers: &str, group: &str, topic: &str, hops: bool) -> vigil::config::Config {
    let text = format!(
        r#"
[source]
type = "kafka"
topic = "{topic}"
[kafka]
brokers = "{brokers}"
group-id = "{group}"
local-snapshots = {snapshots}
{state_keys}
[kafka.consumer]
# tansu answers a fetch only after its max wait, data or not.
"fetch.wait.max.ms" = "5"
[kafka.producer]
{producer}
[pipeline]
workers = 2
# The example rules keep their features per card; generated accounts hold
# one card each, so records keyed by account keep each card in one partition.
partition-key = "card"
[clean]
pan-key = "bench-key-0123456789abcdef"
[rules]
dir = {rules:?}
watch = false
[sinks.decisions]
type = "kafka"
topic = "decisions"
[sinks.alerts]
type = "discard"
[sinks.dead-letters]
type = "kafka"
topic = "dead-letters"
[sinks.aggregates]
type = "discard"
[sinks.late]
type = "discard"
[state]
dir = {state:?}
checkpoint-interval = "{interval}"
"#,
        producer = std::env::var("VIGIL_BENCH_PRODUCER").unwrap_or_default(),
        interval = std::env::var("VIGIL_BENCH_CHECKPOINT").unwrap_or_else(|_| "1s".into()),
        snapshots = std::env::var_os("VIGIL_BENCH_NO_SNAPSHOTS").is_none(),
        state_keys = if hops { r#"state-keys = ["card", "account"]"# } else { "" },
        rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/dist"),
        state = work.join(group),
    );
    let path = work.join(format!("{group}.toml"));
    std::fs::write(&path, text).expect("config");
    vigil::config::Config::load(&path).expect("config")
}

/// vigil running in-process.
struct Running {
    counters: Arc<vigil::pipeline::Counters>,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<anyhow::Result<vigil::pipeline::Summary>>,
}

fn start_vigil(rt: &tokio::runtime::Runtime, config: vigil::config::Config) -> Running {
    let counters = Arc::new(vigil::pipeline::Counters::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let overrides = vigil::app::Overrides { counters: Some(counters.clone()), ..Default::default() };
    let run = rt.spawn(vigil::app::run_with(
        config,
        async move {
            let _ = stop_rx.await;
        },
        overrides,
    ));
    Running { counters, stop_tx, run }
}

/// Runs vigil until `n` events are decided or dead-lettered: the time from
/// the first event read to the last output counted, and from the first
/// decision (with hops, after the later hops' consumers joined their
/// groups) to the last, with the outputs counted in that time.
fn run_vigil(rt: &tokio::runtime::Runtime, config: vigil::config::Config, n: u64) -> (Duration, (Duration, u64)) {
    let Running { counters, stop_tx, run } = start_vigil(rt, config);
    // Stalled once nothing moves for a minute (startup included).
    let (mut last, mut moved) = (counters.summary(), Instant::now());
    let (mut start, mut first_decided) = (None, None);
    loop {
        let c = counters.summary();
        if c.events_in > 0 {
            start.get_or_insert_with(Instant::now);
        }
        if c.decided > 0 {
            first_decided.get_or_insert((Instant::now(), c.decided));
        }
        if c.decided + c.dead_lettered >= n {
            break;
        }
        if c != last {
            (last, moved) = (c, Instant::now());
        }
        if run.is_finished() {
            let ended = rt.block_on(run).expect("join");
            panic!("vigil stopped after {c:?} of {n} events: {ended:?}");
        }
        assert!(moved.elapsed() < Duration::from_secs(60), "vigil made no progress for 60 s: {c:?} of {n} events");
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = start.map(|s| s.elapsed()).unwrap_or_default();
    let (decided_at, decided) = first_decided.unwrap_or((Instant::now(), 0));
    let steady = (decided_at.elapsed(), n.saturating_sub(decided));
    let _ = stop_tx.send(());
    rt.block_on(run).expect("join").expect("vigil run");
    (took, steady)
}

/// Restarts the daemon of the throughput run on its state: first with an
/// empty state folder (the whole changelog is read, and a local snapshot
/// written), then again with that folder (the snapshot is loaded and only
/// the changelog since is read). Each time one new event is waiting; the
/// time from start to its decision.
fn restarts(rt: &tokio::runtime::Runtime, brokers: &str, work: &Path) -> (Duration, Duration) {
    let mut took = Vec::new();
    let mut config = config(work, brokers, "bench-vigil", "payments");
    config.state.dir = work.join("bench-vigil-restart");
    // Ids of another seed: new to the de-duplication set.
    for event in events(2, 99) {
        preload(brokers, "payments", &[event]);
        let started = Instant::now();
        let Running { counters, stop_tx, run } = start_vigil(rt, config.clone());
        let deadline = started + Duration::from_secs(600);
        while counters.summary().decided == 0 {
            assert!(Instant::now() < deadline, "no decision after a restart: {:?}", counters.summary());
            std::thread::sleep(Duration::from_millis(1));
        }
        took.push(started.elapsed());
        let _ = stop_tx.send(());
        rt.block_on(run).expect("join").expect("vigil run");
    }
    (took[0], took[1])
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Event-to-decision latency in ms at `rate` events/s for `secs`.
fn latency(rt: &tokio::runtime::Runtime, brokers: &str, work: &Path, rate: f64, secs: f64) -> Vec<f64> {
    // Its own input topic: the throughput run's backlog would come first.
    latency_of(rt, brokers, config(work, brokers, "bench-latency", "live"), rate, secs)
}

/// [`latency`] of the daemon `config` sets up, reading `config`'s topic.
fn latency_of(
    rt: &tokio::runtime::Runtime,
    brokers: &str,
    config: vigil::config::Config,
    rate: f64,
    secs: f64,
) -> Vec<f64> {
    let vigil::config::SourceConfig::Kafka(source) = &config.source else { panic!("a Kafka source") };
    let live = source.topic.clone();
    let Running { counters, stop_tx, run } = start_vigil(rt, config);
    // The reader of decisions, positioned at the end before anything is sent.
    let reader: BaseConsumer = client(brokers)
        .set("group.id", "bench-latency-reader")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("reader");
    reader.subscribe(&["decisions"]).expect("subscribe");
    let warm = Instant::now();
    while reader.assignment().map(|a| a.count()).unwrap_or(0) == 0 && warm.elapsed() < Duration::from_secs(30) {
        let _ = reader.poll(Duration::from_millis(50));
    }
    // Wait for vigil to own its partitions: a first event decided.
    let p = producer(brokers);
    let all = events((rate * secs) as u64 + 1, 7);
    send(&p, &live, all[0].0.as_bytes(), all[0].1.as_bytes());
    while counters.decided.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    // And for the reader to read its decision: positioned and caught up
    // (resolving "latest" takes tansu about half a second).
    let first_id =
        serde_json::from_str::<serde_json::Value>(&all[0].1).expect("json")["id"].as_str().unwrap_or("").to_owned();
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(50))
            && m.key() == Some(first_id.as_bytes())
        {
            break;
        }
    }
    // The producer paces events on its own thread while this one reads
    // decisions as they come.
    let sent_at: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let total = all.len() - 1;
    let pacer = std::thread::spawn({
        let (sent_at, live) = (sent_at.clone(), live.clone());
        move || {
            let start = Instant::now();
            for (i, (k, v)) in all.iter().enumerate().skip(1) {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let id =
                    serde_json::from_str::<serde_json::Value>(v).expect("json")["id"].as_str().unwrap_or("").to_owned();
                sent_at.lock().expect("sent").insert(id, Instant::now());
                send(&p, &live, k.as_bytes(), v.as_bytes());
            }
            p
        }
    });
    let mut lat = Vec::with_capacity(total);
    // Where the time goes: producer → vigil's intake, intake → decision,
    // decision → arrival on the decisions topic (wall clock, ms).
    let mut stages: [Vec<f64>; 4] = Default::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let deadline = deadline + Duration::from_secs_f64(secs);
    while lat.len() < total && Instant::now() < deadline {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) {
            let at = Instant::now();
            let key = m.key().and_then(|k| std::str::from_utf8(k).ok()).unwrap_or_default();
            let sent = sent_at.lock().expect("sent").get(key).copied();
            if let Some(sent) = sent {
                lat.push(at.duration_since(sent).as_secs_f64() * 1e3);
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as i64);
                let sent_us = now_us - at.duration_since(sent).as_micros() as i64;
                let d: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
                let (ing, dec) = (d["ingested_at_us"].as_i64().unwrap_or(0), d["decided_at_us"].as_i64().unwrap_or(0));
                stages[0].push((ing - sent_us) as f64 / 1e3);
                stages[1].push((dec - ing) as f64 / 1e3);
                let created_us = m.timestamp().to_millis().unwrap_or(0) * 1000;
                stages[2].push((created_us - dec) as f64 / 1e3);
                stages[3].push((now_us - created_us) as f64 / 1e3);
            }
        }
    }
    for (name, v) in
        ["producer → intake", "intake → decided", "decided → produced", "produced → read"].iter().zip(&mut stages)
    {
        v.sort_by(f64::total_cmp);
        eprintln!("  {name}: p50 {:.1} ms, p99 {:.1} ms", percentile(v, 0.5), percentile(v, 0.99));
    }
    drop(pacer.join().expect("pacer"));
    let _ = stop_tx.send(());
    rt.block_on(run).expect("join").expect("vigil run");
    lat.sort_by(f64::total_cmp);
    lat
}

fn main() {
    // vigil's log on stderr, e.g. RUST_LOG=vigil=info to follow a run.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("VIGIL_BENCH_QUICK").is_some();
    let (n, lat_secs) = if quick { (5_000, 1.0) } else { (200_000, 5.0) };
    let n: u64 = std::env::var("VIGIL_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(n);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let work = tempfile::tempdir().expect("temp dir");
    let work = work.path();
    let (_tansu, brokers) = start_tansu();
    create_topics(
        &rt,
        &brokers,
        &[
            ("payments", 4, false),
            ("live", 4, false),
            ("copy", 4, false),
            ("decisions", 4, false),
            ("dead-letters", 1, false),
            ("bench-vigil-state", 4, true),
            ("bench-latency-state", 4, true),
            ("live-hops", 4, false),
            ("bench-hops-state", 4, true),
            ("bench-hops-by-account", 4, false),
            ("bench-hops-by-account-state", 4, true),
            ("bench-hops-latency-state", 4, true),
            ("bench-hops-latency-by-account", 4, false),
            ("bench-hops-latency-by-account-state", 4, true),
        ],
    );
    eprintln!("vigil Kafka bench (tansu in memory on loopback{}): measuring…", if quick { ", quick" } else { "" });
    let input = events(n, 1);
    preload(&brokers, "payments", &input);
    let copy = passthrough(&brokers, "payments", "copy", n);
    let (vigil, _) = run_vigil(&rt, config(work, &brokers, "bench-vigil", "payments"), n);
    let rate = |d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let (whole, local) = restarts(&rt, &brokers, work);
    let lat = latency(&rt, &brokers, work, 10_000.0, lat_secs);
    let (p50, p99, p999) = (percentile(&lat, 0.5), percentile(&lat, 0.99), percentile(&lat, 0.999));
    let (hops, (steady, steady_n)) = run_vigil(&rt, config_with(work, &brokers, "bench-hops", "payments", true), n);
    let hops_config = config_with(work, &brokers, "bench-hops-latency", "live-hops", true);
    let hops_lat = latency_of(&rt, &brokers, hops_config, 10_000.0, lat_secs);

    println!("{:44}  {:>16}  {:>16}  {:>8}", "measure", "figure", "target", "ratio");
    println!("{:44}  {:>13.0}/s  {:>16}  {:>8}", format!("K1. broker alone: copy {n} events"), rate(copy), "", "");
    println!(
        "{:44}  {:>13.0}/s  {:>16}  {:>8.2}",
        format!("K2. vigil through the broker, {n} events"),
        rate(vigil),
        "≈ broker alone",
        rate(vigil) / rate(copy)
    );
    println!(
        "{:44}  {:>16}  {:>16}  {:>8.2}",
        format!("K3. latency p50/p99/p99.9 at 10k/s ({} ev)", lat.len()),
        format!("{p50:.1}/{p99:.1}/{p999:.1} ms"),
        "p99 ≤ 20 ms",
        p99 / 20.0
    );
    println!(
        "{:44}  {:>16}  {:>16}  {:>8.2}",
        "K4. restart to first decision: whole / local",
        format!("{} / {} ms", whole.as_millis(), local.as_millis()),
        "",
        local.as_secs_f64() / whole.as_secs_f64().max(1e-9)
    );
    println!(
        "{:44}  {:>13.0}/s  {:>16}  {:>8.2}",
        format!("K5. state per card and account (a hop), {n} ev"),
        rate(hops),
        "",
        rate(hops) / rate(vigil)
    );
    println!(
        "{:44}  {:>13.0}/s  {:>16}  {:>8.2}",
        "K5. the same from its first decision",
        steady_n as f64 / steady.as_secs_f64().max(1e-9),
        "",
        steady_n as f64 / steady.as_secs_f64().max(1e-9) / rate(vigil)
    );
    println!(
        "{:44}  {:>16}  {:>16}  {:>8.2}",
        format!("K5. latency p50/p99/p99.9 at 10k/s ({} ev)", hops_lat.len()),
        format!(
            "{:.1}/{:.1}/{:.1} ms",
            percentile(&hops_lat, 0.5),
            percentile(&hops_lat, 0.99),
            percentile(&hops_lat, 0.999)
        ),
        "",
        percentile(&hops_lat, 0.99) / p99
    );
}
