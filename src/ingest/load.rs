//! Server-wide backpressure: how many observation bytes every session together has handed
//! to ingest and not yet seen acknowledged (the commit queue, in bytes).
//!
//! Per-session credits bound what one session holds; this bounds the sum, whatever the
//! number of sessions. The level maps to a `LoadState` that sessions tell their clients:
//!
//! | queued bytes            | state      | what sessions do                               |
//! |-------------------------|------------|------------------------------------------------|
//! | < 50% of the bound      | Normal     | read and ingest                                |
//! | 50% to 75%              | Warning    | the same; clients are told                     |
//! | 75% to 100%             | Critical   | stop reading (QUIC flow control holds senders) |
//! | a batch would pass 100% | Overloaded | refuse that batch: Reject `Overloaded`, retry   |
//!
//! Overloaded happens when sessions that had already read a batch find the bound passed:
//! their frames are dropped at once, so the server never holds more than the bound.
//!
//! The index lag (records durable but not yet indexed, plus the observations admitted
//! and not yet acknowledged, which are about to be) maps to the same states against its
//! own bound, and the server's state is the worse of the two: when the index falls
//! behind, ingest slows to its pace, and the unindexed tail a recall scans stays bounded.
//! Counting the admitted ones means a burst of batches read at once cannot all pass
//! below the bound before the lag is measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::validate::Rejection;
use crate::transport::protocol::{LoadState, RejectCode};

pub const QUEUE_BYTES_MAX_DEFAULT: u64 = 256 << 20;
/// Records durable but not yet indexed, at most: a read-your-writes recall scans them.
pub const INDEX_LAG_MAX_DEFAULT: u64 = 50_000;
/// Bounds of the retry hint given with Overloaded.
const RETRY_AFTER_MIN: Duration = Duration::from_millis(10);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);
/// The hint before any batch has gone through the queue.
const RETRY_AFTER_UNMEASURED: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct ServerLoad {
    queued: AtomicU64,
    queue_bytes_max: u64,
    index_lag: AtomicU64,
    /// Lag measurements started, and the newest one stored: an older measurement that
    /// finishes late is dropped rather than stored over a newer one.
    index_lag_measurements: AtomicU64,
    index_lag_stored: Mutex<u64>,
    index_lag_max: u64,
    /// Observations admitted and not yet acknowledged.
    queued_records: AtomicU64,
    state: watch::Sender<LoadState>,
    /// How long batches recently stayed queued (admitted to acknowledged), smoothed, in
    /// microseconds; 0 until the first one. The retry hint: one turn of the queue.
    queue_time_us: AtomicU64,
}

/// Queued bytes, released when dropped (once the batch is acknowledged or refused).
#[derive(Debug)]
pub struct LoadPermit {
    load: Arc<ServerLoad>,
    bytes: u64,
    records: u64,
    admitted_at: Instant,
}

/// A lag measurement in progress (`ServerLoad::start_index_lag_measurement`).
#[must_use = "a measurement counts once stored"]
pub struct IndexLagMeasurement<'a> {
    load: &'a ServerLoad,
    number: u64,
}

impl IndexLagMeasurement<'_> {
    /// Stores `lag` unless a measurement started later was stored first: the last one
    /// started read positions at least as new as every progress made before it.
    pub fn store(self, lag: u64) {
        {
            let mut stored = self.load.index_lag_stored.lock().expect("lag lock");
            if *stored > self.number {
                return;
            }
            *stored = self.number;
            self.load.index_lag.store(lag, Ordering::Release);
        }
        self.load.publish();
    }
}

/// Which bound an Overloaded refusal hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverloadCause {
    /// Admitting the batch would pass the commit queue's bound.
    CommitQueue { queued: u64, queue_bytes_max: u64 },
    /// The index is as far behind the log as it may be.
    IndexLag { lag: u64, index_lag_max: u64 },
}

/// A batch the server refused, and when to retry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overloaded {
    pub retry_after: Duration,
    pub cause: OverloadCause,
}

