//! The real `vigil` process: start, decide, stop on SIGTERM with a drain.

use crate::support::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `vigil run` whose stderr goes to a file.
pub struct Daemon {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl Daemon {
    pub fn start(env: &Env, config: &std::path::Path) -> Self {
        Self::start_logging(env, config, "info")
    }

    /// Starts with a `RUST_LOG` filter, e.g. `vigil=debug` to see checkpoints.
    pub fn start_logging(env: &Env, config: &std::path::Path, filter: &str) -> Self {
        Self::start_with(env, config, filter, &[])
    }

    /// Starts with a `RUST_LOG` filter and these environment variables.
    pub fn start_with(env: &Env, config: &std::path::Path, filter: &str, vars: &[(&str, &str)]) -> Self {
        let log = env.path("vigil.log");
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["run", "--config"])
            .arg(config)
            .envs(vars.iter().copied())
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start vigil");
        Self { child, log }
    }

    /// Polls `f` like [`wait_for`], failing at once if the daemon exits.
    pub fn wait_for<T>(&mut self, timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        wait_for(timeout, what, || {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("vigil exited with {status} while waiting for {what}:\n{}", self.log());
            }
            f()
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().expect("kill");
        assert!(ok.success());
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal("-TERM");
        let status = wait_for(Duration::from_secs(30), "vigil to exit", || self.child.try_wait().expect("wait"));
        let log = self.log();
        (status, log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the vigil log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_drains_in_flight_events_and_exits_zero() {
    let env = Env::new();
    env.install("large_amount", "large_amount.wasm");
    let events: Vec<_> = (0..500).map(|i| payment(&format!("e{i}"), 100 * i)).collect();
    env.write_events(&events);
    let config = env.toml("");
    let daemon = Daemon::start(&env, &config);
    wait_for(Duration::from_secs(60), "all 500 decisions", || {
        (read_jsonl(&env.decisions()).len() == 500).then_some(())
    });
    let (status, log) = daemon.stop();
    assert!(status.success(), "exit status {status:?}\n{log}");
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(log.contains("500 events in, 500 decided, 0 dead-lettered"), "{log}");
}

#[test]
fn a_bad_config_names_the_key_and_exits_non_zero() {
    let env = Env::new();
    let path = env.path("bad.toml");
    std::fs::write(&path, "[rules]\nmemory-cap = \"12 parsecs\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(["run", "--config"]).arg(&path).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory-cap"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");
}

#[test]
fn a_missing_pan_key_is_a_clear_startup_error() {
    let env = Env::new();
    let path = env.path("nokey.toml");
    std::fs::write(
        &path,
        format!("[rules]\ndir = {:?}\n[clean]\npan-key-env = \"VIGIL_TEST_NO_SUCH_KEY\"\n", env.rules()),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(["run", "--config"]).arg(&path).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("clean.pan-key") && err.contains("VIGIL_TEST_NO_SUCH_KEY"), "{err}");
}

/// With a Kafka source state follows the input's partitions: a configured
/// feature kept per another key than the partition key stops the start,
/// naming it, before any broker is asked; a rule keeping its state so is
/// refused naming its file, and with no other rule vigil does not start.
#[test]
fn a_kafka_daemon_refuses_state_it_could_not_keep_exactly() {
    let env = Env::new();
    env.install("new_device", "new_device.wasm");
    let path = env.path("kafka.toml");
    let write = |features: &str| {
        let text = format!(
            "{KAFKA_BY_CARD}[rules]\ndir = {rules:?}\n[state]\ndir = {state:?}\n{features}",
            rules = env.rules(),
            state = env.path("state"),
        );
        std::fs::write(&path, text).expect("write");
    };
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil")).args(["run", "--config"]).arg(&path).output().expect("run");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    write("[features]\naccount-1h = \"count(account, 1h)\"\n");
    let err = run();
    assert!(err.contains("kafka.state-keys") && err.contains("feature `account-1h` is kept per account"), "{err}");
    write("");
    let err = run();
    assert!(err.contains("no rule can be used") && err.contains("new_device.wasm"), "{err}");
    assert!(err.contains("keyed state") && err.contains("kept per account"), "{err}");
}
