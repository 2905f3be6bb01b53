//! The admin listener of the real daemon: metrics that agree with the
//! outputs, readiness, and an admin API whose changes need the token,
//! take effect on the next events and survive a restart.

use crate::daemon::Daemon;
use crate::support::*;
use std::io::{Read, Write};
use std::time::Duration;

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// One HTTP/1.1 request; (status, body). A few lines over a socket, to
/// see exactly what goes over the wire.
pub fn http(port: u16, method: &str, path: &str, headers: &[&str], body: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).ok()?;
    // To the end of the body its length gives, or of the connection.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).ok()?;
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        let whole = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .is_some_and(|len| body.len() >= len)
        });
        if n == 0 || whole {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    // Bodies come whole here; a chunked one is unwrapped.
    let body = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(&body) } else { body };
    Some((status, body))
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The value of the sample `name{labels}` (labels as written, in order).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn admin_toml(env: &Env, port: u16, extra: &str) -> std::path::PathBuf {
    env.toml(&format!("\n[admin]\nlisten = \"127.0.0.1:{port}\"\n{extra}"))
}

#[test]
fn metrics_agree_with_the_outputs_while_events_flow() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.install("geo_mismatch", "geo_mismatch.wasm");
    // Every fifth payment is over large-amount's review threshold, every
    // twentieth over its block threshold.
    let amount = |i: i64| match i {
        i if i % 20 == 0 => 2_000_000 + i,
        i if i % 5 == 0 => 200_000 + i,
        i => 1_000 + i,
    };
    env.write_events(&(0..300).map(|i| payment(&format!("a{i}"), amount(i))).collect::<Vec<_>>());
    let port = free_port();
    let config = admin_toml(&env, port, "");
    let mut d = Daemon::start(&env, &config);
    let first = d.wait_for(Duration::from_secs(60), "the metrics", || http(port, "GET", "/metrics", &[], ""));
    assert_eq!(first.0, 200, "{}", first.1);
    assert!(first.1.contains("# TYPE vigil_events_in counter"), "{}", first.1);
    // More events, and two that are dead-lettered, while it runs.
    env.append_lines(&(300..400).map(|i| payment(&format!("a{i}"), amount(i)).to_string()).collect::<Vec<_>>());
    env.append_lines(&["not json".to_owned(), payment("a1", 5).to_string()]);
    let dead_letters = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("vigil_dead_letters_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let metrics = d.wait_for(Duration::from_secs(60), "every event counted", || {
        let (_, m) = http(port, "GET", "/metrics", &[], "")?;
        (sample(&m, "vigil_events_decided_total")? + dead_letters(&m) >= 402.0).then_some(m)
    });
    let events_in = sample(&metrics, "vigil_events_in_total").expect("events in");
    let decided = sample(&metrics, "vigil_events_decided_total").expect("decided");
    let dead = dead_letters(&metrics);
    assert_eq!((events_in, decided, dead), (402.0, 400.0, 2.0), "{metrics}");
    assert_eq!(sample(&metrics, "vigil_dead_letters_total{code=\"duplicate\"}"), Some(1.0), "{metrics}");

    let records = read_jsonl(&env.decisions());
    assert_eq!(records.len(), 400);
    let hits = |rule: &str, action: &str| {
        records.iter().filter(|r| rule_outcome(r, rule).is_some_and(|o| o["action"] == action)).count() as f64
    };
    let by_action = |action: &str| records.iter().filter(|r| r["action"] == action).count() as f64;
    for rule in ["large-amount", "geo-mismatch"] {
        assert_eq!(
            sample(&metrics, &format!("vigil_rule_evaluations_total{{rule=\"{rule}\",version=\"1.0.0\"}}")),
            Some(400.0)
        );
        for action in ["review", "block"] {
            let series = format!("vigil_rule_hits_total{{rule=\"{rule}\",version=\"1.0.0\",action=\"{action}\"}}");
            assert_eq!(sample(&metrics, &series), Some(hits(rule, action)), "{series}");
        }
    }
    assert_eq!(hits("large-amount", "block"), 20.0, "the test's own arithmetic");
    for action in ["allow", "review", "block"] {
        assert_eq!(sample(&metrics, &format!("vigil_decisions_total{{action=\"{action}\"}}")), Some(by_action(action)));
    }
    assert_eq!(sample(&metrics, "vigil_decision_latency_seconds_count"), Some(400.0), "{metrics}");
    assert_eq!(sample(&metrics, "vigil_rules_loaded"), Some(2.0));
    assert!(sample(&metrics, "vigil_process_resident_memory_bytes").is_some_and(|b| b > 1e6), "{metrics}");
    assert_eq!(http(port, "GET", "/healthz", &[], "").map(|r| r.0), Some(200));
    // The file is read to its end: nothing left behind, nothing waiting
    // between the stages, once measured.
    let channels = ["to-worker-0", "to-worker-1", "to-output"];
    let waiting = |m: &str, c: &str| sample(m, &format!("vigil_channel_messages{{channel=\"{c}\"}}"));
    let m = d.wait_for(Duration::from_secs(30), "no lag and empty channels", || {
        let (_, m) = http(port, "GET", "/metrics", &[], "")?;
        let idle = sample(&m, "vigil_source_lag_bytes")? == 0.0 && channels.iter().all(|c| waiting(&m, c) == Some(0.0));
        idle.then_some(m)
    });
    for c in channels {
        assert!(sample(&m, &format!("vigil_channel_capacity{{channel=\"{c}\"}}")).is_some_and(|n| n > 0.0), "{m}");
    }
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn readiness_follows_whether_an_enforcing_rule_is_live() {
    let env = Env::new();
    env.write_events(&[payment("r1", 100)]);
    let port = free_port();
    let config = admin_toml(&env, port, "");
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("debounce = \"50ms\"", "debounce = \"50ms\"\nallow-empty = true");
    std::fs::write(&config, text).expect("write");
    let mut d = Daemon::start(&env, &config);
    let (status, body) = d.wait_for(Duration::from_secs(60), "/readyz", || http(port, "GET", "/readyz", &[], ""));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no enforcing rule is live"), "{body}");
    assert_eq!(http(port, "GET", "/healthz", &[], "").map(|r| r.0), Some(200), "alive while not ready");
    // Without admin.token-env the API is read-only.
    let (status, body) = http(port, "POST", "/admin/reload", &[], "").expect("reload");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("admin.token-env"), "{body}");

    install_atomically(&wasm("large_amount"), &env.rules().join("large_amount.wasm"));
    d.wait_for(Duration::from_secs(60), "ready once a rule loads", || {
        let (status, body) = http(port, "GET", "/readyz", &[], "")?;
        (status == 200).then_some(body)
    });
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn admin_changes_need_the_token_take_effect_on_the_next_events_and_survive_a_restart() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    // Stays enforcing, and allows these payments.
    env.install("geo_mismatch", "geo_mismatch.wasm");
    env.write_events(&[payment("m1", 500_000)]);
    let port = free_port();
    let config = admin_toml(&env, port, "token-env = \"VIGIL_TEST_ADMIN_TOKEN\"");
    let vars = [("VIGIL_TEST_ADMIN_TOKEN", "t0ken-for-tests")];
    let mut d = Daemon::start_with(&env, &config, "info", &vars);
    let first = d.wait_for(Duration::from_secs(60), "the first decision", || decision_for(&env.decisions(), "m1"));
    assert_eq!(first["action"], "review");

    let shadow = r#"{"mode":"shadow"}"#;
    let json = "Content-Type: application/json";
    let path = "/admin/rules/large-amount/mode";
    assert_eq!(http(port, "POST", path, &[json], shadow).map(|r| r.0), Some(401), "no token");
    let wrong = "Authorization: Bearer t0ken-for-tests-not";
    assert_eq!(http(port, "POST", path, &[json, wrong], shadow).map(|r| r.0), Some(401), "a wrong token");
    assert_eq!(http(port, "POST", "/admin/rules/large-amount/release", &[wrong], "").map(|r| r.0), Some(401));
    let good = "Authorization: Bearer t0ken-for-tests";
    let (status, body) = http(port, "POST", "/admin/rules/nope/mode", &[json, good], shadow).expect("unknown");
    assert_eq!(status, 404, "{body}");
    let (status, body) = http(port, "POST", path, &[json, good], shadow).expect("mode");
    assert_eq!(status, 200, "{body}");
    let changed = wait_for(Duration::from_secs(10), "the change in the log", || {
        d.log().lines().find(|l| l.contains("rule mode changed")).map(String::from)
    });
    assert!(changed.contains("VIGIL_TEST_ADMIN_TOKEN") && changed.contains("large-amount"), "{changed}");

    env.append_lines(&[payment("m2", 500_000).to_string()]);
    let second = d.wait_for(Duration::from_secs(60), "the next decision", || decision_for(&env.decisions(), "m2"));
    assert_eq!(second["action"], "allow", "a shadow rule does not decide: {second}");
    assert_eq!(rule_outcome(&second, "large-amount").expect("listed")["mode"], "shadow", "{second}");
    let (_, rules) = http(port, "GET", "/admin/rules", &[], "").expect("rules");
    let rules: Vec<serde_json::Value> = serde_json::from_str(&rules).expect("json");
    let large = rules.iter().find(|r| r["name"] == "large-amount").expect("listed");
    assert_eq!(large["mode"], "shadow", "{large}");
    assert_eq!(large["evaluations"], 1, "the reloaded rule counts from its load: {large}");
    let geo = rules.iter().find(|r| r["name"] == "geo-mismatch").expect("listed");
    assert_eq!(geo["evaluations"], 2, "the other rule was not reloaded: {geo}");
    let (status, _) = d.stop();
    assert!(status.success());

    // A restart keeps the change: the overrides file wins over the config.
    let overrides = std::fs::read_to_string(env.path("state/admin.toml")).expect("overrides file");
    assert!(overrides.contains("\"large-amount\" = \"shadow\""), "{overrides}");
    env.append_lines(&[payment("m3", 500_000).to_string()]);
    let mut d = Daemon::start_with(&env, &config, "info", &vars);
    let third =
        d.wait_for(Duration::from_secs(60), "a decision after the restart", || decision_for(&env.decisions(), "m3"));
    assert_eq!(third["action"], "allow", "{third}");
    assert!(d.log().contains("win over the config"), "the start says why: {}", d.log());
    // Back to the config's mode: the rule follows the config again.
    let enforce = r#"{"mode":"enforce"}"#;
    assert_eq!(http(port, "POST", path, &[json, good], enforce).map(|r| r.0), Some(200));
    let overrides = std::fs::read_to_string(env.path("state/admin.toml")).expect("overrides file");
    assert!(!overrides.contains("large-amount"), "{overrides}");
    let (status, _) = d.stop();
    assert!(status.success());
}

