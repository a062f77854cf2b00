//! GET /metrics on the real server: traffic of every kind moves every metric the catalog
//! (docs/operations/streaming-monitoring.md) names, and the `space` label stays bounded.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::server::{push_through, Pushed, Server};
use engram::client::Session;
use engram::index::RecallQuery;
use engram::synthetic::{observation, Distribution};

/// One scrape: every sample by its name and labels as written, e.g.
/// `engram_index_vectors{space="m0"}`.
struct Scrape(BTreeMap<String, f64>);

/// GET /metrics at `addr`: the body.
fn fetch(addr: std::net::SocketAddr) -> String {
    let (status, body) = common::server::http_get(addr, "/metrics").expect("an HTTP answer");
    assert_eq!(status, 200, "{body}");
    body
}

impl Scrape {
    fn take(server: &Server) -> Scrape {
        Scrape::parse(&fetch(server.http_addr))
    }

    fn parse(body: &str) -> Scrape {
        let samples = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("a sample line");
                (series.to_owned(), value.parse().expect("a number"))
            })
            .collect();
        Scrape(samples)
    }

    fn get(&self, series: &str) -> f64 {
        *self
            .0
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in the scrape: {:#?}", self.0.keys()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_moves_every_metric_and_the_space_label_is_bounded() {
    let data = tempfile::tempdir().unwrap();
    // A slowed index with a small lag bound drives backpressure; one injected panic
    // restarts a worker; two labelled spaces at most.
    let server = Server::start_with_env(
        data.path(),
        "127.0.0.1:0",
        &["--index-lag-max", "300", "--metrics-spaces-max", "2"],
        &[
            ("ENGRAM_FAULT_INDEX_DELAY_US", "1000"),
            ("ENGRAM_FAULT_INDEX_PANIC_AFTER", "100"),
        ],
    );
    let before = Scrape::take(&server);
    assert!(before.get("engram_recovery_duration_seconds") > 0.0);
    assert_eq!(before.get("engram_wal_failed"), 0.0);
    assert_eq!(before.get("engram_streaming_active_sessions"), 0.0);
    assert!(before.get("process_resident_memory_bytes") > 0.0);
    assert!(before.get("process_open_fds") > 0.0);

    let mut session = Session::connect(&server.options("watcher"), None)
        .await
        .unwrap();
    assert_eq!(
        Scrape::take(&server).get("engram_streaming_active_sessions"),
        1.0
    );
    // Sampled while the load runs: the queue and the load state must be seen to move.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, addr) = (stop.clone(), server.http_addr);
        tokio::task::spawn_blocking(move || {
            let (mut depth, mut state, mut busy, mut lag) = (0f64, 0f64, 0f64, 0f64);
            // Utilization is published per window of a second: a push shorter than that
            // ends before the first window closes, so sampling goes on until it does.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !stop.load(Ordering::Relaxed)
                || (busy == 0.0 && std::time::Instant::now() < deadline)
            {
                let scrape = Scrape::parse(&fetch(addr));
                depth = depth.max(scrape.get("engram_streaming_queue_depth"));
                state = state.max(scrape.get("engram_streaming_backpressure_state"));
                let utilization: f64 = scrape
                    .0
                    .iter()
                    .filter(|(k, _)| k.starts_with("engram_streaming_worker_utilization"))
                    .map(|(_, v)| v)
                    .sum();
                busy = busy.max(utilization);
                let behind: f64 = scrape
                    .0
                    .iter()
                    .filter(|(k, _)| k.starts_with("engram_index_lag_records"))
                    .map(|(_, v)| v)
                    .sum();
                lag = lag.max(behind);
                // A sampling interval, not a synchronisation.
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (depth, state, busy, lag)
        })
    };
    let Pushed { acked, retries, .. } = push_through(&server, 2, 1_000, |n| {
        let space = ["m0", "m1", "m2"][(n % 3) as usize];
        observation(5, space, "m-", n, 16, Distribution::Uniform)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (peak_depth, peak_state, peak_utilization, peak_lag) = sampler.await.unwrap();
    assert!(peak_lag > 0.0, "the slowed index was seen behind");
    assert!(
        peak_utilization > 0.0,
        "worker utilization was seen above 0"
    );
    assert!(peak_depth > 0.0, "the queue depth was seen above 0");
    assert!(
        peak_state >= 2.0,
        "the load state was seen at Critical or worse"
    );
    assert_eq!(acked, 2_000);
    assert!(retries > 0, "the lag bound refused batches");
    let stats = server.wait_indexed();
    // One refused for its dimension (sent once the index caught up, so not Overloaded).
    session
        .send(&observation(5, "m0", "bad-", 0, 8, Distribution::Uniform))
        .await
        .unwrap();
    let progress = session.wait_acked(1).await.unwrap();
    assert_eq!(progress.rejected.len(), 1);
    assert_eq!(
        progress.rejected[0].code,
        engram::transport::protocol::RejectCode::DimensionMismatch as u16
    );
    let recalled = session
        .recall(&RecallQuery::new(
            "m0",
            observation(5, "m0", "m-", 0, 16, Distribution::Uniform).embedding,
            3,
        ))
        .await
        .unwrap();
    assert_eq!(recalled.hits[0].id, "m-0");

    let after = Scrape::take(&server);
    let per_space = |s: &str| {
        after.get(&format!(
            "engram_streaming_observations_total{{space=\"{s}\"}}"
        ))
    };
    // The first two spaces to store keep their names; the third is counted as _other.
    let labelled: Vec<&str> = ["m0", "m1", "m2"]
        .into_iter()
        .filter(|s| {
            after
                .0
                .keys()
                .any(|k| k.contains(&format!("space=\"{s}\"")))
        })
        .collect();
    assert_eq!(labelled.len(), 2, "two spaces of their own: {labelled:?}");
    assert_eq!(
        per_space(labelled[0]) + per_space(labelled[1]) + per_space("_other"),
        2_000.0
    );
    assert!(per_space("_other") > 0.0);
    for space in [labelled[0], labelled[1], "_other"] {
        let indexed = after.get(&format!("engram_index_vectors{{space=\"{space}\"}}"));
        assert_eq!(indexed, per_space(space), "{space} is fully indexed");
        assert_eq!(
            after.get(&format!("engram_index_lag_records{{space=\"{space}\"}}")),
            0.0
        );
    }
    assert_eq!(
        after.get("engram_streaming_observations_rejected_total{reason=\"dimension_mismatch\"}"),
        1.0
    );
    assert!(after.get("engram_streaming_observations_rejected_total{reason=\"overloaded\"}") > 0.0);
    assert!(after.get("engram_streaming_backpressure_activations_total") >= 1.0);
    assert!(after.get("engram_streaming_observation_latency_seconds_count") >= 2_001.0);
    assert!(after.get("engram_streaming_observation_latency_seconds_sum") > 0.0);
    // The 5 ms goal is a bucket bound of its own, between 3.2 and 6.4 ms, counted as
    // cumulative buckets are.
    let under = |le: &str| {
        after.get(&format!(
            "engram_streaming_observation_latency_seconds_bucket{{le=\"{le}\"}}"
        ))
    };
    assert!(under("0.0032") <= under("0.005") && under("0.005") <= under("0.0064"));
    assert_eq!(
        after.get("engram_streaming_recall_latency_seconds_count"),
        1.0
    );
    assert!(after.get("engram_wal_fsync_duration_seconds_count") > 0.0);
    assert!(after.get("engram_wal_bytes_written_total") > 16.0 * 4.0 * 2_000.0);
    assert!(after.get("engram_wal_segments") >= 1.0);
    assert_eq!(after.get("engram_worker_restarts_total"), 1.0);
    assert_eq!(stats["index"]["panics"], 1);
    // Whole seconds in this collector: it may not have ticked over in a short test.
    assert!(after.get("process_cpu_seconds_total") >= before.get("process_cpu_seconds_total"));
    // Each of the 2,000 inserts was slowed by 1 ms, on at most 2 cores at once.
    let workers = stats["index"]["workers_indexed_lsn"]
        .as_array()
        .unwrap()
        .len();
    let busy: f64 = (0..workers)
        .map(|w| {
            after.get(&format!(
                "engram_streaming_worker_busy_seconds_total{{worker=\"{w}\"}}"
            ))
        })
        .sum();
    assert!(busy >= 1.0, "worker busy time: {busy} s");
    // Quiet again: the load state is back to Normal and nothing is queued.
    assert_eq!(after.get("engram_streaming_backpressure_state"), 0.0);
    assert_eq!(after.get("engram_streaming_queue_depth"), 0.0);
    session.goodbye().await.unwrap();
    assert!(server.terminate().success());
}
