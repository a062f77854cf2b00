//! `engram`: the server, and (as the transport lands) the client CLI.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use engram::wal::{wal_dir, RecoveryMode, Wal, WalConfig};

#[derive(Parser)]
#[command(name = "engram", version, about = "A durable streaming memory server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: recover the log, then serve until SIGTERM or ctrl-c.
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where the log (and later the indexes) live.
    #[arg(long, env = "ENGRAM_DATA_DIR", default_value = "./engram-data")]
    data_dir: PathBuf,
    /// Size every WAL segment is preallocated to.
    #[arg(long, env = "ENGRAM_WAL_SEGMENT_BYTES", default_value_t = engram::wal::SEGMENT_BYTES_DEFAULT)]
    wal_segment_bytes: u64,
    /// Microseconds the committer waits for more appends to share a sync (0: none).
    #[arg(long, env = "ENGRAM_WAL_COMMIT_WINDOW_US", default_value_t = 0)]
    wal_commit_window_us: u64,
    /// Most bytes written between two syncs.
    #[arg(long, env = "ENGRAM_WAL_COMMIT_BYTES_MAX", default_value_t = engram::wal::COMMIT_BYTES_MAX_DEFAULT)]
    wal_commit_bytes_max: u64,
    /// What recovery does with damage: tolerate-torn-tail, absolute-consistency, or
    /// salvage-before-corruption (operator's choice: drops acknowledged records).
    #[arg(
        long,
        env = "ENGRAM_WAL_RECOVERY_MODE",
        value_enum,
        default_value = "tolerate-torn-tail"
    )]
    wal_recovery_mode: RecoveryModeArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RecoveryModeArg {
    TolerateTornTail,
    AbsoluteConsistency,
    SalvageBeforeCorruption,
}

impl From<RecoveryModeArg> for RecoveryMode {
    fn from(arg: RecoveryModeArg) -> RecoveryMode {
        match arg {
            RecoveryModeArg::TolerateTornTail => RecoveryMode::TolerateTornTail,
            RecoveryModeArg::AbsoluteConsistency => RecoveryMode::AbsoluteConsistency,
            RecoveryModeArg::SalvageBeforeCorruption => RecoveryMode::SalvageBeforeCorruption,
        }
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = WalConfig {
        segment_bytes: args.wal_segment_bytes,
        commit_window: Duration::from_micros(args.wal_commit_window_us),
        commit_bytes_max: args.wal_commit_bytes_max,
        recovery_mode: args.wal_recovery_mode.into(),
        ..WalConfig::default()
    };
    let dir = wal_dir(&args.data_dir);
    let wal =
        Wal::open(&dir, config).with_context(|| format!("opening the WAL in {}", dir.display()))?;
    // Signal handlers go in before the server says it is up, so that a SIGTERM sent as
    // soon as it is up is a graceful shutdown, not the default kill.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shutdown = runtime.block_on(async { ShutdownSignal::install() })?;
    let report = wal.recovery_report();
    tracing::info!(
        data_dir = %args.data_dir.display(),
        records = report.records,
        last_lsn = %report.last_lsn,
        recovery_ms = report.duration.as_secs_f64() * 1e3,
        "engram is up: the log is recovered and open (network transports arrive with the serve issue)"
    );
    runtime.block_on(shutdown.wait());
    tracing::info!("shutting down: syncing and closing the log");
    wal.close()?;
    Ok(())
}

/// SIGTERM or ctrl-c.
struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> anyhow::Result<ShutdownSignal> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignal {
            term: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
