//! Stream-core figures: memory per tracked key, checkpoint and restore of a
//! million keys, and pipeline throughput with look-back features on and off.
//!
//! Run: `cargo bench -p vigil --bench state` (after `just rules`). Prints a
//! table; it measures and never fails on time. `VIGIL_BENCH_KEYS` and
//! `VIGIL_BENCH_EVENTS` shrink it for a quick run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use vigil::config::{Config, FileSourceConfig, PartitionKey, SinkConfig, SourceConfig};
use vigil::event::{Card, Payment};
use vigil::features::{Catalog, FeatureEngine};
use vigil::state::{Checkpoint, StateStore};
use vigil_abi::{Channel, Country, GeoRef, Kind};

const FEATURES: [(&str, &str); 4] = [
    ("count-10m", "count(card, 10m)"),
    ("sum-10m", "sum(card, amount, 10m)"),
    ("countries-1h", "distinct(card, geo.country, 1h)"),
    ("max-24h", "max(card, amount, 24h)"),
];

/// Counts live heap bytes, so memory per key is measured exactly, without
/// what the allocator keeps after frees.
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: defers to the system allocator and only keeps a count.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    // The system's, which grows a large block in place where it can, as
    // the daemon's does; not the default's copy into a new block.
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let grown = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if !grown.is_null() {
            LIVE.fetch_add(new_size, std::sync::atomic::Ordering::Relaxed);
            LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        }
        grown
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn payment(i: usize, card: usize) -> Payment {
    Payment {
        id: format!("b-{i}").into(),
        ts_ms: 1_717_200_000_000 + i as i64,
        channel: Channel::Card,
        kind: Kind::Purchase,
        amount: 1_000 + (i % 5_000) as i64,
        currency: *b"USD",
        account: "acct".into(),
        card: Some(Card { token: format!("tok_{card:024}").into(), country: None, present: None }),
        merchant: None,
        counterparty: None,
        device: None,
        ip: None,
        geo: Some(GeoRef { country: Some(Country(*b"US")), lat_lon: None }),
        attrs: Vec::new(),
    }
}

fn catalog() -> Arc<Catalog> {
    let map: BTreeMap<String, String> = FEATURES.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
    Arc::new(Catalog::from_config(&map).expect("features"))
}

/// A count with a filter against the same count without: time per event
/// and heap per key, the same events through each (half pass the filter).
fn filtered_against_unfiltered(keys: usize, events: usize) {
    let engine = |spec: &str| {
        let map = BTreeMap::from([("c".to_owned(), spec.to_owned())]);
        FeatureEngine::new(
            Arc::new(Catalog::from_config(&map).expect("features")),
            vigil::keyed::KeyedHash::for_tests(),
        )
    };
    let specs = ["count(card, 10m)", "count(card, 10m, amount < 3500)"];
    let mut heap = [0.0; 2];
    let mut engines: Vec<FeatureEngine> = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let before = live();
        let mut e = engine(spec);
        // Two events per key, so every key holds state under the filter too.
        for k in 0..keys * 2 {
            e.compute(&payment(k, k % keys));
        }
        e.take_delta(0);
        heap[i] = (live() - before) as f64 / keys as f64;
        engines.push(e);
    }
    let stream: Vec<Payment> =
        (0..events).map(|i| payment(keys * 2 + i, i.wrapping_mul(2_654_435_761) % keys)).collect();
    let mut ns = [Vec::new(), Vec::new()];
    for _ in 0..5 {
        for (e, out) in engines.iter_mut().zip(ns.iter_mut()) {
            let t = Instant::now();
            for p in &stream {
                std::hint::black_box(e.compute(p));
            }
            out.push(t.elapsed().as_nanos() as f64 / stream.len() as f64);
        }
    }
    for v in &mut ns {
        v.sort_by(f64::total_cmp);
    }
    let (plain, filtered) = (ns[0][2], ns[1][2]);
    println!(
        "{:<58} {:>9.0} / {:.0} ns",
        format!("count per event, {keys} keys: unfiltered / filtered"),
        plain,
        filtered
    );
    println!("{:<58} {:>14.2} {:>12}", "  filtered / unfiltered time per event", filtered / plain, "<= 1.5");
    println!("{:<58} {:>9.0} / {:.0} B", "  heap per key: unfiltered / filtered", heap[0], heap[1]);
}