impl Overloaded {
    /// The Reject every observation of a refused batch gets.
    pub fn rejection(&self) -> Rejection {
        let retry = self.retry_after.as_millis();
        let (expected, got) = match self.cause {
            OverloadCause::CommitQueue {
                queued,
                queue_bytes_max,
            } => (
                format!("room in the server's commit queue ({queue_bytes_max} bytes at most)"),
                format!("{queued} bytes queued; retry after {retry} ms"),
            ),
            OverloadCause::IndexLag { lag, index_lag_max } => (
                format!("an index at most {index_lag_max} records behind the log"),
                format!("{lag} records not yet indexed; retry after {retry} ms"),
            ),
        };
        Rejection {
            code: RejectCode::Overloaded,
            field: "observation",
            expected,
            got,
        }
    }
}

impl ServerLoad {
    pub fn new(queue_bytes_max: u64, index_lag_max: u64) -> ServerLoad {
        assert!(queue_bytes_max > 0, "the commit queue bound is positive");
        assert!(index_lag_max > 0, "the index lag bound is positive");
        ServerLoad {
            queued: AtomicU64::new(0),
            queue_bytes_max,
            index_lag: AtomicU64::new(0),
            index_lag_measurements: AtomicU64::new(0),
            index_lag_stored: Mutex::new(0),
            index_lag_max,
            queued_records: AtomicU64::new(0),
            state: watch::channel(LoadState::Normal).0,
            queue_time_us: AtomicU64::new(0),
        }
    }

    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Acquire)
    }

    pub fn state(&self) -> LoadState {
        *self.state.borrow()
    }

    /// Follows the state: sessions tell their clients when it changes.
    pub fn subscribe(&self) -> watch::Receiver<LoadState> {
        self.state.subscribe()
    }

    /// Records durable and not yet indexed, as last measured, plus those admitted and
    /// not yet acknowledged.
    pub fn index_lag(&self) -> u64 {
        self.index_lag.load(Ordering::Acquire) + self.queued_records.load(Ordering::Acquire)
    }

    /// The state the index lag alone puts the server in.
    pub fn index_lag_state(&self) -> LoadState {
        level(self.index_lag(), self.index_lag_max)
    }

    /// The index workers' lag behind the durable log, in records, as last measured.
    pub fn set_index_lag(&self, lag: u64) {
        self.start_index_lag_measurement().store(lag);
    }

    /// Starts a measurement of the lag: read the log's and the workers' positions after
    /// this, then `store`. Two index workers racing once stored an early, high
    /// measurement after a later one of 0; with the sessions paused by it and the index
    /// idle, nothing measured again and ingest stopped for good.
    pub fn start_index_lag_measurement(&self) -> IndexLagMeasurement<'_> {
        IndexLagMeasurement {
            load: self,
            number: self.index_lag_measurements.fetch_add(1, Ordering::AcqRel) + 1,
        }
    }

    fn state_at(&self, queued: u64) -> LoadState {
        level(queued, self.queue_bytes_max).max(level(self.index_lag(), self.index_lag_max))
    }
}

/// The state for `used` of a bound `max`.
fn level(used: u64, max: u64) -> LoadState {
    if used >= max {
        LoadState::Overloaded
    } else if used >= max / 4 * 3 {
        LoadState::Critical
    } else if used >= max / 2 {
        LoadState::Warning
    } else {
        LoadState::Normal
    }
}

impl ServerLoad {
    /// Sets the state from the counters as they are now. Every change to a counter is
    /// followed by a publish, and the state is computed under the state's lock: the last
    /// to publish read the newest counters, so no stale state outlives a change.
    fn publish(&self) {
        self.set_state(|| self.state_at(self.queued()));
    }

    /// Moves to the state `now` computes under the lock, counting each rise into
    /// backpressure (Critical or Overloaded).
    fn set_state(&self, now: impl FnOnce() -> LoadState) {
        self.state.send_if_modified(|s| {
            let now = now();
            if *s < LoadState::Critical && now >= LoadState::Critical {
                crate::metrics::metrics().backpressure_activations.inc();
            }
            let changed = *s != now;
            *s = now;
            changed
        });
    }

