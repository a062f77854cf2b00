//! Indexed observations per second by the ingest workers, with 1, 2, 4 and 8 workers over
//! 4 spaces: the log is written first (384-d clustered synthetic observations), then the
//! workers index it from the start while the clock runs, as after a restart without
//! checkpoints. Prints one line per worker count.
//!
//!   cargo bench --bench index_workers [-- COUNT]

use std::sync::Arc;
use std::time::{Duration, Instant};

use engram::index::{IndexParams, SpaceIndexes};
use engram::ingest::checkpointer::CheckpointPolicy;
use engram::ingest::{IndexWorkers, ServerLoad};
use engram::synthetic::{observation, Distribution};
use engram::wal::{Entry, Lsn, RecordKind, Wal, WalConfig};

const DIM: usize = 384;
const SPACES: u64 = 4;

fn main() {
    let count: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(dir.path().join("wal"), WalConfig::default()).unwrap();
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        let entries = chunk
            .iter()
            .map(|&n| Entry {
                kind: RecordKind::Observation,
                payload: observation(
                    1,
                    &format!("space-{}", n % SPACES),
                    "obs-",
                    n,
                    DIM,
                    Distribution::Clustered,
                )
                .to_payload(),
            })
            .collect();
        wal.append_blocking(entries).unwrap();
    }
    let reader = wal.reader();
    let durable = reader.durable_lsn();
    println!(
        "{count} observations, {DIM}-d clustered, over {SPACES} spaces; M=16, ef_construction=200"
    );
    for workers in [1, 2, 4, 8] {
        let indexes = Arc::new(SpaceIndexes::new(IndexParams::default(), workers));
        let policy = Arc::new(CheckpointPolicy {
            root: dir.path().join("index"),
            every_records: 0,
            every: Duration::ZERO,
            truncate: Box::new(|_| Ok(0)),
            written: Default::default(),
            failed: Default::default(),
        });
        let load = Arc::new(ServerLoad::new(u64::MAX, u64::MAX));
        let started = Instant::now();
        let running =
            IndexWorkers::start(&reader, indexes.clone(), load, policy, Lsn::FIRST).unwrap();
        while (0..workers)
            .map(|w| indexes.worker_progress(w).indexed_lsn())
            .min()
            .unwrap()
            < durable
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let seconds = started.elapsed().as_secs_f64();
        drop(running);
        let indexed: usize = indexes.all().iter().map(|s| s.len()).sum();
        assert_eq!(indexed as u64, count);
        println!(
            "workers {workers}: {:.0} indexed obs/s ({seconds:.2} s)",
            count as f64 / seconds
        );
    }
}
