//! The governed rule lifecycle with the real binary: signed modules (and
//! settings) or none, canary rollout, the tamper-evident change log,
//! rollback from the archive, and reproducing recorded decisions.

use crate::admin::{free_port, http};
use crate::daemon::Daemon;
use crate::support::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn vigil(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil")).args(args).current_dir(cwd).output().expect("run vigil")
}

fn ok(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    text
}

/// Sets `rule` to shadow through the admin API (token `t0ken`).
fn to_shadow(port: u16, rule: &str) -> (u16, String) {
    let headers = ["Content-Type: application/json", "Authorization: Bearer t0ken"];
    http(port, "POST", &format!("/admin/rules/{rule}/mode"), &headers, r#"{"mode":"shadow"}"#).expect("admin")
}

/// `module` with a custom section appended: another module (another
/// hash) of the same rule, deciding the same.
fn other_build(module: &str, tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(wasm(module)).expect("module");
    let name = b"vigil-test";
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    bytes.push(0);
    bytes.push(body.len() as u8);
    bytes.extend_from_slice(&body);
    bytes
}

fn put(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).expect("name")));
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn sha256(bytes: &[u8]) -> String {
    vigil::rules::module_hash(bytes)
}

/// The module hash as decision records carry it.
fn short(bytes: &[u8]) -> String {
    sha256(bytes)[..16].to_owned()
}

fn changes(env: &Env) -> Vec<Value> {
    read_jsonl(&env.path("state/rule-changes.jsonl"))
}

/// Signs `module` with each key, in `env`'s folder, under `config`.
fn sign(env: &Env, module: &Path, keys: &[&str], config: &Path) {
    for key in keys {
        let m = module.to_str().expect("path");
        let c = config.to_str().expect("path");
        ok(&vigil(&["sign", m, "--key", &format!("keys/{key}.key"), "--config", c], env.dir.path()));
    }
}

/// Appends payments and returns the decision of the last.
fn decide(d: &mut Daemon, env: &Env, ids: &[(&str, i64)]) -> Value {
    env.append_lines(&ids.iter().map(|(id, amount)| payment(id, *amount).to_string()).collect::<Vec<_>>());
    let last = ids.last().expect("one").0;
    d.wait_for(Duration::from_secs(60), last, || decision_for(&env.decisions(), last))
}

fn module_of(decision: &Value, rule: &str) -> String {
    rule_outcome(decision, rule).and_then(|o| o["module"].as_str()).unwrap_or_default().to_owned()
}

/// The last change-log entry refusing `file`, once one beyond `seen` is.
fn refusal(d: &mut Daemon, env: &Env, seen: usize, file: &str) -> String {
    d.wait_for(Duration::from_secs(60), "a refusal in the change log", || {
        let all = changes(env);
        all.iter()
            .skip(seen)
            .rev()
            .find(|e| e["change"] == "refuse" && e["file"].as_str().is_some_and(|f| f.ends_with(file)))
            .map(|e| e["cause"].as_str().unwrap_or_default().to_owned())
    })
}

