//! Every Prometheus metric the server exports, declared here and nowhere else, served as
//! text at GET /metrics (docs/operations/streaming-monitoring.md is the catalog).
//!
//! Counters and histograms are recorded where the event happens (an observation stored,
//! a sync timed). Gauges of state the server already keeps (queue depth, index lag, the
//! log's segments) are read from it when Prometheus scrapes, so they cost nothing between
//! scrapes and are never stale.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Instant;

use prometheus::{
    exponential_buckets, Counter, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Distinct `space` label values by default; past it spaces share `space="_other"`.
pub const SPACE_LABELS_MAX_DEFAULT: usize = 100;
/// The label value for spaces past the bound.
pub const OTHER_SPACES: &str = "_other";

pub struct Metrics {
    registry: Registry,
    space_labels: SpaceLabels,
    pub observations: IntCounterVec,
    pub rejected: IntCounterVec,
    pub queue_depth: IntGauge,
    pub worker_utilization: GaugeVec,
    pub worker_busy: CounterVec,
    pub backpressure_activations: IntCounter,
    pub backpressure_state: IntGauge,
    pub observation_latency: Histogram,
    pub recall_latency: Histogram,
    pub active_sessions: IntGauge,
    pub fsync_duration: Histogram,
    pub wal_bytes_written: IntCounter,
    pub wal_segments: IntGauge,
    pub wal_failed: IntGauge,
    pub index_lag: IntGaugeVec,
    pub index_vectors: IntGaugeVec,
    pub recovery_duration: Gauge,
    pub worker_restarts: IntCounter,
    pub index_deferred: Counter,
    pub auth_failures: IntCounterVec,
    pub limit_hits: IntCounterVec,
    /// Per worker: its busy nanoseconds at the start of the current utilization window,
    /// when that window started, and the busy nanoseconds already counted.
    utilization_base: Mutex<Vec<WorkerWindow>>,
}

/// Utilization is measured over windows of at least this long, so that several
/// scrapers (or a fast one) do not shrink it to noise.
const UTILIZATION_WINDOW_MIN: std::time::Duration = std::time::Duration::from_secs(1);

struct WorkerWindow {
    busy_at_start: u64,
    started: Instant,
    counted: u64,
}

/// Bounds the `space` label: the first `max` spaces seen keep their name.
struct SpaceLabels {
    max: AtomicUsize,
    known: RwLock<HashSet<String>>,
}

impl SpaceLabels {
    fn label<'a>(&self, space: &'a str) -> &'a str {
        if self.known.read().expect("label lock").contains(space) {
            return space;
        }
        let max = self.max.load(Ordering::Relaxed);
        let mut known = self.known.write().expect("label lock");
        if known.contains(space) || known.len() < max {
            known.insert(space.to_owned());
            space
        } else {
            OTHER_SPACES
        }
    }
}

/// Registers `metric` and hands it back; every name is registered once.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique name");
    metric
}

/// The goal of ack and recall p99 (docs/performance.md).
pub const LATENCY_GOAL_SECONDS: f64 = 0.005;

