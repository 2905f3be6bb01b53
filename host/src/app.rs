//! The daemon: wires config, rules, the pipeline and signals together.
//!
//! [`run`] is what `vigil run` calls, and what integration tests call
//! in-process with their own shutdown future.

use anyhow::Context as _;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SinkConfig, SourceConfig};
use crate::decode::{Decoder, Tokenizer};
use crate::features;
use crate::features::Catalog;
use crate::pipeline::{Counters, Durability, Pipeline, Sinks, Stages, Summary};
use crate::rules::lists::Lists;
use crate::rules::sandbox::Sandbox;
use crate::rules::{RuleRegistry, log_report, watch};
use crate::sources;
use crate::state::StateStore;

/// Runs the daemon until the source is exhausted or `shutdown` completes,
/// then drains: every event read is decided or dead-lettered before this
/// returns.
///
/// # Errors
/// Startup problems (config, PAN key, lists, rules folder, sinks) and I/O
/// failures of the source or sinks.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<Summary> {
    run_with(config, shutdown, Overrides::default()).await
}

/// What a caller other than the daemon may swap in: `vigil replay` feeds
/// events it has already read and watches progress.
#[derive(Default)]
pub struct Overrides {
    /// Read events from here instead of `[source]`; checkpoints are then off.
    pub source: Option<Box<dyn sources::Source>>,
    /// Counters to update, for a progress display; fresh ones otherwise.
    pub counters: Option<Arc<Counters>>,
    /// Rule crates linked into the caller, run beside the rules folder's
    /// (see `rules::native`): for measuring the sandbox's cost, with the
    /// `bench-native` feature only.
    #[cfg(feature = "bench-native")]
    pub native_rules: Vec<vigil_sdk::Rule>,
    /// With `source`: checkpoint all the same, as the daemon does, under the
    /// configured source's name (for measuring what checkpoints cost; such
    /// a checkpoint cannot be resumed from).
    pub keep_checkpoints: bool,
}

impl std::fmt::Debug for Overrides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Overrides");
        d.field("source", &self.source.as_ref().map(|s| s.name().to_owned())).field("counters", &self.counters);
        #[cfg(feature = "bench-native")]
        d.field("native_rules", &self.native_rules.iter().map(|r| r.manifest.name).collect::<Vec<_>>());
        d.field("keep_checkpoints", &self.keep_checkpoints).finish()
    }
}