#[test]
fn only_modules_and_settings_signed_by_enough_trusted_keys_run_and_the_running_version_stays() {
    let env = Env::new();
    for key in ["alice", "bob", "mallory"] {
        ok(&vigil(&["keygen", &format!("keys/{key}")], env.dir.path()));
    }
    let port = free_port();
    let extra = |review_above: i64| {
        format!(
            "\n[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken-env = \"VIGIL_TEST_ADMIN_TOKEN\"\n\
             [rule.large-amount.params]\nreview-above = {review_above}\n"
        )
    };
    let config = env.toml(&extra(150_000));
    let trusted = format!("trusted-keys = [{:?}, {:?}]", env.path("keys/alice.pub"), env.path("keys/bob.pub"));
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "debounce = \"50ms\"",
        &format!("debounce = \"50ms\"\nrequire-signature = true\nsignatures-required = 2\n{trusted}"),
    );
    std::fs::write(&config, &text).expect("config");
    let la = env.rules().join("large_amount.wasm");
    let v1 = std::fs::read(wasm("large_amount")).expect("module");
    put(&la, &v1);
    sign(&env, &la, &["alice", "bob"], &config);

    let vars = [("VIGIL_TEST_ADMIN_TOKEN", "t0ken")];
    let mut d = Daemon::start_with(&env, &config, "info", &vars);
    let first = decide(&mut d, &env, &[("s1", 200_000)]);
    assert_eq!(first["action"], "review");
    assert_eq!(module_of(&first, "large-amount"), short(&v1));
    let live = changes(&env);
    let load = live.iter().find(|e| e["change"] == "load").expect("a load entry");
    assert_eq!(load["signers"].as_array().map(Vec::len), Some(2), "{load}");

    // Unsigned: another rule, no signature file.
    let seen = changes(&env).len();
    install_atomically(&wasm("geo_mismatch"), &env.rules().join("geo_mismatch.wasm"));
    let why = refusal(&mut d, &env, seen, "geo_mismatch.wasm");
    assert!(why.contains("unsigned"), "{why}");
    // One of two.
    let seen = changes(&env).len();
    sign(&env, &env.rules().join("geo_mismatch.wasm"), &["alice"], &config);
    let why = refusal(&mut d, &env, seen, "geo_mismatch.wasm");
    assert!(why.contains("signed by 1 trusted key(s), 2 distinct required"), "{why}");

    // A new version of the running rule, signed by a key not trusted.
    let v2 = other_build("large_amount", "v2");
    let staged = env.path("large_amount.v2.wasm");
    std::fs::write(&staged, &v2).expect("stage");
    sign(&env, &staged, &["alice", "mallory"], &config);
    let seen = changes(&env).len();
    put(&vigil::rules::signing::sig_path(&la), &std::fs::read(vigil::rules::signing::sig_path(&staged)).expect("sig"));
    put(&la, &v2);
    let why = refusal(&mut d, &env, seen, "large_amount.wasm");
    assert!(why.contains("not in rules.trusted-keys"), "{why}");
    let after = decide(&mut d, &env, &[("s2", 200_000)]);
    assert_eq!(module_of(&after, "large-amount"), short(&v1), "the signed version keeps running");

    // Signed by both, then one signature altered.
    std::fs::remove_file(vigil::rules::signing::sig_path(&staged)).expect("rm");
    sign(&env, &staged, &["alice", "bob"], &config);
    let mut sig: Value =
        serde_json::from_slice(&std::fs::read(vigil::rules::signing::sig_path(&staged)).expect("sig")).expect("json");
    let s = sig["signatures"][1]["signature"].as_str().expect("hex").to_owned();
    let flipped = format!("{}{}", if s.starts_with('0') { "1" } else { "0" }, &s[1..]);
    sig["signatures"][1]["signature"] = json!(flipped);
    let seen = changes(&env).len();
    put(&vigil::rules::signing::sig_path(&la), sig.to_string().as_bytes());
    let why = refusal(&mut d, &env, seen, "large_amount.wasm");
    assert!(why.contains("does not verify"), "{why}");
    let after = decide(&mut d, &env, &[("s3", 200_000)]);
    assert_eq!(module_of(&after, "large-amount"), short(&v1));

    // The mode cannot change through the admin API, and the parameters
    // not without a new signature.
    let (status, body) = to_shadow(port, "large-amount");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("require-signature"), "{body}");
    put(&vigil::rules::signing::sig_path(&la), &std::fs::read(vigil::rules::signing::sig_path(&staged)).expect("sig"));
    let seen = changes(&env).len();
    let raised = text.replace("review-above = 150000", "review-above = 300000");
    std::fs::write(&config, &raised).expect("config");
    d.signal("-HUP");
    let why = refusal(&mut d, &env, seen, "large_amount.wasm");
    assert!(why.contains("settings of `large-amount` differ"), "{why}");
    let after = decide(&mut d, &env, &[("s4", 200_000)]);
    assert_eq!(after["action"], "review", "still the signed threshold of 150000: {after}");
    assert_eq!(module_of(&after, "large-amount"), short(&v1));

    // Signed again, by both, with the new settings: live.
    std::fs::remove_file(vigil::rules::signing::sig_path(&staged)).expect("rm");
    sign(&env, &staged, &["alice", "bob"], &config);
    put(&vigil::rules::signing::sig_path(&la), &std::fs::read(vigil::rules::signing::sig_path(&staged)).expect("sig"));
    let n = std::sync::atomic::AtomicUsize::new(5);
    let live = d.wait_for(Duration::from_secs(60), "the new signed version", || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("s{i}");
        env.append_lines(&[payment(&id, 200_000).to_string()]);
        std::thread::sleep(Duration::from_millis(100));
        decision_for(&env.decisions(), &id).filter(|d| module_of(d, "large-amount") == short(&v2))
    });
    assert_eq!(live["action"], "allow", "200000 is under the new threshold: {live}");
    let (status, _) = d.stop();
    assert!(status.success());
    let out =
        ok(&vigil(&["check", la.to_str().expect("path"), "--config", config.to_str().expect("path")], env.dir.path()));
    assert!(out.contains("signed by:"), "{out}");
    let geo = env.rules().join("geo_mismatch.wasm");
    let out =
        vigil(&["check", geo.to_str().expect("path"), "--config", config.to_str().expect("path")], env.dir.path());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("2 distinct required"), "{text}");
    // So does a replay.
    let only = env.path("only-geo");
    std::fs::create_dir_all(&only).expect("dir");
    std::fs::copy(&geo, only.join("geo_mismatch.wasm")).expect("copy");
    let sig = vigil::rules::signing::sig_path(&geo);
    std::fs::copy(&sig, vigil::rules::signing::sig_path(&only.join("geo_mismatch.wasm"))).expect("copy");
    let (events, cfg) = (env.events(), config.to_str().expect("path").to_owned());
    let args = ["replay", events.to_str().expect("path"), "--config", &cfg, "--rules", "only-geo", "--quiet"];
    let out = vigil(&args, env.dir.path());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("2 distinct required"), "{text}");
}