/// Latency buckets from 50 µs to about 13 s, doubling, and one at the goal, so that a
/// scrape tells exactly how many missed it.
fn latency_buckets() -> Vec<f64> {
    let mut buckets = exponential_buckets(50e-6, 2.0, 19).expect("valid buckets");
    buckets.push(LATENCY_GOAL_SECONDS);
    buckets.sort_by(f64::total_cmp);
    buckets
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets()))
                .expect("valid histogram");
            registered(&registry, h)
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registered(&registry, c)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registered(&registry, g)
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter");
            registered(&registry, c)
        };
        let gauge_vec = |name: &str, help: &str, label: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid gauge");
            registered(&registry, g)
        };
        let worker_utilization = GaugeVec::new(
            Opts::new(
                "engram_streaming_worker_utilization",
                "Share of the last window (1 s or more, between scrapes) each index worker spent indexing (0-1)",
            ),
            &["worker"],
        )
        .expect("valid gauge");
        let worker_utilization = registered(&registry, worker_utilization);
        let worker_busy = CounterVec::new(
            Opts::new(
                "engram_streaming_worker_busy_seconds_total",
                "Seconds each index worker spent reading and indexing batches",
            ),
            &["worker"],
        )
        .expect("valid counter");
        let worker_busy = registered(&registry, worker_busy);
        let recovery_duration = Gauge::new(
            "engram_recovery_duration_seconds",
            "How long the last start took to recover the log and rebuild the indexes",
        )
        .expect("valid gauge");
        let recovery_duration = registered(&registry, recovery_duration);
        let index_deferred = Counter::new(
            "engram_index_deferred_seconds_total",
            "Seconds the index threads waited while a stream outpaced them, summed over the threads (--index-defer-ms)",
        )
        .expect("valid counter");
        let index_deferred = registered(&registry, index_deferred);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique name");
        Metrics {
            space_labels: SpaceLabels {
                max: AtomicUsize::new(SPACE_LABELS_MAX_DEFAULT),
                known: RwLock::default(),
            },
            observations: counter_vec(
                "engram_streaming_observations_total",
                "Observations stored durably (each space and id once)",
                "space",
            ),
            rejected: counter_vec(
                "engram_streaming_observations_rejected_total",
                "Observations refused, by the Reject code's name",
                "reason",
            ),
            queue_depth: gauge(
                "engram_streaming_queue_depth",
                "Observation bytes handed to ingest and not yet acknowledged, all sessions",
            ),
            worker_utilization,
            worker_busy,
            backpressure_activations: counter(
                "engram_streaming_backpressure_activations_total",
                "Times the load state rose to Critical (senders paused) or Overloaded",
            ),
            backpressure_state: gauge(
                "engram_streaming_backpressure_state",
                "The load state: 0 Normal, 1 Warning, 2 Critical, 3 Overloaded",
            ),
            observation_latency: histogram(
                "engram_streaming_observation_latency_seconds",
                "From a batch of observations reaching ingest to its durable acknowledgement",
            ),
            recall_latency: histogram(
                "engram_streaming_recall_latency_seconds",
                "From a recall request to its answer",
            ),
            active_sessions: gauge("engram_streaming_active_sessions", "Sessions connected now"),
            fsync_duration: histogram(
                "engram_wal_fsync_duration_seconds",
                "How long each fdatasync of a log commit took",
            ),
            wal_bytes_written: counter(
                "engram_wal_bytes_written_total",
                "Bytes written to the log and synced",
            ),
            wal_segments: gauge("engram_wal_segments", "Segment files the log has"),
            wal_failed: gauge(
                "engram_wal_failed",
                "1 once a write or sync of the log failed (nothing more is acknowledged)",
            ),
            index_lag: gauge_vec(
                "engram_index_lag_records",
                "Observations stored but not yet in the space's index",
                "space",
            ),
            index_vectors: gauge_vec(
                "engram_index_vectors",
                "Vectors in the space's index",
                "space",
            ),
            recovery_duration,
            worker_restarts: counter(
                "engram_worker_restarts_total",
                "Index workers restarted after a panic",
            ),
            index_deferred,
            auth_failures: counter_vec(
                "engram_auth_failures_total",
                "Sessions and requests refused by the auth file: missing_token, invalid_token, \
                 forbidden (a space the token may not use)",
                "reason",
            ),
            limit_hits: counter_vec(
                "engram_limit_hits_total",
                "Connections, sessions and requests refused by a server limit, by the limit's name",
                "limit",
            ),
            utilization_base: Mutex::default(),
            registry,
        }
    }

    /// The `space` label value for `space`: its name, or `_other` past the bound.
    pub fn space_label<'a>(&self, space: &'a str) -> &'a str {
        self.space_labels.label(space)
    }

    /// Sets how many spaces keep their own label; set once, at start.
    pub fn set_space_labels_max(&self, max: usize) {
        self.space_labels.max.store(max, Ordering::Relaxed);
    }

    /// Takes each worker's busy nanoseconds since start: adds the new ones to its busy
    /// counter, and sets its utilization when a window of at least a second has passed.
    pub fn sample_worker_busy(&self, busy_ns: &[u64]) {
        let now = Instant::now();
        let mut windows = self.utilization_base.lock().expect("utilization lock");
        while windows.len() < busy_ns.len() {
            windows.push(WorkerWindow {
                busy_at_start: 0,
                started: now,
                counted: 0,
            });
        }
        for (worker, (&busy, window)) in busy_ns.iter().zip(windows.iter_mut()).enumerate() {
            let label = worker.to_string();
            let new = busy.saturating_sub(window.counted);
            self.worker_busy
                .with_label_values(&[&label])
                .inc_by(new as f64 / 1e9);
            window.counted = busy;
            let wall = now.duration_since(window.started);
            if wall >= UTILIZATION_WINDOW_MIN {
                let share =
                    busy.saturating_sub(window.busy_at_start) as f64 / wall.as_nanos() as f64;
                self.worker_utilization
                    .with_label_values(&[&label])
                    .set(share.clamp(0.0, 1.0));
                window.busy_at_start = busy;
                window.started = now;
            }
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

static RECORDING: AtomicBool = AtomicBool::new(true);

/// Turns the per-observation recording (counts, latencies, fsync times) on or off; the
/// overhead bench compares both in one run. State read at scrape time is always there.
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// The metrics to record an event into, unless recording is off.
#[inline]
pub fn recording() -> Option<&'static Metrics> {
    RECORDING.load(Ordering::Relaxed).then(metrics)
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}
