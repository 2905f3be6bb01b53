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
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    })
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
    }
}
