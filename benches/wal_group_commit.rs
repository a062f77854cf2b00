//! Durable appends of 1.6 KiB records through the WAL, next to the raw pwrite + fdatasync
//! rate of the same disk, measured in the same run.
//!
//!   cargo bench --bench wal_group_commit
//!
//! Groups:
//! - raw_pwrite_fdatasync/{zero_fill,fallocate}/N: N records' bytes in one pwrite, then one
//!   fdatasync, into a preallocated file: the disk's floor for a commit of N records.
//! - wal_append/N: one appender, N records per append, waiting for each to be durable.
//! - wal_concurrent_tasks/T: T tokio tasks on two worker threads, one record per append:
//!   group commit at work, the way the server appends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use engram::wal::{Entry, OsStorage, Preallocation, RecordKind, Storage, Wal, WalConfig};

const RECORD_PAYLOAD_BYTES: usize = 1600;
const BATCHES: [usize; 4] = [1, 10, 100, 1000];
const RAW_FILE_BYTES: u64 = 256 << 20;

fn record(i: usize) -> Entry {
    let mut payload = vec![0u8; RECORD_PAYLOAD_BYTES];
    payload[..8].copy_from_slice(&(i as u64).to_le_bytes());
    Entry {
        kind: RecordKind::Observation,
        payload,
    }
}

fn raw_disk(c: &mut Criterion) {
    let mut group = c.benchmark_group("raw_pwrite_fdatasync");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for how in [Preallocation::ZeroFill, Preallocation::Fallocate] {
        for batch in BATCHES {
            let name = format!("{how:?}").to_lowercase();
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                let dir = tempfile::tempdir_in(".").unwrap();
                let bytes = vec![7u8; batch * (RECORD_PAYLOAD_BYTES + 24).next_multiple_of(8)];
                let mut file = None;
                let mut offset = RAW_FILE_BYTES;
                let mut n = 0;
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        if offset + bytes.len() as u64 > RAW_FILE_BYTES {
                            // A fresh preallocated file, outside the timing, as the WAL does.
                            n += 1;
                            let path = dir.path().join(format!("raw-{n}"));
                            let f = OsStorage.create_new(&path).unwrap();
                            f.allocate(RAW_FILE_BYTES, how).unwrap();
                            f.sync_data().unwrap();
                            if let Some(old) = file.replace(f) {
                                drop(old);
                                let _ =
                                    std::fs::remove_file(dir.path().join(format!("raw-{}", n - 1)));
                            }
                            offset = 0;
                        }
                        let f = file.as_ref().unwrap();
                        let start = Instant::now();
                        f.write_all_at(&bytes, offset).unwrap();
                        f.sync_data().unwrap();
                        total += start.elapsed();
                        offset += bytes.len() as u64;
                    }
                    total
                });
            });
        }
    }
    group.finish();
}

fn wal_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for batch in BATCHES {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let dir = tempfile::tempdir_in(".").unwrap();
            let wal = Wal::open(dir.path(), WalConfig::default()).unwrap();
            b.iter_custom(|iters| {
                let batches: Vec<Vec<Entry>> = (0..iters)
                    .map(|i| (0..batch).map(|j| record(i as usize + j)).collect())
                    .collect();
                let start = Instant::now();
                for entries in batches {
                    wal.append_blocking(entries).unwrap();
                }
                let elapsed = start.elapsed();
                wal.truncate_below(wal.durable_lsn()).unwrap();
                elapsed
            });
        });
    }
    group.finish();
}

fn wal_concurrent(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_concurrent_tasks");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    for tasks in [16usize, 64, 256] {
        const APPENDS_PER_TASK: usize = 100;
        group.throughput(Throughput::Elements((tasks * APPENDS_PER_TASK) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(tasks), &tasks, |b, &tasks| {
            let dir = tempfile::tempdir_in(".").unwrap();
            let wal = Arc::new(Wal::open(dir.path(), WalConfig::default()).unwrap());
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    runtime.block_on(async {
                        let handles: Vec<_> = (0..tasks)
                            .map(|t| {
                                let wal = wal.clone();
                                tokio::spawn(async move {
                                    for i in 0..APPENDS_PER_TASK {
                                        wal.append(vec![record(t * APPENDS_PER_TASK + i)])
                                            .await
                                            .unwrap();
                                    }
                                })
                            })
                            .collect();
                        for h in handles {
                            h.await.unwrap();
                        }
                    });
                    total += start.elapsed();
                    wal.truncate_below(wal.durable_lsn()).unwrap();
                }
                total
            });
        });
    }
    group.finish();
}

criterion_group!(benches, raw_disk, wal_append, wal_concurrent);
criterion_main!(benches);