/// [`run`], with parts swapped in by `overrides`.
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    mut config: Config,
    shutdown: impl Future<Output = ()>,
    overrides: Overrides,
) -> anyhow::Result<Summary> {
    if overrides.source.is_some() && !overrides.keep_checkpoints {
        // A checkpoint records a position in the configured source; there is none.
        config.state.checkpoints = false;
    }
    let tokenizer = Tokenizer::new(&config.pan_key()?);
    // Entity keys are hashed under a secret shared by every daemon that
    // shares the PAN key: the same owner for a key everywhere, always.
    let hasher = crate::keyed::KeyedHash::new(tokenizer.derive(b"vigil entity keys"));
    let catalog = Arc::new(Catalog::with_currencies(&config.features, config.currencies.as_ref())?);
    // A replay's source is in memory: every key is exact there.
    let state_keys = if overrides.source.is_none() { config.state_keys() } else { None };
    crate::features::check_state_keys(&config, &catalog, state_keys.as_ref())?;
    let lists = Arc::new(Lists::load(&config.lists, &tokenizer)?);
    if !config.rules.dir.is_dir() {
        anyhow::bail!(
            "rules.dir: {} is not a folder; create it, or build the example rules with `just rules`",
            config.rules.dir.display()
        );
    }
    let registry = Arc::new(
        RuleRegistry::new(
            Sandbox::from_config(&config)?,
            config.rules.dir.clone(),
            config.rule.clone(),
            config.rules.on_failure,
            config.rules.quarantine_after.get(),
            lists.clone(),
            catalog.clone(),
        )
        .keeping_state_per(state_keys),
    );
    let modes = crate::admin::load_overrides(&config.state.dir)?;
    if !modes.is_empty() {
        tracing::warn!(?modes, file = %config.state.dir.join(crate::admin::OVERRIDES_FILE).display(),
            "rule modes set through the admin API win over the config's");
    }
    registry.set_modes(modes);
    registry.set_trust(crate::rules::signing::Trust::from_config(&config.rules)?);
    if overrides.source.is_none() {
        // The daemon's own: replays and benchmarks change nothing live.
        match crate::rules::changes::ChangeLog::open(&config.state.dir) {
            Ok(log) => {
                let log = Arc::new(log);
                registry.set_change_log(log.clone());
                lists.set_change_log(log);
            }
            // Under review, the audit trail is part of deciding.
            Err(e) if registry.signatures_required() => {
                return Err(e).context("rules.require-signature is on, and the rule change log cannot be kept");
            }
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "no rule change log or module archive is kept (vigil rollback and \
                vigil explain need them); rules still load")
            }
        }
    }
    if registry.signatures_required() && !registry.modes().is_empty() {
        anyhow::bail!(
            "{}: rule modes set through the admin API are not signed, and rules.require-signature is on; \
             remove the file and put the modes in the config, signed with their modules",
            config.state.dir.join(crate::admin::OVERRIDES_FILE).display()
        );
    }
    // Bound before anything starts: a listener that cannot be is a bad config.
    let admin = crate::admin::bind(&config.admin)?;
    let report = registry.rescan();
    log_report(&report, &registry);
    #[cfg(feature = "bench-native")]
    registry
        .add_native(&overrides.native_rules)
        .map_err(|(name, e)| anyhow::anyhow!("native rule `{name}`: {}", crate::error::chain(&e)))?;
    // Rules loaded from now on are instantiated for every worker as they
    // load (at start the workers instantiate them, in parallel).
    registry.set_spares(config.pipeline.worker_count());
    let live = registry.current();
    if live.rules.is_empty() && !config.rules.allow_empty {
        // Deciding every payment without a rule is not a start.
        let mut why: Vec<String> =
            report.rejected.iter().map(|(file, reason)| format!("{}: {reason}", file.display())).collect();
        if why.is_empty() {
            why.push("the folder holds no .wasm module".into());
        }
        anyhow::bail!(
            "rules.dir {}: no rule can be used, so vigil does not start (set rules.allow-empty = true to start \
             without rules):\n  {}",
            config.rules.dir.display(),
            why.join("\n  ")
        );
    }
    tracing::info!(
        rules = live.rules.len(),
        dir = %config.rules.dir.display(),
        names = ?live.rules.iter().map(|r| &*r.name).collect::<Vec<_>>(),
        "rules live"
    );
    for (name, of) in registry.unmatched_settings() {
        match of {
            Some(of) => tracing::warn!(rule = %name, "[rule.{name}] is an instance of `{of}`, which is not loaded"),
            None => tracing::warn!(rule = %name, "[rule.{name}] is configured but no loaded rule has that name"),
        }
    }
    let _list_watch = if config.rules.watch {
        watch::watch_lists(lists.clone(), config.lists.clone(), tokenizer.clone(), config.rules.debounce)
            .context("cannot watch the list files")?
    } else {
        None
    };
    let _watch = if config.rules.watch {
        Some(watch::watch(registry.clone(), config.rules.debounce).context("cannot watch the rules folder")?)
    } else {
        None
    };

    let mut decoder = Decoder::new(&config.clean, tokenizer.clone());
    let mut durability = restore(&config, &mut decoder)?;
    let resume = durability.restored.as_ref().map(|r| r.position);
    let producer = kafka_producer(&config)?;
    // A replay's or a benchmark's events are its own: no hops through the cluster.
    let chain = match (&overrides.source, &config.source) {
        (None, SourceConfig::Kafka(_)) => crate::pipeline::hop::Chain::of(&config).map(Arc::new),
        _ => None,
    };
    let source = match (overrides.source, &config.source) {
        (Some(source), _) => source,
        (None, SourceConfig::Kafka(k)) => {
            let (Some(cluster), Some(producer)) = (&config.kafka, &producer) else {
                anyhow::bail!("kafka.brokers: a Kafka source needs [kafka]");
            };
            let snapshots = (config.state.checkpoints && cluster.local_snapshots).then_some(config.state.dir.as_path());
            let (source, committer) = sources::KafkaSource::open(cluster, &k.topic, producer.clone(), snapshots)?;
            durability.store = Some(committer);
            Box::new(source)
        }
        (None, SourceConfig::File(_)) => sources::open(&config.source, resume, config.clean.max_event_bytes)?,
    };
    let sinks = Sinks::open(&config.sinks, producer.as_ref())?;
    let counters = overrides.counters.unwrap_or_default();
    let cancel = CancellationToken::new();
    // Every pipeline's parts, opened before any starts.
    let mut parts = Vec::new();
    match (&chain, &producer, &config.kafka, &config.source) {
        (Some(chain), Some(producer), Some(cluster), SourceConfig::Kafka(k)) => {
            let input = producer.partitions_of(&k.topic, "source.topic", cluster)?;
            check_hop_topics(chain, &k.topic, input, producer, cluster)?;
            let topics = chain.topics();
            let forward = || -> Vec<Option<Box<dyn crate::sinks::Sink>>> {
                chain
                    .hops()
                    .iter()
                    .map(|h| {
                        h.topic.as_ref().map(|t| {
                            Box::new(crate::sinks::KafkaSink::new(producer.clone(), t.clone()))
                                as Box<dyn crate::sinks::Sink>
                        })
                    })
                    .collect()
            };
            let mut shared = sinks.shared(1 + topics.len()).into_iter();
            let mut next_sinks = || shared.next().expect("one per pipeline").forwarding(forward());
            let stages = Stages {
                source,
                decoder,
                catalog: catalog.clone(),
                registry: registry.clone(),
                sinks: next_sinks(),
                hasher: hasher.clone(),
                chain: Some((chain.clone(), None)),
            };
            parts.push((stages, durability));
            for topic in topics {
                let mut hop_cluster = crate::config::KafkaConfig {
                    group_id: chain.group_of(topic),
                    changelog_topic: Some(chain.changelog_of(topic)),
                    ..cluster.clone()
                };
                // Every event sent on is read, whatever the input's groups do.
                hop_cluster.client.remove("auto.offset.reset");
                hop_cluster.consumer.remove("auto.offset.reset");
                let dir = config.state.dir.join(topic);
                let snapshots = (config.state.checkpoints && cluster.local_snapshots).then_some(dir.as_path());
                if snapshots.is_some() {
                    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
                }
                let (source, committer) = sources::KafkaSource::open(&hop_cluster, topic, producer.clone(), snapshots)?;
                let durability = crate::pipeline::Durability {
                    store: Some(committer),
                    interval: config.state.checkpoint_interval,
                    ..Default::default()
                };
                let stages = Stages {
                    source: Box::new(source),
                    decoder: Decoder::new(&config.clean, tokenizer.clone()),
                    catalog: catalog.clone(),
                    registry: registry.clone(),
                    sinks: next_sinks(),
                    hasher: hasher.clone(),
                    chain: Some((chain.clone(), Some(topic.to_owned()))),
                };
                parts.push((stages, durability));
            }
            let keys: Vec<&str> = chain.hops().iter().map(|h| h.field.name()).collect();
            tracing::info!(keys = ?keys, topics = ?chain.topics(), "state kept per several keys: events go through \
                the owner of each in turn");
        }
        _ => {
            let stages = Stages { source, decoder, catalog, registry: registry.clone(), sinks, hasher, chain: None };
            parts.push((stages, durability));
        }
    }
    let mut pipelines = Vec::new();
    for (stages, durability) in parts {
        match Pipeline::start(&config, stages, durability, counters.clone(), cancel.clone()) {
            Ok(p) => pipelines.push(p),
            Err(e) => {
                // Those started drain and stop.
                cancel.cancel();
                let _ = join_all(pipelines, &cancel);
                return Err(e).context("cannot start the pipeline");
            }
        }
    }
    tracing::info!(workers = config.pipeline.worker_count(), "vigil running");

    let reload = cancel.child_token();
    let asked = Arc::new(tokio::sync::Notify::new());
    // Serves until the pipeline has drained, not only until intake stops.
    let admin_stop = CancellationToken::new();
    if let Some((listener, token)) = admin {
        let daemon = crate::admin::Daemon {
            counters: counters.clone(),
            registry: registry.clone(),
            reload: asked.clone(),
            state_dir: config.state.dir.clone(),
        };
        let (admin_config, stop) = (config.admin.clone(), admin_stop.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(listener, token, &admin_config, daemon, stop).await {
                tracing::error!(error = %crate::error::chain(&e), "the admin listener stopped");
            }
        });
    }
    tokio::spawn(reload_on_sighup(config.clone(), registry, lists, tokenizer, asked, reload.clone()));

    let stop_all = cancel.clone();
    let mut done = tokio::task::spawn_blocking(move || join_all(pipelines, &stop_all));
    tokio::pin!(shutdown);
    let joined = tokio::select! {
        r = &mut done => r,
        () = &mut shutdown => {
            tracing::info!("shutdown requested: stopping intake and draining");
            cancel.cancel();
            done.await
        }
    };
    reload.cancel();
    admin_stop.cancel();
    let result = joined.context("the pipeline panicked");
    let summary = counters.summary();
    tracing::info!(
        events_in = summary.events_in,
        decided = summary.decided,
        dead_lettered = summary.dead_lettered,
        alerts = summary.alerts,
        checkpoints = summary.checkpoints,
        "vigil stopped"
    );
    result??;
    Ok(summary)
}

