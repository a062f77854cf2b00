//! The streaming benches of the performance issue, against the real server binary on
//! loopback, driven by the real load generator (both built in release by `cargo bench`):
//!
//! - `streaming_throughput`: offered load 10K, 50K, 100K, 200K obs/s (384-d, 4
//!   connections), ingest alone (the index lag bound lifted); criterion times the run,
//!   and each run prints the achieved acked rate and the ack p99. Refused observations
//!   never count as throughput.
//! - `batch_size`: the server's `--ingest-batch-max` at 10, 50, 100, 500, 1000, streaming
//!   as fast as the machine goes.
//! - `concurrent_recall`: recall p50/p99 at k=10, read-your-writes, on a space of
//!   `ENGRAM_BENCH_RECALL_SPACE` (default 100,000) vectors while another space is streamed
//!   at `ENGRAM_BENCH_STREAM_RATE` (default 50,000, half the max) obs/s, the index lag
//!   bound lifted so that the stream flows (each report says what it got);
//!   `ENGRAM_BENCH_RECALLS` (default 200) recalls per sample.
//!
//!   cargo bench --bench streaming [-- FILTER]
//!
//! Each configuration prints one JSON line with the load generator's report.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const DIM: &str = "384";

struct Server {
    child: Child,
    quic: String,
    http: String,
    cert: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        use std::io::{BufRead, BufReader};
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
            .args([
                "serve",
                "--quic-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start engram serve");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let up = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("engram is up"))
            .expect("the server comes up");
        // Keep reading its log, so that it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let address = |key: &str| {
            up.split(key)
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or_else(|| panic!("{key} in the log"))
                .to_owned()
        };
        let (quic, http) = (address("quic_addr="), address("http_addr="));
        let cert = data.path().join("tls/cert.der").display().to_string();
        Server {
            child,
            quic,
            http,
            cert,
            _data: data,
        }
    }

    /// The body of GET `path` on the server's HTTP port.
    fn get(&self, path: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.http).expect("the HTTP port");
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.http).unwrap();
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("an HTTP response");
        match response.split_once("\r\n\r\n") {
            Some((_, body)) => body.to_owned(),
            None => panic!("no body in {response:?}"),
        }
    }

    /// Waits until `space` has nothing durable left to index, by its lag in /metrics.
    fn wait_indexed(&self, space: &str) {
        let series = format!("engram_index_lag_records{{space=\"{space}\"}} 0\n");
        // Polling the lag: a bench's wait, not a test's synchronisation.
        while !self.get("/metrics").contains(&series) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The log's durable LSN: records acknowledged so far, of every space.
    fn durable_lsn(&self) -> u64 {
        let stats: serde_json::Value = serde_json::from_str(&self.get("/stats")).unwrap();
        stats["wal"]["durable_lsn"]
            .as_u64()
            .expect("wal.durable_lsn in /stats")
    }

    /// Runs engram-load against this server; its JSON report.
    fn load(&self, args: &[&str]) -> serde_json::Value {
        load(&[&["--addr", &self.quic, "--cert", &self.cert], args].concat())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn load(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_engram-load"))
        .args(["--json", "--dim", DIM])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run engram-load");
    assert!(output.status.success(), "engram-load failed");
    serde_json::from_slice(&output.stdout).expect("a JSON report")
}

fn seconds(report: &serde_json::Value) -> Duration {
    Duration::from_secs_f64(report["seconds"].as_f64().unwrap())
}

/// `iters` whole runs for criterion's `iter_custom`: each gets the next number of `run`
/// (for a space of its own) and returns the load generator's report, which is printed
/// after `label`; the runs' own durations, summed.
fn timed_runs(
    iters: u64,
    run: &mut u64,
    label: &str,
    mut load: impl FnMut(u64) -> serde_json::Value,
) -> Duration {
    (0..iters)
        .map(|_| {
            *run += 1;
            let report = load(*run);
            eprintln!("{label} {report}");
            seconds(&report)
        })
        .sum()
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Ingest alone: without it, a stream past the indexing rate (about 2.5K obs/s on 2
/// cores) is held to that rate once the index lag reaches its bound, and every offered
/// load measures the index (that rate is `worker_scaling`'s).
const INGEST_ALONE: [&str; 2] = ["--index-lag-max", "100000000"];

fn streaming_throughput(c: &mut Criterion) {
    let server = Server::start(&INGEST_ALONE);
    let mut group = c.benchmark_group("streaming_throughput");
    group.sample_size(10);
    let mut run = 0;
    for offered in [10_000u64, 50_000, 100_000, 200_000] {
        // About two seconds of offered load per sample.
        let count = (offered * 2).to_string();
        group.throughput(Throughput::Elements(offered * 2));
        group.bench_with_input(
            BenchmarkId::from_parameter(offered),
            &offered,
            |b, &offered| {
                let label = format!("streaming_throughput offered={offered}");
                b.iter_custom(|iters| {
                    timed_runs(iters, &mut run, &label, |run| {
                        server.load(&[
                            "--count",
                            &count,
                            "--connections",
                            "4",
                            "--rate",
                            &offered.to_string(),
                            "--space",
                            &format!("t{run}"),
                        ])
                    })
                })
            },
        );
    }
    group.finish();
}

fn batch_size(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_size");
    group.sample_size(10);
    let count = 100_000u64;
    group.throughput(Throughput::Elements(count));
    for batch in [10u32, 50, 100, 500, 1000] {
        let batch_max = batch.to_string();
        let server =
            Server::start(&[&INGEST_ALONE[..], &["--ingest-batch-max", &batch_max]].concat());
        let mut run = 0;
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            let label = format!("batch_size batch={batch}");
            b.iter_custom(|iters| {
                timed_runs(iters, &mut run, &label, |run| {
                    server.load(&[
                        "--count",
                        &count.to_string(),
                        "--connections",
                        "4",
                        "--space",
                        &format!("b{run}"),
                    ])
                })
            })
        });
    }
    group.finish();
}

fn concurrent_recall(c: &mut Criterion) {
    let vectors = setting("ENGRAM_BENCH_RECALL_SPACE", 100_000);
    let rate = setting("ENGRAM_BENCH_STREAM_RATE", 50_000);
    // The lag bound lifted: with it, the stream is held back once the index lags 50,000
    // records behind (measured: 0 records/s acknowledged after the first sample), and the
    // recalls would run beside no stream at all.
    let server = Server::start(&INGEST_ALONE);
    // The space recalled from, stored and indexed before the clock runs.
    let filled = server.load(&[
        "--count",
        &vectors.to_string(),
        "--connections",
        "4",
        "--space",
        "recalled",
        "--distribution",
        "clustered",
    ]);
    server.wait_indexed("recalled");
    eprintln!("concurrent_recall filled and indexed {filled}");
    let mut group = c.benchmark_group("concurrent_recall");
    group.sample_size(10);
    // The recalled space is not written while the clock runs, so its read-your-writes
    // recalls scan no log: the streamed space's unindexed records are past its newest.
    let recalls = setting("ENGRAM_BENCH_RECALLS", 200);
    group.throughput(Throughput::Elements(recalls));
    let mut run = 0u64;
    group.bench_function("k10_read_your_writes_while_streaming", |b| {
        let label = format!("concurrent_recall stream_rate={rate}");
        b.iter_custom(|iters| {
            timed_runs(iters, &mut run, &label, |run| {
                // The stream runs for the whole recall run: rate x 30 s of observations.
                let mut stream = Command::new(env!("CARGO_BIN_EXE_engram-load"))
                    .args([
                        "--json",
                        "--dim",
                        DIM,
                        "--addr",
                        &server.quic,
                        "--cert",
                        &server.cert,
                    ])
                    .args([
                        "--count",
                        &(rate * 30).to_string(),
                        "--rate",
                        &rate.to_string(),
                    ])
                    .args(["--space", &format!("streamed{run}")])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("run engram-load");
                let durable_before = server.durable_lsn();
                let mut report = server.load(&[
                    "--target",
                    "recall",
                    "--space",
                    "recalled",
                    "--count",
                    &recalls.to_string(),
                    "--connections",
                    "1",
                    "--k",
                    "10",
                    "--consistency",
                    "read-your-writes",
                ]);
                // What the stream really got while the recalls ran: a stream the server
                // held back would leave the recalls the cores.
                let streamed = server.durable_lsn() - durable_before;
                report["stream_records_per_sec"] = (streamed as f64
                    / seconds(&report).as_secs_f64())
                .round()
                .into();
                let _ = stream.kill();
                let _ = stream.wait();
                report
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::whole_runs();
    targets = streaming_throughput, batch_size, concurrent_recall
}
criterion_main!(benches);