#[test]
fn a_rule_logs_through_the_host_with_its_name_rate_limited_and_not_in_replays() {
    let env = Env::new();
    env.install("chaos", "chaos.wasm");
    env.install("large_amount", "large_amount.wasm");
    env.write_events(&(0..200).map(|i| payment(&format!("l{i}"), 1_000 + i)).collect::<Vec<_>>());
    let config = env.toml("[rule.chaos.params]\nbehaviour = \"log\"\n");
    // One worker: the limit is per rule instance, and each worker has one.
    let text = std::fs::read_to_string(&config)
        .expect("config")
        .replace("debounce = \"50ms\"", "debounce = \"50ms\"\nlog-rate = 5")
        .replace("workers = 2", "workers = 1");
    std::fs::write(&config, text).expect("write");
    let mut d = Daemon::start(&env, &config);
    d.wait_for(Duration::from_secs(60), "200 decisions", || (line_count(&env.decisions()) >= 200).then_some(()));
    // A second later the limit is new again: this event's line reports
    // how many were dropped before it.
    std::thread::sleep(Duration::from_millis(1100));
    env.append_lines(&[payment("l-last", 77).to_string()]);
    d.wait_for(Duration::from_secs(60), "the last decision", || decision_for(&env.decisions(), "l-last"));
    let (status, log) = d.stop();
    assert!(status.success());
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("chaos rule logging")).collect();
    assert!(lines.len() >= 2 && lines.len() <= 20, "5 a second, not 201: {}", lines.len());
    assert!(lines.iter().all(|l| l.contains("WARN") && l.contains("chaos") && l.contains("1.0.0")), "{lines:?}");
    assert!(lines.last().is_some_and(|l| l.contains("amount of 77")), "{lines:?}");
    let dropped: u64 = lines
        .iter()
        .filter_map(|l| l.split("dropped=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(dropped + lines.len() as u64, 201, "every line logged or counted: {lines:?}");

    // A replay drops them, unless asked.
    let replay = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["replay", "--quiet", "--config"])
            .arg(&config)
            .arg(env.events())
            .arg("--out")
            .arg(env.path(&format!("replay{}", extra.len())))
            .args(extra)
            .output()
            .expect("replay");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).matches("chaos rule logging").count()
    };
    assert_eq!(replay(&[]), 0);
    assert!(replay(&["--rule-logs"]) > 0);
}