/// Waits until every pipeline has drained. The hops of a chain depend on
/// each other: the first to fail stops the others (through `cancel`), and
/// its error is the one reported.
fn join_all(pipelines: Vec<Pipeline>, cancel: &CancellationToken) -> Result<(), crate::pipeline::PipelineError> {
    if pipelines.len() <= 1 {
        return pipelines.into_iter().try_for_each(Pipeline::join);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        for p in pipelines {
            let tx = tx.clone();
            s.spawn(move || {
                let r = p.join();
                if r.is_err() {
                    cancel.cancel();
                }
                let _ = tx.send(r);
            });
        }
        drop(tx);
        // In the order they end: the first error is the cause.
        rx.iter().find(Result::is_err).unwrap_or(Ok(()))
    })
}

/// Checks that each repartition topic of `chain` and its changelog exist
/// with as many partitions as the input, `topic` (`input` partitions).
///
/// # Errors
/// One naming the topic and how to create it.
fn check_hop_topics(
    chain: &crate::pipeline::hop::Chain,
    topic: &str,
    input: u32,
    producer: &crate::sinks::Producer,
    cluster: &crate::config::KafkaConfig,
) -> anyhow::Result<()> {
    for hop_topic in chain.topics() {
        for (t, what) in [(hop_topic.to_owned(), "repartition topic"), (chain.changelog_of(hop_topic), "changelog")] {
            let create = format!(
                "create `{hop_topic}` and its compacted changelog `{}` with {input} partitions each, as many as \
                 source.topic `{topic}`",
                chain.changelog_of(hop_topic)
            );
            match producer.partitions_of(&t, "kafka.state-keys", cluster) {
                Ok(n) if n == input => {}
                Ok(n) => {
                    anyhow::bail!("kafka.state-keys: the {what} `{t}` has {n} partitions; it needs {input}: {create}")
                }
                Err(crate::kafka::ClusterError::NoTopic { .. }) => {
                    anyhow::bail!("kafka.state-keys: the {what} `{t}` does not exist on {}: {create}", cluster.brokers)
                }
                Err(e) => return Err(e).context(format!("kafka.state-keys: the {what} `{t}`")),
            }
        }
    }
    Ok(())
}

