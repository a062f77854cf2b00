//! The `engram-wal` binary on a clean log, a log with a torn tail, and a log with a flipped
//! bit in a closed segment: output and exit codes.

mod common;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{engram_wal, observation_entry};
use engram::wal::{wal_dir, Lsn, SegmentName, Wal, WalConfig, FIRST_RECORD_OFFSET};

const SPACES: [&str; 3] = ["alpha", "beta", "gamma"];

fn config() -> WalConfig {
    WalConfig {
        segment_bytes: 64 << 10,
        record_payload_bytes_max: 4096,
        commit_bytes_max: 8192,
        ..WalConfig::default()
    }
}

/// A data directory whose log holds `per_space` observations in each of three spaces,
/// interleaved, 16-d, over several segments.
fn data_dir_with_log(per_space: u32) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let wal = Wal::open(wal_dir(data.path()), config()).unwrap();
    for n in 0..per_space {
        let batch = SPACES.iter().map(|s| observation_entry(s, n, 16)).collect();
        wal.append_blocking(batch).unwrap();
    }
    drop(wal);
    data
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn segments(data: &Path) -> Vec<PathBuf> {
    let mut s: Vec<PathBuf> = std::fs::read_dir(wal_dir(data))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| SegmentName::parse(n).is_some())
        })
        .collect();
    s.sort();
    s
}

