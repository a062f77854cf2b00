//! `engram-wal dump`

use std::io::{BufWriter, Write};
use std::path::Path;

use clap::Args;
use engram::wal::{scan_log, Lsn};

use crate::record_line::RecordLine;
use crate::{describe_damage, open_log, progress, verdict_code, EXIT_TORN_TAIL};

#[derive(Args)]
pub struct DumpArgs {
    /// First LSN to print.
    #[arg(long)]
    from: Option<u64>,
    /// Last LSN to print.
    #[arg(long)]
    to: Option<u64>,
    /// Only records of this memory space.
    #[arg(long)]
    space: Option<String>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

pub fn run(dir: &Path, args: &DumpArgs) -> anyhow::Result<u8> {
    let files = open_log(dir)?;
    let from = Lsn(args.from.unwrap_or(0));
    let to = Lsn(args.to.unwrap_or(u64::MAX));
    let bar = progress::segments_bar(files.segments.len(), "dumping");
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut write_error = None;
    let scan = scan_log(
        &files,
        |r| {
            if r.record.lsn < from || r.record.lsn > to || write_error.is_some() {
                return;
            }
            let line = RecordLine::new(r.segment, r.offset, &r.record);
            if args.space.as_deref().is_some_and(|s| line.space != Some(s)) {
                return;
            }
            if let Err(e) = line.print(args.json, &mut out) {
                write_error = Some(e);
            }
        },
        |_| bar.inc(1),
    );
    bar.finish_and_clear();
    if let Some(e) = write_error {
        // A closed pipe (`| head`) is a normal way to stop reading.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(0);
        }
        return Err(e.into());
    }
    if let Some(at) = &scan.corruption {
        if args.json {
            let bad = serde_json::json!({"lsn": at.lsn, "segment": at.segment, "offset": at.offset, "crc_ok": false, "corruption": at.reason.to_string()});
            writeln!(out, "{bad}")?;
        } else {
            writeln!(
                out,
                "lsn={} pos={}:{} crc=BAD reason=\"{}\"",
                at.lsn, at.segment, at.offset, at.reason
            )?;
        }
    }
    out.flush()?;
    for line in describe_damage(&scan) {
        eprintln!("{line}");
    }
    // A torn tail is normal after a crash; dump printed everything that is in the log.
    Ok(match verdict_code(&scan) {
        EXIT_TORN_TAIL => 0,
        code => code,
    })
}
