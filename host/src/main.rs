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
        /// structuring, velocity spikes).
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
        /// Write here instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Compile a rule module read from standard input to an artefact on
    /// standard output (the daemon runs this in a child process; not for people).
    #[command(hide = true)]
    CompileRule,
    /// Create a rule crate from the template in a rules workspace.
    NewRule {
        /// The rule's name, kebab-case (e.g. card-testing).
        name: String,
        /// The rules workspace: a folder whose Cargo.toml has [workspace].
        #[arg(long, short, default_value = "rules")]
        workspace: PathBuf,
    },
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    let config = match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
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
) -> anyhow::Result<vigil::replay::Input> {
    use vigil::replay::{Input, mapping::Mapping};
    match mapping {
        Some(m) => {
            let mut mapping = Mapping::load(m)?;
            if let Some(label) = label {
                mapping.label = Some(label.to_owned());
            }
            Input::csv(input, &mapping, vigil::decode::Tokenizer::new(&config.pan_key()?))
        }
        None if input.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) => anyhow::bail!(
            "{} looks like CSV: give a column mapping with --mapping (see examples/card-transactions.mapping.toml)",
            input.display()
        ),
        None => Input::jsonl(input, label),
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
            eprintln!("error: {e:#}");
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
        Command::Replay { input, config, mapping, label, rules, out, compare, quiet, rule_logs } => {
            let mut config = load_config(config.as_deref())?;
            config.log.level = if rule_logs { "warn,vigil::rule=debug".into() } else { "warn".into() };
            if !rule_logs {
                config.rules.log_rate = 0;
            }
            init_tracing(&config);
            if let Some(rules) = rules {
                config.rules.dir = rules;
            }
            let input = read_replay_input(&config, &input, mapping.as_deref(), label.as_deref())?;
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
        Command::Gen { events, accounts, fraud_share, per_day, rate, start_ms, seed, label, out } => {
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
            eprintln!(
                "vigil gen: {} events, {} in fraud patterns (card testing {}, account takeover {}, structuring {}, velocity spikes {})",
                summary.events,
                summary.fraud,
                summary.patterns[0],
                summary.patterns[1],
                summary.patterns[2],
                summary.patterns[3]
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
        Command::NewRule { name, workspace } => {
            let created = vigil::scaffold::new_rule(&workspace, &name)?;
            println!("created {}", created.display());
            println!("next: read {}/README.md", created.display());
            Ok(())
        }
    }
}
