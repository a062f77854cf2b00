//! Faults a chaos test can inject into the real server binary, compiled only with the
//! `fault-injection` feature (every function is a no-op otherwise; release builds never
//! enable it). They are set by environment variables, read once:
//!
//! - `ENGRAM_FAULT_CRASH_AT=POINT:N` SIGKILLs the process the N-th time it reaches `POINT`
//!   (one of [`CrashPoint::ALL`]'s names). A kill from inside lands exactly on the instant a
//!   kill from outside can only hit by luck: between a segment's rename and its first
//!   record, between a checkpoint's rename and the sync that makes it durable, between
//!   two segment removals.
//! - `ENGRAM_FAULT_DISK_FULL_FILE=PATH`: while `PATH` exists, segment preallocation and
//!   checkpoint writes fail with ENOSPC, as on a full disk. Removing it is "space is back".
//! - `ENGRAM_FAULT_SYNC_EIO_FILE=PATH`: while `PATH` exists, every fsync of the log fails
//!   with EIO.

/// A named instant on a durability path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// A commit's bytes are written into the segment and not yet synced.
    CommitUnsynced,
    /// A new segment was renamed into place; no record is in it yet.
    SegmentRolled,
    /// One segment below a checkpoint was removed, the others not yet.
    SegmentRemoved,
    /// A checkpoint's files are written and synced under its temporary name.
    CheckpointWritten,
    /// A checkpoint was renamed into place; its folder is not synced yet.
    CheckpointRenamed,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 5] = [
        CrashPoint::CommitUnsynced,
        CrashPoint::SegmentRolled,
        CrashPoint::SegmentRemoved,
        CrashPoint::CheckpointWritten,
        CrashPoint::CheckpointRenamed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::CommitUnsynced => "commit-unsynced",
            CrashPoint::SegmentRolled => "segment-rolled",
            CrashPoint::SegmentRemoved => "segment-removed",
            CrashPoint::CheckpointWritten => "checkpoint-written",
            CrashPoint::CheckpointRenamed => "checkpoint-renamed",
        }
    }
}

#[cfg(feature = "fault-injection")]
mod active {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    use super::CrashPoint;

    struct Settings {
        crash_at: Option<(CrashPoint, u64)>,
        disk_full_file: Option<PathBuf>,
        sync_eio_file: Option<PathBuf>,
    }

    fn settings() -> &'static Settings {
        static SETTINGS: OnceLock<Settings> = OnceLock::new();
        SETTINGS.get_or_init(|| {
            let crash_at = std::env::var("ENGRAM_FAULT_CRASH_AT").ok().map(|v| {
                let (name, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
                let point = CrashPoint::ALL
                    .into_iter()
                    .find(|p| p.name() == name)
                    .unwrap_or_else(|| panic!("ENGRAM_FAULT_CRASH_AT: no crash point {name:?}"));
                let n = n
                    .parse()
                    .unwrap_or_else(|_| panic!("ENGRAM_FAULT_CRASH_AT: {n:?} is not a count"));
                (point, n)
            });
            let file = |name: &str| std::env::var_os(name).map(PathBuf::from);
            Settings {
                crash_at,
                disk_full_file: file("ENGRAM_FAULT_DISK_FULL_FILE"),
                sync_eio_file: file("ENGRAM_FAULT_SYNC_EIO_FILE"),
            }
        })
    }

    pub fn reached(point: CrashPoint) {
        static HITS: AtomicU64 = AtomicU64::new(0);
        let Some((at, n)) = settings().crash_at else {
            return;
        };
        if at == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == n {
            eprintln!("injected crash at {} ({n})", point.name());
            // SAFETY: kill(2) on our own pid with SIGKILL has no memory effects.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }

    pub fn disk_full() -> bool {
        settings()
            .disk_full_file
            .as_ref()
            .is_some_and(|p| p.exists())
    }

    pub fn sync_fails() -> bool {
        settings()
            .sync_eio_file
            .as_ref()
            .is_some_and(|p| p.exists())
    }

    pub fn enabled() -> bool {
        let s = settings();
        s.disk_full_file.is_some() || s.sync_eio_file.is_some()
    }
}

/// SIGKILLs the process if the test asked for a crash at this instant.
#[inline]
pub fn reached(point: CrashPoint) {
    #[cfg(feature = "fault-injection")]
    active::reached(point);
    #[cfg(not(feature = "fault-injection"))]
    let _ = point;
}

/// True while the test says the disk is full.
#[inline]
pub fn disk_full() -> bool {
    #[cfg(feature = "fault-injection")]
    return active::disk_full();
    #[cfg(not(feature = "fault-injection"))]
    false
}

/// True while the test says fsync fails.
#[inline]
pub fn sync_fails() -> bool {
    #[cfg(feature = "fault-injection")]
    return active::sync_fails();
    #[cfg(not(feature = "fault-injection"))]
    false
}

/// True if a test set a storage fault trigger, so the log must run on storage that
/// consults them (`wal::fault::TriggeredStorage`).
pub fn storage_faults_enabled() -> bool {
    #[cfg(feature = "fault-injection")]
    return active::enabled();
    #[cfg(not(feature = "fault-injection"))]
    false
}
