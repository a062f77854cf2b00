//! The group committer: one thread that writes every waiting append, syncs once, then
//! completes each waiter.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::error::{Result, WalError};
use super::format::{
    aligned_commit_end, commit_frames_max, encode_padding, encode_record, frame_len,
    COMMIT_ALIGN_BYTES, RECORD_HEADER_BYTES,
};
use super::log::{Entry, Shared};
use super::lsn::{Lsn, LsnRange};
use super::segment::{PreparedSegment, Segment, FIRST_RECORD_OFFSET};

pub(crate) struct AppendRequest {
    pub entries: Vec<Entry>,
    /// Bytes the entries take as frames.
    pub frame_bytes: u64,
    pub done: oneshot::Sender<Result<LsnRange>>,
}

pub(crate) struct Committer {
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<AppendRequest>,
    active: Option<Arc<Segment>>,
    /// Where the next frame goes in the active segment.
    write_offset: u64,
    /// Frames encoded but not yet written; they start at `buffer_offset` in the segment.
    /// Allocated and touched once, at its largest (`buffer_bytes_max`): growing it under
    /// load faulted in fresh pages while appenders waited (8-15 ms stalls measured on
    /// this machine's VM, docs/performance.md).
    buffer: Vec<u8>,
    /// The most one commit stages: a torn window of frames and the padding to a page.
    buffer_bytes_max: usize,
    buffer_offset: u64,
    next_lsn: Lsn,
    /// Appends whose frames are all encoded, waiting for the sync that covers them.
    waiting: Vec<(oneshot::Sender<Result<LsnRange>>, LsnRange)>,
    /// The next segment, being prepared in the background.
    spare: Option<JoinHandle<Result<PreparedSegment>>>,
}

impl Committer {
    pub fn new(
        shared: Arc<Shared>,
        receiver: mpsc::Receiver<AppendRequest>,
        active: Option<(Arc<Segment>, u64)>,
        next_lsn: Lsn,
    ) -> Committer {
        let (active, write_offset) = match active {
            Some((segment, offset)) => (Some(segment), offset),
            None => (None, FIRST_RECORD_OFFSET),
        };
        // The active segment may come from an earlier run with a wider torn window. No
        // commit holds more than its segment, whatever the window says.
        let commit_max = |torn_window: u64, capacity: u64| {
            (torn_window + COMMIT_ALIGN_BYTES).min(capacity) as usize
        };
        let config = &shared.config;
        let buffer_bytes_max = active.as_ref().map_or(0, |s: &Arc<Segment>| {
            commit_max(s.header().torn_window_bytes, s.capacity())
        });
        let buffer_bytes_max =
            buffer_bytes_max.max(commit_max(config.torn_window_bytes(), config.segment_bytes));
        let buffer = touched_buffer(buffer_bytes_max);
        Committer {
            shared,
            receiver,
            active,
            write_offset,
            buffer,
            buffer_bytes_max,
            buffer_offset: write_offset,
            next_lsn,
            waiting: Vec::new(),
            spare: None,
        }
    }

    pub fn run(mut self) {
        let window = self.shared.config.commit_window;
        let round_bytes_max = self.shared.config.commit_bytes_max;
        while let Some(first) = self.receiver.blocking_recv() {
            if !window.is_zero() {
                // Like PostgreSQL's commit_delay: trade a little latency for fuller syncs.
                std::thread::sleep(window);
            }
            let mut round_bytes = first.frame_bytes;
            self.stage(first);
            while round_bytes < round_bytes_max {
                let Ok(next) = self.receiver.try_recv() else {
                    break;
                };
                round_bytes += next.frame_bytes;
                self.stage(next);
            }
            self.write_and_sync();
            self.prepare_spare();
        }
        self.write_and_sync();
        if let Some(spare) = self.spare.take() {
            if let Ok(Ok(prepared)) = spare.join() {
                prepared.discard(self.shared.storage.as_ref());
            }
        }
    }

