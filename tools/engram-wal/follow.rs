//! `engram-wal follow`: prints records as the server makes them durable.
//!
//! It reads with pread rather than a mapping, so a server that restarts and changes a
//! segment underneath cannot fault it, and decodes with the library's decoder. A frame that
//! is not valid yet is being written: follow waits for it.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use engram::wal::{
    decode_record, Decoded, Lsn, SegmentHeader, SegmentName, FIRST_RECORD_OFFSET,
    SEGMENT_HEADER_BYTES,
};

use crate::record_line::RecordLine;

const READ_CHUNK_BYTES: u64 = 1 << 20;

#[derive(Args)]
pub struct FollowArgs {
    /// First LSN to print (older ones are skipped).
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Only records of this memory space.
    #[arg(long)]
    space: Option<String>,
    #[arg(long)]
    json: bool,
    /// How often to look for new records.
    #[arg(long, default_value_t = 100)]
    poll_ms: u64,
    /// Exit after printing this many records.
    #[arg(long)]
    limit: Option<u64>,
}

struct Position {
    path: PathBuf,
    name: String,
    salt: u64,
    offset: u64,
    expected: Lsn,
}

pub fn run(dir: &Path, args: &FollowArgs) -> anyhow::Result<u8> {
    let from = Lsn(args.from);
    let mut position: Option<Position> = None;
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    loop {
        if position.is_none() {
            position = start_position(dir, from)?;
        }
        let progressed = match position.as_mut() {
            Some(pos) => read_new_records(pos, from, args, &mut out, &mut printed)?,
            None => false,
        };
        out.flush()?;
        if args.limit.is_some_and(|limit| printed >= limit) {
            return Ok(0);
        }
        if progressed {
            continue;
        }
        // Nothing new here: the records may go on in the next segment.
        if let Some(pos) = &position {
            let next = dir.join(SegmentName::file_name(pos.expected));
            if next != pos.path && next.exists() {
                position = Some(open_segment(&next, pos.expected)?);
                continue;
            }
        }
        std::thread::sleep(Duration::from_millis(args.poll_ms));
    }
}

fn segment_names(dir: &Path) -> anyhow::Result<Vec<(Lsn, String)>> {
    let mut names = Vec::new();
    if !dir.is_dir() {
        return Ok(names);
    }
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(lsn) = SegmentName::parse(&name) {
            names.push((lsn, name));
        }
    }
    names.sort();
    Ok(names)
}

/// The segment that holds `from`, or the oldest one if `from` was truncated away.
fn start_position(dir: &Path, from: Lsn) -> anyhow::Result<Option<Position>> {
    let names = segment_names(dir)?;
    let Some(first) = names.first() else {
        return Ok(None);
    };
    let (lsn, name) = names
        .iter()
        .rev()
        .find(|(lsn, _)| *lsn <= from)
        .unwrap_or(first);
    Ok(Some(open_segment(&dir.join(name), *lsn)?))
}

fn open_segment(path: &Path, first_lsn: Lsn) -> anyhow::Result<Position> {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    File::open(path)?.read_exact_at(&mut header, 0)?;
    let header =
        SegmentHeader::decode(&header).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        header.first_lsn == first_lsn,
        "{}: header names LSN {}",
        path.display(),
        header.first_lsn
    );
    Ok(Position {
        path: path.to_owned(),
        name: path
            .file_name()
            .expect("segment file")
            .to_string_lossy()
            .into_owned(),
        salt: header.salt,
        offset: FIRST_RECORD_OFFSET,
        expected: first_lsn,
    })
}

/// Prints every complete record from the position on; true if it moved.
fn read_new_records(
    pos: &mut Position,
    from: Lsn,
    args: &FollowArgs,
    out: &mut impl Write,
    printed: &mut u64,
) -> anyhow::Result<bool> {
    let file = File::open(&pos.path)?;
    let len = file.metadata()?.len();
    let mut want = READ_CHUNK_BYTES;
    let start = pos.offset;
    loop {
        if pos.offset >= len {
            return Ok(pos.offset > start);
        }
        let n = want.min(len - pos.offset) as usize;
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, pos.offset)?;
        let mut at = 0usize;
        let mut grow = None;
        loop {
            match decode_record(&buf[at..], pos.salt, pos.expected) {
                Decoded::Record(r) => {
                    let line = RecordLine::new(&pos.name, pos.offset + at as u64, &r);
                    if r.lsn >= from && args.space.as_deref().is_none_or(|s| line.space == Some(s))
                    {
                        line.print(args.json, out)?;
                        *printed += 1;
                    }
                    at += r.frame_len;
                    pos.expected = pos.expected.next();
                    if args.limit.is_some_and(|limit| *printed >= limit) {
                        break;
                    }
                }
                Decoded::Padding { frame_len } => at += frame_len,
                // The frame runs past what was read, but the file goes on: read more.
                Decoded::Incomplete { frame_len, .. }
                    if (pos.offset + at as u64 + frame_len as u64) <= len =>
                {
                    grow = Some(frame_len as u64);
                    break;
                }
                _ => break,
            }
        }
        pos.offset += at as u64;
        match grow {
            Some(frame_len) if at == 0 => want = want.max(frame_len),
            Some(_) => {}
            None => return Ok(pos.offset > start),
        }
        if args.limit.is_some_and(|limit| *printed >= limit) {
            return Ok(true);
        }
    }
}