#[test]
fn a_clean_log_verifies_dumps_and_counts() {
    let data = data_dir_with_log(100);
    assert!(segments(data.path()).len() >= 3, "the log spans segments");

    let verify = engram_wal(data.path(), &["verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    assert!(
        stdout(&verify).contains("300 records, LSN 1..300"),
        "{}",
        stdout(&verify)
    );
    assert!(stdout(&verify).contains("OK: every record verified"));

    let dump = engram_wal(data.path(), &["dump"]);
    assert_eq!(dump.status.code(), Some(0));
    let lines: Vec<String> = stdout(&dump).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 300);
    let first_segment = SegmentName::file_name(Lsn(1));
    let bytes = common::observation("alpha", 0, 16).to_payload().len();
    assert_eq!(
        lines[0],
        format!("lsn=1 pos={first_segment}:{FIRST_RECORD_OFFSET} kind=observation space=alpha id=alpha-0 dim=16 bytes={bytes} crc=ok")
    );
    assert!(
        lines[299].starts_with("lsn=300 ") && lines[299].contains("space=gamma id=gamma-99"),
        "{}",
        lines[299]
    );

    let filtered = engram_wal(
        data.path(),
        &[
            "dump", "--from", "10", "--to", "30", "--space", "beta", "--json",
        ],
    );
    let rows: Vec<serde_json::Value> = stdout(&filtered)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lsns: Vec<u64> = rows.iter().map(|r| r["lsn"].as_u64().unwrap()).collect();
    assert_eq!(
        lsns,
        vec![11, 14, 17, 20, 23, 26, 29],
        "beta is every third record from LSN 2"
    );
    assert!(rows
        .iter()
        .all(|r| r["space"] == "beta" && r["crc_ok"] == true && r["dim"] == 16));

    let stats = engram_wal(data.path(), &["stats", "--json"]);
    assert_eq!(stats.status.code(), Some(0));
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["records"], 300);
    assert_eq!(stats["last_lsn"], 300);
    for space in SPACES {
        assert_eq!(stats["spaces"][space]["records"], 100, "{stats}");
        assert_eq!(stats["spaces"][space]["dims"]["16"], 100);
    }
    let histogram_total: u64 = stats["size_histogram"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(histogram_total, 300);
    assert_eq!(
        stats["segments"].as_u64().unwrap() as usize,
        segments(data.path()).len()
    );

    let repair = engram_wal(data.path(), &["repair"]);
    assert_eq!(repair.status.code(), Some(0));
    assert!(
        stdout(&repair).contains("nothing to repair"),
        "{}",
        stdout(&repair)
    );

    let missing = engram_wal(&data.path().join("nope"), &["verify"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no WAL at"));
}

#[test]
fn a_torn_tail_is_reported_and_repaired_with_a_backup() {
    let data = data_dir_with_log(20);
    let last = segments(data.path()).pop().unwrap();
    let name = last.file_name().unwrap().to_str().unwrap().to_owned();
    // Where the next commit would start: the end of the last segment's valid frames.
    let (_, scan) = common::read_all(&wal_dir(data.path()));
    let end_offset = scan.segments.last().unwrap().valid_end;
    assert_eq!(end_offset % 4096, 0, "commits end on a page boundary");
    // A crash mid-write: half a frame of garbage where the next commit was going.
    let file = OpenOptions::new().write(true).open(&last).unwrap();
    file.write_all_at(&[0xA5; 100], end_offset).unwrap();

    let verify = engram_wal(data.path(), &["verify"]);
    assert_eq!(verify.status.code(), Some(3), "{}", stdout(&verify));
    let expected = format!("torn tail: segment {name} offset {end_offset} (LSN 61), 100 bytes");
    assert!(stdout(&verify).contains(&expected), "{}", stdout(&verify));

    let dump = engram_wal(data.path(), &["dump"]);
    assert_eq!(
        dump.status.code(),
        Some(0),
        "a torn tail is normal; dump shows every record"
    );
    assert_eq!(stdout(&dump).lines().count(), 60);

    let repair = engram_wal(data.path(), &["repair"]);
    assert_eq!(repair.status.code(), Some(0));
    let out = stdout(&repair);
    assert!(
        out.contains(&format!(
            "removed 100 bytes from segment {name} at offset {end_offset} (records from LSN 61 on)"
        )),
        "{out}"
    );
    let backup = out
        .lines()
        .find_map(|l| l.strip_prefix("backup of everything changed: "))
        .unwrap();
    let backed_up = std::fs::read(Path::new(backup).join(&name)).unwrap();
    assert_eq!(
        &backed_up[end_offset as usize..end_offset as usize + 100],
        &[0xA5; 100],
        "the backup holds the cut bytes"
    );

    let verify = engram_wal(data.path(), &["verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("60 records"));
}

#[test]
fn a_flipped_bit_mid_log_is_named_and_repair_needs_the_explicit_flag() {
    let data = data_dir_with_log(100);
    let first = segments(data.path()).remove(0);
    let name = first.file_name().unwrap().to_str().unwrap().to_owned();
    // Find record 3's offset with the dump, then flip a bit in its payload.
    let dump = engram_wal(data.path(), &["dump", "--from", "3", "--to", "3", "--json"]);
    let row: serde_json::Value =
        serde_json::from_str(stdout(&dump).lines().next().unwrap()).unwrap();
    let offset = row["offset"].as_u64().unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&first)
        .unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, offset + 40).unwrap();
    file.write_all_at(&[b[0] ^ 0x10], offset + 40).unwrap();

    let verify = engram_wal(data.path(), &["verify"]);
    assert_eq!(verify.status.code(), Some(1), "{}", stdout(&verify));
    let expected =
        format!("CORRUPTION: segment {name} offset {offset} (LSN 3): record checksum mismatch");
    assert!(stdout(&verify).contains(&expected), "{}", stdout(&verify));
    let verify_json: serde_json::Value =
        serde_json::from_slice(&engram_wal(data.path(), &["verify", "--json"]).stdout).unwrap();
    assert_eq!(verify_json["corruption"]["offset"], offset);
    assert_eq!(verify_json["corruption"]["lsn"], 3);

    let dump = engram_wal(data.path(), &["dump"]);
    assert_eq!(dump.status.code(), Some(1));
    let lines: Vec<&str> = std::str::from_utf8(&dump.stdout).unwrap().lines().collect();
    assert_eq!(
        lines.len(),
        3,
        "two good records, then the bad one: {lines:?}"
    );
    assert!(
        lines[2].starts_with(&format!("lsn=3 pos={name}:{offset} crc=BAD")),
        "{}",
        lines[2]
    );

    // The server refuses to start on it, naming the same place.
    let err = Wal::open(wal_dir(data.path()), config())
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains(&format!("segment {name} at offset {offset} (LSN 3)")),
        "{err}"
    );

    let refused = engram_wal(data.path(), &["repair"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stdout(&refused).contains("--truncate-after-corruption"),
        "{}",
        stdout(&refused)
    );
    assert_eq!(
        engram_wal(data.path(), &["verify"]).status.code(),
        Some(1),
        "repair without the flag changed nothing"
    );

    let repair = engram_wal(data.path(), &["repair", "--truncate-after-corruption"]);
    assert_eq!(repair.status.code(), Some(0), "{}", stdout(&repair));
    let out = stdout(&repair);
    assert!(
        out.contains("moved segment "),
        "later segments go to the backup: {out}"
    );
    assert!(out.contains("the log now ends at LSN 2"), "{out}");

    let verify = engram_wal(data.path(), &["verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
    assert!(stdout(&verify).contains("2 records, LSN 1..2"));
    let wal = Wal::open(wal_dir(data.path()), config()).unwrap();
    assert_eq!(
        wal.durable_lsn(),
        Lsn(2),
        "the server starts with everything before the corruption"
    );
}

#[test]
fn follow_prints_records_as_they_become_durable() {
    let data = data_dir_with_log(10);
    let mut child = Command::new(env!("CARGO_BIN_EXE_engram-wal"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["follow", "--json", "--poll-ms", "10", "--limit", "330"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // A watchdog, not a synchronisation: it only ends a hung run.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(60));
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The 30 records already there come first...
    for lsn in 1..=30u64 {
        let row: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        assert_eq!(row["lsn"], lsn);
    }
    // ...then the ones appended while it runs, across segment rolls.
    let wal = Wal::open(wal_dir(data.path()), config()).unwrap();
    for n in 10..110 {
        wal.append_blocking(SPACES.iter().map(|s| observation_entry(s, n, 16)).collect())
            .unwrap();
    }
    for lsn in 31..=330u64 {
        let row: serde_json::Value =
            serde_json::from_str(&lines.next().expect("follow printed").unwrap()).unwrap();
        assert_eq!(row["lsn"], lsn);
    }
    assert!(child.wait().unwrap().success());
    assert!(wal.stats().segments_created >= 2);
}
