//! The durable-to-index dispatch: a pool of workers follows the log's durable LSN and
//! inserts each new observation into its space's index.
//!
//! Spaces are partitioned over the workers by a hash of their name
//! (`SpaceIndexes::owner`), so two workers never contend for one space. Every worker reads
//! every record, in place from the log's mapping, and keeps its own. A batch is whatever
//! is durable and unread, up to `BATCH_RECORDS_MAX`: small while the index keeps up, large
//! when it lags. A batch with many inserts spreads them over every core (the graph takes
//! concurrent inserts), so one hot space still uses the whole machine. A worker's indexed
//! LSN passes a batch only once all of it is inserted.
//!
//! A panic while indexing is caught, logged and counted; the worker goes back to its
//! indexed LSN and reads on from there. Keys already in the graph are recognised
//! (`Admission::Indexed`), so nothing is indexed twice, and nothing is skipped.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;

use rayon::prelude::*;
use tokio::sync::watch;

use super::checkpointer::{CheckpointPolicy, CheckpointSchedule};
use super::load::ServerLoad;
use super::pace::Pace;
use super::priority::{set_thread_priority, IndexPriority};
use crate::index::{Admission, IndexError, IndexParams, SpaceIndex, SpaceIndexes};
use crate::observation::Observation;
use crate::space::{Metric, SpaceDefinition};
use crate::transport::protocol::LoadState;
use crate::wal::{Lsn, Record, RecordCursor, RecordKind, WalError, WalReader};

/// Records read (of every space) per batch at most.
const BATCH_RECORDS_MAX: usize = 4096;
/// The quiet spell `--index-defer-ms` takes by default: longer than the gaps between
/// group commits of a stream, short against a human's pause before a recall.
pub const INDEX_DEFER_DEFAULT: std::time::Duration = std::time::Duration::from_millis(50);
/// The longest quiet spell `--index-defer-ms` takes: a worker told to stop while it
/// defers notices within one spell.
pub const INDEX_DEFER_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// Inserts in a batch from which they are spread over every core.
const PARALLEL_INSERTS_MIN: usize = 32;

/// How the index is built, by how many workers, and how often it is checkpointed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    pub workers: usize,
    /// Threads one batch's inserts are spread over (the insert pool), shared by the
    /// workers. With one worker and one insert thread the index uses at most one core.
    pub insert_threads: usize,
    /// The priority of every index thread: the workers and the pool that spreads a
    /// batch's inserts over the cores.
    pub priority: IndexPriority,
    pub params: IndexParams,
    /// Inserts by one worker between checkpoints of its spaces; 0: not by count.
    pub checkpoint_records: u64,
    /// Time between a worker's checkpoints if anything was inserted; zero: not by time.
    pub checkpoint_interval: std::time::Duration,
    /// `--index-defer-ms`: while observations keep arriving (one committed within this
    /// quiet spell) faster than the index inserts them, and its lag is under half its
    /// bound, the index waits (`pace` says why). None: it indexes as records become
    /// durable.
    pub defer: Option<std::time::Duration>,
}

impl Default for IndexConfig {
    fn default() -> IndexConfig {
        IndexConfig {
            workers: default_workers(),
            insert_threads: default_workers(),
            priority: IndexPriority::default(),
            params: IndexParams::default(),
            checkpoint_records: super::checkpointer::CHECKPOINT_RECORDS_DEFAULT,
            checkpoint_interval: super::checkpointer::CHECKPOINT_INTERVAL_DEFAULT,
            defer: Some(INDEX_DEFER_DEFAULT),
        }
    }
}

/// One per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The threads a batch's inserts are spread over, named `{name}-K`, at `priority`.
fn insert_pool(
    name: &'static str,
    priority: IndexPriority,
    threads: usize,
) -> std::io::Result<rayon::ThreadPool> {
    assert!(threads >= 1, "an insert pool needs a thread");
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .start_handler(move |_| set_thread_priority(priority))
        .build()
        .map_err(std::io::Error::other)
}

/// The insert pools, shared by the workers: one at the workers' priority and, for
/// `IndexPriority::Yielding`, one under SCHED_IDLE for while the index keeps up.
struct InsertPools {
    sharing: rayon::ThreadPool,
    yielding: Option<rayon::ThreadPool>,
}

