//! `vigil.toml`: every setting, its default, and what it means.
//!
//! Each field's doc comment is its user documentation; `examples/vigil.toml`
//! shows them in use. Unknown keys are errors, so a typo never silently falls
//! back to a default. Relative paths are relative to the working directory.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::decide::{FailurePolicy, Mode};

/// Why a configuration could not be used. Every message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed or a key is unknown or mistyped.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the key and line.
        message: String,
    },
    /// A value parsed but does not make sense.
    #[error("invalid config: `{key}`: {problem}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), problem: problem.into() }
    }
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The file this config was read from, if any (for reloads on SIGHUP).
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// Where payment events come from.
    #[serde(default)]
    pub source: SourceConfig,
    /// The Kafka cluster, for a Kafka source or sinks.
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// How events are spread over worker threads.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// Validation, de-duplication and PAN tokenisation at ingest.
    #[serde(default)]
    pub clean: CleanConfig,
    /// The rules folder and the sandbox every rule runs in.
    #[serde(default)]
    pub rules: RulesConfig,
    /// Look-back features rules can read, by name:
    /// `card-count-10m = "count(card, 10m)"`. Aggregates: `count(KEY, WINDOW)`,
    /// `sum|min|max|avg(KEY, amount, WINDOW)`, `distinct(KEY, FIELD, WINDOW)`;
    /// keys: card, account, counterparty, device, ip, merchant; windows up to 30 days, in
    /// event time. Rules may also name a spec inline in their manifest.
    #[serde(default)]
    pub features: BTreeMap<String, String>,
    /// A base currency and the rate of others to it, for features over
    /// `base_amount` (`sum(account, base_amount, 24h)`).
    #[serde(default)]
    pub currencies: Option<CurrencyConfig>,
    /// Event-time progress for windows.
    #[serde(default)]
    pub watermark: WatermarkConfig,
    /// Windowed aggregates per key, by name: `[windows.merchant-1m]`. Each
    /// closed window is one record on the aggregates output.
    #[serde(default)]
    pub windows: BTreeMap<String, WindowSpec>,
    /// Per-rule settings, keyed by the rule's manifest name:
    /// `[rule.large-amount]`.
    #[serde(default)]
    pub rule: BTreeMap<String, RuleSettings>,
    /// Named lists rules can look values up in: `[lists.blocked-cards]`.
    #[serde(default)]
    pub lists: BTreeMap<String, ListConfig>,
    /// What a decision record holds.
    #[serde(default)]
    pub decisions: DecisionsConfig,
    /// Where decisions, alerts and dead letters go.
    #[serde(default)]
    pub sinks: SinksConfig,
    /// Local state: compiled-rule cache (and, later, checkpoints).
    #[serde(default)]
    pub state: StateConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The admin listener: metrics, health and the admin API.
    #[serde(default)]
    pub admin: AdminConfig,
}

/// The admin listener (`[admin]`): Prometheus metrics at `/metrics`,
/// `/healthz`, `/readyz` and the admin API under `/admin/`. Off unless
/// `listen` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminConfig {
    /// `host:port` to listen on, e.g. `127.0.0.1:9464`.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// `/readyz` fails when events wait and none has been decided for this
    /// long.
    #[serde(default = "default_stall_threshold", with = "humantime_serde")]
    pub stall_threshold: Duration,
    /// The environment variable holding the bearer token the admin API's
    /// changes need. Without one, the API is read-only.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: None, stall_threshold: default_stall_threshold(), token_env: None }
    }
}

/// Rule log lines let through per second and instance by default
/// (`rules.log-rate`).
pub const DEFAULT_LOG_RATE: u32 = 10;

fn default_log_rate() -> u32 {
    DEFAULT_LOG_RATE
}

fn default_stall_threshold() -> Duration {
    Duration::from_secs(30)
}

impl AdminConfig {
    /// The admin token from the environment variable `token-env` names.
    ///
    /// # Errors
    /// The variable is named but unset or empty.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        let Some(var) = &self.token_env else { return Ok(None) };
        match std::env::var(var) {
            Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_owned())),
            _ => Err(ConfigError::invalid(
                "admin.token-env",
                format!("the environment variable `{var}` is unset or empty; set it to the admin token"),
            )),
        }
    }
}

impl RulesConfig {
    /// The fuel one event may use across all rules (`event-budget`).
    pub fn event_budget(&self) -> u64 {
        self.event_budget.unwrap_or(self.cpu_budget.saturating_mul(20))
    }
}

impl Config {
    /// The keys features, windows and rules' state can be kept per, when
    /// not every key can: with a Kafka source, those of `kafka.state-keys`
    /// (default: the partition key alone), each kept by the daemon owning
    /// the key's partition of its own topic (see `pipeline::hop`); rules'
    /// state only per the last of them. `None`: any key.
    pub fn state_keys(&self) -> Option<StateKeys> {
        if !matches!(self.source, SourceConfig::Kafka(_)) {
            return None;
        }
        let partition = self.pipeline.partition_key.field();
        let keys = match self.kafka.as_ref().map(|k| k.state_keys.as_slice()) {
            Some(keys) if !keys.is_empty() => keys.to_vec(),
            _ => vec![partition],
        };
        let deciding = *keys.last().unwrap_or(&partition);
        Some(StateKeys { keys, deciding })
    }

    /// Whether a Kafka group keeps state per other keys than the partition
    /// key alone, so events hop between daemons.
    pub fn hops(&self) -> bool {
        self.state_keys().is_some_and(|k| k.keys != [self.pipeline.partition_key.field()])
    }

