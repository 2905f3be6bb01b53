//! Helpers: temp environments, configs, running the daemon in-process or as
//! a real process, reading outputs.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vigil::config::{Config, FileSourceConfig, ListConfig, ListKind, RuleSettings, SinkConfig, SourceConfig};
use vigil::pipeline::Summary;

/// A Kafka daemon's config, partitioned by card, whose brokers nobody
/// listens on: enough for what is checked before a broker is asked.
pub const KAFKA_BY_CARD: &str = "[source]\ntype = \"kafka\"\ntopic = \"payments\"\n[kafka]\nbrokers = \"127.0.0.1:1\"\n\
    group-id = \"g\"\n[pipeline]\npartition-key = \"card\"\n[clean]\npan-key = \"integration-test-key-0123456789\"\n";

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// A rule module built by `just rules`, e.g. `wasm("large_amount")`.
pub fn wasm(name: &str) -> PathBuf {
    let p = root().join("rules/target/wasm32-unknown-unknown/release").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: build the rules first with `just rules` (or run `just test`)", p.display());
    p
}

/// A throwaway environment: rules folder, events file, outputs, state.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        let env = Self { dir: tempfile::tempdir().expect("temp dir") };
        std::fs::create_dir_all(env.rules()).expect("rules dir");
        std::fs::write(env.events(), "").expect("events file");
        env
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    pub fn rules(&self) -> PathBuf {
        self.path("rules")
    }
    pub fn events(&self) -> PathBuf {
        self.path("events.jsonl")
    }
    pub fn decisions(&self) -> PathBuf {
        self.path("out/decisions.jsonl")
    }
    pub fn rule_sets(&self) -> PathBuf {
        self.path("out/rule-sets.jsonl")
    }
    pub fn alerts(&self) -> PathBuf {
        self.path("out/alerts.jsonl")
    }
    pub fn dead_letters(&self) -> PathBuf {
        self.path("out/dead-letters.jsonl")
    }

    /// Copies a built rule module into the rules folder under `file`.
    pub fn install(&self, module: &str, file: &str) {
        install_atomically(&wasm(module), &self.rules().join(file));
    }

    pub fn write_events(&self, events: &[Value]) {
        let text: String = events.iter().map(|e| format!("{e}\n")).collect();
        std::fs::write(self.events(), text).expect("write events");
    }

    pub fn append_lines(&self, lines: &[String]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(self.events()).expect("open events");
        for l in lines {
            writeln!(f, "{l}").expect("append");
        }
        f.flush().expect("flush");
    }

    /// A config over this environment: file source, file sinks, no rule
    /// settings, fast reload, a test PAN key.
    pub fn config(&self, follow: bool) -> Config {
        let mut c = Config {
            source: SourceConfig::File(FileSourceConfig {
                path: self.events(),
                follow,
                poll_interval: Duration::from_millis(10),
            }),
            ..Config::default()
        };
        c.sinks.decisions = SinkConfig::File { path: self.decisions() };
        c.sinks.alerts = SinkConfig::File { path: self.alerts() };
        c.sinks.dead_letters = SinkConfig::File { path: self.dead_letters() };
        c.sinks.aggregates = SinkConfig::File { path: self.path("out/aggregates.jsonl") };
        c.sinks.late = SinkConfig::File { path: self.path("out/late.jsonl") };
        c.sinks.rule_sets = SinkConfig::File { path: self.rule_sets() };
        // Most tests look at every rule's outcome.
        c.decisions.record = vigil::decide::RecordShape::Full;
        c.rules.dir = self.rules();
        c.rules.debounce = Duration::from_millis(50);
        c.state.dir = self.path("state");
        c.clean.pan_key = Some("integration-test-key-0123456789".into());
        c.pipeline.workers = std::num::NonZeroU32::new(2);
        c
    }

    /// Adds the example lists to `config`.
    pub fn with_example_lists(&self, config: &mut Config) {
        for (name, kind) in [
            ("blocked-cards", ListKind::Card),
            ("blocked-accounts", ListKind::Plain),
            ("blocked-devices", ListKind::Plain),
            ("blocked-ips", ListKind::Plain),
        ] {
            let path = root().join("examples/lists").join(format!("{name}.txt"));
            config.lists.insert(name.into(), ListConfig { path, kind });
        }
    }

    /// Writes a followed-source config file for tests that run the real
    /// binary; `extra` is appended (rule settings, lists, …).
    pub fn toml(&self, extra: &str) -> PathBuf {
        let text = format!(
            r#"
[source]
type = "file"
path = {events:?}
follow = true
poll-interval = "10ms"

[pipeline]
workers = 2

[clean]
pan-key = "integration-test-key-0123456789"

[rules]
dir = {rules:?}
debounce = "50ms"

[sinks.decisions]
type = "file"
path = {decisions:?}

[sinks.alerts]
type = "file"
path = {alerts:?}

[sinks.dead-letters]
type = "file"
path = {dead:?}

[sinks.aggregates]
type = "file"
path = {aggregates:?}

[sinks.late]
type = "file"
path = {late:?}

[sinks.rule-sets]
type = "file"
path = {rule_sets:?}

[decisions]
record = "full"

[state]
dir = {state:?}
{extra}
"#,
            events = self.events(),
            rules = self.rules(),
            decisions = self.decisions(),
            alerts = self.alerts(),
            dead = self.dead_letters(),
            aggregates = self.path("out/aggregates.jsonl"),
            late = self.path("out/late.jsonl"),
            rule_sets = self.rule_sets(),
            state = self.path("state"),
        );
        let path = self.path("vigil.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }
}

/// Writes `src` to `dst` the safe way: a dot-file, then a rename.
pub fn install_atomically(src: &Path, dst: &Path) {
    let tmp = dst.with_file_name(format!(".{}.tmp", dst.file_name().and_then(|n| n.to_str()).unwrap_or("x")));
    std::fs::copy(src, &tmp).expect("copy module");
    std::fs::rename(&tmp, dst).expect("rename module");
}

/// Sets a rule's settings.
pub fn settings(config: &mut Config, rule: &str, f: impl FnOnce(&mut RuleSettings)) {
    f(config.rule.entry(rule.to_owned()).or_default());
}

/// Runs the daemon in-process until its (non-followed) source ends.
pub fn run_to_end(config: Config) -> Summary {
    try_run_to_end(config).expect("vigil run")
}

pub fn try_run_to_end(config: Config) -> anyhow::Result<Summary> {
    try_run_with(config, vigil::app::Overrides::default())
}

pub fn try_run_with(config: Config, overrides: vigil::app::Overrides) -> anyhow::Result<Summary> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    rt.block_on(vigil::app::run_with(config, std::future::pending(), overrides))
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

/// The number of lines in a file, without parsing them; 0 if it is missing.
pub fn line_count(path: &Path) -> usize {
    std::fs::read(path).map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count()).unwrap_or(0)
}

