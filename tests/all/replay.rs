//! `vigil replay`: backtests on the bundled card-transaction sample, the
//! HTML report in a real browser, and `--compare` finding a planted change.
//! Regenerate the golden summary with
//! `VIGIL_BLESS=1 cargo test -p vigil --test all replay` and review the diff.

use crate::support::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SAMPLE: &str = "examples/data/card-transactions-sample.csv";
const MAPPING: &str = "examples/card-transactions.mapping.toml";

fn vigil(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil")).current_dir(root()).args(args).output().expect("run vigil")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "vigil failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// The example rules, as `just rules` installs them.
fn example_rules(env: &Env) {
    for m in ["large_amount", "blocklist", "geo_mismatch", "velocity", "spend_spike"] {
        env.install(m, &format!("{m}.wasm"));
    }
}

/// Replays the sample through the example config and the rules installed
/// in `env` into `out`.
fn replay_sample(env: &Env, out: &Path) -> String {
    replay_csv(Path::new("examples/vigil.toml"), env, out)
}

/// Replays the sample with `config` and the rules installed in `env`.
fn replay_csv(config: &Path, env: &Env, out: &Path) -> String {
    let rules = env.rules();
    ok(&vigil(&[
        "replay".as_ref(),
        "--quiet".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--mapping".as_ref(),
        MAPPING.as_ref(),
        "--rules".as_ref(),
        rules.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        SAMPLE.as_ref(),
    ]))
}

fn golden(name: &str, got: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("VIGIL_BLESS").is_some() {
        std::fs::write(&path, got).expect("write golden file");
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; generate it with VIGIL_BLESS=1", path.display()));
    assert_eq!(got, want, "{name} differs from the golden file");
}

#[test]
fn the_sample_backtest_gives_the_recorded_summary_and_keeps_pans_out() {
    let env = Env::new();
    example_rules(&env);
    let out = env.path("replay");
    let summary = replay_sample(&env, &out);
    golden("replay-summary.txt", &summary);

    // Every row is accounted for: decided or dead-lettered with a reason.
    let rows = csv_rows();
    let decisions = read_jsonl(&out.join("decisions.jsonl"));
    let dead = read_jsonl(&out.join("dead-letters.jsonl"));
    assert_eq!(decisions.len() + dead.len(), rows.len());
    assert!(dead.iter().all(|d| d["reason"].as_str().is_some_and(|r| !r.is_empty())));

    // No raw card number in any output.
    for file in ["decisions.jsonl", "dead-letters.jsonl", "alerts.jsonl", "summary.json", "report.html"] {
        let text = std::fs::read_to_string(out.join(file)).unwrap_or_default();
        for pan in rows.iter().map(|r| &r.pan) {
            assert!(!text.contains(pan.as_str()), "{file} holds a raw PAN");
        }
    }

    // The summary's overall matrix agrees with a join done here.
    let labels: std::collections::HashMap<&str, bool> = rows.iter().map(|r| (r.id.as_str(), r.fraud)).collect();
    let (mut tp, mut fp) = (0, 0);
    for d in &decisions {
        if d["action"] != "allow" {
            if labels[d["id"].as_str().expect("id")] { tp += 1 } else { fp += 1 }
        }
    }
    let json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary.json"))
        .expect("summary is JSON");
    assert_eq!(json["overall"]["tp"], tp);
    assert_eq!(json["overall"]["fp"], fp);
    assert!(tp > 0, "the example rules catch some of the sample's fraud");
}

struct Row {
    id: String,
    pan: String,
    cents: i64,
    fraud: bool,
}

fn csv_rows() -> Vec<Row> {
    let mut reader = csv::Reader::from_path(root().join(SAMPLE)).expect("sample");
    let header = reader.headers().expect("header").clone();
    let col = |name: &str| header.iter().position(|h| h == name).expect("column");
    let (id, pan, amt, fraud) = (col("trans_num"), col("cc_num"), col("amt"), col("is_fraud"));
    reader
        .records()
        .map(|r| {
            let r = r.expect("row");
            let (dollars, cents) = r[amt].split_once('.').unwrap_or((&r[amt], "0"));
            let cents =
                dollars.parse::<i64>().expect("amt") * 100 + format!("{cents:0<2}").parse::<i64>().expect("amt");
            Row { id: r[id].to_owned(), pan: r[pan].to_owned(), cents, fraud: &r[fraud] == "1" }
        })
        .collect()
}

pub fn chromium() -> PathBuf {
    let path = PathBuf::from(std::env::var_os("CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into()));
    assert!(path.exists(), "{} is missing: scripts/setup installs Debian's chromium (or set CHROMIUM)", path.display());
    path
}

#[test]
fn the_html_report_is_self_contained_and_renders_in_a_headless_browser() {
    let env = Env::new();
    example_rules(&env);
    let out = env.path("replay");
    replay_sample(&env, &out);
    let report = out.join("report.html");
    let html = std::fs::read_to_string(&report).expect("report.html");
    for fetch in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!html.contains(fetch), "the report loads nothing from the network ({fetch})");
    }
    assert!(!html.contains("<script"), "the report needs no scripts");

    let profile = env.path("chromium-profile");
    let run = |extra: &[String]| {
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", report.display()));
        cmd.output().expect("run chromium")
    };
    let dom = run(&["--dump-dom".into()]);
    assert!(dom.status.success(), "chromium failed: {}", String::from_utf8_lossy(&dom.stderr));
    let text = String::from_utf8_lossy(&dom.stdout);
    // The browser parsed the four charts as SVG with their drawn shapes and text.
    assert_eq!(text.matches("<svg").count(), 4, "{text}");
    for want in [
        "Alerts over time",
        "Score distribution",
        "Hits per rule",
        "Precision per rule",
        "spend-spike",
        "<rect",
        "<polyline",
    ] {
        assert!(text.contains(want), "the rendered page lacks {want:?}");
    }
    let stderr = String::from_utf8_lossy(&dom.stderr);
    assert!(!stderr.contains("CONSOLE"), "the page logged to the console: {stderr}");

    let png = env.path("report.png");
    let shot =
        run(&["--hide-scrollbars".into(), "--window-size=1000,2600".into(), format!("--screenshot={}", png.display())]);
    assert!(shot.status.success(), "chromium screenshot failed: {}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).expect("screenshot");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000, "a blank page would be a tiny PNG");
}

#[test]
fn compare_finds_the_decisions_a_new_version_changes() {
    let env = Env::new();
    // Amounts across both limits of large-amount (defaults: review above
    // 100000, block above 1000000); every fifth payment labelled fraud.
    let events: Vec<String> = (0..300i64)
        .map(|i| {
            let mut p = payment(&format!("p{i:03}"), i * 5_000);
            p["ts"] = json!(1_700_000_000_000i64 + i * 1000);
            p["is_fraud"] = json!(i % 5 == 0);
            p.to_string()
        })
        .collect();
    let input = env.path("history.jsonl");
    std::fs::write(&input, events.join("\n") + "\n").expect("write history");
    let config = env.toml("");
    let out = env.path("cmp");
    let (old, new) = (wasm("large_amount"), wasm("large_amount_v2"));
    let args: Vec<&std::ffi::OsStr> = vec![
        "replay".as_ref(),
        "--quiet".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--label".as_ref(),
        "is_fraud".as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
        "--compare".as_ref(),
        old.as_os_str(),
        new.as_os_str(),
        input.as_os_str(),
    ];
    let text = ok(&vigil(&args));
    // v1 reviews (100000, 1000000] and blocks above; v2 blocks everything
    // above 100000, with its own score and reason.
    let review_to_block = (0..300i64).filter(|i| (100_001..=1_000_000).contains(&(i * 5_000))).count();
    let rescored = (0..300i64).filter(|i| i * 5_000 > 1_000_000).count();
    assert!(review_to_block > 0 && rescored > 0);
    assert!(
        text.contains(&format!(
            "300 events decided by both: {} the same, {} different",
            300 - review_to_block - rescored,
            review_to_block + rescored
        )),
        "{text}"
    );
    assert!(text.contains(&format!("review → block  {review_to_block:>8}")), "{text}");
    assert!(text.contains(&format!("same action, different score or reasons: {rescored}")), "{text}");
    // The first difference in event time is the first payment over the review limit.
    assert!(
        text.contains("p021  A: review 30 [amount_over_review_limit]  →  B: block 90 [amount_over_limit_v2]"),
        "{text}"
    );
    // Labels were taken out of the events before the rules saw them, and scored.
    assert!(text.contains("fraud caught"), "{text}");
    let decisions = read_jsonl(&out.join("a/decisions.jsonl"));
    assert_eq!(decisions.len(), 300);
    assert!(out.join("a/report.html").exists() && out.join("b/report.html").exists());
}

#[test]
fn a_csv_without_a_mapping_or_with_a_wrong_one_is_refused_with_the_fix() {
    let env = Env::new();
    let out = vigil(&["replay".as_ref(), "--quiet".as_ref(), SAMPLE.as_ref()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give a column mapping with --mapping"));

    let bad = env.path("bad.mapping.toml");
    let text = std::fs::read_to_string(root().join(MAPPING)).expect("mapping").replace("\"amt\"", "\"amount_usd\"");
    std::fs::write(&bad, text).expect("write mapping");
    let out = vigil(&[
        "replay".as_ref(),
        "--quiet".as_ref(),
        "--config".as_ref(),
        "examples/vigil.toml".as_ref(),
        "--mapping".as_ref(),
        bad.as_os_str(),
        SAMPLE.as_ref(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fields.amount: column `amount_usd` is not in the header"), "{err}");
}

#[test]
fn amounts_in_the_decisions_are_the_sample_s_dollars_in_cents() {
    // The mapping's decimal conversion against the CSV text, via the
    // large-amount rule's view: replay with only large-amount and a review
    // limit, and check which ids were reviewed.
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let config = env.toml(
        r#"
[rule.large-amount]
params = { review-above = 25000, block-above = 999999999 }
"#,
    );
    let out = env.path("replay");
    let text = replay_csv(&config, &env, &out);
    let decided: std::collections::HashSet<String> =
        read_jsonl(&out.join("decisions.jsonl")).iter().map(|d| d["id"].as_str().expect("id").to_owned()).collect();
    let want = csv_rows().iter().filter(|r| decided.contains(&r.id) && r.cents > 25_000).count();
    let reviewed = read_jsonl(&out.join("decisions.jsonl")).iter().filter(|d| d["action"] == "review").count();
    assert_eq!(reviewed, want, "{text}");
}

#[test]
fn generated_events_replay_with_their_labels() {
    let env = Env::new();
    env.install("velocity", "velocity.wasm");
    let events = env.path("gen.jsonl");
    let made = vigil(&[
        "gen".as_ref(),
        "--events".as_ref(),
        "5000".as_ref(),
        "--accounts".as_ref(),
        "300".as_ref(),
        "--fraud-share".as_ref(),
        "0.05".as_ref(),
        "--label".as_ref(),
        "is_fraud".as_ref(),
        "--out".as_ref(),
        events.as_os_str(),
    ]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let fraud = std::fs::read_to_string(&events)
        .expect("generated")
        .lines()
        .filter(|l| l.contains("\"is_fraud\":true"))
        .count();
    let config = env.toml("");
    let out = env.path("replay");
    let rules = env.rules();
    let text = ok(&vigil(&[
        "replay".as_ref(),
        "--quiet".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--label".as_ref(),
        "is_fraud".as_ref(),
        "--rules".as_ref(),
        rules.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        events.as_os_str(),
    ]));
    assert!(text.contains("events      5000 read, 5000 decided, 0 dead-lettered"), "{text}");
    assert!(text.contains(&format!("`is_fraud`: {fraud} fraud, {} legitimate", 5000 - fraud)), "{text}");
    // Velocity spikes and card-testing bursts are what the velocity rule is for.
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary")).expect("json");
    assert!(summary["rules"]["velocity"]["confusion"]["tp"].as_u64().expect("tp") > 0, "{text}");
}

/// The typology rules (rules/typologies/) on a generated stream with a seed
/// nothing else uses: each catches its pattern, and together they leave
/// everyday payments alone.
#[test]
fn typology_rules_catch_their_patterns_on_generated_data() {
    let env = Env::new();
    for t in ["card_testing", "structuring", "rapid_movement", "fan_in", "fan_out", "account_takeover"] {
        env.install(&format!("typology_{t}"), &format!("{t}.wasm"));
    }
    let events = env.path("gen.jsonl");
    let made = vigil(&[
        "gen".as_ref(),
        "--events".as_ref(),
        "150000".as_ref(),
        "--accounts".as_ref(),
        "10000".as_ref(),
        "--seed".as_ref(),
        "31337".as_ref(),
        "--label".as_ref(),
        "is_fraud".as_ref(),
        "--typology".as_ref(),
        "typology".as_ref(),
        "--out".as_ref(),
        events.as_os_str(),
    ]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let config = env.toml("");
    let out = env.path("replay");
    let rules = env.rules();
    let text = ok(&vigil(&[
        "replay".as_ref(),
        "--quiet".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--label".as_ref(),
        "is_fraud".as_ref(),
        "--typology".as_ref(),
        "typology".as_ref(),
        "--rules".as_ref(),
        rules.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        events.as_os_str(),
    ]));
    assert!(text.contains("typologies (`typology`)"), "{text}");
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary")).expect("json");
    let table = &summary["typologies"];
    let rows = table["rows"].as_array().expect("rows");
    for t in ["card_testing", "structuring", "rapid_movement", "fan_in", "fan_out", "account_takeover"] {
        let row = rows.iter().find(|r| r["typology"] == t).unwrap_or_else(|| panic!("{t} in {text}"));
        let n = |k: &str| row[k].as_f64().expect("count");
        assert!(n("events") >= 50.0, "{t}: too few events to judge: {text}");
        let (recall, precision) = (n("caught") / n("events"), n("rule_right") / n("rule_flagged"));
        assert!(recall >= 0.8 && precision >= 0.5, "{t}: recall {recall:.3}, precision {precision:.3}\n{text}");
    }
    let legit = table["legit_flagged"].as_f64().expect("n") / table["legit"].as_f64().expect("n");
    assert!(legit <= 0.02, "{legit} of everyday payments flagged\n{text}");
}

/// A replay runs in one process from memory, where every key is exact:
/// with a Kafka daemon's config, a rule keeping its state per another key
/// than the partition key still runs.
#[test]
fn a_replay_with_a_kafka_config_runs_rules_keeping_state_per_any_key() {
    let env = Env::new();
    env.install("new_device", "new_device.wasm");
    env.install("velocity", "velocity.wasm");
    let config = env.path("kafka.toml");
    std::fs::write(&config, KAFKA_BY_CARD).expect("write config");
    let events: Vec<String> = (0..20i64).map(|i| payment(&format!("k{i:02}"), 1_000 + i).to_string()).collect();
    let input = env.path("history.jsonl");
    std::fs::write(&input, events.join("\n") + "\n").expect("write history");
    let (out, rules) = (env.path("out"), env.rules());
    let text = ok(&vigil(&[
        "replay".as_ref(),
        "--quiet".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--rules".as_ref(),
        rules.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        input.as_os_str(),
    ]));
    assert!(text.contains("new-device") && text.contains("velocity"), "{text}");
    assert_eq!(read_jsonl(&out.join("decisions.jsonl")).len(), 20);
}