    /// Reads and validates a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, key and problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in messages.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and problem.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.validate()?;
        config.path = Some(path.to_owned());
        Ok(config)
    }

    /// Cross-field checks that serde cannot express.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.rules.cpu_budget == 0 {
            return Err(ConfigError::invalid("rules.cpu-budget", "must be greater than zero"));
        }
        if self.admin.stall_threshold < Duration::from_secs(1) {
            return Err(ConfigError::invalid("admin.stall-threshold", "must be at least 1s"));
        }
        if self.admin.token_env.as_deref().is_some_and(|v| v.is_empty() || v.contains('=')) {
            return Err(ConfigError::invalid("admin.token-env", "must name an environment variable"));
        }
        if self.rules.cpu_budget > 10_000_000_000 {
            return Err(ConfigError::invalid("rules.cpu-budget", "must be at most 10s; a rule runs per event"));
        }
        if self.rules.event_budget.is_some_and(|b| b < self.rules.cpu_budget) {
            return Err(ConfigError::invalid("rules.event-budget", "must be at least rules.cpu-budget"));
        }
        if self.rules.call_timeout < Duration::from_millis(50) {
            return Err(ConfigError::invalid("rules.call-timeout", "must be at least 50ms"));
        }
        if self.clean.max_future > Duration::from_secs(3650 * 86_400) {
            return Err(ConfigError::invalid("clean.max-future", "must be at most 3650 days"));
        }
        if self.rules.memory_cap.as_u64() < 128 * 1024 {
            return Err(ConfigError::invalid(
                "rules.memory-cap",
                "must be at least 128 KiB (a WebAssembly page is 64 KiB)",
            ));
        }
        if self.clean.max_dead_letter_bytes.get() < 2048 {
            return Err(ConfigError::invalid("clean.max-dead-letter-bytes", "must be at least 2 KiB"));
        }
        if self.clean.max_field_bytes == 0 || self.clean.max_field_bytes > 65_535 {
            return Err(ConfigError::invalid("clean.max-field-bytes", "must be between 1 and 65535"));
        }
        for (name, w) in &self.windows {
            let ms = |d: &Duration| d.as_millis();
            match w {
                WindowSpec::Tumbling { size, .. } if ms(size) == 0 => {
                    return Err(ConfigError::invalid(format!("windows.{name}.size"), "must be at least 1ms"));
                }
                WindowSpec::Hopping { size, hop, .. } if ms(hop) == 0 || hop > size => {
                    return Err(ConfigError::invalid(
                        format!("windows.{name}.hop"),
                        "must be at least 1ms and at most the window size",
                    ));
                }
                WindowSpec::Session { gap, .. } if ms(gap) == 0 => {
                    return Err(ConfigError::invalid(format!("windows.{name}.gap"), "must be at least 1ms"));
                }
                _ => {}
            }
        }
        for (name, r) in &self.rule {
            match (r.mode, r.canary_percent) {
                (Mode::Canary, None) => {
                    return Err(ConfigError::invalid(
                        format!("rule.{name}.canary-percent"),
                        "is required with mode = \"canary\" (the share of entities the rule enforces on, 0 to 100)",
                    ));
                }
                (_, Some(p)) if !(0.0..=100.0).contains(&p) => {
                    return Err(ConfigError::invalid(format!("rule.{name}.canary-percent"), "must be 0 to 100"));
                }
                // With another mode the share waits for the canary mode
                // (which the admin API can set).
                _ => {}
            }
        }
        for (name, list) in &self.lists {
            if list.path.as_os_str().is_empty() {
                return Err(ConfigError::invalid(format!("lists.{name}.path"), "must not be empty"));
            }
        }
        match &self.source {
            SourceConfig::File(f) if f.poll_interval.is_zero() => {
                return Err(ConfigError::invalid("source.poll-interval", "must be greater than zero"));
            }
            SourceConfig::File(_) => {}
            SourceConfig::Kafka(k) => {
                if k.topic.is_empty() {
                    return Err(ConfigError::invalid("source.topic", "must not be empty"));
                }
                if !self.state.checkpoints {
                    return Err(ConfigError::invalid(
                        "state.checkpoints",
                        "must be true with a Kafka source: offsets are committed by checkpoints",
                    ));
                }
            }
        }
        let uses_kafka = matches!(self.source, SourceConfig::Kafka(_))
            || self.sinks.all().iter().any(|(_, s)| matches!(s, SinkConfig::Kafka { .. }));
        match &self.kafka {
            None if uses_kafka => {
                return Err(ConfigError::invalid(
                    "kafka.brokers",
                    "a Kafka source or sink is configured but [kafka] is missing; set kafka.brokers",
                ));
            }
            Some(k) if k.brokers.trim().is_empty() => {
                return Err(ConfigError::invalid("kafka.brokers", "must list at least one host:port"));
            }
            Some(k) if k.group_id.trim().is_empty() => {
                return Err(ConfigError::invalid("kafka.group-id", "must not be empty"));
            }
            Some(k) if k.tls.as_ref().is_some_and(|t| t.certificate.is_some() != t.key.is_some()) => {
                return Err(ConfigError::invalid(
                    "kafka.tls.certificate",
                    "a client certificate needs its key (kafka.tls.key), and a key its certificate",
                ));
            }
            Some(k) if let Some((key, path)) = k.tls.iter().flat_map(|t| t.files()).find(|(_, p)| !p.is_file()) => {
                return Err(ConfigError::invalid(key, format!("{} is not a readable file", path.display())));
            }
            Some(k)
                if let Some(dup) = k.state_keys.iter().enumerate().find(|(i, f)| k.state_keys[..*i].contains(f)) =>
            {
                return Err(ConfigError::invalid(
                    "kafka.state-keys",
                    format!("lists `{}` twice; list each key once, in the order events visit them", dup.1.name()),
                ));
            }
            Some(k) if k.exactly_once && self.hops() => {
                return Err(ConfigError::invalid(
                    "kafka.exactly-once",
                    "is not supported with state kept per several keys (kafka.state-keys): the hops between \
                     daemons are at-least-once; turn one of them off",
                ));
            }
            Some(k) if k.exactly_once && !matches!(self.source, SourceConfig::Kafka(_)) => {
                return Err(ConfigError::invalid(
                    "kafka.exactly-once",
                    "needs a Kafka source: a transaction commits the input offsets with the outputs",
                ));
            }
            _ => {}
        }
        for (role, sink) in self.sinks.all() {
            if let SinkConfig::Kafka { topic } = sink
                && topic.is_empty()
            {
                return Err(ConfigError::invalid(format!("sinks.{role}.topic"), "must not be empty"));
            }
        }
        Ok(())
    }

    /// Resolves the PAN tokenisation key: the environment variable named by
    /// `clean.pan-key-env` when it is set (it wins over the file, where a
    /// key is easier to leak), else `clean.pan-key`, else — only with
    /// `clean.demo-key = true` — vigil's public demo key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when there is none, the key is too short,
    /// or it is the public demo key without `clean.demo-key = true`.
    pub fn pan_key(&self) -> Result<Vec<u8>, ConfigError> {
        let env = std::env::var(&self.clean.pan_key_env).ok().filter(|k| !k.is_empty());
        let (key, from) = match (env, &self.clean.pan_key) {
            (Some(k), file) => {
                if file.is_some() {
                    tracing::warn!(
                        variable = %self.clean.pan_key_env,
                        "the PAN key is set both in the environment and in clean.pan-key; the environment's is used"
                    );
                }
                (k, self.clean.pan_key_env.as_str())
            }
            (None, Some(k)) => (k.clone(), "clean.pan-key"),
            (None, None) if self.clean.demo_key => (DEMO_PAN_KEY.to_owned(), "clean.demo-key"),
            (None, None) => {
                return Err(ConfigError::invalid(
                    "clean.pan-key",
                    format!(
                        "no PAN tokenisation key: set the environment variable {} (or clean.pan-key; \
                         clean.demo-key = true runs on vigil's public demo key, for demos only)",
                        self.clean.pan_key_env
                    ),
                ));
            }
        };
        if key == DEMO_PAN_KEY && !self.clean.demo_key {
            return Err(ConfigError::invalid(
                from,
                "is vigil's public demo key: anyone can recompute its card tokens. Set a secret key, \
                 or clean.demo-key = true for a demo",
            ));
        }
        if key.len() < 16 {
            return Err(ConfigError::invalid(from, "must be at least 16 bytes"));
        }
        Ok(key.into_bytes())
    }
}