/// A valid card purchase.
pub fn payment(id: &str, amount: i64) -> Value {
    json!({
        "id": id,
        "ts": 1_717_200_000_000i64 + amount % 1000,
        "channel": "card",
        "kind": "purchase",
        "amount": amount,
        "currency": "USD",
        "account": format!("acct-{}", amount % 7),
        "card": {"pan": "4000 0000 0000 0002", "country": "US", "present": true},
    })
}

/// The decision record for `id`, if written yet.
pub fn decision_for(path: &Path, id: &str) -> Option<Value> {
    read_jsonl(path).into_iter().find(|d| d["id"] == id)
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The outcome of rule `rule` in a decision record.
pub fn rule_outcome<'a>(decision: &'a Value, rule: &str) -> Option<&'a Value> {
    decision["rules"].as_array()?.iter().find(|r| r["rule"] == rule)
}

/// Names of the rules in a decision record.
pub fn rule_names(decision: &Value) -> Vec<String> {
    decision["rules"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["rule"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// A small deterministic generator (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Runs the daemon in-process with the config at `config`, which must
/// fail to start: the error, with its causes.
pub fn run_err(config: &Path) -> String {
    let config = vigil::config::Config::load(config).expect("config");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    match rt.block_on(vigil::app::run(config, std::future::pending())) {
        Ok(s) => panic!("vigil started: {s:?}"),
        Err(e) => format!("{e:#}"),
    }
}