    /// Queues a batch of `records` observations, `bytes` in all, if it fits under both
    /// bounds, else says when to retry.
    pub fn admit(self: &Arc<Self>, bytes: u64, records: u64) -> Result<LoadPermit, Overloaded> {
        let lag = self.index_lag();
        // As for bytes, a batch larger than the whole bound goes in when nothing lags.
        if lag > 0 && lag + records > self.index_lag_max {
            return Err(self.refuse(OverloadCause::IndexLag {
                lag,
                index_lag_max: self.index_lag_max,
            }));
        }
        let mut queued = self.queued();
        loop {
            // One batch larger than the whole bound still goes in when nothing is queued,
            // or it could never be stored.
            if queued > 0 && queued.saturating_add(bytes) > self.queue_bytes_max {
                return Err(self.refuse(OverloadCause::CommitQueue {
                    queued,
                    queue_bytes_max: self.queue_bytes_max,
                }));
            }
            match self.queued.compare_exchange_weak(
                queued,
                queued + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => queued = now,
            }
        }
        self.queued_records.fetch_add(records, Ordering::AcqRel);
        self.publish();
        Ok(LoadPermit {
            load: self.clone(),
            bytes,
            records,
            admitted_at: Instant::now(),
        })
    }

    fn refuse(&self, cause: OverloadCause) -> Overloaded {
        // Overloaded stays only while something queued or lagging will publish again as
        // it drains; if all of it drained since the check, the state is what is left.
        self.set_state(|| {
            if self.queued() > 0 || self.index_lag() > 0 {
                LoadState::Overloaded
            } else {
                self.state_at(0)
            }
        });
        Overloaded {
            retry_after: self.retry_after(self.queued()),
            cause,
        }
    }

    /// Waits while the server is Critical or worse: a session stops reading meanwhile.
    pub async fn wait_below_critical(&self, rx: &mut watch::Receiver<LoadState>) {
        let _ = rx.wait_for(|s| *s < LoadState::Critical).await;
    }

    /// The retry hint for now: sessions send it with every Overloaded state.
    pub fn retry_hint(&self) -> Duration {
        self.retry_after(self.queued())
    }

    /// About one turn of the queue: how long batches recently stayed in it, scaled by how
    /// far over the pause mark it is now.
    fn retry_after(&self, queued: u64) -> Duration {
        let turn_us = self.queue_time_us.load(Ordering::Relaxed);
        if turn_us == 0 {
            return RETRY_AFTER_UNMEASURED;
        }
        let pause_mark = (self.queue_bytes_max / 4 * 3).max(1);
        let scale = (queued as f64 / pause_mark as f64).max(1.0);
        Duration::from_micros(turn_us)
            .mul_f64(scale)
            .clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX)
    }

    fn record_queue_time(&self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let old = self.queue_time_us.load(Ordering::Relaxed);
        // Racing updates may lose a sample; a hint does not need every one.
        let smoothed = if old == 0 {
            sample
        } else {
            (old * 7 + sample) / 8
        };
        self.queue_time_us.store(smoothed.max(1), Ordering::Relaxed);
    }
}