/// The PAN key `clean.demo-key = true` runs on: public, so its tokens
/// protect nothing.
pub const DEMO_PAN_KEY: &str = "demo-key-not-for-production";

/// Where events come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A file of JSON lines, read from the start.
    File(FileSourceConfig),
    /// A Kafka topic read as a member of the consumer group `kafka.group-id`;
    /// values are JSON events.
    Kafka(KafkaSourceConfig),
}

/// A Kafka topic source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaSourceConfig {
    /// The input topic. Producers must key events by the partition key
    /// (`pipeline.partition-key`, e.g. the card or account) so that every
    /// event of a key, and so its state, lives in one partition.
    pub topic: String,
}

/// The Kafka cluster and client settings shared by the source and sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Consumer group: daemons with the same group id share the input's
    /// partitions.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// The compacted topic keyed state is written to at each checkpoint and
    /// restored from when a partition moves; it needs as many partitions as
    /// the input topic. Default: `<group-id>-state`.
    #[serde(default)]
    pub changelog_topic: Option<String>,
    /// How long startup waits for the brokers before failing.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// TLS to the brokers: payment data is encrypted in transit, and the
    /// brokers are who their certificates say. Without it, plain TCP.
    #[serde(default)]
    pub tls: Option<KafkaTlsConfig>,
    /// Extra librdkafka settings for every client, passed through as they
    /// are: `"security.protocol" = "sasl_ssl"`, `"sasl.mechanism" =
    /// "SCRAM-SHA-512"`, `"sasl.username" = …`, `"session.timeout.ms" =
    /// "10000"`. They override vigil's own.
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// librdkafka settings for the consumers only (over `client`), e.g.
    /// `"session.timeout.ms"`: how soon a dead daemon's partitions move.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka settings for the producer only (over `client`).
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
    /// Exactly-once: each checkpoint is one Kafka transaction holding the
    /// outputs since the previous one, the state changelog records and the
    /// input offsets; consumers of the outputs read with
    /// `isolation.level=read_committed`. Off: at-least-once, outputs after
    /// the last checkpoint may repeat (with the same id) after a crash.
    #[serde(default)]
    pub exactly_once: bool,
    /// The producer's transactional id with `exactly-once`: stable across
    /// restarts of one daemon and different between daemons, so a restarted
    /// daemon fences off its old self. Default: the group id and a hash of
    /// the host name and the state folder.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Keep local snapshots of the changelog in `state.dir`, so a partition
    /// taken back reads only the changelog written since (at-least-once
    /// mode). Off: every restore reads its partitions' changelog whole.
    #[serde(default = "default_true")]
    pub local_snapshots: bool,
    /// The keys features, windows and rules' state may be kept per, in
    /// the order an event visits their owners; rules' state only per the
    /// last. Each key is reached through the topic `<group-id>-by-<space>`
    /// (`card`, `account` — accounts and counterparties —, `device`, `ip`,
    /// `merchant`), with as many partitions as the input, read by the
    /// consumer group of the same name, whose state goes to the changelog
    /// `<group-id>-by-<space>-state` — but for a first key that is the
    /// partition key and shares its space with no other listed key, which
    /// is kept on the input. Default: the partition key alone.
    #[serde(default)]
    pub state_keys: Vec<crate::event::KeyField>,
}

/// What [`Config::state_keys`] allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateKeys {
    /// The keys features and windows may be kept per.
    pub keys: Vec<crate::event::KeyField>,
    /// The one key rules' state may be kept per.
    pub deciding: crate::event::KeyField,
}

/// TLS to the Kafka brokers (`[kafka.tls]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct KafkaTlsConfig {
    /// The CA certificates (PEM) the brokers' certificates must chain to.
    /// Default: the system's trusted CAs.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// This daemon's certificate (PEM), for brokers that ask clients for
    /// one (mutual TLS); with `key`.
    #[serde(default)]
    pub certificate: Option<PathBuf>,
    /// The private key (PEM) of `certificate`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl KafkaTlsConfig {
    /// The files it names, each with its key, for checks at startup.
    pub fn files(&self) -> impl Iterator<Item = (&'static str, &Path)> {
        [("kafka.tls.ca", &self.ca), ("kafka.tls.certificate", &self.certificate), ("kafka.tls.key", &self.key)]
            .into_iter()
            .filter_map(|(key, path)| path.as_deref().map(|p| (key, p)))
    }
}

