//! Hot reload against the real daemon: add, replace, break, delete a rule
//! while events flow, and rescan on SIGHUP.

use crate::daemon::Daemon;
use crate::support::*;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

struct Feed<'a> {
    env: &'a Env,
    next: usize,
}

impl Feed<'_> {
    /// Appends one event and returns its decision.
    fn decide(&mut self, amount: i64) -> Value {
        self.next += 1;
        let id = format!("hr-{}", self.next);
        self.env.append_lines(&[payment(&id, amount).to_string()]);
        wait_for(WAIT, &format!("decision {id}"), || decision_for(&self.env.decisions(), &id))
    }

    /// Feeds events until one's decision satisfies `ok`.
    fn until(&mut self, what: &str, amount: i64, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let d = self.decide(amount);
            if ok(&d) {
                return d;
            }
            assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}; last: {d}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn rules_are_added_replaced_kept_when_broken_and_removed_live() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let daemon = Daemon::start(&env, &env.toml(""));
    let mut feed = Feed { env: &env, next: 0 };

    let first = feed.decide(150_000);
    assert_eq!(rule_names(&first), ["large-amount"]);
    assert_eq!(first["action"], "review", "v1 reviews between the limits");

    // Add a rule.
    env.install("geo_mismatch", "geo_mismatch.wasm");
    feed.until("geo-mismatch is live", 150_000, |d| rule_names(d).contains(&"geo-mismatch".to_owned()));

    // Replace large-amount with version 2: it takes over.
    env.install("large_amount_v2", "large_amount.wasm");
    let d = feed.until("large-amount v2 is live", 150_000, |d| {
        rule_outcome(d, "large-amount").is_some_and(|o| o["version"] == "2.0.0")
    });
    assert_eq!(d["action"], "block", "v2 blocks above the review limit");

    // A broken file over it: logged with file and cause, v2 keeps running.
    std::fs::write(env.rules().join("large_amount.wasm"), b"\0asm\x01\0\0\0garbage").expect("write");
    wait_for(WAIT, "the rejection in the log", || {
        let log = daemon.log();
        (log.contains("rule file rejected") && log.contains("large_amount.wasm") && log.contains("does not compile"))
            .then_some(())
    });
    let d = feed.decide(150_000);
    let o = rule_outcome(&d, "large-amount").expect("large-amount still live");
    assert_eq!(o["version"], "2.0.0");
    assert!(o.get("error").is_none());

    // Delete it: it is no longer called.
    std::fs::remove_file(env.rules().join("large_amount.wasm")).expect("remove");
    let d = feed.until("large-amount is unloaded", 150_000, |d| rule_outcome(d, "large-amount").is_none());
    assert_eq!(rule_names(&d), ["geo-mismatch"]);
    assert!(daemon.log().contains("rule unloaded"));

    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn sighup_rescans_when_watching_is_off() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let config = env.toml("");
    let text = std::fs::read_to_string(&config).expect("config").replace("debounce = \"50ms\"", "watch = false");
    std::fs::write(&config, text).expect("config");
    let daemon = Daemon::start(&env, &config);
    let mut feed = Feed { env: &env, next: 0 };
    assert_eq!(rule_names(&feed.decide(1_000)), ["large-amount"]);

    env.install("geo_mismatch", "geo_mismatch.wasm");
    let d = feed.decide(1_000);
    assert_eq!(rule_names(&d), ["large-amount"], "no watch: not loaded yet");
    daemon.signal("-HUP");
    feed.until("SIGHUP loaded geo-mismatch", 1_000, |d| rule_names(d).len() == 2);
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn an_edited_list_takes_effect_without_a_restart() {
    let env = Env::new();
    env.install("blocklist", "blocklist.wasm");
    for name in ["blocked-cards", "blocked-accounts", "blocked-devices", "blocked-ips"] {
        std::fs::write(env.path(&format!("{name}.txt")), "# empty\n").expect("list");
    }
    let lists: String = ["blocked-cards", "blocked-accounts", "blocked-devices", "blocked-ips"]
        .iter()
        .map(|n| {
            let kind = if *n == "blocked-cards" { "kind = \"card\"\n" } else { "" };
            format!("[lists.{n}]\npath = {:?}\n{kind}", env.path(&format!("{n}.txt")))
        })
        .collect();
    let daemon = Daemon::start(&env, &env.toml(&lists));
    let mut feed = Feed { env: &env, next: 0 };
    assert_eq!(feed.decide(1_000)["action"], "allow");
    // The test payments' card goes on the blocklist.
    std::fs::write(env.path("blocked-cards.txt"), "4000 0000 0000 0002\n").expect("list");
    let d = feed.until("the card is blocked", 1_000, |d| d["action"] == "block");
    assert_eq!(d["reasons"][0], "card_blocklisted");
    let (status, log) = daemon.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("lists reloaded"), "{log}");
}
