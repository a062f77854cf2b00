//! When the index defers to ingest (`--index-defer-ms`).
//!
//! On a machine whose cores ingest needs, an index that cannot keep up with the stream
//! anyway only slows it by inserting during it: the lag grows either way, and every core
//! an insert takes is one an acknowledgement waits for. So while observations arrive
//! well faster than the index inserts them (`OUTPACED_BY`), the index waits; it catches
//! up once the stream pauses or its lag reaches half the bound. A slower stream the index
//! keeps up with, or nearly, and it inserts as records become durable: deferring there
//! would only keep it behind.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::transport::protocol::LoadState;
use crate::wal::Lsn;

/// The index waits only for a stream at least this many times faster than it inserts:
/// one a little faster leaves ingest cores enough, and an insert rate measured low once
/// (no inserts measure it again while the index waits) does not stop the index for a
/// stream it could keep up with.
const OUTPACED_BY: f64 = 2.0;
/// The span over which the arrival rate is measured. At 50K obs/s that is a thousand
/// records over some tens of group commits.
const ARRIVAL_WINDOW: Duration = Duration::from_millis(20);
/// The weight of the newest window in the arrival rate, a moving average: a few windows
/// set it, one stall of the stream does not.
const NEWEST_WINDOW_WEIGHT: f64 = 0.3;
/// The weight of the newest insert in the insert rate: inserts vary several-fold in cost
/// (a node's level, the graph's region), so some tens of them set the rate.
const NEWEST_INSERT_WEIGHT: f64 = 0.05;

/// How fast observations arrive and how fast the index inserts them, shared by the lag
/// thread (which sees the log grow) and the workers (which insert).
pub(super) struct Pace {
    /// The quiet spell that ends a stream: with no growth for this long, nothing defers.
    quiet: Duration,
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last growth; u64::MAX: none since the start, so a
    /// replay after a restart does not wait.
    last: AtomicU64,
    /// Records a second the log grew by, a moving average over full windows (f64 bits).
    arriving: AtomicU64,
    /// Records a second the index's threads insert when they have the cores: a moving
    /// average over its inserts of their CPU time (f64 bits); 0: not measured yet, and
    /// nothing defers. CPU time, not wall time: an insert that waited for a core
    /// (behind ingest, say) would measure the machine's load, not the index, and the
    /// estimate is not measured again while the index waits.
    inserting: AtomicU64,
}

/// The lag thread's running window of arrivals.
pub(super) struct ArrivalWindow {
    started: Duration,
    from: Lsn,
}

impl Pace {
    pub(super) fn new(quiet: Duration) -> Pace {
        Pace {
            quiet,
            epoch: Instant::now(),
            last: AtomicU64::new(u64::MAX),
            arriving: AtomicU64::new(0f64.to_bits()),
            inserting: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// A window starting now, at the log's durable LSN `durable`.
    pub(super) fn window(&self, durable: Lsn) -> ArrivalWindow {
        ArrivalWindow {
            started: self.epoch.elapsed(),
            from: durable,
        }
    }

    /// The log grew to `durable`: measures the arrival rate once the window is full. A
    /// growth after a quiet spell starts a new window and keeps the last rate until it
    /// is full: a stream that comes back after a pause likely comes back at its pace.
    pub(super) fn grew(&self, window: &mut ArrivalWindow, durable: Lsn) {
        let now = self.epoch.elapsed();
        let since_last = self.since_last();
        self.last.store(nanos(now), Ordering::Relaxed);
        if since_last >= self.quiet {
            *window = self.window(durable);
            return;
        }
        let span = now.saturating_sub(window.started);
        if span >= ARRIVAL_WINDOW {
            let rate = durable.0.saturating_sub(window.from.0) as f64 / span.as_secs_f64();
            average_in(&self.arriving, rate, NEWEST_WINDOW_WEIGHT);
            *window = self.window(durable);
        }
    }

    /// The index inserted `inserts` in `took` of CPU time: as many as its threads, each
    /// inserting one.
    pub(super) fn inserted(&self, inserts: usize, took: Duration) {
        if inserts == 0 || took.is_zero() {
            return;
        }
        average_in(
            &self.inserting,
            inserts as f64 / took.as_secs_f64(),
            NEWEST_INSERT_WEIGHT,
        );
    }

    /// How long the index should wait before it inserts more, at the lag state `lag`;
    /// None: insert now.
    pub(super) fn wait(&self, lag: LoadState) -> Option<Duration> {
        deferral(
            self.since_last(),
            self.quiet,
            f64::from_bits(self.arriving.load(Ordering::Relaxed)),
            f64::from_bits(self.inserting.load(Ordering::Relaxed)),
            lag,
        )
    }

    fn since_last(&self) -> Duration {
        match self.last.load(Ordering::Relaxed) {
            u64::MAX => Duration::MAX,
            last => self
                .epoch
                .elapsed()
                .saturating_sub(Duration::from_nanos(last)),
        }
    }
}

/// Moves the average `rate` (f64 bits; 0: none yet) toward `sample`. A load and a
/// store: two insert threads racing lose one sample, which an average can spare.
fn average_in(rate: &AtomicU64, sample: f64, weight: f64) {
    let old = f64::from_bits(rate.load(Ordering::Relaxed));
    let new = if old == 0.0 {
        sample
    } else {
        old + weight * (sample - old)
    };
    rate.store(new.to_bits(), Ordering::Relaxed);
}

/// The CPU time the calling thread has used.
pub(super) fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "the thread's CPU clock is always readable");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

fn nanos(since_epoch: Duration) -> u64 {
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX - 1)
}

