//! The log handle: appends through one group committer, the durable LSN, truncation.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::JoinHandle;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use super::committer::{AppendRequest, Committer};
use super::config::WalConfig;
use super::error::{Result, WalError};
use super::format::{frame_len, RecordKind};
use super::lock::DirLock;
use super::lsn::{Lsn, LsnRange};
use super::reader::WalReader;
use super::recovery::{recover, RecoveryReport};
use super::segment::Segment;
use super::storage::{OsStorage, Storage};

/// One record to append.
#[derive(Clone, Debug)]
pub struct Entry {
    pub kind: RecordKind,
    pub payload: Vec<u8>,
}

/// Counters of the log's work since it was opened.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub appends: AtomicU64,
    pub records: AtomicU64,
    pub bytes_written: AtomicU64,
    pub syncs: AtomicU64,
    pub segments_created: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct WalStats {
    pub appends: u64,
    pub records: u64,
    pub bytes_written: u64,
    pub syncs: u64,
    pub segments_created: u64,
    pub segments: u64,
    pub durable_lsn: Lsn,
}

/// What the committer, the readers and the handle share.
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub config: WalConfig,
    /// Every segment in LSN order; the last is the one appended to.
    pub segments: RwLock<Vec<Arc<Segment>>>,
    pub durable: watch::Sender<Lsn>,
    /// Set once, on the first failed write or sync; never cleared while the log is open.
    pub failure: OnceLock<String>,
    pub counters: Counters,
}

impl Shared {
    pub fn failed(&self) -> Option<WalError> {
        self.failure.get().map(|cause| WalError::Failed {
            cause: cause.clone(),
        })
    }
}

/// A write-ahead log open for appending. See docs/wal-format.md.
///
/// Appends are durable when they return `Ok`: the committer has written and synced them.
pub struct Wal {
    shared: Arc<Shared>,
    sender: Option<mpsc::Sender<AppendRequest>>,
    committer: Option<JoinHandle<()>>,
    report: RecoveryReport,
    _lock: DirLock,
}

/// An append in the commit queue (`Wal::submit`).
pub struct Submitted {
    done: oneshot::Receiver<Result<LsnRange>>,
    shared: Arc<Shared>,
}

impl Submitted {
    /// Waits until the append is durable; its LSNs.
    pub async fn durable(self) -> Result<LsnRange> {
        match self.done.await {
            Ok(outcome) => outcome,
            // The committer went away: a latched failure, or the log closed.
            Err(_) => Err(self.shared.failed().unwrap_or(WalError::Closed)),
        }
    }
}

