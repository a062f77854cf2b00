//! When index workers write checkpoints, and what the log may drop after them.
//!
//! Each worker checkpoints its own spaces between two batches, when none of them is being
//! inserted into: after `every_records` inserts, or `every` after the last checkpoint if
//! anything was inserted since. Then the log drops the segments that every space's older
//! kept checkpoint covers (the fallback, should the newest be damaged), and never a record
//! a worker has not indexed yet.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::index::checkpoint::{fallback_lsn, write_checkpoint};
use crate::index::SpaceIndexes;
use crate::wal::Lsn;

pub const CHECKPOINT_RECORDS_DEFAULT: u64 = 100_000;
pub const CHECKPOINT_INTERVAL_DEFAULT: Duration = Duration::from_secs(300);

/// Drops the log's segments wholly below an LSN; returns how many it removed.
pub type Truncate = dyn Fn(Lsn) -> Result<usize, String> + Send + Sync;

/// Where checkpoints go and how often.
pub struct CheckpointPolicy {
    pub root: PathBuf,
    /// Inserts by one worker between its checkpoints; 0: not by count.
    pub every_records: u64,
    /// Time between a worker's checkpoints, if anything was inserted; zero: not by time.
    pub every: Duration,
    pub truncate: Box<Truncate>,
    /// Checkpoints written and failed, since start.
    pub written: AtomicU64,
    pub failed: AtomicU64,
}

/// One worker's progress towards its next checkpoint.
pub(super) struct CheckpointSchedule {
    policy: Arc<CheckpointPolicy>,
    inserted_since: u64,
    last: Instant,
}

impl CheckpointSchedule {
    pub fn new(policy: Arc<CheckpointPolicy>) -> CheckpointSchedule {
        CheckpointSchedule {
            policy,
            inserted_since: 0,
            last: Instant::now(),
        }
    }

    /// After a batch, which left the worker's spaces holding exactly their records up to
    /// `covered`: counts its inserts, and checkpoints the worker's spaces if due.
    pub fn after_batch(
        &mut self,
        worker: usize,
        indexes: &SpaceIndexes,
        inserted: u64,
        covered: Lsn,
    ) {
        self.inserted_since += inserted;
        let policy = &self.policy;
        let by_count = policy.every_records > 0 && self.inserted_since >= policy.every_records;
        let by_time = !policy.every.is_zero()
            && self.inserted_since > 0
            && self.last.elapsed() >= policy.every;
        if !(by_count || by_time) {
            return;
        }
        self.inserted_since = 0;
        self.last = Instant::now();
        let started = Instant::now();
        let mut written = 0;
        for space in indexes.all() {
            if indexes.owner(space.name()) != worker {
                continue;
            }
            match write_checkpoint(&policy.root, &space, covered, indexes.params()) {
                Ok(_) => written += 1,
                Err(e) => {
                    // The log keeps everything the checkpoint would have covered; the
                    // next round tries again.
                    policy.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(space = space.name(), error = %e, "writing a checkpoint failed");
                }
            }
        }
        policy.written.fetch_add(written, Ordering::Relaxed);
        tracing::info!(worker, spaces = written, covered = %covered,
            ms = started.elapsed().as_secs_f64() * 1e3, "wrote index checkpoints");
        self.truncate_log(indexes);
    }

    fn truncate_log(&self, indexes: &SpaceIndexes) {
        let mut safe = (0..indexes.workers())
            .map(|w| indexes.worker_progress(w).indexed_lsn())
            .min()
            .expect("at least one worker");
        for space in indexes.all() {
            match fallback_lsn(&self.policy.root, space.name()) {
                Ok(Some(lsn)) => safe = safe.min(lsn),
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "listing checkpoints failed; the log is kept");
                    return;
                }
            }
        }
        if safe > Lsn::ZERO {
            if let Err(e) = (self.policy.truncate)(safe.next()) {
                tracing::error!(error = %e, "removing WAL segments after a checkpoint failed");
            }
        }
    }
}
