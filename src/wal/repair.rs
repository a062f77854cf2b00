//! Cutting a damaged log back to its last good record, keeping a backup of what is cut.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::error::{CorruptionAt, Result, WalError};
use super::lock::DirLock;
use super::lsn::{Lsn, SegmentName};
use super::scan::{scan_log, LogFiles};
use super::storage::{OsStorage, Storage};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairAction {
    /// The log was clean.
    Nothing,
    /// A torn tail of the last segment was zeroed.
    CutTornTail,
    /// Everything from the first corruption on was removed.
    CutAtCorruption,
}

/// Bytes zeroed in one segment.
#[derive(Clone, Debug, Serialize)]
pub struct Cut {
    pub segment: String,
    pub offset: u64,
    /// The first LSN that is no longer in the log.
    pub lsn: Lsn,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RepairReport {
    pub action: RepairAction,
    pub backup_dir: Option<PathBuf>,
    pub cut: Option<Cut>,
    /// Whole segments moved into the backup folder.
    pub moved_segments: Vec<String>,
    /// The corruption that was cut at, if any.
    pub corruption: Option<CorruptionAt>,
    /// The last LSN left in the log.
    pub last_lsn: Lsn,
}

/// Repairs the log in `dir` (which must not be open elsewhere: this takes its lock).
///
/// A torn tail is always cut. Corruption is cut only with `truncate_after_corruption`,
/// since it removes records that were acknowledged; otherwise it is returned as an error.
/// Every segment changed or removed is first copied into `dir/backup-<unix-nanoseconds>/`.
pub fn repair(dir: &Path, truncate_after_corruption: bool) -> Result<RepairReport> {
    let _lock = DirLock::acquire(dir)?;
    repair_locked(&OsStorage, dir, truncate_after_corruption)
}

pub(crate) fn repair_locked(
    storage: &dyn Storage,
    dir: &Path,
    truncate_after_corruption: bool,
) -> Result<RepairReport> {
    let files = LogFiles::open(storage, dir, false)?;
    let scan = scan_log(&files, |_| {}, |_| {});
    let mut report = RepairReport {
        action: RepairAction::Nothing,
        backup_dir: None,
        cut: None,
        moved_segments: Vec::new(),
        corruption: scan.corruption.clone(),
        last_lsn: scan.last_lsn,
    };
    let (segment, offset, lsn) = match (&scan.corruption, &scan.torn_tail) {
        (Some(at), _) if !truncate_after_corruption => {
            return Err(WalError::Corruption(at.clone()))
        }
        (Some(at), _) => {
            report.action = RepairAction::CutAtCorruption;
            (at.segment.clone(), at.offset, at.lsn)
        }
        (None, Some(torn)) => {
            report.action = RepairAction::CutTornTail;
            (torn.segment.clone(), torn.offset, torn.lsn)
        }
        (None, None) => return Ok(report),
    };
    let backup = dir.join(format!(
        "backup-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    storage
        .create_dir_all(&backup)
        .map_err(|e| WalError::io(format!("creating {}", backup.display()), e))?;
    report.backup_dir = Some(backup.clone());
    let cut_lsn = SegmentName::parse(&segment).expect("scan names segments");
    if offset == 0 {
        // The segment itself is bad (header or LSN gap): it goes whole, with all after it.
        move_segments_from(storage, dir, &backup, cut_lsn, &mut report)?;
    } else {
        let seg = files
            .segments
            .iter()
            .find(|s| s.name() == segment)
            .expect("scanned segment is open");
        copy_file(storage, seg.path(), &backup.join(&segment), seg.bytes())?;
        let written = super::scan::written_len(seg.bytes_from(offset as usize));
        let file = storage
            .open(seg.path(), true)
            .map_err(|e| WalError::io("opening segment to cut", e))?;
        zero_range(file.as_ref(), offset, written as u64)?;
        report.cut = Some(Cut {
            segment: segment.clone(),
            offset,
            lsn,
            bytes: written as u64,
        });
        move_segments_from(storage, dir, &backup, cut_lsn.next(), &mut report)?;
    }
    storage
        .sync_dir(&backup)
        .map_err(|e| WalError::io("syncing the backup folder", e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| WalError::io("syncing the WAL folder", e))?;
    report.last_lsn = lsn.prev();
    Ok(report)
}

/// Moves every segment whose first LSN is at least `from` into `backup`.
fn move_segments_from(
    storage: &dyn Storage,
    dir: &Path,
    backup: &Path,
    from: Lsn,
    report: &mut RepairReport,
) -> Result<()> {
    let names = storage
        .list_files(dir)
        .map_err(|e| WalError::io("listing the WAL folder", e))?;
    for name in names {
        if SegmentName::parse(&name).is_some_and(|lsn| lsn >= from) {
            storage
                .rename(&dir.join(&name), &backup.join(&name))
                .map_err(|e| WalError::io(format!("moving {name} to the backup folder"), e))?;
            report.moved_segments.push(name);
        }
    }
    Ok(())
}

fn copy_file(storage: &dyn Storage, from: &Path, to: &Path, bytes: &[u8]) -> Result<()> {
    let context = || format!("copying {} to {}", from.display(), to.display());
    let file = storage
        .create_new(to)
        .map_err(|e| WalError::io(context(), e))?;
    file.write_all_at(bytes, 0)
        .map_err(|e| WalError::io(context(), e))?;
    file.sync_data().map_err(|e| WalError::io(context(), e))
}

pub(crate) fn zero_range(
    file: &dyn super::storage::StorageFile,
    offset: u64,
    len: u64,
) -> Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut at = offset;
    while at < offset + len {
        let n = CHUNK.min(offset + len - at) as usize;
        file.write_all_at(&zeros[..n], at)
            .map_err(|e| WalError::io("zeroing a cut tail", e))?;
        at += n as u64;
    }
    file.sync_data()
        .map_err(|e| WalError::io("syncing a cut tail", e))
}