impl Wal {
    /// Opens (recovering) or creates the log in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<Wal> {
        Wal::open_with_storage(dir, config, Arc::new(OsStorage))
    }

    pub fn open_with_storage(
        dir: impl AsRef<Path>,
        config: WalConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Wal> {
        let dir = dir.as_ref();
        config.validate()?;
        let lock = DirLock::acquire(dir)?;
        let recovered = recover(storage.as_ref(), dir, &config)?;
        let active = recovered
            .append_offset
            .and_then(|offset| Some((recovered.segments.last()?.clone(), offset)));
        let (durable, _) = watch::channel(recovered.next_lsn.prev());
        let shared = Arc::new(Shared {
            dir: dir.to_owned(),
            storage,
            segments: RwLock::new(recovered.segments),
            durable,
            failure: OnceLock::new(),
            counters: Counters::default(),
            config: config.clone(),
        });
        let (sender, receiver) = mpsc::channel(config.commit_queue_appends_max);
        let committer = Committer::new(shared.clone(), receiver, active, recovered.next_lsn);
        let handle = std::thread::Builder::new()
            .name("engram-wal-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| WalError::io("starting the commit thread", e))?;
        Ok(Wal {
            shared,
            sender: Some(sender),
            committer: Some(handle),
            report: recovered.report,
            _lock: lock,
        })
    }

    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// Every record up to this LSN is durable.
    pub fn durable_lsn(&self) -> Lsn {
        *self.shared.durable.borrow()
    }

    /// Follows the durable LSN as it grows.
    pub fn subscribe_durable(&self) -> watch::Receiver<Lsn> {
        self.shared.durable.subscribe()
    }

    /// Why the log stopped accepting appends, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.get().cloned()
    }

    pub fn reader(&self) -> WalReader {
        WalReader::new(self.shared.clone())
    }

    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        WalStats {
            appends: c.appends.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            syncs: c.syncs.load(Ordering::Relaxed),
            segments_created: c.segments_created.load(Ordering::Relaxed),
            segments: self
                .shared
                .segments
                .read()
                .expect("segment list lock")
                .len() as u64,
            durable_lsn: self.durable_lsn(),
        }
    }

    /// Appends `entries` as consecutive records and waits until they are durable.
    /// The records of one append never span two segments.
    ///
    /// If the future is dropped after the append was queued, the append may still become
    /// durable without anyone being told: callers that retry must dedupe (ingest does, by
    /// space and id).
    pub async fn append(&self, entries: Vec<Entry>) -> Result<LsnRange> {
        self.submit(entries).await?.durable().await
    }

    /// Queues `entries` for appending, waiting only for room in the commit queue, and
    /// returns the wait for their durability. Appends get LSNs in the order they are
    /// submitted, so a caller that submits in order and waits later keeps its order while
    /// its appends share syncs.
    pub async fn submit(&self, entries: Vec<Entry>) -> Result<Submitted> {
        let (request, done) = self.request(entries)?;
        self.sender()?
            .send(request)
            .await
            .map_err(|_| self.closed())?;
        Ok(Submitted {
            done,
            shared: self.shared.clone(),
        })
    }

    /// `append` for threads outside an async runtime. Panics if called from async code.
    pub fn append_blocking(&self, entries: Vec<Entry>) -> Result<LsnRange> {
        let (request, done) = self.request(entries)?;
        self.sender()?
            .blocking_send(request)
            .map_err(|_| self.closed())?;
        done.blocking_recv().map_err(|_| self.closed())?
    }

    fn request(
        &self,
        entries: Vec<Entry>,
    ) -> Result<(AppendRequest, oneshot::Receiver<Result<LsnRange>>)> {
        if let Some(e) = self.shared.failed() {
            return Err(e);
        }
        if entries.is_empty() {
            return Err(WalError::EmptyAppend);
        }
        let config = &self.shared.config;
        let mut frame_bytes = 0u64;
        for entry in &entries {
            if entry.payload.len() as u64 > config.record_payload_bytes_max as u64 {
                return Err(WalError::RecordTooLarge {
                    bytes: entry.payload.len() as u64,
                    max: config.record_payload_bytes_max.into(),
                });
            }
            frame_bytes += frame_len(entry.payload.len()) as u64;
        }
        if frame_bytes > config.append_bytes_max() {
            return Err(WalError::AppendTooLarge {
                bytes: frame_bytes,
                max: config.append_bytes_max(),
            });
        }
        let (done_tx, done_rx) = oneshot::channel();
        Ok((
            AppendRequest {
                entries,
                frame_bytes,
                done: done_tx,
            },
            done_rx,
        ))
    }

    fn sender(&self) -> Result<&mpsc::Sender<AppendRequest>> {
        self.sender.as_ref().ok_or(WalError::Closed)
    }

    /// The committer went away: either it latched a failure or the log is closing.
    fn closed(&self) -> WalError {
        self.shared.failed().unwrap_or(WalError::Closed)
    }

    /// Removes every segment whose records all have LSNs below `lsn` (a checkpoint covers
    /// them). The segment being appended to is never removed. Returns how many were removed.
    pub fn truncate_below(&self, lsn: Lsn) -> Result<usize> {
        let mut segments = self.shared.segments.write().expect("segment list lock");
        let mut removable = 0;
        while removable + 1 < segments.len() && segments[removable + 1].first_lsn() <= lsn {
            removable += 1;
        }
        let mut removed = 0;
        let mut outcome = Ok(());
        for segment in segments.iter().take(removable) {
            if let Err(e) = self.shared.storage.remove_file(segment.path()) {
                outcome = Err(WalError::io(
                    format!("removing {}", segment.path().display()),
                    e,
                ));
                break;
            }
            removed += 1;
            crate::chaos::reached(crate::chaos::CrashPoint::SegmentRemoved);
        }
        // Readers holding a removed segment keep their mapping: unlink does not unmap.
        segments.drain(..removed);
        drop(segments);
        if removed > 0 {
            self.shared
                .storage
                .sync_dir(&self.shared.dir)
                .map_err(|e| WalError::io("syncing the WAL folder", e))?;
            tracing::info!(removed, below = %lsn, "removed WAL segments covered by a checkpoint");
        }
        outcome.map(|()| removed)
    }

    /// Waits until every append already handed to the committer is durable (or failed),
    /// then stops it. Dropping the log does the same.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        match self.shared.failed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        // The committer drains what is queued, then sees the channel closed.
        self.sender.take();
        if let Some(handle) = self.committer.take() {
            if handle.join().is_err() {
                tracing::error!("the WAL commit thread panicked");
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}