/// One busy card, read over an hour once its window is full: time per
/// event. `numeric`: count, sum, min and max (one series) of payments
/// 100 ms apart, 36,000 in the window. Else a distinct count of the
/// accounts (1,000 values) of payments a second apart: 3,600 sightings.
fn busy_key(numeric: bool, events: usize) {
    let (spec_gap, specs) = match numeric {
        true => (
            100,
            ["count(card, 1h)", "sum(card, amount, 1h)", "min(card, amount, 1h)", "max(card, amount, 1h)"].as_slice(),
        ),
        false => (1_000, ["distinct(card, account, 1h)"].as_slice()),
    };
    let map: BTreeMap<String, String> = specs.iter().map(|s| (s.to_string(), s.to_string())).collect();
    let mut e = FeatureEngine::new(
        Arc::new(Catalog::from_config(&map).expect("features")),
        vigil::keyed::KeyedHash::for_tests(),
    );
    let stream: Vec<Payment> = (0..events)
        .map(|i| {
            let mut p = payment(i, 0);
            p.ts_ms = 1_717_200_000_000 + i as i64 * spec_gap;
            p.account = format!("acct-{}", i % 1_000).into();
            p
        })
        .collect();
    let full = (3_600_000 / spec_gap) as usize;
    for p in &stream[..full] {
        e.compute(p);
    }
    let t = Instant::now();
    for p in &stream[full..] {
        std::hint::black_box(e.compute(p));
    }
    let ns = t.elapsed().as_nanos() as f64 / (events - full) as f64;
    let what = match numeric {
        true => format!("one busy key, 4 features, {full} events in 1h: per event"),
        false => format!("one busy key, distinct, {full} sightings in 1h: per event"),
    };
    println!("{what:<58} {ns:>12.0} ns");
}

