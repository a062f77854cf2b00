//! What recording metrics costs per observation, on the paths that record them: for a
//! batch of 64 observations in one space, the stored count (engine), 64 latency
//! observations and the ack (acknowledger), and a share of one commit's fsync time and
//! bytes (committer). Compare with the time one observation takes end to end
//! (engram-load: about 15 µs at 65K obs/s here) for the overhead share;
//! scripts/bench-metrics-overhead.sh measures the whole server with recording on and off.

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BATCH: u64 = 64;

fn record_batch(received: Instant) {
    let metrics = engram::metrics::recording().expect("recording is on");
    metrics
        .observations
        .with_label_values(&[metrics.space_label("bench")])
        .inc_by(BATCH);
    let latency = received.elapsed().as_secs_f64();
    for _ in 0..BATCH {
        metrics.observation_latency.observe(latency);
    }
    metrics.fsync_duration.observe(0.001);
    metrics.wal_bytes_written.inc_by(BATCH * 1_600);
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics_recording");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("batch_of_64", |b| {
        let received = Instant::now();
        b.iter(|| record_batch(received))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
