//! Helpers shared by the WAL integration tests.
#![allow(dead_code)]

pub mod server;

use std::path::Path;

use engram::wal::{scan_log, Entry, LogFiles, LogScan, Lsn, OsStorage, RecordKind, WalConfig};

/// Runs the `engram-wal` binary on `data` (a server data directory).
pub fn engram_wal(data: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_engram-wal"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .expect("run engram-wal")
}

/// A config with small segments, so tests roll over segments often.
pub fn small_config(segment_bytes: u64) -> WalConfig {
    WalConfig {
        segment_bytes,
        commit_bytes_max: 8 << 10,
        record_payload_bytes_max: 4 << 10,
        ..WalConfig::default()
    }
}

/// A payload that names its writer and sequence, so a test can tell every record apart
/// and check its bytes after recovery.
pub fn payload(writer: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len.max(8));
    p.extend_from_slice(&writer.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    let mut x = (writer as u64) << 32 | seq as u64;
    while p.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        p.push((x >> 56) as u8);
    }
    p
}

pub fn entry(writer: u32, seq: u32, len: usize) -> Entry {
    Entry {
        kind: RecordKind::Observation,
        payload: payload(writer, seq, len),
    }
}

/// Every record in the log at `dir` as (LSN, payload), read with the library's scanner.
pub fn read_all(dir: &Path) -> (Vec<(Lsn, Vec<u8>)>, LogScan) {
    let files = LogFiles::open(&OsStorage, dir, false).expect("open log files");
    let mut records = Vec::new();
    let scan = scan_log(
        &files,
        |r| records.push((r.record.lsn, r.record.payload.to_vec())),
        |_| {},
    );
    (records, scan)
}

/// An observation with a small deterministic embedding.
pub fn observation(space: &str, n: u32, dim: usize) -> engram::observation::Observation {
    engram::observation::Observation {
        space: space.to_owned(),
        id: format!("{space}-{n}"),
        when_unix_ns: 1_700_000_000_000_000_000 + n as i64,
        confidence: 0.5,
        what: format!("observation {n} in {space}"),
        embedding: (0..dim)
            .map(|i| ((n as usize * 31 + i) % 17) as f32 / 17.0)
            .collect(),
    }
}

pub fn observation_entry(space: &str, n: u32, dim: usize) -> Entry {
    Entry {
        kind: RecordKind::Observation,
        payload: observation(space, n, dim).to_payload(),
    }
}

/// (space, id) -> how many times the log in `data_dir` holds it: what exactly-once tests
/// check after the server has stopped.
pub fn stored(data_dir: &Path) -> std::collections::HashMap<(String, String), u32> {
    use engram::observation::Observation;
    use engram::wal::{wal_dir, Wal};
    let wal = Wal::open(wal_dir(data_dir), WalConfig::default()).unwrap();
    let mut cursor = wal.reader().cursor(Lsn(1));
    let mut counts = std::collections::HashMap::new();
    while let Some(record) = cursor.read_next().unwrap() {
        let o = Observation::view(record.payload()).unwrap();
        *counts
            .entry((o.space.as_str().to_owned(), o.id.as_str().to_owned()))
            .or_insert(0) += 1;
    }
    counts
}

/// A command's stdout as one JSON value; the panic shows both streams.
pub fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `stdout_json` of a command that must have succeeded.
pub fn success_json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(out)
}