/// A headless Chromium on `url`, driven over the DevTools protocol.
struct Browser {
    child: std::process::Child,
    socket: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>,
    next_id: u64,
}

impl Browser {
    fn open(env: &Env, url: &str) -> Self {
        let profile = env.path("chromium-profile");
        let child = std::process::Command::new(crate::replay::chromium())
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"])
            .args(["--disable-background-networking", "--disable-component-update", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes the port it chose here.
        let port: u16 = wait_for(Duration::from_secs(30), "chromium's DevTools port", || {
            std::fs::read_to_string(profile.join("DevToolsActivePort")).ok()?.lines().next()?.parse().ok()
        });
        let url = wait_for(Duration::from_secs(30), "the page's DevTools target", || {
            let (_, body) = http(port, "GET", "/json/list", &[], "")?;
            let targets: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
            targets.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"].as_str().map(String::from)
        });
        let (socket, _) = tungstenite::connect(url.as_str()).expect("connect to the page");
        Self { child, socket, next_id: 1 }
    }

    /// Evaluates `expression` in the page; its value as JSON.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let ask = serde_json::json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true}});
        self.socket.send(tungstenite::Message::text(ask.to_string())).expect("send");
        loop {
            let msg = self.socket.read().expect("read");
            let Ok(text) = msg.to_text() else { continue };
            let reply: serde_json::Value = serde_json::from_str(text).expect("json");
            if reply["id"] == id {
                return reply["result"]["result"]["value"].clone();
            }
        }
    }

    /// Polls `expression` until it evaluates to `want`.
    fn wait_until(&mut self, expression: &str, want: &str) {
        let mut seen = serde_json::Value::Null;
        let found = (0..300).any(|_| {
            seen = self.eval(expression);
            let hit = seen == want;
            if !hit {
                std::thread::sleep(Duration::from_millis(100));
            }
            hit
        });
        assert!(found, "`{expression}` stayed {seen}, not {want}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_dashboard_shows_live_numbers_and_switches_a_rule_in_a_headless_browser() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    env.install("geo_mismatch", "geo_mismatch.wasm");
    env.write_events(&(0..50).map(|i| payment(&format!("d{i}"), 1_000 + i)).collect::<Vec<_>>());
    let port = free_port();
    let config = admin_toml(&env, port, "token-env = \"VIGIL_TEST_ADMIN_TOKEN\"");
    let mut d = Daemon::start_with(&env, &config, "info", &[("VIGIL_TEST_ADMIN_TOKEN", "page-token")]);
    d.wait_for(Duration::from_secs(60), "50 decisions", || (line_count(&env.decisions()) >= 50).then_some(()));

    let (status, page) = http(port, "GET", "/", &[], "").expect("the page");
    assert_eq!(status, 200);
    for fetch in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.contains(fetch), "the page loads nothing from elsewhere ({fetch})");
    }
    let mut browser = Browser::open(&env, &format!("http://127.0.0.1:{port}/"));
    let decided = "document.querySelector('[data-metric=decided]').textContent";
    browser.wait_until(decided, "50");
    browser.wait_until("document.querySelector('#ready').textContent", "ready");
    let mode = "document.querySelector('tr[data-rule=\"large-amount\"] [data-field=mode]').textContent";
    browser.wait_until(mode, "enforce");

    // Events flow: the numbers on the page move.
    env.append_lines(&(50..150).map(|i| payment(&format!("d{i}"), 1_000 + i).to_string()).collect::<Vec<_>>());
    browser.wait_until(decided, "150");
    let evaluated = "document.querySelector('tr[data-rule=\"large-amount\"]').children[4].textContent";
    browser.wait_until(evaluated, "150");

    // A switch on the page, with the token typed in: the next events see it.
    browser.eval(
        "document.querySelector('#token').value = 'page-token'; \
         document.querySelector('tr[data-rule=\"large-amount\"] button[data-mode=shadow]').click(); 'clicked'",
    );
    browser.wait_until(mode, "shadow");
    browser.wait_until("document.querySelector('#status').textContent", "large-amount: shadow");
    env.append_lines(&[payment("d-big", 500_000).to_string()]);
    let big = d.wait_for(Duration::from_secs(60), "the next decision", || decision_for(&env.decisions(), "d-big"));
    assert_eq!(big["action"], "allow", "{big}");
    assert_eq!(rule_outcome(&big, "large-amount").expect("listed")["mode"], "shadow", "{big}");
    drop(browser);
    let (status, _) = d.stop();
    assert!(status.success());
}
