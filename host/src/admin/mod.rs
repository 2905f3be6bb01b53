//! The admin listener (`[admin] listen`): Prometheus metrics at
//! `/metrics`, `/healthz` and `/readyz`, a JSON admin API under `/admin/`
//! to list rules, switch a rule between enforce and shadow, release a
//! quarantine and reload as SIGHUP does, and a live dashboard at `/` (one
//! self-contained page polling `/admin/stats`).
//!
//! Everything here reads counters the pipeline keeps anyway
//! ([`Counters`], each rule's counts): a scrape costs the pipeline
//! nothing. Changes need the bearer token `admin.token-env` names; without
//! one the API is read-only. Mode changes persist in `admin.toml` in the
//! state folder and win over the config's `[rule.NAME] mode`.

use crate::config::{AdminConfig, ConfigError};
use crate::decide::Mode;
use crate::error::chain;
use crate::pipeline::Counters;
use crate::rules::RuleRegistry;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The file under the state folder that keeps modes set through the API.
pub const OVERRIDES_FILE: &str = "admin.toml";

/// Why the admin listener could not start or serve, or the mode overrides
/// could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The overrides file is there but cannot be read.
    #[error("{}", path.display())]
    ReadOverrides {
        /// The overrides file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The overrides file is not a table of modes.
    #[error("{}", path.display())]
    ParseOverrides {
        /// The overrides file.
        path: PathBuf,
        /// The parser's error, with the line.
        source: toml::de::Error,
    },
    /// The overrides file could not be written.
    #[error("cannot write {}", path.display())]
    WriteOverrides {
        /// The overrides file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The admin settings are unusable (the token variable is unset).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The address cannot be bound.
    #[error("admin.listen: cannot listen on {addr}")]
    Listen {
        /// The address configured.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The bound listener failed: set up for the runtime, or serving.
    #[error("admin listener: {what}")]
    Serve {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// What the listener reads and acts on.
#[derive(Debug)]
pub struct Daemon {
    /// The pipeline's counts.
    pub counters: Arc<Counters>,
    /// The rules.
    pub registry: Arc<RuleRegistry>,
    /// Asks for what SIGHUP does: reload the config, lists and rules.
    pub reload: Arc<tokio::sync::Notify>,
    /// Where mode overrides are kept.
    pub state_dir: PathBuf,
}

struct Shared {
    daemon: Daemon,
    token: Option<String>,
    /// The variable the token came from: who made a change, in the log.
    token_name: String,
    stall_threshold: Duration,
    /// Held while a mode change is saved and applied.
    changing: tokio::sync::Mutex<()>,
    /// When decisions last moved while events waited, and the count then.
    progress: Mutex<(u64, Instant)>,
    stalled: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Reads the mode overrides kept under `state_dir`.
///
/// # Errors
/// The file exists but cannot be read or parsed; the message names it.
pub fn load_overrides(state_dir: &Path) -> Result<BTreeMap<String, Mode>, AdminError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        modes: BTreeMap<String, Mode>,
    }
    let path = state_dir.join(OVERRIDES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // No state folder yet (or none can be made): no overrides.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Ok(BTreeMap::new());
        }
        Err(source) => return Err(AdminError::ReadOverrides { path, source }),
    };
    match toml::from_str::<File>(&text) {
        Ok(file) => Ok(file.modes),
        Err(source) => Err(AdminError::ParseOverrides { path, source }),
    }
}

fn save_overrides(state_dir: &Path, modes: &BTreeMap<String, Mode>) -> Result<(), AdminError> {
    let mut text = String::from(
        "# Rule modes set through vigil's admin API. They win over [rule.NAME] mode in the\n\
         # config; remove a line (or set the mode back through the API) to follow the config.\n[modes]\n",
    );
    for (name, mode) in modes {
        text.push_str(&format!("{name:?} = \"{}\"\n", mode_name(*mode)));
    }
    let path = state_dir.join(OVERRIDES_FILE);
    std::fs::create_dir_all(state_dir)
        // Whole or not at all: a torn file would stop the next start.
        .and_then(|()| crate::state::write_atomically(&path, text.as_bytes()))
        .map_err(|source| AdminError::WriteOverrides { path, source })
}

fn mode_name(mode: Mode) -> &'static str {
    mode.as_str()
}

/// Binds the listener: an address that cannot be bound is an error
/// naming `admin.listen`.
///
/// # Errors
/// The address is in use or not this host's; the token variable is unset.
pub fn bind(config: &AdminConfig) -> Result<Option<(std::net::TcpListener, Option<String>)>, AdminError> {
    let Some(addr) = config.listen else { return Ok(None) };
    let token = config.token()?;
    let listener = std::net::TcpListener::bind(addr).map_err(|source| AdminError::Listen { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| AdminError::Serve { what: "cannot make the socket non-blocking", source })?;
    if !addr.ip().is_loopback() && token.is_none() {
        tracing::warn!(%addr, "the admin listener is reachable from other hosts; without admin.token-env it is read-only");
    }
    Ok(Some((listener, token)))
}

/// Serves the listener until `stop`.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: std::net::TcpListener,
    token: Option<String>,
    config: &AdminConfig,
    daemon: Daemon,
    stop: CancellationToken,
) -> Result<(), AdminError> {
    let addr =
        listener.local_addr().map_err(|source| AdminError::Serve { what: "cannot read the bound address", source })?;
    let mut registry = Registry::default();
    let shared = Arc::new(Shared {
        progress: Mutex::new((0, Instant::now())),
        daemon,
        token,
        token_name: config.token_env.clone().unwrap_or_default(),
        stall_threshold: config.stall_threshold,
        changing: tokio::sync::Mutex::new(()),
        stalled: AtomicBool::new(false),
    });
    registry.register_collector(Box::new(Observed(shared.clone())));
    let shared = Arc::new(Served { shared, registry });
    tokio::spawn(watch_progress(shared.clone(), stop.clone()));
    let app = Router::new()
        .route("/", get(dashboard))
        .route("/dashboard", get(dashboard))
        .route("/admin/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/admin/rules", get(list_rules))
        .route("/admin/rules/{name}/mode", post(set_mode))
        .route("/admin/rules/{name}/release", post(release))
        .route("/admin/reload", post(reload))
        .with_state(shared);
    tracing::info!(%addr, "admin listener: /metrics, /healthz, /readyz, /admin/");
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|source| AdminError::Serve { what: "cannot hand the socket to the runtime", source })?;
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
        .map_err(|source| AdminError::Serve { what: "cannot serve", source })
}