impl KafkaConfig {
    /// The transactional id with `exactly-once` (see `transactional-id`).
    pub fn transactional_id(&self, state_dir: &Path) -> String {
        if let Some(id) = &self.transactional_id {
            return id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let dir = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
        let hash = xxhash_rust::xxh3::xxh3_64(format!("{}\0{}", host.trim(), dir.display()).as_bytes());
        format!("{}-{hash:016x}", self.group_id)
    }

    /// The changelog topic's name.
    pub fn changelog_topic(&self) -> String {
        self.changelog_topic.clone().unwrap_or_else(|| format!("{}-state", self.group_id))
    }
}

fn default_group_id() -> String {
    "vigil".into()
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self::File(FileSourceConfig {
            path: PathBuf::from("examples/events.jsonl"),
            follow: false,
            poll_interval: default_poll_interval(),
        })
    }
}

/// A JSONL file source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileSourceConfig {
    /// The file: one JSON payment event per line.
    pub path: PathBuf,
    /// Keep reading lines appended to the file after reaching its end, like
    /// `tail -f`, until shut down. When false, vigil drains and exits at the end.
    #[serde(default)]
    pub follow: bool,
    /// How often to look for new lines at the end of a followed file.
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
}

fn default_poll_interval() -> Duration {
    Duration::from_millis(100)
}

/// The key events are decided by: the worker owning an event's key of this
/// field writes its decision, so one key's decisions come out in order.
/// Features, windows and rules' state are exact per any key whatever this
/// is; with a Kafka source it must be the key producers partition by, and
/// the only key state may be kept per.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionKey {
    /// The account id (always present).
    #[default]
    Account,
    /// The card token; events without a card fall back to the account.
    Card,
    /// The device id; falls back to the account.
    Device,
    /// The IP address; falls back to the account.
    Ip,
    /// The merchant id; falls back to the account.
    Merchant,
}

impl PartitionKey {
    /// The key field it names.
    pub fn field(self) -> crate::event::KeyField {
        use crate::event::KeyField;
        match self {
            PartitionKey::Account => KeyField::Account,
            PartitionKey::Card => KeyField::Card,
            PartitionKey::Device => KeyField::Device,
            PartitionKey::Ip => KeyField::Ip,
            PartitionKey::Merchant => KeyField::Merchant,
        }
    }
}

/// How events are spread over workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PipelineConfig {
    /// Worker threads; each owns the keys that hash to it. Default: the
    /// number of CPU cores.
    #[serde(default)]
    pub workers: Option<NonZeroU32>,
    /// The field events are partitioned by; per-key order is preserved.
    #[serde(default)]
    pub partition_key: PartitionKey,
    /// Threads that parse and validate events, a batch at a time, keeping
    /// their order. Default: half the CPU cores, at least 1; 1 parses on
    /// the source thread.
    #[serde(default)]
    pub decode_threads: Option<NonZeroU32>,
    /// Events handed between threads at once.
    #[serde(default = "default_batch_size")]
    pub batch_size: NonZeroUsize,
    /// Batches that may wait between two stages before the producer blocks
    /// (back-pressure).
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: NonZeroUsize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            workers: None,
            partition_key: PartitionKey::default(),
            decode_threads: None,
            batch_size: default_batch_size(),
            channel_capacity: default_channel_capacity(),
        }
    }
}

impl PipelineConfig {
    /// The number of workers to run.
    pub fn worker_count(&self) -> usize {
        self.workers
            .map(|w| w.get() as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, NonZeroUsize::get))
    }

    /// The number of threads that parse events.
    ///
    /// By default half the cores: the workers, the source and the sink
    /// want the rest. A pool as large as the machine competes with them
    /// for every core, and its threads spin between batches: on 2 cores,
    /// `vigil run` decides the same events in less time parsing on the
    /// source thread than with a pool of two (BENCHMARKS.md, "What moved
    /// them").
    pub fn decode_thread_count(&self) -> usize {
        self.decode_threads.map(|w| w.get() as usize).unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
            (cores / 2).max(1)
        })
    }
}

fn default_batch_size() -> NonZeroUsize {
    NonZeroUsize::new(256).expect("non-zero")
}

fn default_channel_capacity() -> NonZeroUsize {
    NonZeroUsize::new(8).expect("non-zero")
}

/// Ingest-time cleaning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CleanConfig {
    /// An event whose `id` was already seen this long before (in event time)
    /// is dead-lettered as a duplicate.
    #[serde(default = "default_dedup_horizon", with = "humantime_serde")]
    pub dedup_horizon: Duration,
    /// The longest accepted line, in bytes.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// The longest accepted string field (id, account, attribute value, …), in bytes.
    #[serde(default = "default_max_field_bytes")]
    pub max_field_bytes: usize,
    /// The most free attributes an event may carry.
    #[serde(default = "default_max_attrs")]
    pub max_attrs: usize,
    /// The secret key PANs are tokenised with (HMAC-SHA256). Prefer the
    /// environment variable below; tokens change when the key changes.
    #[serde(default)]
    pub pan_key: Option<String>,
    /// The environment variable holding the PAN key; when it is set, it
    /// wins over `pan-key`.
    #[serde(default = "default_pan_key_env")]
    pub pan_key_env: String,
    /// Run on vigil's public demo key when no other is given: for demos and
    /// tests only, since anyone can recompute its tokens. Without it, that
    /// key is refused.
    #[serde(default)]
    pub demo_key: bool,
    /// Events stamped more than this ahead of the clock are dead-lettered:
    /// a time in microseconds read as milliseconds would otherwise move
    /// the watermark tens of thousands of years at once.
    #[serde(default = "default_max_future", with = "humantime_serde")]
    pub max_future: Duration,
    /// Events stamped before this time (RFC 3339 or epoch milliseconds) are
    /// dead-lettered. Default: none before 1970 are accepted.
    #[serde(default)]
    pub earliest: Option<EventTime>,
    /// The largest dead-letter record, in bytes: the copy of a rejected
    /// line is cut to fit (the record then says how long it was). Keep it
    /// under a Kafka dead-letter topic's `message.max.bytes`.
    #[serde(default = "default_max_dead_letter_bytes")]
    pub max_dead_letter_bytes: NonZeroUsize,
}