fn canary_env(percent: u32, key: &str) -> (Env, vigil::config::Config) {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    // An enforcing rule beside the canary, which allows these payments.
    env.install("geo_mismatch", "geo_mismatch.wasm");
    // Every payment is over the review threshold, each from its own account.
    let events: Vec<Value> = (0..10_000)
        .map(|i| {
            let mut p = payment(&format!("c{i}"), 250_000);
            p["account"] = json!(format!("acct-{i}"));
            p
        })
        .collect();
    env.write_events(&events);
    let mut config = env.config(false);
    config.decisions.record = vigil::decide::RecordShape::Compact;
    settings(&mut config, "large-amount", |s| {
        s.mode = vigil::decide::Mode::Canary;
        s.canary_percent = Some(f64::from(percent));
        s.canary_key = Some(serde_json::from_value(json!(key)).expect("key"));
    });
    (env, config)
}

#[test]
fn a_canary_enforces_on_its_share_of_entities_and_always_the_same_ones() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (env, config) = canary_env(10, "account");
        run_to_end(config);
        let records = read_jsonl(&env.decisions());
        assert_eq!(records.len(), 10_000);
        let mut enforced = Vec::new();
        for r in &records {
            let o = rule_outcome(r, "large-amount").expect("a canary disagreeing or counting is listed");
            assert_eq!(o["mode"], "canary");
            let inside = o["in_canary"].as_bool().expect("in_canary");
            assert_eq!(r["action"], if inside { "review" } else { "allow" }, "{r}");
            if inside {
                enforced.push(r["id"].as_str().expect("id").to_owned());
            }
        }
        let share = enforced.len() as f64 / 100.0;
        assert!((8.0..=12.0).contains(&share), "{share}% enforced, 10% ± 2% wanted");
        let set = read_jsonl(&env.rule_sets());
        let canary = set[0]["rules"].as_array().and_then(|r| r.iter().find(|r| r["rule"] == "large-amount"));
        assert_eq!(canary.map(|r| r["canary_percent"].clone()), Some(json!(10.0)), "{}", set[0]);
        runs.push(enforced);
    }
    for run in &mut runs {
        run.sort();
    }
    assert_eq!(runs[0], runs[1], "the same accounts are in the share in every run");
    // By card: all these payments share one card, so all or none.
    let (env, config) = canary_env(50, "card");
    run_to_end(config);
    let records = read_jsonl(&env.decisions());
    let reviewed = records.iter().filter(|r| r["action"] == "review").count();
    assert!(reviewed == 0 || reviewed == records.len(), "{reviewed}");

    // A canary alone does not decide the events outside its share:
    // rules.on-empty does, as with no enforcing rule.
    let (env, config) = canary_env(10, "account");
    std::fs::remove_file(env.rules().join("geo_mismatch.wasm")).expect("rm");
    run_to_end(config);
    let mut inside = 0;
    for r in read_jsonl(&env.decisions()) {
        // Outside its share the canary agrees with the final review, so a
        // compact record leaves it out.
        let counted = rule_outcome(&r, "large-amount").and_then(|o| o["in_canary"].as_bool()).unwrap_or(false);
        let no_rule = r["reasons"].as_array().expect("reasons").iter().any(|x| x == "no_enforcing_rule");
        assert_eq!(no_rule, !counted, "{r}");
        assert_eq!(r["action"], "review", "in the share the canary reviews; outside, rules.on-empty does: {r}");
        inside += usize::from(counted);
    }
    assert!((800..=1200).contains(&inside), "{inside}");
}

