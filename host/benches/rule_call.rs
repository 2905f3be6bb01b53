//! Per-rule call cost: each example rule as wasm in vigil's sandbox next to
//! the same rule crate compiled natively, on the same event.
//!
//! Run: `cargo bench -p vigil --features bench-native --bench rule_call` (after `just rules`).
//! The wasm figure is the whole host-side call: copying the event into the
//! guest with undeclared fields blanked, setting the CPU deadline, the call
//! itself and reading the outcome. "per event in batches" is the same per
//! event when a batch of 256 goes through batch calls, as the pipeline makes
//! them; it includes the clock read that times each event, which the single
//! call leaves to its caller. Encoding the event is measured apart, since it
//! is done once per event for all rules.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vigil::config::{Config, ListConfig, ListKind};
use vigil::decode::Tokenizer;
use vigil::event::{Card, Payment};
use vigil::rules::lists::Lists;
use vigil::rules::{Batch, Loader, Results, module_hash};
use vigil_abi::{Channel, Country, Kind};
use vigil_sdk::testing::{PaymentBuilder, Prepared, TestContext};

const KEY: &[u8] = b"bench-key-0123456789";

fn payment(tokenizer: &Tokenizer) -> Payment {
    Payment {
        id: "bench-tx-0001".into(),
        ts_ms: 1_717_200_000_000,
        channel: Channel::Card,
        kind: Kind::Purchase,
        amount: 50_000,
        currency: *b"USD",
        account: "acct-042".into(),
        card: Some(Card {
            token: tokenizer.token("4000000000000002").into(),
            country: Some(Country(*b"US")),
            present: Some(false),
        }),
        merchant: None,
        counterparty: None,
        device: Some("dev-7".into()),
        ip: Some("198.51.100.7".into()),
        geo: Some(vigil_abi::GeoRef { country: Some(Country(*b"RO")), lat_lon: None }),
        attrs: Vec::new(),
    }
}

fn native_payment(tokenizer: &Tokenizer) -> vigil_sdk::testing::TestPayment {
    PaymentBuilder::new("bench-tx-0001")
        .amount(50_000, "USD")
        .account("acct-042")
        .card(&tokenizer.token("4000000000000002"), Some("US"), Some(false))
        .device("dev-7")
        .ip("198.51.100.7")
        .geo_country("RO")
        .build()
}

/// Events in one batch call, as a worker's batch holds.
const BATCH: usize = 256;