impl Default for CleanConfig {
    fn default() -> Self {
        Self {
            dedup_horizon: default_dedup_horizon(),
            max_event_bytes: default_max_event_bytes(),
            max_field_bytes: default_max_field_bytes(),
            max_attrs: default_max_attrs(),
            pan_key: None,
            pan_key_env: default_pan_key_env(),
            demo_key: false,
            max_dead_letter_bytes: default_max_dead_letter_bytes(),
            max_future: default_max_future(),
            earliest: None,
        }
    }
}

fn default_dedup_horizon() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_event_bytes() -> usize {
    16 * 1024
}
fn default_max_field_bytes() -> usize {
    256
}
fn default_max_attrs() -> usize {
    32
}
fn default_max_future() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_dead_letter_bytes() -> NonZeroUsize {
    NonZeroUsize::new(64 * 1024).expect("non-zero")
}
fn default_pan_key_env() -> String {
    "VIGIL_PAN_KEY".to_owned()
}

/// A point in event time in the config: RFC 3339 text or epoch milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTime(i64);

impl EventTime {
    /// The time `ms` milliseconds after the epoch.
    pub fn from_ms(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub fn as_ms(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for EventTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
        match t {
            Some(t) => f.write_str(&t),
            None => write!(f, "{} ms", self.0),
        }
    }
}

impl<'de> Deserialize<'de> for EventTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Ms(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Ms(ms) => Ok(Self(ms)),
            Raw::Text(s) => {
                let t = time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                    .map_err(|e| serde::de::Error::custom(format!("{s:?} is not an RFC 3339 time: {e}")))?;
                i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
                    .map(Self)
                    .map_err(|_| serde::de::Error::custom(format!("{s:?} is out of range")))
            }
        }
    }
}

/// The rules folder and the sandbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RulesConfig {
    /// The folder watched for `.wasm` rule modules. Files starting with `.`
    /// or ending in `.tmp`/`.part` are ignored, so copy-then-rename is safe.
    #[serde(default = "default_rules_dir")]
    pub dir: PathBuf,
    /// CPU budget of one rule call in fuel units (about one WebAssembly
    /// instruction each; 5,000,000 is a few milliseconds). A call that uses
    /// it up is cut off and counts as a failure. Fuel, unlike a wall-clock
    /// deadline, does not depend on machine load, so a replay decides exactly
    /// as the live run did. `vigil check` prints a rule's fuel per call.
    #[serde(default = "default_cpu_budget")]
    pub cpu_budget: u64,
    /// CPU budget of one event across all its rules, in fuel: once an
    /// event has used it, its remaining rules get their failure outcome
    /// without being called, so one payment costs at most this however
    /// many rules run. Default: 20 calls' budgets.
    #[serde(default)]
    pub event_budget: Option<u64>,
    /// Wall-clock backstop of one rule call (a call that takes a batch of
    /// events counts as one): a call still running this long after it
    /// started (fuel should have ended it long before) is stopped and
    /// fails. Much larger than the fuel budget, so it only ends a call that
    /// runs away.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// The most memory one rule instance may use: its linear memory and
    /// its tables together.
    #[serde(default = "default_memory_cap")]
    pub memory_cap: bytesize::ByteSize,
    /// The most memory one rule's keyed state may take per worker (keys,
    /// values and about 64 bytes of bookkeeping each); a `state_put` past
    /// it is refused, as one past a million keys is.
    #[serde(default = "default_state_max_bytes")]
    pub state_max_bytes: bytesize::ByteSize,
    /// A rule's keyed-state entry not written for this long (event time)
    /// is forgotten, so state does not outlive the entities it is about.
    #[serde(default = "default_state_ttl", with = "humantime_serde")]
    pub state_ttl: Duration,
    /// Start even when no rule in `dir` can be used. Off: such a start is
    /// refused, naming each rejected file and why, rather than deciding
    /// every payment with no rule.
    #[serde(default)]
    pub allow_empty: bool,
    /// Log lines a second each rule instance may write through
    /// `ctx.log` (the rest are counted and reported with the next line
    /// let through); 0 drops them. `vigil replay` drops them unless run
    /// with `--rule-logs`.
    #[serde(default = "default_log_rate")]
    pub log_rate: u32,
    /// The final action while no enforcing rule is live (none loaded, or
    /// all quarantined): `review` (default), `block`, or `allow`. The
    /// decision record carries the reason `no_enforcing_rule`.
    #[serde(default = "default_on_empty")]
    pub on_empty: FailurePolicy,
    /// Consecutive failures after which a rule is quarantined (not called,
    /// its failure outcome applied) until a new version of it is deployed.
    #[serde(default = "default_quarantine_after")]
    pub quarantine_after: NonZeroU32,
    /// Outcome of a failed call for rules that do not set `on-failure`.
    #[serde(default)]
    pub on_failure: FailurePolicy,
    /// How long the folder must be quiet before changes are loaded.
    #[serde(default = "default_debounce", with = "humantime_serde")]
    pub debounce: Duration,
    /// Watch the folder and load changes live. SIGHUP always rescans.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// Public keys whose signatures vigil accepts on rule modules: each 64
    /// hex digits or the path of a `.pub` file (`vigil keygen`).
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Load only modules signed by `signatures-required` distinct keys of
    /// `trusted-keys`, over the module and the settings it runs with
    /// (`vigil sign`); the admin API then cannot change rule modes.
    #[serde(default)]
    pub require_signature: bool,
    /// Distinct trusted signatures a module needs (e.g. 2: author and
    /// approver). Default 1 with `require-signature`.
    #[serde(default)]
    pub signatures_required: Option<NonZeroU32>,
}

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            dir: default_rules_dir(),
            cpu_budget: default_cpu_budget(),
            event_budget: None,
            call_timeout: default_call_timeout(),
            memory_cap: default_memory_cap(),
            state_max_bytes: default_state_max_bytes(),
            state_ttl: default_state_ttl(),
            allow_empty: false,
            log_rate: default_log_rate(),
            on_empty: default_on_empty(),
            quarantine_after: default_quarantine_after(),
            on_failure: FailurePolicy::default(),
            debounce: default_debounce(),
            watch: true,
            trusted_keys: Vec::new(),
            require_signature: false,
            signatures_required: None,
        }
    }
}

