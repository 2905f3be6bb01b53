//! Malformed events: each dead-lettered with its own reason, nothing lost.

use crate::support::*;

#[test]
fn each_bad_event_is_dead_lettered_with_its_reason() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let good = payment("good-1", 1_000).to_string();
    let with = |field: &str, value: serde_json::Value| {
        let mut v = payment("x", 1_000);
        v["id"] = format!("bad-{field}").into();
        v[field] = value;
        v.to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        ("{\"id\": \"broken\", \"amount\": ".into(), "EOF while parsing"),
        (
            r#"{"id":"no-amount","ts":1,"channel":"card","kind":"purchase","currency":"USD","account":"a"}"#.into(),
            "missing field `amount`",
        ),
        (with("amount", (-5).into()), "must not be negative"),
        (with("amount", 12.5.into()), "never a float"),
        (with("amount", "100".into()), "integer amount in minor units"),
        (with("currency", "ABC".into()), "ISO 4217"),
        (with("channel", "pigeon".into()), "unknown channel"),
        (with("kind", "gift".into()), "unknown kind"),
        (with("ip", "1.2.3".into()), "not an IPv4 or IPv6 address"),
        (with("account", "x".repeat(300).into()), "clean.max-field-bytes"),
        (format!(r#"{{"id":"huge","pad":"{}"}}"#, "y".repeat(17_000)), "clean.max-event-bytes"),
        (with("card", serde_json::json!({"pan": "4111 1111 111"})), "card.pan"),
        (with("surprise", 1.into()), "unknown field `surprise`"),
        ("[1, 2, 3]".into(), "invalid type"),
        (good.clone(), "duplicate id `good-1`"),
    ];
    let mut lines = vec![good];
    lines.extend(cases.iter().map(|(l, _)| l.clone()));
    lines.push(payment("good-2", 2_000).to_string());
    std::fs::write(env.events(), lines.join("\n") + "\n").expect("events");

    let summary = run_to_end(env.config(false));
    let decided: Vec<String> = read_jsonl(&env.decisions()).iter().map(|d| d["id"].to_string()).collect();
    assert_eq!(decided.len(), 2, "decided: {decided:?}");
    assert_eq!(summary.events_in, lines.len() as u64);
    assert_eq!(summary.decided, 2);
    assert_eq!(summary.dead_lettered, cases.len() as u64);
    assert_eq!(summary.events_in, summary.decided + summary.dead_lettered);

    let dead = read_jsonl(&env.dead_letters());
    assert_eq!(dead.len(), cases.len());
    for (i, (_, reason)) in cases.iter().enumerate() {
        let line_no = (i + 2) as u64;
        let dl =
            dead.iter().find(|d| d["line"] == line_no).unwrap_or_else(|| panic!("no dead letter for line {line_no}"));
        let got = dl["reason"].as_str().expect("reason");
        assert!(got.contains(reason), "line {line_no}: wanted {reason:?} in {got:?}");
        assert!(dl["source"].as_str().is_some_and(|s| s.starts_with("file:")));
        assert!(dl["raw"].is_string());
    }
    let text = std::fs::read_to_string(env.dead_letters()).expect("dead letters");
    assert!(!text.contains("4000 0000 0000 0002"), "raw PAN in dead letters");
}

/// A line that is not UTF-8 (a Latin-1 name, a truncated multi-byte
/// character) is one dead letter, not the end of the run.
#[test]
fn a_line_that_is_not_utf8_is_dead_lettered_and_the_run_goes_on() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let mut bytes = payment("good-1", 1_000).to_string().into_bytes();
    bytes.push(b'\n');
    let mut latin1 = payment("bad-latin1", 1_000);
    latin1["account"] = "Jos\u{e9}".into();
    let latin1 = latin1.to_string().replace("Jos\u{e9}", "Jos\u{1}");
    let at = latin1.find('\u{1}').expect("marker");
    bytes.extend(latin1.bytes().map(|b| if b == 1 { 0xe9 } else { b }));
    bytes.push(b'\n');
    bytes.extend_from_slice(payment("good-2", 2_000).to_string().as_bytes());
    bytes.push(b'\n');
    std::fs::write(env.events(), bytes).expect("events");

    let summary = run_to_end(env.config(false));
    assert_eq!((summary.events_in, summary.decided, summary.dead_lettered), (3, 2, 1));
    let dead = read_jsonl(&env.dead_letters());
    assert_eq!(dead[0]["line"], 2);
    assert_eq!(dead[0]["code"], "not_utf8");
    let reason = dead[0]["reason"].as_str().expect("reason");
    assert_eq!(reason, format!("not UTF-8: invalid byte sequence at byte {at}"));
    assert!(dead[0]["raw"].as_str().is_some_and(|r| r.contains("Jos\u{fffd}")), "{}", dead[0]["raw"]);
}

/// Parsing is spread over threads a batch at a time; what comes out must not
/// depend on it: the same decisions with the same per-card feature values
/// (each card's events in input order), and each duplicate caught at its
/// second occurrence, with one parser thread or four.
#[test]
fn parallel_parsing_keeps_input_order_duplicates_and_dead_letters() {
    let mut lines: Vec<String> = Vec::new();
    for i in 0..3_000u32 {
        let mut p = payment(&format!("tx-{i}"), 1_000 + i64::from(i % 7) * 100);
        p["ts"] = (1_717_200_000_000i64 + i64::from(i) * 1_000).into();
        p["card"] = serde_json::json!({ "pan": format!("4000000000{:06}", i % 50) });
        lines.push(p.to_string());
        if i % 97 == 0 {
            lines.push("{\"id\": \"broken".into());
        }
        if i % 89 == 5 {
            // A repeat of an id seen a few lines back.
            lines.push(lines[lines.len() - 3].clone());
        }
    }
    let run = |threads: u32| {
        let env = Env::new();
        // Rules reading per-card features: the records then carry them.
        env.install("velocity", "velocity.wasm");
        env.install("spend_spike", "spend_spike.wasm");
        std::fs::write(env.events(), lines.join("\n") + "\n").expect("events");
        let mut config = env.config(false);
        config.pipeline.partition_key = vigil::config::PartitionKey::Card;
        config.pipeline.workers = std::num::NonZeroU32::new(2);
        config.pipeline.decode_threads = std::num::NonZeroU32::new(threads);
        let summary = run_to_end(config);
        let mut decided: Vec<String> = read_jsonl(&env.decisions())
            .iter()
            .map(|d| {
                let f = &d["features"];
                let (count, sum) = (&f["count(card, 10m)"], &f["sum(card, amount, 6h)"]);
                assert!(count.is_number() && sum.is_number(), "features recorded: {d}");
                format!("{} {} {} {}", d["id"], count, sum, d["action"])
            })
            .collect();
        decided.sort();
        let mut dead: Vec<String> =
            read_jsonl(&env.dead_letters()).iter().map(|d| format!("{} {}", d["line"], d["code"])).collect();
        dead.sort();
        (summary, decided, dead)
    };
    let (one, decided_one, dead_one) = run(1);
    let (four, decided_four, dead_four) = run(4);
    assert_eq!(one.events_in, lines.len() as u64);
    assert_eq!(one.decided, 3_000, "{one:?}");
    assert!(dead_one.iter().any(|d| d.ends_with("\"duplicate\"")), "{dead_one:?}");
    assert_eq!((four.decided, four.dead_lettered), (one.decided, one.dead_lettered));
    assert_eq!(dead_four, dead_one, "same lines dead-lettered for the same reasons");
    assert_eq!(decided_four, decided_one, "same decisions and per-card feature values");
}