#[test]
fn turning_signatures_on_unloads_the_rules_they_do_not_approve() {
    let env = Env::new();
    ok(&vigil(&["keygen", "keys/alice"], env.dir.path()));
    env.install("large_amount", "large_amount.wasm");
    let config = env.toml("");
    let mut d = Daemon::start(&env, &config);
    let first = decide(&mut d, &env, &[("u1", 200_000)]);
    assert_eq!(first["action"], "review");
    let text = std::fs::read_to_string(&config).expect("config").replace(
        "debounce = \"50ms\"",
        &format!("debounce = \"50ms\"\nrequire-signature = true\ntrusted-keys = [{:?}]", env.path("keys/alice.pub")),
    );
    std::fs::write(&config, text).expect("config");
    d.signal("-HUP");
    let gone = d.wait_for(Duration::from_secs(60), "the unsigned rule unloaded", || {
        changes(&env).into_iter().find(|e| e["change"] == "unload")
    });
    assert_eq!(gone["rule"], "large-amount");
    assert!(gone["cause"].as_str().is_some_and(|c| c.contains("not approved")), "{gone}");
    let after = decide(&mut d, &env, &[("u2", 200_000)]);
    assert!(rule_outcome(&after, "large-amount").is_none(), "{after}");
    assert_eq!(after["reasons"], json!(["no_enforcing_rule"]), "{after}");
    let (status, _) = d.stop();
    assert!(status.success());
}

