//! Power loss, failed syncs and a full disk, through the fault-injecting storage backend.
//! Every trial is seeded; a failing trial prints its seed and mode.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{entry, payload, read_all, small_config};
use engram::wal::fault::{CrashMode, FaultyStorage};
use engram::wal::{Entry, Lsn, Wal, WalConfig, WalError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn trials() -> u64 {
    std::env::var("WAL_POWER_LOSS_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120)
}

fn config() -> WalConfig {
    WalConfig {
        commit_bytes_max: 4 << 10,
        record_payload_bytes_max: 2 << 10,
        ..small_config(16 << 10)
    }
}

/// What the writers of one trial did: every payload they tried, and what was acknowledged.
#[derive(Default)]
struct History {
    submitted: HashSet<Vec<u8>>,
    acked: BTreeMap<Lsn, Vec<u8>>,
}

/// Three writers append random batches until the storage fails under them.
fn write_until_crash(wal: &Arc<Wal>, life: u32, rng: &mut StdRng, history: &Arc<Mutex<History>>) {
    let plans: Vec<Vec<Vec<Entry>>> = (0..3u32)
        .map(|w| {
            let writer = life * 16 + w;
            let mut seq = 0u32;
            (0..rng.random_range(5..40))
                .map(|_| {
                    (0..rng.random_range(1..4))
                        .map(|_| {
                            seq += 1;
                            entry(writer, seq, rng.random_range(8..2000))
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    std::thread::scope(|scope| {
        for plan in plans {
            let wal = wal.clone();
            let history = history.clone();
            scope.spawn(move || {
                for batch in plan {
                    let payloads: Vec<Vec<u8>> = batch.iter().map(|e| e.payload.clone()).collect();
                    history
                        .lock()
                        .unwrap()
                        .submitted
                        .extend(payloads.iter().cloned());
                    match wal.append_blocking(batch) {
                        Ok(range) => {
                            let mut h = history.lock().unwrap();
                            for (lsn, p) in range.iter().zip(payloads) {
                                assert!(
                                    h.acked.insert(lsn, p).is_none(),
                                    "LSN {lsn} acknowledged twice"
                                );
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
}

/// Every acknowledged record is present, in order, once; nothing present was never written.
fn check_log(dir: &Path, history: &History, context: &str) {
    let (records, scan) = read_all(dir);
    assert!(
        scan.corruption.is_none(),
        "{context}: corruption after recovery: {:?}",
        scan.corruption
    );
    let by_lsn: BTreeMap<Lsn, Vec<u8>> = records.iter().cloned().collect();
    for (lsn, p) in &history.acked {
        assert_eq!(
            by_lsn.get(lsn),
            Some(p),
            "{context}: acknowledged LSN {lsn} lost or changed"
        );
    }
    let mut seen = HashSet::new();
    for (lsn, p) in &records {
        assert!(
            history.submitted.contains(p),
            "{context}: LSN {lsn} holds bytes nobody wrote"
        );
        assert!(
            seen.insert(p.clone()),
            "{context}: LSN {lsn} duplicates an earlier record"
        );
    }
}

fn power_loss_trial(seed: u64, mode: CrashMode) {
    let context = format!("seed {seed}, {mode:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let history = Arc::new(Mutex::new(History::default()));
    for life in 0..3u32 {
        let storage = FaultyStorage::new(seed.wrapping_mul(31).wrapping_add(life as u64));
        // Some crashes land in recovery itself (zeroing a torn tail, removing temp files).
        storage.crash_at_op(rng.random_range(1..300), mode);
        match Wal::open_with_storage(dir.path(), config(), Arc::new(storage.clone())) {
            Ok(wal) => {
                let wal = Arc::new(wal);
                write_until_crash(&wal, life, &mut rng, &history);
            }
            Err(e) => assert!(
                storage.counts().crashed,
                "{context}: open failed without a crash: {e}"
            ),
        }
        storage.crash(mode);
    }
    // Recover on the real file system, then check like Jepsen's set-full.
    let wal = Wal::open(dir.path(), config())
        .unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
    let durable = wal.durable_lsn();
    drop(wal);
    let history = history.lock().unwrap();
    check_log(dir.path(), &history, &context);
    assert!(
        durable
            >= history
                .acked
                .keys()
                .next_back()
                .copied()
                .unwrap_or(Lsn::ZERO),
        "{context}"
    );
}

#[test]
fn power_loss_dropping_unsynced_writes_loses_nothing_acknowledged() {
    for seed in 0..trials() {
        power_loss_trial(seed, CrashMode::DropUnsynced);
    }
}

#[test]
fn power_loss_tearing_pages_loses_nothing_acknowledged() {
    for seed in 0..trials() {
        power_loss_trial(1_000_000 + seed, CrashMode::TornPages);
    }
}

#[test]
fn after_a_failed_sync_no_append_is_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new(7);
    let wal =
        Arc::new(Wal::open_with_storage(dir.path(), config(), Arc::new(storage.clone())).unwrap());
    let mut acked = BTreeMap::new();
    for seq in 0..20 {
        let range = wal.append_blocking(vec![entry(0, seq, 500)]).unwrap();
        acked.insert(range.first, payload(0, seq, 500));
    }
    storage.fail_syncs();
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (1..5u32)
            .map(|writer| {
                let wal = wal.clone();
                scope.spawn(move || {
                    (0..25)
                        .map(|seq| wal.append_blocking(vec![entry(writer, seq, 300)]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(results.len(), 100);
    for result in &results {
        assert!(
            matches!(result, Err(WalError::Failed { .. })),
            "acknowledged after a failed sync: {result:?}"
        );
    }
    let cause = wal.failure().expect("the failure is latched");
    assert!(cause.contains("fdatasync"), "{cause}");
    assert_eq!(
        wal.durable_lsn(),
        Lsn(20),
        "the durable LSN never moves past the failure"
    );
    assert!(!WalError::Failed { cause }.is_retryable());
    drop(wal);
    // The machine goes down with the undurable pages; everything acknowledged is back.
    storage.crash(CrashMode::DropUnsynced);
    let history = History {
        submitted: acked.values().cloned().collect(),
        acked,
    };
    let wal = Wal::open(dir.path(), config()).unwrap();
    assert_eq!(wal.durable_lsn(), Lsn(20));
    drop(wal);
    check_log(dir.path(), &history, "failed sync");
}

/// ENOSPC while preparing a segment: a retryable error for the append that needs it, no
/// LSN used, the log not failed, and writing resumes once space is back. With
/// `prepare_next_segment`, the next segment is prepared in the background right after each
/// roll; if that failed, the following roll tries again, and only its own failure refuses
/// (a failure from before space came back must not).
fn full_disk_at_segment_creation(prepare_next_segment: bool) {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::new(11);
    let config = WalConfig {
        prepare_next_segment,
        ..config()
    };
    let wal = Wal::open_with_storage(dir.path(), config, Arc::new(storage.clone())).unwrap();
    // Two failed tries at the first segment, then success; with preparation on, the
    // background preparation of the second segment (the fourth allocation) and the
    // roll's own try (the fifth) fail too.
    storage.enospc_on_allocations(&[
        true,
        true,
        false,
        prepare_next_segment,
        prepare_next_segment,
    ]);
    for _ in 0..2 {
        let err = wal.append_blocking(vec![entry(0, 0, 100)]).unwrap_err();
        assert!(
            matches!(err, WalError::StorageFull { .. }) && err.is_retryable(),
            "{err}"
        );
    }
    assert_eq!(
        wal.append_blocking(vec![entry(0, 0, 100)]).unwrap().first,
        Lsn(1),
        "failed tries use no LSN"
    );
    if !prepare_next_segment {
        // The roll itself prepares the second segment: that allocation fails.
        storage.enospc_on_allocations(&[true]);
    }
    let mut seq = 1;
    loop {
        match wal.append_blocking(vec![entry(0, seq, 1500)]) {
            Ok(_) => seq += 1,
            Err(WalError::StorageFull { .. }) => break,
            Err(e) => panic!("unexpected {e}"),
        }
        assert_eq!(wal.stats().segments_created, 1, "the roll must fail");
    }
    assert!(wal.failure().is_none(), "a full disk does not fail the log");
    let range = wal.append_blocking(vec![entry(0, seq, 1500)]).unwrap();
    assert_eq!(
        range.first,
        Lsn(seq as u64 + 1),
        "writing resumes where it stopped"
    );
    assert_eq!(wal.stats().segments_created, 2);
    drop(wal);
    let (records, scan) = read_all(dir.path());
    assert!(scan.is_clean(), "{scan:?}");
    assert_eq!(records.len() as u32, seq + 1);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "a failed or unused preparation leaves no file: {leftovers:?}"
    );
}

#[test]
fn a_full_disk_at_segment_creation_is_retryable_and_corrupts_nothing() {
    full_disk_at_segment_creation(false);
}

#[test]
fn a_full_disk_while_preparing_the_next_segment_is_retryable() {
    full_disk_at_segment_creation(true);
}