impl InsertPools {
    fn new(priority: IndexPriority, threads: usize) -> std::io::Result<InsertPools> {
        let yielding = match priority {
            IndexPriority::Yielding { .. } => {
                Some(insert_pool("engram-yield", IndexPriority::Idle, threads)?)
            }
            IndexPriority::Nice { .. } | IndexPriority::Idle => None,
        };
        Ok(InsertPools {
            sharing: insert_pool("engram-insert", priority.sharing(), threads)?,
            yielding,
        })
    }

    /// The pool for the next batch: the yielding one while the index lag is under half
    /// its bound (the lag alone would leave the server Normal).
    fn for_lag(&self, load: &ServerLoad) -> &rayon::ThreadPool {
        match &self.yielding {
            Some(yielding) if load.index_lag_state() == LoadState::Normal => yielding,
            _ => &self.sharing,
        }
    }
}

/// Counters of the workers' work since start.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Observations inserted into a graph.
    pub inserted: AtomicU64,
    /// Panics caught; each restarted its worker from its indexed LSN.
    pub panics: AtomicU64,
    /// Records left out because their (space, id) was stored earlier.
    pub duplicates: AtomicU64,
    /// Nodes no search reached, linked again: those of a parallel batch (`insert_spread`
    /// says why) and those a space's periodic audit of every link found
    /// (`SpaceIndex::relink_unreachable`).
    pub relinked: AtomicU64,
    /// Audits of a space's every link (`SpaceIndex::relink_unreachable`).
    pub audits: AtomicU64,
    /// Waits for ingest (`IndexConfig::defer`), each until the next look at the pace.
    pub deferrals: AtomicU64,
}

/// One observation of a batch to insert: its space's index, its key, its embedding.
type Insert<'a> = (Arc<SpaceIndex>, u64, std::borrow::Cow<'a, [f32]>);

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("the record at LSN {lsn} is not a valid {kind} record: {reason}")]
    BadRecord {
        lsn: Lsn,
        kind: &'static str,
        reason: String,
    },
}

/// The running workers; dropping them stops them.
pub struct IndexWorkers {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
    counters: Arc<WorkerCounters>,
}

impl IndexWorkers {
    /// Starts one thread per worker of `indexes`, reading the log from `from`, and one
    /// that tells `load` the index lag whenever the log grows.
    pub fn start(
        reader: &WalReader,
        indexes: Arc<SpaceIndexes>,
        load: Arc<ServerLoad>,
        checkpoints: Arc<CheckpointPolicy>,
        from: Lsn,
        config: &IndexConfig,
    ) -> std::io::Result<IndexWorkers> {
        let (stop, _) = watch::channel(false);
        let counters = Arc::new(WorkerCounters::default());
        let priority = config.priority;
        let pools = Arc::new(InsertPools::new(priority, config.insert_threads)?);
        let pace = config.defer.map(|quiet| Arc::new(Pace::new(quiet)));
        let mut handles = Vec::new();
        for worker in 0..indexes.workers() {
            let cursor = reader.cursor(from);
            indexes.worker_progress(worker).advance(&cursor);
            let state = Worker {
                worker,
                lag: LagGauge {
                    reader: reader.clone(),
                    indexes: indexes.clone(),
                    load: load.clone(),
                },
                cursor,
                schedule: CheckpointSchedule::new(checkpoints.clone()),
                catch_up: Some((reader.durable_lsn(), std::time::Instant::now(), 0)),
                durable: reader.subscribe_durable(),
                stop: stop.subscribe(),
                indexes: indexes.clone(),
                counters: counters.clone(),
                pools: pools.clone(),
                pace: pace.clone(),
            };
            handles.push(
                std::thread::Builder::new()
                    .name(format!("engram-index-{worker}"))
                    .spawn(move || {
                        set_thread_priority(priority);
                        state.run()
                    })?,
            );
        }
        let gauge = LagGauge {
            reader: reader.clone(),
            indexes,
            load,
        };
        let (mut durable, mut stopped) = (reader.subscribe_durable(), stop.subscribe());
        let mut arrivals = pace.as_ref().map(|p| p.window(reader.durable_lsn()));
        handles.push(
            std::thread::Builder::new()
                .name("engram-index-lag".into())
                .spawn(move || loop {
                    gauge.publish();
                    let go_on = block_on(async {
                        tokio::select! {
                            changed = durable.changed() => changed.is_ok(),
                            _ = stopped.wait_for(|&s| s) => false,
                        }
                    });
                    if !go_on {
                        return;
                    }
                    if let (Some(pace), Some(window)) = (&pace, &mut arrivals) {
                        pace.grew(window, gauge.reader.durable_lsn());
                    }
                })?,
        );
        Ok(IndexWorkers {
            stop,
            handles,
            counters,
        })
    }