/// The ids of the decisions whose `rule` ran `module`.
fn decided_by(env: &Env, rule: &str, module: &str) -> Vec<String> {
    read_jsonl(&env.decisions())
        .iter()
        .filter(|d| module_of(d, rule) == module)
        .filter_map(|d| d["id"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn changes_are_logged_tamper_evidently_rolled_back_live_and_decisions_reproduced() {
    let env = Env::new();
    let port = free_port();
    let accounts = env.path("blocked-accounts.txt");
    std::fs::write(&accounts, "acct-1\n").expect("list");
    let extra = format!(
        "\n[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken-env = \"VIGIL_TEST_ADMIN_TOKEN\"\n\
         [lists.blocked-accounts]\npath = {accounts:?}\n\
         [lists.blocked-cards]\npath = {cards:?}\nkind = \"card\"\n\
         [lists.blocked-devices]\npath = {devices:?}\n[lists.blocked-ips]\npath = {ips:?}\n",
        cards = root().join("examples/lists/blocked-cards.txt"),
        devices = root().join("examples/lists/blocked-devices.txt"),
        ips = root().join("examples/lists/blocked-ips.txt"),
    );
    let config = env.toml(&extra);
    let la = env.rules().join("large_amount.wasm");
    let v1 = std::fs::read(wasm("large_amount")).expect("module");
    put(&la, &v1);
    env.install("velocity", "velocity.wasm");
    env.install("blocklist", "blocklist.wasm");
    let vars = [("VIGIL_TEST_ADMIN_TOKEN", "t0ken")];
    let mut d = Daemon::start_with(&env, &config, "info", &vars);
    decide(&mut d, &env, &[("c1", 200_000), ("c2", 3_000), ("c3", 2_000_002)]);

    let v2 = other_build("large_amount", "v2");
    put(&la, &v2);
    let n = std::sync::atomic::AtomicUsize::new(10);
    let next = |env: &Env| {
        let id = format!("c{}", n.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        env.append_lines(&[payment(&id, 200_008).to_string()]);
        id
    };
    d.wait_for(Duration::from_secs(60), "v2 live", || {
        let id = next(&env);
        std::thread::sleep(Duration::from_millis(100));
        decision_for(&env.decisions(), &id).filter(|d| module_of(d, "large-amount") == short(&v2))
    });
    let (status, body) = to_shadow(port, "velocity");
    assert_eq!(status, 200, "{body}");
    std::fs::write(&accounts, "acct-2\nacct-3\n").expect("list");
    d.wait_for(Duration::from_secs(60), "the list change logged", || {
        changes(&env).into_iter().find(|e| e["change"] == "list")
    });

    // Roll back: the previous module is live again within a second or so.
    let started = Instant::now();
    let out = ok(&vigil(&["rollback", "large-amount", "--config", config.to_str().expect("path")], env.dir.path()));
    assert!(out.contains(&sha256(&v1)[..16]), "{out}");
    d.wait_for(Duration::from_secs(60), "v1 live again", || {
        let id = next(&env);
        std::thread::sleep(Duration::from_millis(20));
        decision_for(&env.decisions(), &id).filter(|d| module_of(d, "large-amount") == short(&v1))
    });
    eprintln!("rollback to the first decision by the previous version: {:?}", started.elapsed());
    decide(&mut d, &env, &[("z1", 200_000), ("z2", 3_000)]);
    let (status, _) = d.stop();
    assert!(status.success());

    let log = changes(&env);
    let kinds: Vec<(&str, &str)> =
        log.iter().map(|e| (e["change"].as_str().unwrap_or(""), e["rule"].as_str().unwrap_or(""))).collect();
    for want in [("load", "large-amount"), ("replace", "large-amount"), ("mode", "velocity"), ("list", "")] {
        assert!(kinds.contains(&want), "{want:?} missing from {kinds:?}");
    }
    let back = log.iter().rev().find(|e| e["change"] == "replace" && e["rule"] == "large-amount").expect("rollback");
    assert_eq!(back["module"], sha256(&v1));
    assert_eq!(back["previous_module"], sha256(&v2));
    assert_eq!(back["cause"], "rollback to a version live before");
    let list = log.iter().find(|e| e["change"] == "list").expect("list");
    assert_eq!((list["added"].clone(), list["removed"].clone()), (json!(["acct-2", "acct-3"]), json!(["acct-1"])));
    let cfg = config.to_str().expect("path");
    let out = ok(&vigil(&["audit", "verify", "--config", cfg], env.dir.path()));
    assert!(out.contains(&format!("ok: {} entries chain", log.len())), "{out}");

    // Decisions by either version, and by the blocklist and the shadowed
    // rule, come out again exactly.
    let events = env.events();
    let input = events.to_str().expect("path");
    // (Accounts are acct-<amount mod 7>: c2, c3, z2 and the v2 decisions'
    // accounts are in no version of the list.)
    let mut ids = vec!["c2".to_owned(), "c3".to_owned(), "z2".to_owned()];
    ids.extend(decided_by(&env, "large-amount", &short(&v2)).into_iter().take(1));
    for id in &ids {
        let out = ok(&vigil(&["explain", id, "--input", input, "--config", cfg], env.dir.path()));
        assert!(out.contains("reproduced exactly"), "{out}");
        assert!(out.contains("reads lists"), "the blocklist's reproduction names what it cannot hold: {out}");
    }
    // c1's account (acct-3) was added to the list after it was decided:
    // explain says which rule it cannot reproduce, and why.
    let out = vigil(&["explain", "c1", "--input", input, "--config", cfg], env.dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cannot be reproduced exactly: blocklist read what records do not hold"), "{text}");
    // A record changed by hand is not reproduced.
    let decisions = std::fs::read_to_string(env.decisions()).expect("decisions");
    let forged = decisions.replace("\"id\":\"c3\",\"action\":\"block\"", "\"id\":\"c3\",\"action\":\"allow\"");
    assert_ne!(forged, decisions);
    std::fs::write(env.decisions(), forged).expect("write");
    let out = vigil(&["explain", "c3", "--input", input, "--config", cfg], env.dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("recorded allow, reproduced block: NOT reproduced"), "{text}");

    // One byte changed in the middle of the log.
    let path = env.path("state/rule-changes.jsonl");
    let mut bytes = std::fs::read(&path).expect("log");
    let middle = log.len() / 2;
    let start =
        bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(middle - 1).map(|(i, _)| i + 1).expect("line");
    let at = start + bytes[start..].windows(7).position(|w| w == b"\"cause\"").expect("cause") + 10;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let out = vigil(&["audit", "verify", "--config", cfg], env.dir.path());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains(&format!("entry {} (line {}) was altered", middle + 1, middle + 1)), "{text}");
}

#[test]
fn a_quarantine_and_its_release_are_in_the_change_log() {
    let env = Env::new();
    env.install("chaos", "chaos.wasm");
    env.install("large_amount", "large_amount.wasm");
    let port = free_port();
    let extra = format!(
        "\n[admin]\nlisten = \"127.0.0.1:{port}\"\ntoken-env = \"VIGIL_TEST_ADMIN_TOKEN\"\n\
         [rule.chaos.params]\nbehaviour = \"panic\"\n"
    );
    let config = env.toml(&extra);
    let vars = [("VIGIL_TEST_ADMIN_TOKEN", "t0ken")];
    let mut d = Daemon::start_with(&env, &config, "info", &vars);
    let ids: Vec<(String, i64)> = (0..12).map(|i| (format!("q{i}"), 1_000 + i)).collect();
    let ids: Vec<(&str, i64)> = ids.iter().map(|(s, a)| (s.as_str(), *a)).collect();
    decide(&mut d, &env, &ids);
    let quarantine = d.wait_for(Duration::from_secs(60), "the quarantine logged", || {
        changes(&env).into_iter().find(|e| e["change"] == "quarantine")
    });
    assert_eq!(quarantine["rule"], "chaos");
    assert!(
        quarantine["cause"].as_str().is_some_and(|c| c.contains("in a row") && c.contains("panicked")),
        "{quarantine}"
    );
    let auth = "Authorization: Bearer t0ken";
    let (status, body) = http(port, "POST", "/admin/rules/chaos/release", &[auth], "").expect("release");
    assert_eq!(status, 200, "{body}");
    let release = changes(&env).into_iter().find(|e| e["change"] == "release").expect("the release logged");
    assert_eq!(
        (release["rule"].as_str(), release["cause"].as_str()),
        (Some("chaos"), Some("admin API (token VIGIL_TEST_ADMIN_TOKEN)"))
    );
    let (status, _) = d.stop();
    assert!(status.success());
    ok(&vigil(&["audit", "verify", "--config", config.to_str().expect("path")], env.dir.path()));
}

#[test]
fn a_renamed_rule_file_is_unloaded_from_the_old_name_and_stays_live_in_the_log() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let config = env.toml("");
    let mut d = Daemon::start(&env, &config);
    let first = decide(&mut d, &env, &[("r1", 200_000)]);
    assert_eq!(first["action"], "review");
    std::fs::rename(env.rules().join("large_amount.wasm"), env.rules().join("renamed.wasm")).expect("rename");
    let loaded = d.wait_for(Duration::from_secs(60), "the rule loaded from its new name", || {
        changes(&env)
            .into_iter()
            .find(|e| e["change"] == "load" && e["file"].as_str().is_some_and(|f| f.ends_with("renamed.wasm")))
    });
    assert_eq!(loaded["cause"], "file added", "{loaded}");
    let last = changes(&env).into_iter().rfind(|e| e["rule"] == "large-amount").expect("entries");
    assert_eq!(last["change"], "load", "the log's last word on the rule is that it runs: {last}");
    let after = decide(&mut d, &env, &[("r2", 200_000)]);
    assert_eq!(after["action"], "review", "{after}");
    let (status, _) = d.stop();
    assert!(status.success());
}
