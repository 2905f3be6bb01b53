# vigil's tasks. `just --list` shows them.

rules_wasm := "rules/target/wasm32-unknown-unknown/release"

# Build the example rules to wasm32 and install them in rules/dist/.
rules:
    cd rules && cargo build --release --target wasm32-unknown-unknown
    mkdir -p rules/dist
    cp {{rules_wasm}}/large_amount.wasm {{rules_wasm}}/blocklist.wasm {{rules_wasm}}/geo_mismatch.wasm {{rules_wasm}}/velocity.wasm {{rules_wasm}}/spend_spike.wasm rules/dist/

# Run the daemon on the example config (Ctrl-C stops it after draining).
# The demo replays the sample from the start, so it drops the checkpoint a
# previous run left; a real deployment resumes from it.
run: rules
    rm -f state/state.redb
    cargo run --release -p vigil -- run --config examples/vigil.toml

# Validate a rule module and print its manifest.
check module:
    cargo run --release -p vigil -- check {{module}} --config examples/vigil.toml

# Backtest the example rules on the bundled card-transaction sample:
# summary with precision/recall, decisions and report.html in out/replay/.
replay *args: rules
    cargo run --release -p vigil -- replay --config examples/vigil.toml \
        --mapping examples/card-transactions.mapping.toml examples/data/card-transactions-sample.csv {{args}}

# Judge the typology rules (rules/typologies/) on a generated stream holding
# every fraud and money-laundering pattern: precision and recall per typology.
typologies: rules
    mkdir -p out/typologies/rules
    cp {{rules_wasm}}/typology_*.wasm out/typologies/rules/
    cargo run --release -p vigil -- gen -n 300000 --accounts 20000 --seed 90210 \
        --label is_fraud --typology typology -o out/typologies/events.jsonl
    cargo run --release -p vigil -- replay out/typologies/events.jsonl --config examples/vigil.toml \
        --rules out/typologies/rules --label is_fraud --typology typology --out out/typologies/replay --quiet

# Create a rule crate from the template in the rules workspace.
new-rule name:
    cargo run --release -p vigil -- new-rule {{name}}

# Install tansu, the Kafka tests' broker, if it is not there yet.
broker:
    scripts/install-tansu

# The whole test suite: host, SDK, ABI, and the rules' native unit tests;
# ends with the total over every test binary. The Kafka tests start tansu.
test: rules broker
    #!/usr/bin/env bash
    set -euo pipefail
    log=$(mktemp)
    # bench-native: rule crates linked into the host, which the benchmarks
    # compare the sandbox with, and the tests of that comparison.
    { cargo test --workspace --features vigil/bench-native; (cd rules && cargo test); } 2>&1 | tee "$log"
    # The benchmark suites on tiny sizes, to prove they still run.
    cargo test -p vigil --features bench-native --bench suite -- --quick
    cargo test -p vigil --features bench-native --bench kafka -- --quick
    # A minute of fuzzing the event decoder.
    just fuzz 60
    awk '/^test result:/ { p += $4; f += $6 } END { print p " passed, " f " failed" }' "$log"
    rm -f "$log"

# Fuzz the event decoder for `seconds` (cargo-fuzz, coverage-guided, no
# sanitizer, so stable Rust builds it): it must never panic, and no card
# number may come out of it. A finding lands in fuzz/artifacts/decode/.
fuzz seconds="600":
    #!/usr/bin/env bash
    set -euo pipefail
    corpus=$(mktemp -d)
    trap 'rm -rf "$corpus"' EXIT
    cargo fuzz run --sanitizer none decode "$corpus" fuzz/seeds/decode -- -max_total_time={{seconds}} -max_len=4096

# The benchmark suites: one run each, one table of figures with their
# targets and ratios (see BENCHMARKS.md): the engine (about a minute), then
# vigil through a Kafka-protocol broker (tansu) against the broker alone.
bench: rules broker
    cargo bench -p vigil --features bench-native --bench suite
    cargo bench -p vigil --features bench-native --bench kafka

# Formatting and lints, as CI would want them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    cargo clippy --workspace --all-targets --features vigil/bench-native -- -D warnings
    cd rules && cargo clippy --all-targets -- -D warnings