impl Drop for LoadPermit {
    fn drop(&mut self) {
        let before = self.load.queued.fetch_sub(self.bytes, Ordering::AcqRel);
        assert!(before >= self.bytes, "released more than was queued");
        let before = self
            .load
            .queued_records
            .fetch_sub(self.records, Ordering::AcqRel);
        assert!(
            before >= self.records,
            "released more records than were queued"
        );
        self.load.record_queue_time(self.admitted_at.elapsed());
        self.load.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_queue_and_the_bound_refuses_with_a_retry_hint() {
        let load = Arc::new(ServerLoad::new(1000, 100));
        let rx = load.subscribe();
        let a = load.admit(400, 1).unwrap();
        assert_eq!(load.state(), LoadState::Normal);
        let b = load.admit(200, 1).unwrap();
        assert_eq!(load.state(), LoadState::Warning);
        assert!(rx.has_changed().unwrap());
        let c = load.admit(200, 1).unwrap();
        assert_eq!(load.state(), LoadState::Critical);
        let refused = load.admit(300, 1).unwrap_err();
        assert_eq!(load.state(), LoadState::Overloaded);
        assert_eq!(
            refused.cause,
            OverloadCause::CommitQueue {
                queued: 800,
                queue_bytes_max: 1000
            }
        );
        assert!(refused.retry_after >= RETRY_AFTER_MIN && refused.retry_after <= RETRY_AFTER_MAX);
        assert_eq!(load.queued(), 800, "a refused batch queues nothing");
        drop((a, b));
        assert_eq!(load.state(), LoadState::Normal);
        drop(c);
        assert_eq!(load.queued(), 0);
        let whole = load
            .admit(5000, 1)
            .expect("an oversize batch goes in alone");
        assert_eq!(load.state(), LoadState::Overloaded);
        drop(whole);
        assert_eq!(load.state(), LoadState::Normal);
    }

    #[test]
    fn index_lag_raises_the_state_and_past_its_bound_refuses_every_batch() {
        let load = Arc::new(ServerLoad::new(1000, 100));
        load.set_index_lag(60);
        assert_eq!(load.state(), LoadState::Warning);
        load.set_index_lag(80);
        assert_eq!(load.state(), LoadState::Critical);
        let small = load
            .admit(1, 15)
            .expect("below the lag bound a batch still goes in");
        assert_eq!(load.index_lag(), 95, "admitted records count as lag");
        let refused = load.admit(1, 10).unwrap_err();
        assert_eq!(
            refused.cause,
            OverloadCause::IndexLag {
                lag: 95,
                index_lag_max: 100
            },
            "a burst of batches cannot pass the bound before the lag is measured"
        );
        assert!(refused
            .rejection()
            .to_string()
            .contains("95 records not yet indexed"));
        assert_eq!(load.state(), LoadState::Overloaded);
        drop(small);
        load.set_index_lag(10);
        assert_eq!(load.state(), LoadState::Normal, "the index caught up");
        assert!(load.admit(1, 500).is_err(), "too big while anything lags");
        load.set_index_lag(0);
        assert!(
            load.admit(1, 500).is_ok(),
            "a batch larger than the bound goes in alone, or it could never be stored"
        );
    }

    #[test]
    fn a_lag_measured_early_and_stored_late_does_not_replace_a_newer_one() {
        let load = Arc::new(ServerLoad::new(1000, 100));
        let early = load.start_index_lag_measurement();
        let late = load.start_index_lag_measurement();
        late.store(0);
        early.store(90);
        assert_eq!(load.index_lag(), 0, "the newer measurement stands");
        assert_eq!(load.state(), LoadState::Normal);
        load.set_index_lag(90);
        assert_eq!(load.state(), LoadState::Critical, "a newer one replaces it");
    }

    #[test]
    fn a_refusal_leaves_overloaded_only_while_something_will_drain() {
        let load = Arc::new(ServerLoad::new(1000, 100));
        let cause = OverloadCause::CommitQueue {
            queued: 900,
            queue_bytes_max: 1000,
        };
        // Everything drained between the check and the refusal: nothing would publish
        // again, so Overloaded would stay and pause every session for good.
        load.refuse(cause);
        assert_eq!(load.state(), LoadState::Normal);
        let queued = load.admit(10, 1).unwrap();
        load.refuse(cause);
        assert_eq!(load.state(), LoadState::Overloaded);
        drop(queued);
        assert_eq!(load.state(), LoadState::Normal, "the drain publishes");
    }

    #[tokio::test]
    async fn a_paused_session_resumes_when_the_queue_drains() {
        let load = Arc::new(ServerLoad::new(100, 100));
        let held = load.admit(80, 1).unwrap();
        let mut rx = load.subscribe();
        let waiter = {
            let load = load.clone();
            tokio::spawn(async move { load.wait_below_critical(&mut rx).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "paused while Critical");
        drop(held);
        waiter.await.unwrap();
    }
}