    /// Keeps the next segment being prepared while one is active, so a roll only writes a
    /// header and renames while appenders wait.
    fn prepare_spare(&mut self) {
        if !self.shared.config.prepare_next_segment || self.spare.is_some() || self.active.is_none()
        {
            return;
        }
        if self.shared.failure.get().is_some() {
            return;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("engram-wal-prepare".into())
            .spawn(move || Segment::prepare(shared.storage.as_ref(), &shared.dir, &shared.config));
        // Without a thread the roll prepares the segment itself, as it would anyway.
        self.spare = spawned.ok();
    }

    /// Encodes one append into the buffer, rolling to a new segment first if it does not fit.
    ///
    /// A page that holds bytes of an acknowledged append is never written again: every
    /// commit that completes appends ends padded to a page boundary. An append larger than
    /// one commit may hold is written in chunks that complete nothing until the last.
    fn stage(&mut self, request: AppendRequest) {
        if let Some(e) = self.shared.failed() {
            let _ = request.done.send(Err(e));
            return;
        }
        if let Some(segment) = self.active.clone() {
            let frames_max = commit_frames_max(segment.header().torn_window_bytes);
            if !self.buffer.is_empty()
                && self.buffer.len() as u64 + request.frame_bytes > frames_max
            {
                self.write_and_sync();
            }
        }
        let fits = self
            .active
            .as_ref()
            .is_some_and(|s| self.write_offset + request.frame_bytes <= s.capacity());
        if !fits {
            if let Err(e) = self.roll() {
                let _ = request.done.send(Err(e));
                return;
            }
        }
        if let Some(e) = self.shared.failed() {
            let _ = request.done.send(Err(e));
            return;
        }
        let segment = self.active.clone().expect("rolled to a segment");
        let frames_max = commit_frames_max(segment.header().torn_window_bytes);
        let first = self.next_lsn;
        for entry in &request.entries {
            let len = frame_len(entry.payload.len()) as u64;
            // Never more than the torn window between two syncs: recovery relies on it.
            if !self.buffer.is_empty() && self.buffer.len() as u64 + len > frames_max {
                if let Err(e) = self.write_chunk(&segment) {
                    let _ = request.done.send(Err(e));
                    return;
                }
            }
            encode_record(
                &mut self.buffer,
                segment.header().salt,
                self.next_lsn,
                entry.kind,
                &entry.payload,
            );
            self.next_lsn = self.next_lsn.next();
            self.write_offset += len;
        }
        debug_assert_eq!(
            self.buffer_offset + self.buffer.len() as u64,
            self.write_offset
        );
        let c = &self.shared.counters;
        c.appends.fetch_add(1, Ordering::Relaxed);
        c.records
            .fetch_add(request.entries.len() as u64, Ordering::Relaxed);
        self.waiting.push((
            request.done,
            LsnRange {
                first,
                last: self.next_lsn.prev(),
            },
        ));
    }

    /// Writes the buffer, syncs, publishes the durable LSN and completes the waiters.
    fn write_and_sync(&mut self) {
        if self.buffer.is_empty() && self.waiting.is_empty() {
            return;
        }
        if self.shared.failure.get().is_some() {
            return self.fail_waiting();
        }
        let segment = self
            .active
            .clone()
            .expect("frames are staged into a segment");
        self.pad_to_page(&segment);
        if let Err(cause) = self.write_buffer_synced(&segment) {
            return self.latch(cause);
        }
        let durable = self.next_lsn.prev();
        self.shared.durable.send_replace(durable);
        for (done, range) in self.waiting.drain(..) {
            debug_assert!(range.last <= durable);
            let _ = done.send(Ok(range));
        }
    }

    /// Writes and syncs the frames of an append too large for one commit, completing nothing:
    /// only the commit that holds the append's last frame acknowledges it.
    fn write_chunk(&mut self, segment: &Segment) -> Result<()> {
        debug_assert!(
            self.waiting.is_empty(),
            "earlier appends were committed on their own"
        );
        self.write_buffer_synced(segment).map_err(|cause| {
            self.latch(cause);
            self.shared.failed().expect("just latched")
        })
    }

    /// Writes the buffer where it belongs in the segment and syncs it. On failure, says what
    /// failed; the caller latches it. Never retried: after a failed fsync the kernel may
    /// have dropped the dirty pages, and a retry can "succeed" without them (fsyncgate).
    fn write_buffer_synced(&mut self, segment: &Segment) -> std::result::Result<(), String> {
        debug_assert!(
            self.buffer.len() <= self.buffer_bytes_max,
            "a commit staged past the buffer reserved for it, so the buffer grew under load"
        );
        let file = segment.file();
        if let Err(e) = file.write_all_at(&self.buffer, self.buffer_offset) {
            return Err(format!(
                "write to {} at offset {} failed: {e}",
                segment.name(),
                self.buffer_offset
            ));
        }
        crate::chaos::reached(crate::chaos::CrashPoint::CommitUnsynced);
        let syncing = std::time::Instant::now();
        if let Err(e) = file.sync_data() {
            return Err(format!("fdatasync of {} failed: {e}", segment.name()));
        }
        if let Some(metrics) = crate::metrics::recording() {
            metrics
                .fsync_duration
                .observe(syncing.elapsed().as_secs_f64());
            metrics.wal_bytes_written.inc_by(self.buffer.len() as u64);
        }
        let c = &self.shared.counters;
        c.bytes_written
            .fetch_add(self.buffer.len() as u64, Ordering::Relaxed);
        c.syncs.fetch_add(1, Ordering::Relaxed);
        self.buffer_offset += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Ends the commit on a page boundary, so the next commit never rewrites a page that
    /// holds synced bytes.
    fn pad_to_page(&mut self, segment: &Segment) {
        let end = self.buffer_offset + self.buffer.len() as u64;
        let target = aligned_commit_end(end, segment.capacity());
        let gap = (target - end) as usize;
        if gap >= RECORD_HEADER_BYTES {
            encode_padding(&mut self.buffer, segment.header().salt, self.next_lsn, gap);
        }
        // A gap too small for a frame header is the segment's zero end: it is full.
        self.write_offset = target;
    }

    /// Closes the active segment (everything in it synced) and creates the next one.
    /// Running out of space is not a failure of the log: the append gets a retryable error.
    fn roll(&mut self) -> Result<()> {
        self.write_and_sync();
        if let Some(e) = self.shared.failed() {
            return Err(e);
        }
        let shared = self.shared.clone();
        let (storage, dir, config) = (shared.storage.as_ref(), &shared.dir, &shared.config);
        let prepared = match self.spare.take().map(|spare| spare.join()) {
            Some(Ok(Ok(prepared))) => Ok(prepared),
            // A spare that failed (a full disk then, perhaps not now) is tried again now,
            // so that a refusal is never older than the roll it refuses.
            Some(Ok(Err(_))) | None => Segment::prepare(storage, dir, config),
            Some(Err(_)) => Err(WalError::io(
                "preparing the next segment",
                std::io::Error::other("the thread panicked"),
            )),
        };
        match prepared.and_then(|p| Segment::install(storage, dir, p, self.next_lsn, config)) {
            Ok(segment) => {
                crate::chaos::reached(crate::chaos::CrashPoint::SegmentRolled);
                let segment = Arc::new(segment);
                let mut segments = shared.segments.write().expect("segment list lock");
                // An empty last segment with the same first LSN was just replaced by rename.
                if segments
                    .last()
                    .is_some_and(|s| s.first_lsn() == segment.first_lsn())
                {
                    segments.pop();
                }
                segments.push(segment.clone());
                drop(segments);
                shared
                    .counters
                    .segments_created
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(segment = segment.name(), "rolled to a new WAL segment");
                self.active = Some(segment);
                self.write_offset = FIRST_RECORD_OFFSET;
                self.buffer_offset = FIRST_RECORD_OFFSET;
                Ok(())
            }
            Err(e @ WalError::StorageFull { .. }) => {
                tracing::warn!(error = %e, "cannot create the next WAL segment");
                Err(e)
            }
            Err(e) => {
                self.latch(e.to_string());
                Err(self.shared.failed().expect("just latched"))
            }
        }
    }

    fn latch(&mut self, cause: String) {
        if self.shared.failure.set(cause.clone()).is_ok() {
            tracing::error!(%cause, "the WAL failed; it accepts no more appends until restarted");
        }
        self.fail_waiting();
    }

    fn fail_waiting(&mut self) {
        self.buffer.clear();
        for (done, _) in self.waiting.drain(..) {
            let _ = done.send(Err(self.shared.failed().expect("failure is latched")));
        }
    }
}

/// An empty buffer with `bytes` of capacity whose pages are already faulted in.
fn touched_buffer(bytes: usize) -> Vec<u8> {
    let mut buffer = Vec::with_capacity(bytes);
    // Written, not calloc'd: an allocator may hand out zero pages that fault on first write.
    buffer
        .spare_capacity_mut()
        .fill(std::mem::MaybeUninit::new(0));
    buffer
}
