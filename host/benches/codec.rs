//! The codec's share of an event: parsing and validating one JSON line
//! (PAN tokenised) and encoding the result for the rules, on generated
//! payments (`vigil gen`'s mix of channels and fraud patterns).
//!
//! Run: `cargo bench -p vigil --bench codec`. Each figure is per line,
//! averaged over the same 4096 lines.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use vigil::config::CleanConfig;
use vigil::decode::{Decoder, Tokenizer};
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

criterion_group!(benches, bench);
criterion_main!(benches);
