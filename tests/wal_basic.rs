//! The log's everyday behaviour on the real file system.

mod common;

use std::sync::Arc;

use common::{entry, payload, read_all, small_config};
use engram::wal::{Lsn, LsnRange, Wal, WalConfig, WalError};

#[test]
fn appends_are_durable_in_order_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small_config(64 << 10)).unwrap();
    assert_eq!(wal.durable_lsn(), Lsn::ZERO);
    let first = wal
        .append_blocking(vec![entry(0, 0, 100), entry(0, 1, 200)])
        .unwrap();
    assert_eq!(
        first,
        LsnRange {
            first: Lsn(1),
            last: Lsn(2)
        }
    );
    let second = wal.append_blocking(vec![entry(0, 2, 50)]).unwrap();
    assert_eq!(
        second,
        LsnRange {
            first: Lsn(3),
            last: Lsn(3)
        }
    );
    assert_eq!(wal.durable_lsn(), Lsn(3));
    drop(wal);

    let wal = Wal::open(dir.path(), small_config(64 << 10)).unwrap();
    assert_eq!(wal.durable_lsn(), Lsn(3));
    assert_eq!(wal.recovery_report().records, 3);
    let next = wal.append_blocking(vec![entry(0, 3, 10)]).unwrap();
    assert_eq!(next.first, Lsn(4), "LSNs continue after a restart");
    drop(wal);
    let (records, scan) = read_all(dir.path());
    assert!(scan.is_clean(), "{scan:?}");
    let expected: Vec<_> = [(0, 100), (1, 200), (2, 50), (3, 10)]
        .iter()
        .map(|&(s, l)| payload(0, s, l))
        .collect();
    assert_eq!(
        records.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(
        records.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![Lsn(1), Lsn(2), Lsn(3), Lsn(4)]
    );
}

#[test]
fn records_roll_over_segments_and_read_back_zero_copy() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path(), small_config(32 << 10)).unwrap();
    for seq in 0..200 {
        wal.append_blocking(vec![entry(1, seq, 1000)]).unwrap();
    }
    assert!(
        wal.stats().segments >= 6,
        "200 KB over 32 KiB segments: {:?}",
        wal.stats()
    );
    let mut cursor = wal.reader().cursor(Lsn(1));
    for seq in 0..200u32 {
        let record = cursor.read_next().unwrap().expect("durable record");
        assert_eq!(record.lsn, Lsn(seq as u64 + 1));
        assert_eq!(record.payload(), payload(1, seq, 1000).as_slice());
        assert_eq!(
            record.payload().as_ptr() as usize % 8,
            0,
            "payloads are 8-byte aligned in the map"
        );
    }
    assert!(
        cursor.read_next().unwrap().is_none(),
        "nothing past the durable LSN"
    );
    // A cursor can start anywhere, including in a later segment.
    let mut cursor = wal.reader().cursor(Lsn(150));
    assert_eq!(
        cursor.read_next().unwrap().unwrap().payload(),
        payload(1, 149, 1000).as_slice()
    );
}

