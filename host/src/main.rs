//! `vigil`: parse the command line, set up logging, hand over to the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use vigil::config::{Config, LogFormat};

/// vigil: a real-time payment risk engine with WebAssembly rules.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: read events, run the rules, write decisions.
    Run {
        /// The config file; without it, built-in defaults (see examples/vigil.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a rule module and print its manifest.
    Check {
        /// The .wasm file.
        module: PathBuf,
        /// A config whose sandbox limits, lists and rule settings apply.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Replay a history file through the full pipeline as fast as it goes,
    /// and judge the rules against its labels.
    Replay {
        /// The history: JSON lines of canonical events, or CSV with --mapping.
        input: PathBuf,
        /// The config whose rules, features, lists and PAN key apply; its
        /// source and sinks are replaced.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A CSV column mapping (see examples/card-transactions.mapping.toml).
        #[arg(long, short)]
        mapping: Option<PathBuf>,
        /// The label: a CSV column (overrides the mapping's), or a top-level
        /// key of each JSON event; true/1/yes means fraud.
        #[arg(long, short)]
        label: Option<String>,
        /// A top-level key of each JSON event naming its typology (a string,
        /// null for none; `vigil gen --typology`): reports each typology
        /// against the rule named after it (`card_testing` → `card-testing`).
        #[arg(long)]
        typology: Option<String>,
        /// Rules folder to use instead of the config's rules.dir.
        #[arg(long, short)]
        rules: Option<PathBuf>,
        /// Where decisions, dead letters, summary.json and report.html go.
        #[arg(long, short, default_value = "out/replay")]
        out: PathBuf,
        /// Replay twice, with rules A then B (each a .wasm module run alone,
        /// or a rules folder), and report where the decisions differ.
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        compare: Option<Vec<PathBuf>>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Let rules' log lines through (`ctx.log`), at rules.log-rate;
        /// dropped otherwise, so a replay of millions of events stays quiet.
        #[arg(long)]
        rule_logs: bool,
    },
    /// Generate synthetic payments with injected fraud patterns, as JSON lines.
    Gen {
        /// How many events.
        #[arg(long, short = 'n', default_value_t = 10_000)]
        events: u64,
        /// Accounts, one card each: the key cardinality.
        #[arg(long, default_value_t = 10_000)]
        accounts: u32,
        /// Share of events in fraud patterns (card testing, account takeover,
        /// structuring, velocity spikes, rapid movement, fan-in and fan-out mules).
        #[arg(long, default_value_t = 0.02)]
        fraud_share: f64,
        /// Everyday payments per account per day of event time, on average.
        #[arg(long, default_value_t = 5.0)]
        per_day: f64,
        /// Write at most this many events per second of wall time (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// First event time, epoch milliseconds (default 2025-01-01T00:00:00Z).
        #[arg(long)]
        start_ms: Option<i64>,
        /// Seed: the same seed gives the same stream.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Add this top-level key with true/false for fraud (for `vigil replay --label`;
        /// the daemon refuses unknown keys).
        #[arg(long)]
        label: Option<String>,
        /// Add this top-level key with the pattern's name, null for everyday
        /// payments (for `vigil replay --typology`).
        #[arg(long)]
        typology: Option<String>,
        /// Write here instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Compile a rule module read from standard input to an artefact on
    /// standard output (the daemon runs this in a child process; not for people).
    #[command(hide = true)]
    CompileRule,
    /// Write a new Ed25519 key pair for signing rule modules: BASE.key
    /// (secret, keep it offline) and BASE.pub (for rules.trusted-keys).
    Keygen {
        /// The path of the pair without extension, e.g. keys/alice.
        base: PathBuf,
    },
    /// Sign a rule module: adds a signature to MODULE.wasm.sig over the
    /// module, its name and version, and the settings the config gives it.
    Sign {
        /// The .wasm file.
        module: PathBuf,
        /// The secret key (from vigil keygen).
        #[arg(long, short)]
        key: PathBuf,
        /// The config whose [rule.*] settings (mode, params, on-failure,
        /// canary) the signature approves; without it, the defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check the rule change log: its chain and its signed head.
    Audit {
        #[command(subcommand)]
        what: AuditCommand,
    },
    /// Put the previous (or a named) version of a rule back live, from the
    /// archive of every module that was live.
    Rollback {
        /// The rule's name.
        rule: String,
        /// The version to put back: at least 8 hex digits of its module hash.
        #[arg(long)]
        to: Option<String>,
        /// The config whose state folder holds the change log and archive.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Reproduce a recorded decision: run the exact module versions and
    /// parameters that decided it over the same event and recorded
    /// features, and show each rule's outcome against the record.
    Explain {
        /// The decision's (the event's) id.
        id: String,
        /// The events, as JSON lines, holding the one with this id.
        #[arg(long, short)]
        input: PathBuf,
        /// The config the daemon ran with (its state folder holds the
        /// module archive; its file sinks the records).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The decision records, if not the config's decisions file.
        #[arg(long)]
        decisions: Option<PathBuf>,
        /// The rule-sets output, if not the config's rule-sets file.
        #[arg(long)]
        rule_sets: Option<PathBuf>,
    },
    /// Create a rule crate from the template in a rules workspace.
    NewRule {
        /// The rule's name, kebab-case (e.g. card-testing).
        name: String,
        /// The rules workspace: a folder whose Cargo.toml has [workspace].
        #[arg(long, short, default_value = "rules")]
        workspace: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every entry chains to the one before and the head is signed;
    /// report the first entry that does not.
    Verify {
        /// The config whose state folder holds the log.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The daemon's public key (hex or a file) the head must be signed
        /// with: one kept apart from the state folder.
        #[arg(long)]
        public_key: Option<String>,
    },
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let config = match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    vigil::app::check_config(&config)?;
    private_files(config.state.group_readable);
    Ok(config)
}

/// Files and folders vigil creates from now on — outputs, state, the rule
/// cache, reports — are its user's alone (0600 and 0700), or also its
/// group's to read with `state.group-readable` (0640 and 0750): they hold
/// tokens, accounts, addresses and rule state.
fn private_files(group_readable: bool) {
    #[cfg(unix)]
    {
        let mask = if group_readable { 0o027 } else { 0o077 };
        // SAFETY: umask only sets the process's file-creation mask; it
        // cannot fail.
        unsafe { libc::umask(mask) };
    }
    #[cfg(not(unix))]
    let _ = group_readable;
}

fn read_replay_input(
    config: &Config,
    input: &Path,
    mapping: Option<&Path>,
    label: Option<&str>,
    typology: Option<&str>,
) -> anyhow::Result<vigil::replay::Input> {
    use vigil::replay::{Input, mapping::Mapping};
    match mapping {
        Some(m) => {
            let mut mapping = Mapping::load(m)?;
            if let Some(label) = label {
                mapping.label = Some(label.to_owned());
            }
            Ok(Input::csv(input, &mapping, vigil::decode::Tokenizer::new(&config.pan_key()?))?)
        }
        None if input.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) => anyhow::bail!(
            "{} looks like CSV: give a column mapping with --mapping (see examples/card-transactions.mapping.toml)",
            input.display()
        ),
        None => Ok(Input::jsonl(input, label, typology)?),
    }
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once, also where a library repeats its source.
            let e: &(dyn std::error::Error + 'static) = &*e;
            eprintln!("error: {}", vigil::error::chain(e));
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    // Rule modules compile in a child process: see `set_compiler`.
    if let Ok(exe) = std::env::current_exe() {
        vigil::rules::sandbox::set_compiler(exe);
    }
    match cli.command {
        Command::Run { config } => {
            let config = load_config(config.as_deref())?;
            init_tracing(&config);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let summary = rt.block_on(vigil::app::run(config, shutdown_signal()))?;
            eprintln!(
                "vigil: {} events in, {} decided, {} dead-lettered, {} alerts, {} windows closed, {} late, {} checkpoints",
                summary.events_in,
                summary.decided,
                summary.dead_lettered,
                summary.alerts,
                summary.aggregates,
                summary.late,
                summary.checkpoints
            );
            Ok(())
        }
        Command::Check { module, config } => {
            let config = load_config(config.as_deref())?;
            init_tracing(&config);
            let report = vigil::rules::check::check(&config, &module)?;
            print!("{report}");
            Ok(())
        }
        Command::Replay { input, config, mapping, label, typology, rules, out, compare, quiet, rule_logs } => {
            let mut config = load_config(config.as_deref())?;
            config.log.level = if rule_logs { "warn,vigil::rule=debug".into() } else { "warn".into() };
            if !rule_logs {
                config.rules.log_rate = 0;
            }
            init_tracing(&config);
            if let Some(rules) = rules {
                config.rules.dir = rules;
            }
            let input = read_replay_input(&config, &input, mapping.as_deref(), label.as_deref(), typology.as_deref())?;
            let progress = !quiet;
            match compare.as_deref() {
                Some([a, b]) => {
                    let c = vigil::replay::compare::compare(&config, input, a, b, &out, progress)?;
                    print!("{c}");
                    eprintln!("outputs and reports of each side: {}/a, {}/b", out.display(), out.display());
                }
                _ => {
                    let outputs = vigil::replay::Outputs { dir: out };
                    let analysis = vigil::replay::replay(&config, input, &outputs, progress)?;
                    print!("{analysis}");
                    eprintln!(
                        "decisions: {}\nreport:    {}",
                        outputs.decisions().display(),
                        outputs.report().display()
                    );
                }
            }
            Ok(())
        }
        Command::Gen { events, accounts, fraud_share, per_day, rate, start_ms, seed, label, typology, out } => {
            use std::io::Write as _;
            let defaults = vigil::generate::GenOptions::default();
            let opts = vigil::generate::GenOptions {
                events,
                accounts,
                fraud_share,
                per_day,
                pace: rate,
                start_ms: start_ms.unwrap_or(defaults.start_ms),
                seed,
                label,
                typology,
            };
            let generator = vigil::generate::Generator::new(opts)?;
            let summary = match &out {
                Some(path) => {
                    let file =
                        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
                    let mut w = std::io::BufWriter::with_capacity(1 << 16, file);
                    let s = generator.write(&mut w).with_context(|| format!("cannot write {}", path.display()))?;
                    w.flush().with_context(|| format!("cannot write {}", path.display()))?;
                    s
                }
                None => {
                    let mut w = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
                    match generator.write(&mut w) {
                        Ok(s) => s,
                        // A closed pipe (`vigil gen | head`) is a normal end.
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                        Err(e) => return Err(e).context("cannot write to standard output"),
                    }
                }
            };
            let patterns: Vec<String> = vigil::generate::Pattern::ALL
                .iter()
                .zip(summary.patterns)
                .map(|(p, n)| format!("{} {n}", p.name().replace('_', " ")))
                .collect();
            eprintln!(
                "vigil gen: {} events, {} in fraud patterns ({})",
                summary.events,
                summary.fraud,
                patterns.join(", ")
            );
            Ok(())
        }
        Command::CompileRule => {
            use std::io::{Read as _, Write as _};
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("cannot read the module from standard input")?;
            let artefact = vigil::rules::sandbox::compile(&bytes)?;
            let mut out = std::io::stdout().lock();
            out.write_all(&artefact).and_then(|()| out.flush()).context("cannot write the artefact")?;
            Ok(())
        }
        Command::Keygen { base } => {
            let key = vigil::rules::signing::generate()?;
            let (secret, public) = vigil::rules::signing::write_pair(&base, &key)?;
            println!("key id {}", vigil::rules::signing::key_id(&key.verifying_key()));
            println!("secret key: {} (keep it private)", secret.display());
            println!("public key: {} (list it in rules.trusted-keys)", public.display());
            Ok(())
        }
        Command::Sign { module, key, config } => {
            let config = load_config(config.as_deref())?;
            let key = vigil::rules::signing::read_secret(&key)?;
            let (path, statement, n) = vigil::rules::signing::sign_module(&config, &module, &key)?;
            println!(
                "signed {} {} (sha256:{}) with key {}: {} now holds {n} signature(s)",
                statement.rule,
                statement.version,
                &statement.module[..16],
                vigil::rules::signing::key_id(&key.verifying_key()),
                path.display()
            );
            Ok(())
        }
        Command::Audit { what: AuditCommand::Verify { config, public_key } } => {
            let config = load_config(config.as_deref())?;
            let v = vigil::rules::changes::verify(&config.state.dir, public_key.as_deref())
                .with_context(|| format!("rule change log in {}", config.state.dir.display()))?;
            println!("ok: {} entries chain, head sha256:{}", v.entries, v.head);
            println!("signed by the daemon's key {} (keep it apart to pin with --public-key)", v.public_key);
            Ok(())
        }
        Command::Rollback { rule, to, config } => {
            let config = load_config(config.as_deref())?;
            let done = vigil::rules::changes::rollback(&config.state.dir, &config.rules.dir, &rule, to.as_deref())?;
            let short = vigil::rules::signing::short(&done.module);
            println!("{rule}: module sha256:{short} put back as {}", done.file.display());
            if !done.also.is_empty() {
                println!("the same file runs {} too: they are rolled back with it", done.also.join(", "));
            }
            println!("a running daemon loads it within its rules.debounce; the change log records it");
            Ok(())
        }
        Command::Explain { id, input, config, decisions, rule_sets } => {
            let config = load_config(config.as_deref())?;
            let file_of = |given: Option<PathBuf>, sink: &vigil::config::SinkConfig, role: &str| match (given, sink) {
                (Some(p), _) => Ok(p),
                (None, vigil::config::SinkConfig::File { path }) => Ok(path.clone()),
                (None, _) => Err(anyhow::anyhow!("sinks.{role} is not a file: give --{role} FILE")),
            };
            let decisions = file_of(decisions, &config.sinks.decisions, "decisions")?;
            let rule_sets = file_of(rule_sets, &config.sinks.rule_sets, "rule-sets")?;
            let from = vigil::rules::explain::Sources { input: &input, decisions: &decisions, rule_sets: &rule_sets };
            let explained = vigil::rules::explain::explain(&config, &id, from)?;
            print!("{explained}");
            match explained.reproduced_exactly() {
                true => Ok(()),
                false => anyhow::bail!("decision {id} was not reproduced exactly"),
            }
        }
        Command::NewRule { name, workspace } => {
            let created = vigil::scaffold::new_rule(&workspace, &name)?;
            println!("created {}", created.display());
            println!("next: read {}/README.md", created.display());
            Ok(())
        }
    }
}