struct Served {
    shared: Arc<Shared>,
    registry: Registry,
}

type App = State<Arc<Served>>;

/// Notes, once a second, whether decisions stopped while events wait.
async fn watch_progress(s: Arc<Served>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = &s.shared;
        let c = s.daemon.counters.summary();
        let done = c.decided + c.dead_lettered;
        let mut p = s.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if done != p.0 || c.events_in <= done {
            *p = (done, Instant::now());
        }
        s.stalled.store(p.1.elapsed() >= s.stall_threshold, Ordering::Relaxed);
    }
}

async fn metrics(State(s): App) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {}\n", chain(&e)))
            .into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// Why the daemon is not ready, if it is not.
fn not_ready(s: &Shared) -> Vec<String> {
    let mut why = Vec::new();
    let set = s.daemon.registry.current();
    let live = set.rules.iter().filter(|r| r.mode != Mode::Shadow && !r.is_quarantined()).count();
    if live == 0 {
        why.push(format!(
            "no enforcing rule is live ({} loaded, {} quarantined, {} files rejected)",
            set.rules.len(),
            set.rules.iter().filter(|r| r.is_quarantined()).count(),
            s.daemon.registry.rejected_files().len()
        ));
    }
    let lag = s.daemon.counters.source_lag.lock().unwrap_or_else(std::sync::PoisonError::into_inner).connected;
    if lag == Some(false) {
        why.push("the source reaches no Kafka broker".into());
    }
    if s.stalled.load(Ordering::Relaxed) {
        let c = s.daemon.counters.summary();
        why.push(format!(
            "stalled: {} events wait and none was decided for over {} (admin.stall-threshold)",
            c.events_in.saturating_sub(c.decided + c.dead_lettered),
            humantime::format_duration(s.stall_threshold)
        ));
    }
    why
}