#[test]
fn concurrent_appenders_share_syncs_and_every_append_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), small_config(256 << 10)).unwrap());
    let threads: Vec<_> = (0..8u32)
        .map(|writer| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..100u32)
                    .map(|seq| {
                        (
                            seq,
                            wal.append_blocking(vec![entry(writer, seq, 300)]).unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked = Vec::new();
    for (writer, t) in threads.into_iter().enumerate() {
        for (seq, range) in t.join().unwrap() {
            acked.push((range.first, payload(writer as u32, seq, 300)));
        }
    }
    let stats = wal.stats();
    assert_eq!(stats.records, 800);
    assert!(
        stats.syncs <= 800,
        "never more syncs than appends: {stats:?}"
    );
    acked.sort();
    let lsns: Vec<_> = acked.iter().map(|a| a.0).collect();
    assert_eq!(
        lsns,
        (1..=800).map(Lsn).collect::<Vec<_>>(),
        "every LSN handed out once"
    );
    drop(wal);
    let (records, scan) = read_all(dir.path());
    assert!(scan.is_clean());
    assert_eq!(records, acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_appends_and_a_cursor_following_the_durable_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(Wal::open(dir.path(), small_config(64 << 10)).unwrap());
    let reader = wal.reader();
    let follower = tokio::spawn(async move {
        let mut cursor = reader.cursor(Lsn(1));
        let mut seen = Vec::new();
        while seen.len() < 50 {
            let record = cursor.next_durable().await.unwrap().expect("log open");
            seen.push(record.payload().to_vec());
        }
        seen
    });
    for seq in 0..50 {
        wal.append(vec![entry(2, seq, 64)]).await.unwrap();
    }
    let seen = follower.await.unwrap();
    assert_eq!(seen, (0..50).map(|s| payload(2, s, 64)).collect::<Vec<_>>());
}

#[test]
fn limits_are_enforced_with_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(32 << 10);
    let wal = Wal::open(dir.path(), config.clone()).unwrap();
    assert!(matches!(
        wal.append_blocking(vec![]),
        Err(WalError::EmptyAppend)
    ));
    let too_big = config.record_payload_bytes_max as usize + 1;
    assert!(matches!(
        wal.append_blocking(vec![entry(0, 0, too_big)]),
        Err(WalError::RecordTooLarge { bytes, max }) if bytes == too_big as u64 && max == config.record_payload_bytes_max as u64
    ));
    let many: Vec<_> = (0..20).map(|s| entry(0, s, 4000)).collect();
    assert!(matches!(
        wal.append_blocking(many),
        Err(WalError::AppendTooLarge { .. })
    ));
    assert_eq!(
        wal.durable_lsn(),
        Lsn::ZERO,
        "rejected appends write nothing"
    );
    assert!(
        Wal::open(dir.path(), config.clone()).is_err_and(|e| matches!(e, WalError::Locked { .. }))
    );
    let bad = WalConfig {
        segment_bytes: 1000,
        ..WalConfig::default()
    };
    assert!(matches!(
        Wal::open(tempfile::tempdir().unwrap().path(), bad),
        Err(WalError::Config(_))
    ));
}

#[test]
fn truncation_removes_whole_segments_below_an_lsn_and_lsns_never_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(32 << 10);
    let wal = Wal::open(dir.path(), config.clone()).unwrap();
    for seq in 0..200 {
        wal.append_blocking(vec![entry(3, seq, 1000)]).unwrap();
    }
    let before = wal.stats().segments;
    let mut held = wal.reader().cursor(Lsn(1));
    assert_eq!(
        held.read_next().unwrap().unwrap().payload(),
        payload(3, 0, 1000).as_slice()
    );
    let removed = wal.truncate_below(Lsn(150)).unwrap();
    assert!(removed >= 3, "removed {removed} of {before}");
    let oldest = wal.reader().oldest_lsn();
    assert!(oldest <= Lsn(150) && oldest > Lsn(1));
    assert!(matches!(
        wal.reader().cursor(Lsn(1)).read_next(),
        Err(WalError::Truncated { .. })
    ));
    assert_eq!(
        wal.reader()
            .cursor(Lsn(150))
            .read_next()
            .unwrap()
            .unwrap()
            .payload(),
        payload(3, 149, 1000).as_slice()
    );
    // A cursor inside a removed segment still reads it: unlink does not unmap.
    assert_eq!(
        held.read_next().unwrap().unwrap().payload(),
        payload(3, 1, 1000).as_slice()
    );
    // Truncating everything but the active segment, then restarting, keeps the LSN count.
    wal.truncate_below(Lsn(1_000)).unwrap();
    assert_eq!(wal.stats().segments, 1);
    drop(wal);
    let wal = Wal::open(dir.path(), config).unwrap();
    assert_eq!(wal.durable_lsn(), Lsn(200));
    assert_eq!(
        wal.append_blocking(vec![entry(3, 200, 10)]).unwrap().first,
        Lsn(201)
    );
}

/// A segment keeps the torn window it was created with. Reopened with a smaller
/// commit_bytes_max, the log still fills that segment's wider commits, without growing the
/// committer's buffer (a debug assertion at every write) and without losing a record.
#[test]
fn a_segment_from_a_run_with_wider_commits_is_appended_to_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wide = WalConfig {
        commit_bytes_max: 256 << 10,
        ..small_config(4 << 20)
    };
    let wal = Wal::open(dir.path(), wide.clone()).unwrap();
    wal.append_blocking(vec![entry(0, 0, 100)]).unwrap();
    drop(wal);

    let narrow = small_config(4 << 20);
    assert!(narrow.torn_window_bytes() < wide.torn_window_bytes());
    let wal = Wal::open(dir.path(), narrow).unwrap();
    // One append of about 200 KiB: one commit in the old segment's window.
    let batch: Vec<_> = (1..=50).map(|seq| entry(0, seq, 4000)).collect();
    let range = wal.append_blocking(batch).unwrap();
    assert_eq!(
        range,
        LsnRange {
            first: Lsn(2),
            last: Lsn(51)
        }
    );
    drop(wal);
    let (records, scan) = read_all(dir.path());
    assert!(scan.corruption.is_none(), "{scan:?}");
    assert_eq!(records.len(), 51);
    for (n, (lsn, bytes)) in records.iter().enumerate() {
        assert_eq!(*lsn, Lsn(n as u64 + 1));
        let len = if n == 0 { 100 } else { 4000 };
        assert_eq!(bytes, &payload(0, n as u32, len));
    }
}