/// The rule: wait (until the quiet spell would end) while records keep arriving, well
/// faster than the index inserts them, and the lag alone leaves the server Normal (under
/// half its bound), so that the deferral is bounded like the lag.
fn deferral(
    since_last: Duration,
    quiet: Duration,
    arriving: f64,
    inserting: f64,
    lag: LoadState,
) -> Option<Duration> {
    let streaming = since_last < quiet;
    let outpaced = inserting > 0.0 && arriving > OUTPACED_BY * inserting;
    (streaming && outpaced && lag == LoadState::Normal).then(|| quiet - since_last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_millis(50);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_index_waits_only_for_a_stream_it_cannot_keep_up_with() {
        let normal = LoadState::Normal;
        // A flood: wait until the quiet spell would end.
        assert_eq!(
            deferral(ms(10), QUIET, 50_000.0, 3_000.0, normal),
            Some(ms(40))
        );
        // The stream paused for the quiet spell.
        assert_eq!(deferral(ms(50), QUIET, 50_000.0, 3_000.0, normal), None);
        assert_eq!(
            deferral(Duration::MAX, QUIET, 50_000.0, 3_000.0, normal),
            None
        );
        // A trickle the index keeps up with.
        assert_eq!(deferral(ms(10), QUIET, 200.0, 3_000.0, normal), None);
        assert_eq!(deferral(ms(10), QUIET, 6_000.0, 3_000.0, normal), None);
        assert_eq!(
            deferral(ms(10), QUIET, 6_001.0, 3_000.0, normal),
            Some(ms(40))
        );
        // The insert rate not yet measured.
        assert_eq!(deferral(ms(10), QUIET, 50_000.0, 0.0, normal), None);
        // The lag at half its bound or more.
        for lag in [
            LoadState::Warning,
            LoadState::Critical,
            LoadState::Overloaded,
        ] {
            assert_eq!(
                deferral(ms(10), QUIET, 50_000.0, 3_000.0, lag),
                None,
                "{lag:?}"
            );
        }
    }

    #[test]
    fn the_arrival_rate_is_measured_over_full_windows_and_kept_over_a_pause() {
        let mut pace = Pace::new(QUIET);
        // Back-dated, so that a window can start before now.
        pace.epoch = Instant::now().checked_sub(Duration::from_secs(1)).unwrap();
        let mut window = pace.window(Lsn(0));
        let arriving = || f64::from_bits(pace.arriving.load(Ordering::Relaxed));
        // Nothing has arrived: a replay does not wait.
        pace.inserted(300, ms(100));
        assert_eq!(pace.wait(LoadState::Normal), None);
        // A window's growth is counted once it is full (the clock is real: the window is
        // moved back instead of waiting for it).
        window.started = pace.epoch.elapsed() - ms(40);
        pace.last
            .store(nanos(pace.epoch.elapsed()), Ordering::Relaxed);
        pace.grew(&mut window, Lsn(2_000));
        let rate = arriving();
        assert!((40_000.0..=50_000.0).contains(&rate), "{rate}");
        assert!(
            pace.wait(LoadState::Normal).is_some(),
            "2,000 in 40 ms outpace 3,000/s"
        );
        // A growth after a quiet spell (here: the first since the start) starts a new
        // window and keeps the rate.
        pace.last.store(u64::MAX, Ordering::Relaxed);
        pace.grew(&mut window, Lsn(2_001));
        assert_eq!(window.from, Lsn(2_001));
        assert_eq!(arriving(), rate);
    }

    #[test]
    fn the_thread_cpu_clock_counts_this_threads_work_not_its_sleep() {
        let start = thread_cpu_time();
        std::thread::sleep(ms(30));
        let slept = thread_cpu_time() - start;
        let mut x = 0u64;
        let busy = Instant::now();
        while busy.elapsed() < ms(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = thread_cpu_time() - start - slept;
        assert!(slept < ms(10), "a sleep counted as work: {slept:?}");
        assert!(worked >= ms(5), "30 ms of spinning counted as {worked:?}");
    }

    #[test]
    fn the_insert_rate_is_a_moving_average() {
        let pace = Pace::new(QUIET);
        let inserting = || f64::from_bits(pace.inserting.load(Ordering::Relaxed));
        pace.inserted(0, ms(10));
        assert_eq!(inserting(), 0.0, "nothing inserted measures nothing");
        pace.inserted(100, ms(100));
        assert_eq!(inserting(), 1_000.0, "the first sample sets the rate");
        pace.inserted(2_100, ms(100));
        assert!((inserting() - 2_000.0).abs() < 1e-6, "{}", inserting());
    }
}
