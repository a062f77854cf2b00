//! engram-wal: inspect and repair engram's write-ahead log, like pg_waldump for PostgreSQL.
//! Every command reads through the library's scanner and decoder; there is no second parser.

mod dump;
mod follow;
mod progress;
mod record_line;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use engram::wal::{repair, scan_log, wal_dir, LogFiles, LogScan, Lsn, OsStorage, RepairAction};

/// Exit codes, documented in docs/operations.md.
pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_CORRUPT: u8 = 1;
pub const EXIT_ERROR: u8 = 2;
pub const EXIT_TORN_TAIL: u8 = 3;

#[derive(Parser)]
#[command(
    name = "engram-wal",
    version,
    about = "Inspect, verify and repair engram's write-ahead log"
)]
struct Cli {
    /// The server's data directory; the log is in its `wal/` folder.
    #[arg(
        long,
        global = true,
        default_value = "./engram-data",
        env = "ENGRAM_DATA_DIR"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// One line per record: lsn, segment:offset, kind, space, id, dimension, bytes, crc.
    Dump(dump::DumpArgs),
    /// Records and bytes per space, segments, LSN range, record size histogram.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Check every record. Exit 0 when clean, 1 on corruption, 3 on a torn tail.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Cut a torn tail; with --truncate-after-corruption also everything from the first
    /// corruption on. Every segment it changes is copied to wal/backup-*/ first.
    Repair {
        /// Also remove everything from the first corruption on: this loses acknowledged
        /// records after that point (they stay in the backup folder).
        #[arg(long)]
        truncate_after_corruption: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print records as they become durable, like `pg_waldump --follow`. Runs until killed.
    Follow(follow::FollowArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let dir = wal_dir(&cli.data_dir);
    let result = match cli.command {
        Command::Dump(args) => dump::run(&dir, &args),
        Command::Stats { json } => stats::run(&dir, json),
        Command::Verify { json } => verify(&dir, json),
        Command::Repair {
            truncate_after_corruption,
            json,
        } => run_repair(&dir, truncate_after_corruption, json),
        Command::Follow(args) => follow::run(&dir, &args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("engram-wal: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Opens the log read-only; the server may be running.
pub fn open_log(dir: &std::path::Path) -> anyhow::Result<LogFiles> {
    if !dir.is_dir() {
        anyhow::bail!("no WAL at {} (is --data-dir right?)", dir.display());
    }
    Ok(LogFiles::open(&OsStorage, dir, false)?)
}

/// The exit code for a scan's verdict.
pub fn verdict_code(scan: &LogScan) -> u8 {
    match (&scan.corruption, &scan.torn_tail) {
        (Some(_), _) => EXIT_CORRUPT,
        (None, Some(_)) => EXIT_TORN_TAIL,
        (None, None) => EXIT_CLEAN,
    }
}

/// Human-readable lines about damage, shared by every command that scans.
pub fn describe_damage(scan: &LogScan) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(t) = &scan.torn_tail {
        lines.push(format!(
            "torn tail: segment {} offset {} (LSN {}), {} bytes of a write that never completed. \
             Normal after a crash: nothing in it was acknowledged; the server cuts it at start, \
             or run `engram-wal repair`",
            t.segment, t.offset, t.lsn, t.bytes
        ));
    }
    if let Some(at) = &scan.corruption {
        lines.push(format!(
            "CORRUPTION: segment {} offset {} (LSN {}): {}. Records before it are intact; \
             `engram-wal repair --truncate-after-corruption` keeps them and moves the rest to a backup",
            at.segment, at.offset, at.lsn, at.reason
        ));
    }
    lines
}

fn verify(dir: &std::path::Path, json: bool) -> anyhow::Result<u8> {
    let files = open_log(dir)?;
    let bar = progress::segments_bar(files.segments.len(), "verifying");
    let mut bad_payload = None;
    let scan = scan_log(
        &files,
        |r| {
            if bad_payload.is_none() {
                if let Err(e) = record_line::check_payload(&r.record) {
                    bad_payload = Some(format!(
                        "segment {} offset {} (LSN {}): {e}",
                        r.segment, r.offset, r.record.lsn
                    ));
                }
            }
        },
        |_| bar.inc(1),
    );
    bar.finish_and_clear();
    let mut code = verdict_code(&scan);
    if bad_payload.is_some() {
        code = EXIT_CORRUPT;
    }
    if json {
        let out = serde_json::json!({
            "clean": code == EXIT_CLEAN,
            "segments": scan.segments.len(),
            "records": scan.records,
            "first_lsn": scan.first_lsn,
            "last_lsn": scan.last_lsn,
            "torn_tail": scan.torn_tail,
            "corruption": scan.corruption,
            "bad_payload": bad_payload,
        });
        println!("{out}");
        return Ok(code);
    }
    println!(
        "{} segments, {} records, LSN {}..{}",
        scan.segments.len(),
        scan.records,
        scan.first_lsn.unwrap_or(Lsn::ZERO),
        scan.last_lsn
    );
    for line in describe_damage(&scan) {
        println!("{line}");
    }
    if let Some(bad) = bad_payload {
        println!("CORRUPTION: a record with a valid checksum holds an invalid observation: {bad}");
    }
    if code == EXIT_CLEAN {
        println!("OK: every record verified");
    }
    Ok(code)
}

fn run_repair(
    dir: &std::path::Path,
    truncate_after_corruption: bool,
    json: bool,
) -> anyhow::Result<u8> {
    open_log(dir)?;
    let report = match repair(dir, truncate_after_corruption) {
        Ok(report) => report,
        Err(engram::wal::WalError::Corruption(at)) => {
            println!(
                "refusing to cut: corruption in segment {} at offset {} (LSN {}): {}",
                at.segment, at.offset, at.lsn, at.reason
            );
            println!(
                "records from LSN {} on would be lost; rerun with --truncate-after-corruption to keep \
                 everything before it (what is removed is kept in a backup folder)",
                at.lsn
            );
            return Ok(EXIT_CORRUPT);
        }
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(EXIT_CLEAN);
    }
    match report.action {
        RepairAction::Nothing => println!(
            "nothing to repair: the log is clean (last LSN {})",
            report.last_lsn
        ),
        RepairAction::CutTornTail | RepairAction::CutAtCorruption => {
            if let Some(at) = &report.corruption {
                println!(
                    "corruption in segment {} at offset {} (LSN {}): {}",
                    at.segment, at.offset, at.lsn, at.reason
                );
            }
            if let Some(cut) = &report.cut {
                println!(
                    "removed {} bytes from segment {} at offset {} (records from LSN {} on)",
                    cut.bytes, cut.segment, cut.offset, cut.lsn
                );
            }
            for name in &report.moved_segments {
                println!("moved segment {name} to the backup folder");
            }
            if let Some(backup) = &report.backup_dir {
                println!("backup of everything changed: {}", backup.display());
            }
            println!("the log now ends at LSN {}", report.last_lsn);
        }
    }
    Ok(EXIT_CLEAN)
}