fn default_rules_dir() -> PathBuf {
    PathBuf::from("rules/dist")
}
fn default_cpu_budget() -> u64 {
    5_000_000
}
fn default_state_ttl() -> Duration {
    Duration::from_secs(30 * 86_400)
}
fn default_state_max_bytes() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(64)
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_on_empty() -> FailurePolicy {
    FailurePolicy::Review
}
fn default_memory_cap() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(16)
}
fn default_quarantine_after() -> NonZeroU32 {
    NonZeroU32::new(5).expect("non-zero")
}
fn default_debounce() -> Duration {
    Duration::from_millis(200)
}
fn default_true() -> bool {
    true
}

/// `[currencies]`: what `base_amount` converts to.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CurrencyConfig {
    /// The currency `base_amount` is in (ISO 4217).
    pub base: String,
    /// Units of the base currency per unit of each other currency
    /// (`EUR = 1.08` with base USD). A payment in a currency with no rate
    /// is left out of `base_amount` features.
    #[serde(default)]
    pub rates: BTreeMap<String, f64>,
}

/// Settings of one rule, keyed by its manifest name — or, with `of`, a
/// further instance of a rule under a name of its own.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuleSettings {
    /// Runs the module of the rule with this manifest name once more, as a
    /// rule named by this section's key, with these settings and a keyed
    /// state of its own: one rule crate deployed with several parameter
    /// sets (per channel, per market, …).
    #[serde(default)]
    pub of: Option<String>,
    /// `enforce` (the outcome counts), `shadow` (recorded only) or
    /// `canary` (counts for `canary-percent` of the `canary-key` entities,
    /// recorded only for the rest).
    #[serde(default)]
    pub mode: Mode,
    /// The canary's share: the entities, in percent (0 to 100), whose
    /// events the rule's outcome counts for while its mode is `canary`
    /// (set here, or through the admin API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<f64>,
    /// The entity that is in or out of the canary's share as a whole
    /// (`account` by default): one customer sees the new rule on all of
    /// their payments or on none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_key: Option<crate::event::KeyField>,
    /// Outcome of a failed call: `allow` (fail open), `review` or `block`.
    /// Default: `rules.on-failure`.
    #[serde(default)]
    pub on_failure: Option<FailurePolicy>,
    /// Values for the rule's declared parameters; unknown names and wrong
    /// types are rejected when the rule loads.
    #[serde(default)]
    pub params: toml::Table,
}

/// How event time advances for windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct WatermarkConfig {
    /// How far behind the newest event time an event may arrive and still
    /// be in order: the watermark is the newest event time minus this.
    #[serde(default = "default_out_of_orderness", with = "humantime_serde")]
    pub out_of_orderness: Duration,
    /// How long after the watermark passes a window's end it stays open
    /// for late events. Events later than that go to the late output.
    #[serde(default, with = "humantime_serde")]
    pub allowed_lateness: Duration,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        Self { out_of_orderness: default_out_of_orderness(), allowed_lateness: Duration::ZERO }
    }
}

fn default_out_of_orderness() -> Duration {
    Duration::from_secs(5)
}

/// A windowed aggregate: count, sum, min, max and mean of amounts per key.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum WindowSpec {
    /// Back-to-back windows of `size`.
    Tumbling {
        /// card, account, counterparty, device, ip or merchant.
        key: crate::event::KeyField,
        /// Window length.
        #[serde(with = "humantime_serde")]
        size: Duration,
    },
    /// Windows of `size` starting every `hop` (overlapping when hop < size).
    Hopping {
        /// card, account, counterparty, device, ip or merchant.
        key: crate::event::KeyField,
        /// Window length.
        #[serde(with = "humantime_serde")]
        size: Duration,
        /// Distance between window starts.
        #[serde(with = "humantime_serde")]
        hop: Duration,
    },
    /// Bursts of activity separated by at least `gap` without events.
    Session {
        /// card, account, counterparty, device, ip or merchant.
        key: crate::event::KeyField,
        /// Silence that ends a session.
        #[serde(with = "humantime_serde")]
        gap: Duration,
    },
}

/// What a list file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListKind {
    /// Values compared as written (accounts, devices, IPs, merchants).
    #[default]
    Plain,
    /// Card numbers; tokenised at load like PANs at ingest, so rules compare
    /// tokens and the PANs go no further.
    Card,
}

/// A named list loaded from a file: one value per line, `#` comments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListConfig {
    /// The file.
    pub path: PathBuf,
    /// What its lines hold.
    #[serde(default)]
    pub kind: ListKind,
}

/// Where a stream of records goes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkConfig {
    /// Append JSON lines to a file (created with its folder if missing).
    File {
        /// The file.
        path: PathBuf,
    },
    /// JSON lines on standard output.
    Stdout,
    /// Drop the records (they are still counted).
    Discard,
    /// Produce each record to a Kafka topic, keyed by its transaction id.
    Kafka {
        /// The topic.
        topic: String,
    },
}

/// What a decision record holds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DecisionsConfig {
    /// `compact` (default): the rules that did not quietly allow, and the
    /// id of the rule set (in the rule-sets output) that decided; `full`:
    /// every rule's outcome as well.
    #[serde(default)]
    pub record: crate::decide::RecordShape,
}