    pub fn counters(&self) -> &WorkerCounters {
        &self.counters
    }

    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        for handle in self.handles.drain(..) {
            if handle.join().is_err() {
                tracing::error!("an index worker thread died");
            }
        }
    }
}

impl Drop for IndexWorkers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Measures how far the index is behind the durable log and tells the server's load.
struct LagGauge {
    reader: WalReader,
    indexes: Arc<SpaceIndexes>,
    load: Arc<ServerLoad>,
}

impl LagGauge {
    fn publish(&self) {
        let measurement = self.load.start_index_lag_measurement();
        let durable = self.reader.durable_lsn();
        let indexed = (0..self.indexes.workers())
            .map(|w| self.indexes.worker_progress(w).indexed_lsn())
            .min()
            .expect("at least one worker");
        measurement.store(durable.0.saturating_sub(indexed.0));
    }
}

struct Worker {
    worker: usize,
    lag: LagGauge,
    cursor: RecordCursor,
    schedule: CheckpointSchedule,
    /// Until the worker first reaches the log's end at start: that LSN, when it started
    /// and how many it inserted meanwhile (the replay after a restart).
    catch_up: Option<(Lsn, std::time::Instant, u64)>,
    durable: watch::Receiver<Lsn>,
    stop: watch::Receiver<bool>,
    indexes: Arc<SpaceIndexes>,
    counters: Arc<WorkerCounters>,
    pools: Arc<InsertPools>,
    /// With `IndexConfig::defer`: when to wait for ingest.
    pace: Option<Arc<Pace>>,
}

