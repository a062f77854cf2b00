//! `worker_scaling`: indexed observations per second by the ingest workers, with 1, 2, 4
//! and 8 workers over 4 spaces and an insert thread per core, and with the index kept to
//! one core (1 worker, 1 insert thread: the low-latency profile). The log is written
//! first (384-d clustered synthetic observations); each sample starts fresh workers on
//! empty indexes and times them indexing it from the start, as after a restart without
//! checkpoints.
//!
//!   ENGRAM_BENCH_INDEXED=20000 cargo bench --bench worker_scaling

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engram::index::{IndexParams, SpaceIndexes};
use engram::ingest::checkpointer::CheckpointPolicy;
use engram::ingest::{IndexConfig, IndexWorkers, ServerLoad};
use engram::synthetic::{observation, Distribution};
use engram::wal::{Entry, Lsn, RecordKind, Wal, WalConfig, WalReader};

const DIM: usize = 384;
const SPACES: u64 = 4;

fn worker_scaling(c: &mut Criterion) {
    let count: u64 = std::env::var("ENGRAM_BENCH_INDEXED")
        .ok()
        .and_then(|v| v.parse().ok())
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
    let mut group = c.benchmark_group("worker_scaling");
    group.sample_size(10);
    group.throughput(Throughput::Elements(count));
    let cores = engram::ingest::workers::default_workers();
    let cases = [1usize, 2, 4, 8]
        .map(|workers| (BenchmarkId::from_parameter(workers), workers, cores))
        .into_iter()
        .chain([(BenchmarkId::new("one_insert_thread", 1), 1, 1)]);
    for (id, workers, insert_threads) in cases {
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| index_all(&reader, dir.path(), workers, insert_threads, count))
                    .sum()
            })
        });
    }
    group.finish();
}

/// Starts `workers` workers (sharing `insert_threads`) on empty indexes and waits until
/// they indexed the whole log.
fn index_all(
    reader: &WalReader,
    dir: &std::path::Path,
    workers: usize,
    insert_threads: usize,
    count: u64,
) -> Duration {
    let durable = reader.durable_lsn();
    let indexes = Arc::new(SpaceIndexes::new(IndexParams::default(), workers));
    let policy = Arc::new(CheckpointPolicy {
        root: dir.join("index"),
        every_records: 0,
        every: Duration::ZERO,
        truncate: Box::new(|_| Ok(0)),
        written: Default::default(),
        failed: Default::default(),
    });
    let load = Arc::new(ServerLoad::new(u64::MAX, u64::MAX));
    let started = Instant::now();
    let running = IndexWorkers::start(
        reader,
        indexes.clone(),
        load,
        policy,
        Lsn::FIRST,
        &IndexConfig {
            insert_threads,
            ..IndexConfig::default()
        },
    )
    .unwrap();
    // Polling the watermark: a bench's stopwatch, not a test's synchronisation.
    while (0..workers)
        .map(|w| indexes.worker_progress(w).indexed_lsn())
        .min()
        .unwrap()
        < durable
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = started.elapsed();
    drop(running);
    let indexed: usize = indexes.all().iter().map(|s| s.len()).sum();
    assert_eq!(indexed as u64, count);
    eprintln!(
        "worker_scaling workers={workers} insert_threads={insert_threads}: {:.0} indexed obs/s",
        count as f64 / took.as_secs_f64()
    );
    took
}

criterion_group! {
    name = benches;
    config = common::whole_runs();
    targets = worker_scaling
}
criterion_main!(benches);