fn main() {
    let keys = env_usize("VIGIL_BENCH_KEYS", 1_000_000);
    let events = env_usize("VIGIL_BENCH_EVENTS", 300_000);
    println!("vigil stream-core figures ({} cores)", std::thread::available_parallelism().map_or(1, |n| n.get()));
    println!("{:<58} {:>14} {:>12}", "measure", "figure", "target");

    // Memory per key: one event per card, four features.
    let mut engine = FeatureEngine::new(catalog(), vigil::keyed::KeyedHash::for_tests());
    let base = rss_bytes();
    let base_heap = live();
    for k in 0..keys {
        engine.compute(&payment(k, k));
    }
    let rss_at_keys = rss_bytes();
    let dirty_rss = rss_at_keys.saturating_sub(base);
    let dirty_heap = live() - base_heap;

    // Checkpoint and restore of every key.
    let dir = tempfile::tempdir().expect("tmp");
    let store = StateStore::open(dir.path()).expect("store");
    let t = Instant::now();
    // The barrier only marks the changed keys; the worker serialises them
    // afterwards, while it goes on deciding.
    engine.begin_snapshot(0);
    let barrier_s = t.elapsed().as_secs_f64();
    let t_serialise = Instant::now();
    let delta = engine.finish_snapshot();
    let serialise_s = t_serialise.elapsed().as_secs_f64();
    let cp = Checkpoint { id: 1, source: "bench".into(), workers: 1, features: vec![delta], ..Checkpoint::default() };
    store.commit(&cp).expect("commit");
    let checkpoint_s = t.elapsed().as_secs_f64();
    drop(cp);
    drop(store);
    // After a checkpoint the set of changed keys is empty: the steady state.
    let heap = live() - base_heap;
    println!(
        "{:<58} {:>12.0} B {:>12}",
        format!("heap per tracked key, 4 features, {keys} keys"),
        heap as f64 / keys as f64,
        "<= 200 B"
    );
    println!(
        "{:<58} {:>12.0} B",
        "  same, with every key changed since the last checkpoint",
        dirty_heap as f64 / keys as f64
    );
    println!("{:<58} {:>12.0} B", "  RSS growth per key (before the first checkpoint)", dirty_rss as f64 / keys as f64);
    println!("{:<58} {:>12.1} MB", format!("RSS at {keys} keys"), rss_at_keys as f64 / 1e6);
    println!("{:<58} {:>12.2} s", format!("checkpoint of {keys} keys (serialise + commit)"), checkpoint_s);
    println!("{:<58} {:>12.1} ms", "  of which the barrier: marking the changed keys", barrier_s * 1e3);
    println!("{:<58} {:>12.1} ms", "  of which serialising them, after the barrier", serialise_s * 1e3);
    drop(engine);
    let t = Instant::now();
    let store = StateStore::open(dir.path()).expect("store");
    let restored = store.load("bench").expect("load").expect("checkpoint");
    let mut engine = FeatureEngine::new(catalog(), vigil::keyed::KeyedHash::for_tests());
    for f in &restored.features {
        engine.restore(f.space, f.hash, &f.state, false).expect("restore");
    }
    println!(
        "{:<58} {:>12.2} s {:>12}",
        format!("restore of {} keys (read + load)", engine.tracked_keys()),
        t.elapsed().as_secs_f64(),
        "<= 2 s"
    );

    // Updating keys already held, in batches as a worker gets them: each
    // key's state is rarely in cache, so a worker prefetches a batch's
    // states first. Rounds alternate, medians of five.
    let batches: Vec<Vec<Payment>> = (0..events.div_ceil(256))
        .map(|b| {
            (0..256)
                .map(|j| {
                    let i = keys + b * 256 + j;
                    payment(i, i.wrapping_mul(2_654_435_761) % keys)
                })
                .collect()
        })
        .collect();
    let mut ns = [Vec::new(), Vec::new()];
    for _ in 0..5 {
        for (with, out) in ns.iter_mut().enumerate() {
            let t = Instant::now();
            for batch in &batches {
                if with == 1 {
                    engine.prefetch_events(batch.iter());
                }
                for p in batch {
                    std::hint::black_box(engine.compute(p));
                }
            }
            out.push(t.elapsed().as_nanos() as f64 / (batches.len() * 256) as f64);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (without, with) = (median(&mut ns[0]), median(&mut ns[1]));
    println!(
        "{:<58} {:>9.0} / {:.0} ns",
        format!("update a held key, {} keys: without / with prefetch", engine.tracked_keys()),
        without,
        with
    );

    // Every key gone idle since the last checkpoint: expired by the sweep,
    // then the barrier lists them as the checkpoint's deletes.
    let mut later = payment(keys * 4, keys * 4);
    later.ts_ms += 2 * 86_400_000;
    engine.compute(&later);
    engine.expire();
    let t = Instant::now();
    engine.begin_snapshot(0);
    let barrier_s = t.elapsed().as_secs_f64();
    let deletes = engine.finish_snapshot().iter().filter(|d| d.state.is_none()).count();
    assert!(deletes >= keys, "every key stored expired: {deletes}");
    println!("{:<58} {:>12.1} ms", format!("  the barrier after {deletes} keys expired"), barrier_s * 1e3);
    drop(engine);
    filtered_against_unfiltered(keys.min(200_000), events);
    busy_key(true, 36_000 + events.max(36_000));
    busy_key(false, 3_600 + events.max(36_000));

    // Pipeline throughput with features on and off, same input, same rule.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = root.join("rules/target/wasm32-unknown-unknown/release/large_amount.wasm");
    let work = tempfile::tempdir().expect("tmp");
    let rules = work.path().join("rules");
    std::fs::create_dir_all(&rules).expect("rules");
    std::fs::copy(&wasm, rules.join("large_amount.wasm")).expect("run `just rules` first");
    let input = work.path().join("events.jsonl");
    let mut text = String::with_capacity(events * 200);
    for i in 0..events {
        let card = (i * 7919) % 50_000;
        text.push_str(&format!(
            "{{\"id\":\"e{i}\",\"ts\":{},\"channel\":\"card\",\"kind\":\"purchase\",\"amount\":{},\"currency\":\"USD\",\
             \"account\":\"a{}\",\"card\":{{\"pan\":\"4{:015}\",\"country\":\"US\"}},\"geo\":{{\"country\":\"US\"}}}}\n",
            1_717_200_000_000i64 + i as i64 * 10,
            100 + i % 90_000,
            card % 997,
            card
        ));
    }
    std::fs::write(&input, text).expect("input");
    let mut rates = Vec::new();
    for features in [false, true] {
        let mut c = Config {
            source: SourceConfig::File(FileSourceConfig {
                path: input.clone(),
                follow: false,
                poll_interval: std::time::Duration::from_millis(10),
            }),
            ..Config::default()
        };
        c.sinks.decisions = SinkConfig::Discard;
        c.sinks.alerts = SinkConfig::Discard;
        c.sinks.dead_letters = SinkConfig::Discard;
        c.sinks.aggregates = SinkConfig::Discard;
        c.sinks.late = SinkConfig::Discard;
        c.rules.dir = rules.clone();
        c.rules.watch = false;
        c.state.dir = work.path().join(format!("state-{features}"));
        c.clean.pan_key = Some("bench-key-0123456789abcdef".into());
        c.pipeline.partition_key = PartitionKey::Card;
        c.pipeline.workers = std::num::NonZeroU32::new(2);
        if features {
            c.features = FEATURES.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect();
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let t = Instant::now();
        let summary = rt.block_on(vigil::app::run(c, std::future::pending())).expect("run");
        let rate = summary.decided as f64 / t.elapsed().as_secs_f64();
        rates.push(rate);
        let label = if features { "4 features on" } else { "features off" };
        println!("{:<58} {:>10.0} ev/s", format!("pipeline, {events} events, 2 workers, {label}"), rate);
    }
    println!("{:<58} {:>14.2} {:>12}", "throughput ratio features on / off", rates[1] / rates[0], ">= 0.5");
}
