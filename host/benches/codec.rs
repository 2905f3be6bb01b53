//! The codec's share of an event: parsing and validating one JSON line
//! (PAN tokenised) and encoding the result for the rules, on generated
//! payments (`vigil gen`'s mix of channels and fraud patterns).
//!
//! Run: `cargo bench -p vigil --bench codec`. Each figure is per line,
//! averaged over the same 4096 lines. The `dedup` group is the id set's
//! share: one new id remembered and one past the horizon forgotten, with
//! as many ids held as a stream at 5, 80 and 800 events/s keeps under the
//! default one-hour horizon.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use vigil::config::CleanConfig;
use vigil::decode::{Decoder, Dedup, Tokenizer};
use vigil::generate::{GenOptions, Generator};

const LINES: usize = 4096;

fn bench(c: &mut Criterion) {
    let mut text = Vec::new();
    let opts = GenOptions { events: LINES as u64, accounts: 1000, ..GenOptions::default() };
    Generator::new(opts).expect("generator").write(&mut text).expect("generate");
    let text = String::from_utf8(text).expect("generated text is UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    let decoder = Decoder::new(&CleanConfig::default(), Tokenizer::new(b"bench-key-0123456789"));
    for line in &lines {
        decoder.parse(line).unwrap_or_else(|e| panic!("generated line rejected: {e}: {line}"));
    }

    let mut group = c.benchmark_group("codec");
    group.throughput(criterion::Throughput::Elements(LINES as u64));
    group.bench_function("parse and validate", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(decoder.parse(black_box(line)).ok());
            }
        });
    });
    let mut encoded = Vec::new();
    group.bench_function("parse, validate and encode", |b| {
        b.iter(|| {
            for line in &lines {
                if let Ok(p) = decoder.parse(black_box(line)) {
                    black_box(p.encode(&mut encoded).ok());
                }
            }
        });
    });
    group.finish();
}

fn dedup(c: &mut Criterion) {
    const HORIZON_MS: i64 = 3_600_000;
    let mut group = c.benchmark_group("dedup");
    group.throughput(criterion::Throughput::Elements(LINES as u64));
    for held in [18_000i64, 288_000, 2_880_000] {
        let step = HORIZON_MS / held;
        let mut d = Dedup::new(HORIZON_MS, vigil::keyed::KeyedHash::for_tests());
        d.track_forgotten(false);
        let mut buf = itoa::Buffer::new();
        let mut n = 0i64;
        let mut next = |d: &mut Dedup| {
            n += 1;
            assert!(d.insert(buf.format(n), n * step), "every id is new");
        };
        // Fill to the steady state: as many ids held as the horizon keeps.
        for _ in 0..held + 1 {
            next(&mut d);
        }
        group.bench_function(format!("insert and expire, {held} ids held"), |b| {
            b.iter(|| {
                for _ in 0..LINES {
                    next(&mut d);
                }
                // A checkpoint takes what was added.
                black_box(d.take_delta());
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench, dedup);
criterion_main!(benches);