async fn readyz(State(s): App) -> Response {
    let why = not_ready(&s.shared);
    match why.is_empty() {
        true => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        false => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", why.join("; "))).into_response(),
    }
}

/// The dashboard: one page, its script and styles inline.
const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing from elsewhere: its own script, styles and requests only.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
            ),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// What the dashboard polls.
#[derive(serde::Serialize)]
struct Stats {
    events_in: u64,
    decided: u64,
    dead_lettered: u64,
    alerts: u64,
    blocked: u64,
    late: u64,
    checkpoints: u64,
    lag_bytes: Option<u64>,
    lag_records: Vec<(u32, u64)>,
    ready: bool,
    not_ready: Vec<String>,
    rules: Vec<RuleView>,
}

async fn stats(State(s): App) -> Json<Stats> {
    let d = &s.shared.daemon;
    let c = d.counters.summary();
    let lag = d.counters.source_lag.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let not_ready = not_ready(&s.shared);
    Json(Stats {
        events_in: c.events_in,
        decided: c.decided,
        dead_lettered: c.dead_lettered,
        alerts: c.alerts,
        blocked: d.counters.blocked.load(Ordering::Relaxed),
        late: c.late,
        checkpoints: c.checkpoints,
        lag_bytes: lag.bytes,
        lag_records: lag.records,
        ready: not_ready.is_empty(),
        not_ready,
        rules: rule_views(&d.registry),
    })
}

#[derive(serde::Serialize)]
struct RuleView {
    name: String,
    version: String,
    module: String,
    mode: Mode,
    status: &'static str,
    #[serde(flatten)]
    counts: crate::rules::RuleCounts,
    p50_ns: Option<u64>,
    p99_ns: Option<u64>,
}

fn rule_views(registry: &RuleRegistry) -> Vec<RuleView> {
    let set = registry.current();
    set.rules
        .iter()
        .map(|r| {
            let latency = r.latency();
            RuleView {
                name: r.name.to_string(),
                version: r.version.to_string(),
                module: r.hash.to_string(),
                mode: r.mode,
                status: if r.is_quarantined() { "quarantined" } else { "live" },
                counts: r.counts(),
                p50_ns: latency.quantile_ns(0.5),
                p99_ns: latency.quantile_ns(0.99),
            }
        })
        .collect()
}

async fn list_rules(State(s): App) -> Json<Vec<RuleView>> {
    Json(rule_views(&s.shared.daemon.registry))
}