/// The outputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SinksConfig {
    /// One decision record per accepted event.
    #[serde(default = "default_decisions")]
    pub decisions: SinkConfig,
    /// The decision records whose action is review or block.
    #[serde(default = "default_alerts")]
    pub alerts: SinkConfig,
    /// Rejected events with the reason.
    #[serde(default = "default_dead_letters")]
    pub dead_letters: SinkConfig,
    /// One record per closed window.
    #[serde(default = "default_aggregates")]
    pub aggregates: SinkConfig,
    /// Events too late for a window, with the reason.
    #[serde(default = "default_late")]
    pub late: SinkConfig,
    /// Each rule set that decided, once: what a decision's `rule_set` id
    /// stands for.
    #[serde(default = "default_rule_sets")]
    pub rule_sets: SinkConfig,
}

impl SinksConfig {
    /// Every output with its role name, as in `[sinks.<role>]`.
    pub fn all(&self) -> [(&'static str, &SinkConfig); 6] {
        [
            ("decisions", &self.decisions),
            ("alerts", &self.alerts),
            ("dead-letters", &self.dead_letters),
            ("aggregates", &self.aggregates),
            ("late", &self.late),
            ("rule-sets", &self.rule_sets),
        ]
    }
}

impl Default for SinksConfig {
    fn default() -> Self {
        Self {
            decisions: default_decisions(),
            alerts: default_alerts(),
            dead_letters: default_dead_letters(),
            aggregates: default_aggregates(),
            late: default_late(),
            rule_sets: default_rule_sets(),
        }
    }
}

fn default_decisions() -> SinkConfig {
    SinkConfig::Stdout
}
fn default_rule_sets() -> SinkConfig {
    SinkConfig::File { path: PathBuf::from("out/rule-sets.jsonl") }
}
fn default_alerts() -> SinkConfig {
    SinkConfig::File { path: PathBuf::from("out/alerts.jsonl") }
}
fn default_aggregates() -> SinkConfig {
    SinkConfig::File { path: PathBuf::from("out/aggregates.jsonl") }
}
fn default_late() -> SinkConfig {
    SinkConfig::File { path: PathBuf::from("out/late.jsonl") }
}
fn default_dead_letters() -> SinkConfig {
    SinkConfig::File { path: PathBuf::from("out/dead-letters.jsonl") }
}

/// Local state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StateConfig {
    /// The state folder: checkpoints in `state.redb`, compiled rules in
    /// `wasm-cache/`.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Write checkpoints and resume from the last one on start. Without
    /// them a restart begins the source again with empty state.
    #[serde(default = "default_true")]
    pub checkpoints: bool,
    /// Time between checkpoints: at most this much input is read again
    /// after a crash.
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Files vigil creates (outputs, state, the rule cache, reports) are
    /// readable by its user only (0600); with this, by its group too (0640).
    #[serde(default)]
    pub group_readable: bool,
    /// Events a look-back series keeps exactly per key (16 bytes each);
    /// past this a busy key's series counts in buckets of 1/60 of its
    /// window, whose edge moves in those steps.
    #[serde(default = "default_exact_events")]
    pub exact_events: usize,
    /// Sightings a distinct count keeps exactly per key (16 bytes each);
    /// past this, a HyperLogLog sketch (about 6.5 % error).
    #[serde(default = "default_exact_sightings")]
    pub exact_sightings: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
            checkpoints: true,
            checkpoint_interval: default_checkpoint_interval(),
            group_readable: false,
            exact_events: default_exact_events(),
            exact_sightings: default_exact_sightings(),
        }
    }
}

/// Events a look-back series keeps exactly per key by default (16 bytes
/// each: 1 MiB).
pub const DEFAULT_EXACT_EVENTS: usize = 65_536;

/// Sightings a distinct count keeps exactly per key by default.
pub const DEFAULT_EXACT_SIGHTINGS: usize = 8_192;

fn default_exact_events() -> usize {
    DEFAULT_EXACT_EVENTS
}