/// The shared producer, when a Kafka source or sink is configured.
/// The checks of a config that need what it configures — trusted keys
/// readable and enough for the signatures required, currency rates valid —
/// on top of those [`Config::load`] makes. Each error names its key.
///
/// # Errors
/// [`crate::config::ConfigError`] naming the key.
pub fn check_config(config: &Config) -> Result<(), crate::config::ConfigError> {
    crate::rules::signing::Trust::from_config(&config.rules)?;
    if let Some(c) = &config.currencies {
        crate::features::currency::Rates::from_config(c)?;
    }
    Ok(())
}

fn kafka_producer(config: &Config) -> anyhow::Result<Option<Arc<crate::sinks::Producer>>> {
    let uses = matches!(config.source, SourceConfig::Kafka(_))
        || config.sinks.all().iter().any(|(_, s)| matches!(s, SinkConfig::Kafka { .. }));
    match &config.kafka {
        Some(k) if uses => {
            let txn = k.exactly_once.then(|| k.transactional_id(&config.state.dir));
            Ok(Some(crate::sinks::Producer::new(k, txn.as_deref())?))
        }
        _ => Ok(None),
    }
}

/// Opens the state store and loads the last checkpoint into the decoder;
/// the feature state goes to the workers.
///
/// # Errors
/// A corrupt, incompatible or foreign checkpoint is an error naming the
/// store, never a silent fresh start.
fn restore(config: &Config, decoder: &mut Decoder) -> anyhow::Result<Durability> {
    let interval = config.state.checkpoint_interval;
    // With Kafka, state comes from the changelog as partitions are assigned.
    if !config.state.checkpoints || matches!(config.source, SourceConfig::Kafka(_)) {
        return Ok(Durability { interval, ..Durability::default() });
    }
    let store = StateStore::open(&config.state.dir)?;
    let Some(r) = store.load(&sources::name(&config.source))? else {
        tracing::info!(store = %config.state.dir.display(), "no checkpoint: starting from the beginning");
        return Ok(Durability { store: Some(Box::new(store)), interval, ..Durability::default() });
    };
    for f in &r.features {
        features::check_stored(&f.state)
            .with_context(|| format!("state store {}: in the checkpoint", config.state.dir.display()))?;
    }
    for d in &r.windows {
        crate::window::check_stored(&d.windows)
            .with_context(|| format!("state store {}: in the checkpoint", config.state.dir.display()))?;
    }
    decoder.dedup_mut().restore(&r.dedup);
    tracing::info!(
        checkpoint = r.id,
        line = r.position.line_no,
        keys = r.features.len(),
        ids = r.dedup.len(),
        "resuming from the last checkpoint"
    );
    Ok(Durability { store: Some(Box::new(store)), interval, last_id: r.id, restored: Some(r) })
}