impl Worker {
    fn run(mut self) {
        loop {
            if *self.stop.borrow() {
                return;
            }
            let batch = match self.read_batch() {
                Ok(batch) => batch,
                Err(e) => {
                    // Recovery checked the log; damage found now is new. Indexing stops
                    // here, the lag grows and ingest is held back (Overloaded) instead of
                    // silently skipping records.
                    tracing::error!(worker = self.worker, error = %e,
                        "an index worker cannot read the log; indexing stopped: run `engram-wal verify`");
                    return;
                }
            };
            let Some(batch) = batch else {
                // An empty log at start is caught up at once.
                self.caught_up(0);
                if !self.wait_for_durable() {
                    return;
                }
                continue;
            };
            if !batch.is_empty() && !self.defer_to_ingest() {
                return;
            }
            let started = std::time::Instant::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| self.index(&batch)));
            let inserted = match outcome {
                Ok(Ok(inserted)) => inserted,
                Ok(Err(e)) => {
                    self.restart(&e.to_string());
                    continue;
                }
                Err(panic) => {
                    self.restart(&panic_message(panic.as_ref()));
                    continue;
                }
            };
            // A due checkpoint is written before the indexed LSN moves: whoever sees the
            // LSN pass also finds the checkpoint on disk. A panic there is caught too: a
            // worker thread that died would hold the indexed LSN, and with it ingest
            // (the index lag), for good.
            let covered = self.cursor.next_lsn().prev();
            let (worker, indexes, schedule) = (self.worker, &self.indexes, &mut self.schedule);
            let checkpointed = catch_unwind(AssertUnwindSafe(|| {
                schedule.after_batch(worker, indexes, inserted, covered)
            }));
            if let Err(panic) = checkpointed {
                self.restart(&panic_message(panic.as_ref()));
                continue;
            }
            self.progress().advance(&self.cursor);
            self.progress().add_busy(started.elapsed());
            self.lag.publish();
            self.caught_up(inserted);
        }
    }

    fn progress(&self) -> &crate::index::space_index::IndexProgress {
        self.indexes.worker_progress(self.worker)
    }

    /// Logs the replay after a start once the worker reaches the log's end of then.
    fn caught_up(&mut self, inserted: u64) {
        let Some((target, started, replayed)) = self.catch_up.as_mut() else {
            return;
        };
        *replayed += inserted;
        if self.cursor.next_lsn() > *target {
            tracing::info!(worker = self.worker, up_to = %target, inserted = *replayed,
                ms = started.elapsed().as_secs_f64() * 1e3,
                "index worker caught up with the log");
            self.catch_up = None;
        }
    }

    /// Goes back to the indexed LSN after a failed batch.
    fn restart(&mut self, cause: &str) {
        self.counters.panics.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics().worker_restarts.inc();
        self.cursor = self
            .progress()
            .resume_cursor()
            .expect("a started worker has a resume cursor");
        tracing::error!(worker = self.worker, cause, from = %self.cursor.next_lsn(),
            "an index worker failed a batch; it restarts from its indexed LSN");
    }

    /// The durable records not yet read that belong to this worker's spaces. `None` if
    /// nothing new is durable. Records of other workers' spaces are read past.
    fn read_batch(&mut self) -> Result<Option<Vec<Record>>, WalError> {
        let start = self.cursor.next_lsn();
        let mut mine = Vec::new();
        for _ in 0..BATCH_RECORDS_MAX {
            let Some(record) = self.cursor.read_next()? else {
                break;
            };
            if self.indexes.owner(space_of(&record).unwrap_or_default()) == self.worker {
                mine.push(record);
            }
        }
        Ok((self.cursor.next_lsn() > start).then_some(mine))
    }

    /// With `IndexConfig::defer`, waits while observations arrive well faster than the
    /// index inserts them and its lag is under half its bound (`pace` says why). False
    /// when told to stop.
    fn defer_to_ingest(&self) -> bool {
        let Some(pace) = &self.pace else {
            return true;
        };
        while let Some(wait) = pace.wait(self.lag.load.index_lag_state()) {
            // Told to stop, the threads inserting a batch go on without waiting.
            if *self.stop.borrow() {
                return false;
            }
            // A sleep rather than a timer: the worker thread runs no async runtime, and a
            // wait is short (at most INDEX_DEFER_MAX). Counted as it goes, so that a
            // long deferral shows while it lasts.
            self.counters.deferrals.fetch_add(1, Ordering::Relaxed);
            let spell = std::time::Instant::now();
            std::thread::sleep(wait);
            crate::metrics::metrics()
                .index_deferred
                .inc_by(spell.elapsed().as_secs_f64());
        }
        true
    }

    /// Blocks until a record after the cursor is durable; false when told to stop.
    fn wait_for_durable(&mut self) -> bool {
        let next = self.cursor.next_lsn();
        let (durable, stop) = (&mut self.durable, &mut self.stop);
        block_on(async move {
            tokio::select! {
                grown = durable.wait_for(|&d| d >= next) => grown.is_ok(),
                _ = stop.wait_for(|&s| s) => false,
            }
        })
    }

    /// Inserts the batch's new observations; how many.
    fn index(&self, batch: &[Record]) -> Result<u64, BatchError> {
        // The embedding borrows the record's archive, viewed (and validated) once here.
        let mut inserts: Vec<Insert<'_>> = Vec::new();
        for record in batch {
            match record.kind {
                RecordKind::Space => {
                    let def = SpaceDefinition::view(record.payload())
                        .map_err(|e| bad(record, "space", e))?;
                    self.indexes.get_or_create(
                        def.name.as_str(),
                        def.dim.to_native(),
                        def.metric(),
                    )?;
                }
                RecordKind::Observation => {
                    let obs = Observation::view(record.payload())
                        .map_err(|e| bad(record, "observation", e))?;
                    // A space never defined takes the default metric.
                    let space = self.indexes.get_or_create(
                        obs.space.as_str(),
                        obs.dimension() as u32,
                        Metric::default(),
                    )?;
                    match space.admit(
                        obs.id.as_str(),
                        record.lsn,
                        obs.when_unix_ns.to_native(),
                        obs.confidence.to_native(),
                        obs.what.as_str(),
                    ) {
                        Admission::New(key) | Admission::Pending(key) => {
                            inserts.push((space, key, obs.embedding()))
                        }
                        Admission::Indexed => {}
                        Admission::Duplicate => {
                            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        // With `IndexConfig::defer`, every insert may first wait for ingest: a stream
        // that starts during a catch-up waits for one insert per thread, not a batch.
        // Told to stop meanwhile, the worker finishes the batch: its indexed LSN passes
        // a batch only whole. Each insert's CPU time measures what the pool's threads
        // insert together, one at a time each, when they have the cores.
        let threads = self.pools.sharing.current_num_threads();
        let insert = |(space, key, embedding): &Insert<'_>| {
            self.defer_to_ingest();
            fault::before_insert();
            let started = self.pace.as_ref().map(|_| super::pace::thread_cpu_time());
            space.insert(*key, embedding)?;
            if let (Some(pace), Some(started)) = (&self.pace, started) {
                pace.inserted(threads, super::pace::thread_cpu_time() - started);
            }
            self.counters.inserted.fetch_add(1, Ordering::Relaxed);
            Ok::<(), BatchError>(())
        };
        if inserts.len() >= PARALLEL_INSERTS_MIN {
            let pool = self.pools.for_lag(&self.lag.load);
            pool.install(|| self.insert_spread(&inserts, insert))?;
        } else {
            inserts.iter().try_for_each(insert)?;
        }
        for (space, count) in per_space(&inserts) {
            if space.audit_due(count as u64) {
                let started = std::time::Instant::now();
                let relinked = space.relink_unreachable()?.len();
                self.counters.audits.fetch_add(1, Ordering::Relaxed);
                let ms = started.elapsed().as_secs_f64() * 1e3;
                if relinked > 0 {
                    tracing::info!(
                        space = space.name(),
                        relinked,
                        ms,
                        "audited the graph's links and linked again nodes no search reached"
                    );
                } else {
                    tracing::debug!(space = space.name(), ms, "audited the graph's links");
                }
                self.counters
                    .relinked
                    .fetch_add(relinked as u64, Ordering::Relaxed);
            }
        }
        Ok(inserts.len() as u64)
    }

    /// Inserts over every core of the pool, then repairs what concurrent inserts broke.
    /// Each space makes room for its inserts first, so that none stops to grow the graph.
    fn insert_spread(
        &self,
        inserts: &[Insert<'_>],
        insert: impl Fn(&Insert<'_>) -> Result<(), BatchError> + Sync + Send,
    ) -> Result<(), BatchError> {
        for (space, count) in per_space(inserts) {
            space.reserve(count)?;
        }
        inserts.par_iter().try_for_each(insert)?;
        // Concurrent inserts into one graph leave a rare node that no search reaches
        // (usearch 2.26, measured: about 1 in 500 in a graph of 150, 1 in 5,000 of
        // 20,000), so that its own embedding would not recall it. Such a node is one that
        // none of its own neighbours links back to: each is linked again, alone. Reading
        // the links costs a sixtieth of searching for every new key, which this replaced
        // (measured on 48,000 384-d vectors in batches of 4,096: 0.09 s against 5.5 s; of
        // the 6 keys the searches missed, the 4 unlinked were the 4 this names). The
        // space's audit catches the rest later (`SpaceIndex::relink_unreachable`).
        for (space, _) in per_space(inserts) {
            let batch: Vec<&Insert<'_>> = inserts
                .iter()
                .filter(|(s, _, _)| Arc::ptr_eq(s, space))
                .collect();
            let keys: Vec<u64> = batch.iter().map(|(_, key, _)| *key).collect();
            for key in space.graph().unlinked(&keys) {
                let (_, _, embedding) = batch
                    .iter()
                    .find(|(_, k, _)| *k == key)
                    .expect("an unlinked key is one of the batch's");
                space.relink(key, embedding)?;
                self.counters.relinked.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// The spaces `inserts` go to, each with how many.
fn per_space<'i>(inserts: &'i [Insert<'_>]) -> Vec<(&'i Arc<SpaceIndex>, usize)> {
    let mut per_space: Vec<(&Arc<SpaceIndex>, usize)> = Vec::new();
    for (space, _, _) in inserts {
        match per_space.iter_mut().find(|(s, _)| Arc::ptr_eq(s, space)) {
            Some((_, count)) => *count += 1,
            None => per_space.push((space, 1)),
        }
    }
    per_space
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
        .to_owned()
}

fn bad(record: &Record, kind: &'static str, e: impl std::fmt::Display) -> BatchError {
    BatchError::BadRecord {
        lsn: record.lsn,
        kind,
        reason: e.to_string(),
    }
}

/// The space a record belongs to; `None` for a record that names none (or is invalid:
/// its owner reports that).
fn space_of(record: &Record) -> Option<&str> {
    match record.kind {
        RecordKind::Observation => Observation::view(record.payload())
            .ok()
            .map(|o| o.space.as_str()),
        RecordKind::Space => SpaceDefinition::view(record.payload())
            .ok()
            .map(|d| d.name.as_str()),
    }
}

/// Runs a future to completion on this thread: the workers are plain threads that wait
/// on the log's durable-LSN watch.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

/// Test faults, compiled only with the `fault-injection` feature:
/// `ENGRAM_FAULT_INDEX_PANIC_AFTER=N` makes the N-th insert since start panic, once;
/// `ENGRAM_FAULT_INDEX_DELAY_US=N` makes every insert take N microseconds longer.
mod fault {
    #[cfg(feature = "fault-injection")]
    pub fn before_insert() {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;
        static PANIC_AT: OnceLock<Option<u64>> = OnceLock::new();
        static DELAY: OnceLock<Option<std::time::Duration>> = OnceLock::new();
        static INSERTS: AtomicU64 = AtomicU64::new(0);
        let setting = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
        if let Some(delay) = DELAY.get_or_init(|| {
            setting("ENGRAM_FAULT_INDEX_DELAY_US").map(std::time::Duration::from_micros)
        }) {
            // A slow index, for the lag backpressure test.
            std::thread::sleep(*delay);
        }
        let at = PANIC_AT.get_or_init(|| setting("ENGRAM_FAULT_INDEX_PANIC_AFTER"));
        if let Some(at) = *at {
            if INSERTS.fetch_add(1, Ordering::Relaxed) + 1 == at {
                panic!("injected index fault at insert {at}");
            }
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    pub fn before_insert() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::priority::tests::{
        kernel_takes_custom_slices, own_nice, own_policy, own_slice,
    };
    use crate::ingest::priority::INDEX_SLICE;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn every_thread_of_the_insert_pool_runs_at_the_given_priority() {
        let pool = insert_pool(
            "engram-insert",
            IndexPriority::Nice {
                nice: 7,
                slice: INDEX_SLICE,
            },
            3,
        )
        .unwrap();
        let nices = pool.broadcast(|_| (own_nice(), own_slice()));
        let slice = if kernel_takes_custom_slices() {
            INDEX_SLICE
        } else {
            own_slice()
        };
        assert_eq!(nices, vec![(7, slice); 3]);
        let pool = insert_pool("engram-insert", IndexPriority::Idle, 2).unwrap();
        let policies = pool.broadcast(|_| own_policy());
        assert_eq!(policies, vec![libc::SCHED_IDLE; pool.current_num_threads()]);
    }

    /// (policy, nice) of every thread of `pool`.
    fn pool_priorities(pool: &rayon::ThreadPool) -> Vec<(i32, i32)> {
        pool.broadcast(|_| (own_policy(), own_nice()))
    }

    #[test]
    fn a_yielding_index_inserts_under_sched_idle_until_its_lag_reaches_half_its_bound() {
        let priority = IndexPriority::Yielding {
            nice: 7,
            slice: INDEX_SLICE,
        };
        let pools = InsertPools::new(priority, 2).unwrap();
        let load = ServerLoad::new(1 << 30, 1000);
        let chosen = |lag: u64| {
            load.set_index_lag(lag);
            pool_priorities(pools.for_lag(&load))
        };
        let idle = vec![(libc::SCHED_IDLE, 0); 2];
        let sharing = vec![(libc::SCHED_OTHER, 7); 2];
        assert_eq!(chosen(0), idle, "no lag");
        assert_eq!(chosen(499), idle, "under half the bound");
        assert_eq!(chosen(500), sharing, "Warning: a share of the cores");
        assert_eq!(chosen(900), sharing, "Critical");
        assert_eq!(chosen(100), idle, "caught up again");
    }

    #[test]
    fn a_fixed_priority_has_one_insert_pool() {
        for priority in [
            IndexPriority::Nice {
                nice: 7,
                slice: INDEX_SLICE,
            },
            IndexPriority::Idle,
        ] {
            let pools = InsertPools::new(priority, 1).unwrap();
            assert!(pools.yielding.is_none(), "{priority:?}");
            let load = ServerLoad::new(1 << 30, 1000);
            for lag in [0, 900] {
                load.set_index_lag(lag);
                assert!(std::ptr::eq(pools.for_lag(&load), &pools.sharing));
            }
        }
    }

    /// Observations `numbers` of one space at `dim`, as log entries.
    fn entries(numbers: std::ops::Range<u64>, dim: usize) -> Vec<crate::wal::Entry> {
        numbers
            .map(|n| crate::wal::Entry {
                kind: RecordKind::Observation,
                payload: crate::synthetic::observation(
                    1,
                    "bulk",
                    "obs-",
                    n,
                    dim,
                    crate::synthetic::Distribution::Uniform,
                )
                .to_payload(),
            })
            .collect()
    }

    /// Polls `holds` until it is true; fails the test after `within`.
    fn wait_until(what: &str, within: std::time::Duration, holds: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + within;
        while !holds() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// How a test streams into the log: `commits` of entries made beforehand (so that
    /// the stream's pace is the log's, not the making's), one after the other with
    /// `pause` between them, over and over: a repeat only stores duplicates, which the
    /// index reads past, but arrives like any other.
    struct Stream {
        commits: Vec<Vec<crate::wal::Entry>>,
        pause: std::time::Duration,
    }

    impl Stream {
        /// A flood: 100 commits of `FLOOD_COMMIT` observations from `from` at `DIM`, no
        /// pause.
        fn flood(from: u64) -> Stream {
            let size = FLOOD_COMMIT;
            Stream {
                commits: (0..100)
                    .map(|c| entries(from + c * size..from + (c + 1) * size, DIM))
                    .collect(),
                pause: std::time::Duration::ZERO,
            }
        }

        /// A trickle: one observation from `from` every 5 ms.
        fn trickle(from: u64) -> Stream {
            Stream {
                commits: (from..from + 1_000)
                    .map(|n| entries(n..n + 1, DIM))
                    .collect(),
                pause: std::time::Duration::from_millis(5),
            }
        }

        /// Appends the commits until `stop`.
        fn run(self, wal: &crate::wal::Wal, stop: &AtomicBool) {
            for commit in self.commits.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                wal.append_blocking(commit.clone()).unwrap();
                // The stream's pace, not a synchronisation.
                std::thread::sleep(self.pause);
            }
        }
    }

    /// Runs `check` while `stream` streams into `wal`, then stops the stream, also when
    /// the check fails.
    fn while_streaming<T>(wal: &crate::wal::Wal, stream: Stream, check: impl FnOnce() -> T) -> T {
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| stream.run(wal, &stop));
            let outcome = catch_unwind(AssertUnwindSafe(check));
            stop.store(true, Ordering::Relaxed);
            outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// The tests' dimension: an insert costs enough that a flood of appends outpaces
    /// the index on one thread many times over.
    const DIM: usize = 256;
    /// Observations to a commit of a flood: commits wait for their sync, and at this
    /// size a flood still arrives tens of times faster than one thread inserts.
    const FLOOD_COMMIT: u64 = 64;

    /// One worker with `--index-defer-ms` at `quiet`, the index lag bound at `lag_max`
    /// records, started on a fresh log that holds `stored` observations.
    fn deferring(
        dir: &std::path::Path,
        quiet: std::time::Duration,
        lag_max: u64,
        stored: u64,
    ) -> (crate::wal::Wal, Arc<SpaceIndexes>, IndexWorkers) {
        let wal = crate::wal::Wal::open(dir.join("wal"), Default::default()).unwrap();
        if stored > 0 {
            wal.append_blocking(entries(0..stored, DIM)).unwrap();
        }
        let indexes = Arc::new(SpaceIndexes::new(crate::index::IndexParams::default(), 1));
        let checkpoints = Arc::new(CheckpointPolicy {
            root: dir.join("index"),
            every_records: 0,
            every: std::time::Duration::ZERO,
            truncate: Box::new(|_| Ok(0)),
            written: Default::default(),
            failed: Default::default(),
        });
        let config = IndexConfig {
            workers: 1,
            insert_threads: 1,
            defer: Some(quiet),
            ..IndexConfig::default()
        };
        let load = Arc::new(ServerLoad::new(u64::MAX, lag_max));
        let reader = wal.reader();
        let workers = IndexWorkers::start(
            &reader,
            indexes.clone(),
            load,
            checkpoints,
            Lsn::FIRST,
            &config,
        )
        .unwrap();
        (wal, indexes, workers)
    }

    /// Records the tests' logs hold at the start: one batch spread over the insert
    /// threads, which gives the worker its insert rate.
    const STORED: u64 = 256;

    #[test]
    fn a_deferring_index_waits_while_a_flood_outpaces_it_and_catches_up_after() {
        let dir = tempfile::tempdir().unwrap();
        // A second's quiet spell: a stall of the stream shorter than that on a busy
        // machine does not end the wait.
        let quiet = INDEX_DEFER_MAX;
        let (wal, indexes, workers) = deferring(dir.path(), quiet, 1 << 40, STORED);
        let indexed = || indexes.worker_progress(0).indexed_lsn();
        let deferrals = || workers.counters().deferrals.load(Ordering::Relaxed);
        let deferred_before = crate::metrics::metrics().index_deferred.get();
        // What the log held at the start (a replay after a restart) did not just arrive:
        // it is indexed at once, well within a quiet spell.
        let first = wal.durable_lsn();
        let fast = std::time::Duration::from_millis(900);
        wait_until("the stored records indexed", fast, || indexed() >= first);
        assert_eq!(deferrals(), 0, "the replay waited");
        let (during, streamed) = while_streaming(&wal, Stream::flood(STORED), || {
            let durable = || wal.durable_lsn();
            // Until an arrival window is full, the flood's rate is not known, and some
            // records go in; then the index waits.
            wait_until("the index deferring", fast * 10, || deferrals() > 0);
            let before = indexed();
            let later = Lsn(durable().0 + 40 * FLOOD_COMMIT);
            wait_until("the flood going on", fast * 10, || durable() >= later);
            ((before, indexed()), durable())
        });
        assert_eq!(
            during.0, during.1,
            "the index inserted while observations arrived faster than it inserts"
        );
        assert!(
            during.1 < streamed,
            "the index kept up: nothing was deferred"
        );
        wait_until("the index caught up after the flood", quiet * 30, || {
            indexed() >= wal.durable_lsn()
        });
        assert!(crate::metrics::metrics().index_deferred.get() >= deferred_before + 0.5);
    }

    #[test]
    fn a_deferring_index_inserts_a_trickle_as_it_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, indexes, _workers) = deferring(dir.path(), INDEX_DEFER_MAX, 1 << 40, STORED);
        let indexed = || indexes.worker_progress(0).indexed_lsn();
        let within = std::time::Duration::from_secs(10);
        wait_until("the stored records indexed", within, || {
            indexed() >= wal.durable_lsn()
        });
        // 200 a second, far under what the index inserts: it keeps up during the
        // trickle, never a quiet second away from it.
        while_streaming(&wal, Stream::trickle(STORED), || {
            let under_way = Lsn(STORED + 20);
            wait_until("the trickle under way", within, || {
                wal.durable_lsn() >= under_way
            });
            let before = indexed();
            wait_until("the trickle indexed as it arrives", within, || {
                indexed() >= Lsn(before.0 + 20)
            });
        });
    }

    #[test]
    fn a_deferring_index_goes_on_once_its_lag_reaches_half_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let lag_max = 40 * FLOOD_COMMIT;
        let (wal, indexes, _workers) = deferring(dir.path(), INDEX_DEFER_MAX, lag_max, STORED);
        let indexed = || indexes.worker_progress(0).indexed_lsn();
        let within = std::time::Duration::from_secs(10);
        wait_until("the stored records indexed", within, || {
            indexed() >= wal.durable_lsn()
        });
        while_streaming(&wal, Stream::flood(STORED), || {
            // Past half the bound the index must insert while the flood goes on, long
            // before a quiet second.
            wait_until("the flood past the bound", within, || {
                wal.durable_lsn() >= Lsn(STORED + lag_max)
            });
            let before = indexed();
            wait_until("the index inserting during the flood", within, || {
                indexed() > before
            });
        });
    }
}