/// Times `run` over a batch of [`BATCH`] events, reported per event.
fn per_event(b: &mut criterion::Bencher<'_>, mut run: impl FnMut() -> Result<(), vigil::rules::RuleError>) {
    b.iter_custom(|iters| {
        let t = Instant::now();
        for _ in 0..iters {
            run().expect("batch call");
        }
        t.elapsed() / BATCH as u32
    });
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm_dir = root.join("rules/target/wasm32-unknown-unknown/release");
    let tokenizer = Tokenizer::new(KEY);
    let mut config = Config::default();
    config.lists.insert(
        "blocked-cards".into(),
        ListConfig { path: root.join("examples/lists/blocked-cards.txt"), kind: ListKind::Card },
    );
    for name in ["blocked-accounts", "blocked-devices", "blocked-ips"] {
        let path = root.join(format!("examples/lists/{name}.txt"));
        config.lists.insert(name.into(), ListConfig { path, kind: ListKind::Plain });
    }
    let lists = Lists::load(&config.lists, &tokenizer).expect("lists");
    let mut cached = config.clone();
    cached.state.dir = std::env::temp_dir().join("vigil-bench-state");
    cached.clean.pan_key = Some("bench-key-0123456789".into());
    let sandbox = vigil::rules::sandbox::Sandbox::from_config(&cached).expect("sandbox");

    let catalog = vigil::features::Catalog::default();
    let loader = Loader {
        sandbox: &sandbox,
        lists: &lists,
        catalog: &catalog,
        settings: &config.rule,
        default_on_failure: config.rules.on_failure,
        state_keys: None,
    };
    let mut encoded = Vec::new();
    let event = payment(&tokenizer);
    c.bench_function("encode event (once per event)", |b| b.iter(|| black_box(&event).encode(&mut encoded)));
    event.encode(&mut encoded).expect("encode");

    // The floor: a hand-written module whose evaluate returns at once, so
    // this is the host's side of a call and nothing else.
    let manifest =
        r#"{"abi":1,"name":"floor","version":"0","fields":["amount","currency"],"params":[],"lists":[],"features":[]}"#;
    let floor = wat::parse_str(format!(
        r#"(module (import "vigil" "outcome" (func $outcome (param i32 i64)))
            (memory (export "memory") 1)
            (func (export "vigil_evaluate_batch") (param $n i32) (result i32) (local $i i32)
                (block $done (loop $next
                    (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
                    (call $outcome (local.get $i) (i64.const 0))
                    (local.set $i (i32.add (local.get $i) (i32.const 1)))
                    (br $next)))
                (local.get $n))
            (data (i32.const 16) "{}")
            (func (export "vigil_abi_version") (result i32) i32.const 1)
            (func (export "vigil_manifest") (result i64) i64.const {})
            (func (export "vigil_buffer") (param i32) (result i32) i32.const 1024)
            (func (export "vigil_output") (result i32) i32.const 8192)
            (func (export "vigil_configure") (param i32) (result i32) i32.const 0)
            (func (export "vigil_evaluate") (param i32) (result i64) i64.const 0))"#,
        manifest.replace('"', "\\\""),
        (16i64 << 32) | manifest.len() as i64
    ))
    .expect("floor module");
    let path = Path::new("floor.wasm");
    let loaded = loader.load(path, &floor, &module_hash(&floor)).expect("load floor");
    let mut instance = loaded.instantiate(&sandbox).expect("instance");
    c.bench_function("abi floor: empty rule, 2 fields", |b| {
        b.iter(|| black_box(instance.call(black_box(&encoded), &loaded.projection, &[])))
    });
    let batch = Batch::repeated(&encoded, &[], BATCH);
    let mut results = Results::new(quanta::Clock::new());
    c.bench_function("abi floor: empty rule, 2 fields, per event in batches", |b| {
        per_event(b, || {
            results.clear();
            batch.forget_layouts();
            instance.call_batch(black_box(&batch), 0, &loaded.projection, &[], &mut results)
        })
    });

    let native_tx = native_payment(&tokenizer);
    let native_ctx = TestContext::new()
        .list("blocked-cards", [tokenizer.token("5500000000000004")])
        .list("blocked-accounts", ["acct-013"])
        .list("blocked-devices", ["dev-066"])
        .list("blocked-ips", ["198.51.100.66"]);
    let rules: [(&str, &vigil_sdk::Rule, TestContext); 3] = [
        ("large_amount", &large_amount::RULE, TestContext::new()),
        ("geo_mismatch", &geo_mismatch::RULE, TestContext::new()),
        ("blocklist", &blocklist::RULE, native_ctx),
    ];
    for (file, rule, ctx) in rules {
        let path = wasm_dir.join(format!("{file}.wasm"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}; run `just rules`", path.display()));
        let loaded = loader.load(&path, &bytes, &module_hash(&bytes)).expect("load");
        let mut instance = loaded.instantiate(&sandbox).expect("instance");
        let wasm_result = instance.call(&encoded, &loaded.projection, &[]).expect("call");
        let prepared = Prepared::new(rule, &native_tx, &ctx);
        let native_result = prepared.run();
        assert_eq!(wasm_result.action, native_result.action, "{file}: wasm and native disagree");

        let mut group = c.benchmark_group(file);
        let mut scratch = vec![0u8; encoded.len()];
        let all = vigil_abi::Projection::new(vigil_abi::FieldMask::ALL);
        group.bench_function("project only", |b| b.iter(|| loaded.projection.apply(black_box(&encoded), &mut scratch)));
        group.bench_function("wasm, all fields", |b| {
            b.iter(|| black_box(instance.call(black_box(&encoded), &all, &[])))
        });
        group.bench_function("native", |b| b.iter(|| black_box(prepared.run())));
        group.bench_function("wasm", |b| {
            b.iter(|| black_box(instance.call(black_box(&encoded), &loaded.projection, &[])))
        });
        group.bench_function("wasm, per event in batches", |b| {
            per_event(b, || {
                results.clear();
                batch.forget_layouts();
                instance.call_batch(black_box(&batch), 0, &loaded.projection, &loaded.features, &mut results)
            })
        });
        // The same crate linked in, called as the pipeline calls a rule: the
        // host's share of a call without the sandbox.
        let linked = loader.load_native(rule).expect("native rule");
        let mut linked_instance = linked.instantiate(&sandbox).expect("native instance");
        group.bench_function("native, host's call path", |b| {
            b.iter(|| black_box(linked_instance.call(black_box(&encoded), &linked.projection, &[])))
        });
        group.finish();
    }
    let _ = Arc::new(());
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