/// `Ok` when the request carries the admin token; the refusal otherwise.
fn authorised(s: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let Some(token) = &s.token else {
        return Err((
            StatusCode::FORBIDDEN,
            "the admin API is read-only: set admin.token-env to the environment variable holding a token\n",
        )
            .into_response());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Compared in time independent of where they differ.
    let same = given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
    match same {
        true => Ok(()),
        false => Err((StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response()),
    }
}

#[derive(serde::Deserialize)]
struct ModeChange {
    mode: Mode,
}

async fn set_mode(
    State(s): App,
    UrlPath(name): UrlPath<String>,
    headers: HeaderMap,
    Json(change): Json<ModeChange>,
) -> Response {
    let s = &s.shared;
    if let Err(refused) = authorised(s, &headers) {
        return refused;
    }
    let registry = &s.daemon.registry;
    match registry.current().rules.iter().find(|r| *r.name == *name) {
        None => return (StatusCode::NOT_FOUND, format!("no live rule is named `{name}`\n")).into_response(),
        Some(r) if r.is_native() => {
            return (StatusCode::CONFLICT, format!("`{name}` is linked into the host; its mode is fixed\n"))
                .into_response();
        }
        Some(_) => {}
    }
    if registry.signatures_required() {
        return (
            StatusCode::CONFLICT,
            "rules.require-signature is on: a rule's mode is part of what its signature approves; change it in \
             the config and sign the module again (vigil sign --config)\n",
        )
            .into_response();
    }
    if change.mode == Mode::Canary && registry.configured(&name).canary_percent.is_none() {
        return (
            StatusCode::CONFLICT,
            format!("`{name}` has no canary share: set [rule.{name}] canary-percent in the config first\n"),
        )
            .into_response();
    }
    // One change at a time: each reads, writes and applies the whole set.
    let _one = s.changing.lock().await;
    let mut modes = registry.modes();
    // Set back to the config's mode, the rule follows the config again.
    match change.mode == registry.configured_mode(&name) {
        true => modes.remove(&name),
        false => modes.insert(name.clone(), change.mode),
    };
    if let Err(e) = save_overrides(&s.daemon.state_dir, &modes) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{}\n", chain(&e))).into_response();
    }
    registry.set_modes(modes);
    if let Some(rule) = registry.current().rules.iter().find(|r| *r.name == *name) {
        let cause = format!("admin API (token {})", s.token_name);
        let mut entry = crate::rules::rule_entry("mode", rule, &cause);
        entry.mode = Some(mode_name(change.mode).into());
        registry.record_change(entry);
    }
    let r = registry.clone();
    let report = tokio::task::spawn_blocking(move || r.rescan()).await;
    let mode = mode_name(change.mode);
    tracing::warn!(rule = %name, mode, by = "admin API", token = %s.token_name, "rule mode changed");
    match report {
        Ok(report) if report.rejected.is_empty() => (StatusCode::OK, format!("{name}: {mode}\n")).into_response(),
        Ok(report) => {
            let why: Vec<String> = report.rejected.iter().map(|(f, e)| format!("{}: {e}", f.display())).collect();
            (StatusCode::CONFLICT, format!("mode set; reloading reported: {}\n", why.join("; "))).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reload failed: {}\n", chain(&e))).into_response(),
    }
}

async fn release(State(s): App, UrlPath(name): UrlPath<String>, headers: HeaderMap) -> Response {
    let s = &s.shared;
    if let Err(refused) = authorised(s, &headers) {
        return refused;
    }
    let set = s.daemon.registry.current();
    let Some(rule) = set.rules.iter().find(|r| *r.name == *name) else {
        return (StatusCode::NOT_FOUND, format!("no live rule is named `{name}`\n")).into_response();
    };
    match rule.release() {
        true => {
            tracing::warn!(rule = %name, version = %rule.version, by = "admin API", token = %s.token_name,
                "quarantine released");
            let cause = format!("admin API (token {})", s.token_name);
            s.daemon.registry.record_change(crate::rules::rule_entry("release", rule, &cause));
            (StatusCode::OK, format!("{name}: released\n")).into_response()
        }
        false => (StatusCode::OK, format!("{name}: was not quarantined\n")).into_response(),
    }
}

async fn reload(State(s): App, headers: HeaderMap) -> Response {
    let s = &s.shared;
    if let Err(refused) = authorised(s, &headers) {
        return refused;
    }
    tracing::info!(by = "admin API", token = %s.token_name, "reload requested");
    s.daemon.reload.notify_one();
    (StatusCode::ACCEPTED, "reloading config, lists and rules\n").into_response()
}

/// Reads the counters at each scrape.
#[derive(Debug)]
struct Observed(Arc<Shared>);

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for Observed {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let d = &self.0.daemon;
        let c = d.counters.summary();
        counter(&mut e, "vigil_events_in", "Records read from the source.", c.events_in)?;
        counter(&mut e, "vigil_events_decided", "Decision records written.", c.decided)?;
        counter(&mut e, "vigil_events_late", "Events too late for a window.", c.late)?;
        {
            let by_code = d.counters.dead_by_code.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut m = e.encode_descriptor(
                "vigil_dead_letters",
                "Rejected events, by the code of the reason.",
                None,
                MetricType::Counter,
            )?;
            for (code, n) in by_code.iter() {
                ConstCounter::new(*n).encode(m.encode_family(&[("code", *code)])?)?;
            }
        }
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut m = e.encode_descriptor("vigil_decisions", "Decisions by final action.", None, MetricType::Counter)?;
        for (action, n) in [
            ("allow", load(&d.counters.allowed)),
            ("review", load(&d.counters.reviewed)),
            ("block", load(&d.counters.blocked)),
        ] {
            ConstCounter::new(n).encode(m.encode_family(&[("action", action)])?)?;
        }
        let (sum, count, buckets) = d.counters.decision_latency.snapshot();
        e.encode_descriptor(
            "vigil_decision_latency_seconds",
            "Time from intake to decision per event.",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
        counter(
            &mut e,
            "vigil_checkpoints",
            "Checkpoints committed (of the pipeline reading the input).",
            c.checkpoints,
        )?;
        let at = d.counters.checkpoint_at_ms.load(Ordering::Relaxed);
        if at > 0 {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let age = now.as_millis().saturating_sub(u128::from(at)) as f64 / 1e3;
            gauge(&mut e, "vigil_checkpoint_age_seconds", "Time since the last checkpoint was committed.", age)?;
            let took = d.counters.checkpoint_took_us.load(Ordering::Relaxed) as f64 / 1e6;
            gauge(&mut e, "vigil_checkpoint_duration_seconds", "How long committing the last checkpoint took.", took)?;
        }
        let lag = d.counters.source_lag.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(bytes) = lag.bytes {
            gauge(
                &mut e,
                "vigil_source_lag_bytes",
                "File source: bytes between the next line and the end.",
                bytes as f64,
            )?;
        }
        if !lag.records.is_empty() {
            let mut m = e.encode_descriptor(
                "vigil_source_lag_records",
                "Kafka source: records between the next offset and the end, per owned partition.",
                None,
                MetricType::Gauge,
            )?;
            for (p, n) in &lag.records {
                ConstGauge::new(*n as i64).encode(m.encode_family(&[("partition", p.to_string())])?)?;
            }
        }
        let hops = d.counters.hop_lag.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if !hops.is_empty() {
            let mut m = e.encode_descriptor(
                "vigil_hop_lag_records",
                "Kafka, state per several keys: records between the next offset and the end of each topic between \
                 hops, per owned partition read from since it was assigned.",
                None,
                MetricType::Gauge,
            )?;
            for (topic, partitions) in &hops {
                for (p, n) in partitions {
                    let labels = [("topic", topic.clone()), ("partition", p.to_string())];
                    ConstGauge::new(*n as i64).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let hop_checkpoints =
            d.counters.hop_checkpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if !hop_checkpoints.is_empty() {
            let mut m = e.encode_descriptor(
                "vigil_hop_checkpoints",
                "Kafka, state per several keys: checkpoints committed by the pipeline reading each topic between hops.",
                None,
                MetricType::Counter,
            )?;
            for (topic, c) in &hop_checkpoints {
                ConstCounter::new(c.committed).encode(m.encode_family(&[("topic", topic.as_str())])?)?;
            }
            type Of<'a> = &'a dyn Fn(&crate::pipeline::HopCheckpoints) -> f64;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let age =
                |c: &crate::pipeline::HopCheckpoints| now.as_millis().saturating_sub(u128::from(c.at_ms)) as f64 / 1e3;
            let took = |c: &crate::pipeline::HopCheckpoints| c.took_us as f64 / 1e6;
            let gauges: [(&str, &str, Of<'_>); 2] = [
                ("vigil_hop_checkpoint_age_seconds", "time since it last committed a checkpoint", &age),
                ("vigil_hop_checkpoint_duration_seconds", "how long committing its last checkpoint took", &took),
            ];
            for (name, what, value) in gauges {
                let help = format!("Kafka, state per several keys, per topic between hops read: {what}.");
                let mut m = e.encode_descriptor(name, &help, None, MetricType::Gauge)?;
                for (topic, c) in &hop_checkpoints {
                    ConstGauge::new(value(c)).encode(m.encode_family(&[("topic", topic.as_str())])?)?;
                }
            }
        }
        let channels = d.counters.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if !channels.is_empty() {
            let mut m = e.encode_descriptor(
                "vigil_channel_messages",
                "Batches waiting in a channel between the stages (source to each worker, workers to the output).",
                None,
                MetricType::Gauge,
            )?;
            for (name, len, _) in &channels {
                ConstGauge::new(*len as i64).encode(m.encode_family(&[("channel", name.as_str())])?)?;
            }
            let mut m = e.encode_descriptor(
                "vigil_channel_capacity",
                "How many batches a channel between the stages holds before its sender waits.",
                None,
                MetricType::Gauge,
            )?;
            for (name, _, cap) in &channels {
                ConstGauge::new(*cap as i64).encode(m.encode_family(&[("channel", name.as_str())])?)?;
            }
        }
        self.encode_rules(&mut e)?;
        if let Some(rss) = rss_bytes() {
            gauge(&mut e, "vigil_process_resident_memory_bytes", "Resident memory of the process.", rss as f64)?;
        }
        let ready = not_ready(&self.0).is_empty();
        gauge(&mut e, "vigil_ready", "1 when /readyz says ready.", f64::from(u8::from(ready)))?;
        Ok(())
    }
}

impl Observed {
    fn encode_rules(&self, e: &mut DescriptorEncoder) -> std::fmt::Result {
        let d = &self.0.daemon;
        let set = d.registry.current();
        gauge(e, "vigil_rules_loaded", "Rules live.", set.rules.len() as f64)?;
        gauge(
            e,
            "vigil_rule_files_rejected",
            "Module files in the rules folder no rule could be loaded from.",
            d.registry.rejected_files().len() as f64,
        )?;
        let counts: Vec<_> = set.rules.iter().map(|r| (r, r.counts())).collect();
        let labels = |r: &crate::rules::LoadedRule| [("rule", r.name.to_string()), ("version", r.version.to_string())];
        let mut m = e.encode_descriptor(
            "vigil_rule_evaluations",
            "Events a rule gave an outcome for.",
            None,
            MetricType::Counter,
        )?;
        for (r, n) in &counts {
            ConstCounter::new(n.evaluations).encode(m.encode_family(&labels(r))?)?;
        }
        let mut m =
            e.encode_descriptor("vigil_rule_hits", "A rule's outcomes by action.", None, MetricType::Counter)?;
        for (r, n) in &counts {
            let [rule, version] = labels(r);
            for (action, v) in [("review", n.reviews), ("block", n.blocks)] {
                let l = [rule.clone(), version.clone(), ("action", action.to_owned())];
                ConstCounter::new(v).encode(m.encode_family(&l)?)?;
            }
        }
        let mut m =
            e.encode_descriptor("vigil_rule_failures", "Failed rule calls, by cause.", None, MetricType::Counter)?;
        for (r, n) in &counts {
            let [rule, version] = labels(r);
            for (cause, v) in &n.failures_by_cause {
                let l = [rule.clone(), version.clone(), ("cause", (*cause).to_owned())];
                ConstCounter::new(*v).encode(m.encode_family(&l)?)?;
            }
        }
        let mut m =
            e.encode_descriptor("vigil_rule_quarantined", "1 while a rule is quarantined.", None, MetricType::Gauge)?;
        for (r, n) in &counts {
            ConstGauge::new(i64::from(n.quarantined)).encode(m.encode_family(&labels(r))?)?;
        }
        let mut m = e.encode_descriptor(
            "vigil_rule_latency_seconds",
            "A rule's time per event, averaged over each batch call.",
            None,
            MetricType::Histogram,
        )?;
        for (r, _) in &counts {
            let (sum, count, buckets) = r.latency().snapshot();
            m.encode_family(&labels(r))?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

/// The process's resident memory, where the system says.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    #[cfg(target_os = "linux")]
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    #[cfg(not(target_os = "linux"))]
    let page = 4096;
    Some(pages * u64::try_from(page).ok()?)
}