/// SIGHUP: re-read the config file's rule settings and lists, and rescan
/// the rules folder. Other settings need a restart.
async fn reload_on_sighup(
    config: Config,
    registry: Arc<RuleRegistry>,
    lists: Arc<Lists>,
    tokenizer: Tokenizer,
    asked: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload by editing the rules folder");
            return;
        };
        let mut config = config;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
                () = asked.notified() => {}
            }
            tracing::info!("reloading config, lists and rules");
            if let Some(path) = config.path.clone() {
                match Config::load(&path).and_then(|c| check_config(&c).map(|()| c)) {
                    Ok(mut fresh) => {
                        fresh.path = Some(path);
                        registry.set_settings(fresh.rule.clone(), fresh.rules.on_failure);
                        match crate::rules::signing::Trust::from_config(&fresh.rules) {
                            Ok(trust) => registry.set_trust(trust),
                            // check_config read it; a key file may have gone since.
                            Err(e) => {
                                tracing::error!(error = %crate::error::chain(&e), "keeping the trusted keys in use")
                            }
                        }
                        if registry.signatures_required() && !registry.modes().is_empty() {
                            tracing::error!(modes = ?registry.modes(), "rules.require-signature is on: the rule modes \
                                set through the admin API are not signed and no longer apply");
                            registry.set_modes(std::collections::BTreeMap::new());
                        }
                        config = fresh;
                    }
                    Err(e) => {
                        tracing::error!(error = %crate::error::chain(&e), "config reload failed; keeping the running config")
                    }
                }
            }
            for e in lists.reload(&config.lists, &tokenizer) {
                tracing::error!(error = %crate::error::chain(&e), "list reload failed; keeping its previous contents");
            }
            let registry = registry.clone();
            // A thread of its own at background priority, so compiling does
            // not take a core from the workers (see priority::background).
            let report = tokio::task::spawn_blocking(move || {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        crate::priority::background();
                        let r = registry.rescan();
                        log_report(&r, &registry);
                    })
                    .join()
                })
            })
            .await;
            if !matches!(report, Ok(Ok(()))) {
                tracing::error!("rule rescan panicked");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (config, registry, lists, tokenizer);
        stop.cancelled().await;
    }
}