fn default_exact_sightings() -> usize {
    DEFAULT_EXACT_SIGHTINGS
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Logging, to standard error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LogConfig {
    /// `human` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `vigil=debug`; `RUST_LOG` wins.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::default(), level: default_log_level() }
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("t.toml")).expect_err("should be rejected").to_string()
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = Config::parse("", Path::new("t.toml")).expect("valid");
        assert_eq!(c.sinks.decisions, SinkConfig::Stdout);
        assert_eq!(c.rules.cpu_budget, 5_000_000);
        assert_eq!(c.pipeline.partition_key, PartitionKey::Account);
    }

    #[test]
    fn the_kafka_example_parses_with_its_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/vigil.kafka.toml");
        let c = Config::load(&path).expect("valid");
        let k = c.kafka.expect("[kafka]");
        assert_eq!(k.group_id, "vigil");
        assert_eq!(k.changelog_topic(), "vigil-state");
        assert_eq!(k.connect_timeout, Duration::from_secs(10));
        assert!(matches!(c.source, SourceConfig::Kafka(ref s) if s.topic == "payments"));
        assert_eq!(c.sinks.decisions, SinkConfig::Kafka { topic: "decisions".into() });
    }

    #[test]
    fn kafka_mistakes_name_the_key() {
        let source = "[source]\ntype = \"kafka\"\ntopic = \"payments\"\n";
        assert!(err(source).contains("kafka.brokers"), "a Kafka source needs [kafka]");
        let sink = "[sinks.alerts]\ntype = \"kafka\"\ntopic = \"alerts\"\n";
        assert!(err(sink).contains("kafka.brokers"), "so does a Kafka sink");
        let cluster = "[kafka]\nbrokers = \"b:9092\"\n";
        assert!(err(&format!("{source}{cluster}[state]\ncheckpoints = false\n")).contains("state.checkpoints"));
        assert!(err("[kafka]\nbrokers = \" \"\n").contains("kafka.brokers"));
        assert!(err("[kafka]\nbrokers = \"b:9092\"\ngroup-id = \"\"\n").contains("kafka.group-id"));
        assert!(
            err(&format!("{cluster}[sinks.alerts]\ntype = \"kafka\"\ntopic = \"\"\n")).contains("sinks.alerts.topic")
        );
        assert!(
            err("[source]\ntype = \"kafka\"\ntopic = \"\"\n[kafka]\nbrokers = \"b:9092\"\n").contains("source.topic")
        );
        assert!(err("[kafka]\nbroker = \"b:9092\"\n").contains("broker"), "a misspelt key is named");
        let eos =
            "[kafka]\nbrokers = \"b:9092\"\nexactly-once = true\n[sinks.alerts]\ntype = \"kafka\"\ntopic = \"a\"\n";
        assert!(err(eos).contains("kafka.exactly-once"), "exactly-once needs a Kafka source");
        let source = "[source]\ntype = \"kafka\"\ntopic = \"p\"\n";
        let hops = format!(
            "{source}[kafka]\nbrokers = \"b:9092\"\nexactly-once = true\nstate-keys = [\"card\", \"account\"]\n"
        );
        assert!(err(&hops).contains("kafka.exactly-once") && err(&hops).contains("kafka.state-keys"), "{}", err(&hops));
        let twice = format!("{source}[kafka]\nbrokers = \"b:9092\"\nstate-keys = [\"card\", \"card\"]\n");
        assert!(err(&twice).contains("lists `card` twice"), "{}", err(&twice));
        let typo = format!("{source}[kafka]\nbrokers = \"b:9092\"\nstate-keys = [\"acount\"]\n");
        assert!(err(&typo).contains("state-keys") && err(&typo).contains("acount"), "{}", err(&typo));
        // The partition key alone keeps today's single topic.
        let one = format!(
            "{source}[pipeline]\npartition-key = \"card\"\n[kafka]\nbrokers = \"b:9092\"\nstate-keys = [\"card\"]\n"
        );
        let c = Config::parse(&one, Path::new("t.toml")).expect("valid");
        assert!(!c.hops());
        assert_eq!(c.state_keys().map(|k| k.deciding), Some(crate::event::KeyField::Card));
        // Another key than the partition key goes through its topic.
        let other = Config::parse(&one.replace("[\"card\"]", "[\"device\"]"), Path::new("t.toml")).expect("valid");
        assert!(other.hops());
    }

    #[test]
    fn canary_mistakes_name_the_key() {
        let rule = "[rule.large-amount]\n";
        assert!(err(&format!("{rule}mode = \"canary\"\n")).contains("rule.large-amount.canary-percent"));
        assert!(err(&format!("{rule}mode = \"canary\"\ncanary-percent = 101\n")).contains("must be 0 to 100"));
        let waiting = Config::parse(&format!("{rule}canary-percent = 5\ncanary-key = \"card\"\n"), Path::new("t.toml"));
        assert!(waiting.is_ok(), "a share may wait for the canary mode, set through the admin API");
        assert!(err(&format!("{rule}mode = \"canary\"\ncanary-percent = 5\ncanary-key = \"iban\"\n")).contains("iban"));
        let c = Config::parse(&format!("{rule}mode = \"canary\"\ncanary-percent = 12.5\n"), Path::new("t.toml"));
        assert_eq!(c.expect("valid").rule["large-amount"].canary_percent, Some(12.5));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("[rules]\ncpu-budgte = \"1ms\"\n");
        assert!(e.contains("cpu-budgte"), "{e}");
        assert!(e.contains("t.toml"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        assert!(err("[pipeline]\nworkers = 0\n").contains("workers"));
        assert!(err("[rules]\ncpu-budget = 0\n").contains("rules.cpu-budget"));
        assert!(err("[rules]\nmemory-cap = \"1KiB\"\n").contains("rules.memory-cap"));
        assert!(err("[sinks.decisions]\ntype = \"kafak\"\n").contains("kafak"));
        assert!(err("[rule.x]\nmode = \"loud\"\n").contains("loud"));
    }

    #[test]
    fn window_specs_are_checked_by_key() {
        let ok = Config::parse(
            "[windows.m1]\ntype = \"hopping\"\nkey = \"merchant\"\nsize = \"1m\"\nhop = \"30s\"\n",
            Path::new("t.toml"),
        );
        assert!(ok.is_ok(), "{ok:?}");
        assert!(
            err("[windows.m1]\ntype = \"hopping\"\nkey = \"merchant\"\nsize = \"1m\"\nhop = \"2m\"\n")
                .contains("windows.m1.hop")
        );
        assert!(err("[windows.m1]\ntype = \"tumbling\"\nkey = \"pan\"\nsize = \"1m\"\n").contains("pan"));
    }

    #[test]
    fn pan_key_must_be_given_and_long_enough() {
        let mut c = Config::default();
        c.clean.pan_key_env = "VIGIL_TEST_SURELY_UNSET_VARIABLE".into();
        assert!(c.pan_key().expect_err("unset").to_string().contains("VIGIL_TEST_SURELY_UNSET_VARIABLE"));
        c.clean.pan_key = Some("short".into());
        assert!(c.pan_key().is_err());
        c.clean.pan_key = Some("0123456789abcdef".into());
        assert_eq!(c.pan_key().expect("ok").len(), 16);
    }

    #[test]
    fn the_environment_key_wins_over_the_file() {
        let mut c = Config::default();
        // A variable every process has, standing in for the key's.
        c.clean.pan_key_env = "PATH".into();
        c.clean.pan_key = Some("0123456789abcdef-from-the-file".into());
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(c.pan_key().expect("the environment's"), path.into_bytes());
    }

    #[test]
    fn the_public_demo_key_needs_the_demo_setting() {
        let mut c = Config::default();
        c.clean.pan_key_env = "VIGIL_TEST_SURELY_UNSET_VARIABLE".into();
        c.clean.pan_key = Some(DEMO_PAN_KEY.into());
        let e = c.pan_key().expect_err("refused").to_string();
        assert!(e.contains("clean.pan-key") && e.contains("public demo key"), "{e}");
        c.clean.demo_key = true;
        assert_eq!(c.pan_key().expect("a demo"), DEMO_PAN_KEY.as_bytes());
        c.clean.pan_key = None;
        assert_eq!(c.pan_key().expect("the demo key by default"), DEMO_PAN_KEY.as_bytes());
    }
}
