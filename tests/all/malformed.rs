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
