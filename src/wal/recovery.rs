//! Recovery on open: verify every record, cut a torn tail, refuse corruption.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::config::{RecoveryMode, WalConfig};
use super::error::{Result, WalError};
use super::format::{aligned_commit_end, encode_padding, RECORD_HEADER_BYTES};
use super::lsn::Lsn;
use super::repair::{repair_locked, zero_range, RepairAction, RepairReport};
use super::scan::{scan_log, LogFiles, TornTail};
use super::segment::Segment;
use super::storage::Storage;

#[derive(Clone, Debug, Serialize)]
pub struct RecoveryReport {
    pub segments: usize,
    pub records: u64,
    pub first_lsn: Option<Lsn>,
    /// The last LSN in the log: every record up to it is durable.
    pub last_lsn: Lsn,
    pub removed_temp_files: Vec<String>,
    /// The torn tail that was cut, if the last shutdown was a crash mid-write.
    pub torn_tail: Option<TornTail>,
    /// What `RecoveryMode::SalvageBeforeCorruption` removed, if anything.
    pub salvaged: Option<RepairReport>,
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

pub(crate) struct Recovered {
    /// Every segment in LSN order.
    pub segments: Vec<Arc<Segment>>,
    /// The offset appends continue at in the last segment, if it can take more records.
    pub append_offset: Option<u64>,
    /// The LSN the next record gets. Kept across an empty last segment, so LSNs never
    /// restart after older segments were truncated away.
    pub next_lsn: Lsn,
    pub report: RecoveryReport,
}

/// Brings the log in `dir` to a state where every record is valid and the last segment
/// holds nothing after its last record. The caller holds the directory lock.
pub(crate) fn recover(storage: &dyn Storage, dir: &Path, config: &WalConfig) -> Result<Recovered> {
    let started = Instant::now();
    storage
        .create_dir_all(dir)
        .map_err(|e| WalError::io(format!("creating {}", dir.display()), e))?;
    let salvaged = match config.recovery_mode {
        RecoveryMode::SalvageBeforeCorruption => Some(repair_locked(storage, dir, true)?)
            .filter(|r| r.action == RepairAction::CutAtCorruption),
        _ => None,
    };
    let files = LogFiles::open(storage, dir, true)?;
    for name in &files.temp_files {
        storage
            .remove_file(&dir.join(name))
            .map_err(|e| WalError::io(format!("removing {name}"), e))?;
        tracing::info!(file = %name, "removed the leftover of an interrupted segment creation");
    }
    if !files.temp_files.is_empty() {
        storage
            .sync_dir(dir)
            .map_err(|e| WalError::io("syncing the WAL folder", e))?;
    }
    let scan = scan_log(
        &files,
        |_| {},
        |segment| tracing::debug!(segment = %segment.segment, records = segment.records, "verified a WAL segment"),
    );
    if let Some(at) = scan.corruption {
        return Err(WalError::Corruption(at));
    }
    if let Some(torn) = &scan.torn_tail {
        if config.recovery_mode == RecoveryMode::AbsoluteConsistency {
            return Err(WalError::TornTail {
                segment: torn.segment.clone(),
                offset: torn.offset,
                lsn: torn.lsn,
                bytes: torn.bytes,
            });
        }
        tracing::warn!(
            segment = %torn.segment, offset = torn.offset, lsn = %torn.lsn, bytes_dropped = torn.bytes,
            "cut the torn tail of the log: bytes of a write that never completed (normal after a crash)"
        );
    }
    let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(files.segments.len());
    let mut append_offset = None;
    let last_scan = scan.segments.last().cloned();
    let next_lsn = last_scan.as_ref().map_or(Lsn::FIRST, |s| s.next_lsn);
    for segment in files.segments {
        segments.push(Arc::new(segment));
    }
    if let (Some(last), Some(last_scan)) = (segments.last(), last_scan) {
        if let Some(torn) = &scan.torn_tail {
            // Zero the torn bytes before anything is appended after them: stale frames of
            // the torn write carry this segment's salt and would otherwise look valid to a
            // later recovery's search past the torn window.
            zero_range(last.file().as_ref(), torn.offset, torn.bytes)?;
        }
        // A segment cut short by an older repair is not preallocated to its end any more.
        if last_scan.file_bytes == last.capacity() {
            append_offset = Some(pad_tail_to_page(
                last,
                last_scan.valid_end,
                last_scan.next_lsn,
            )?);
        }
    }
    let report = RecoveryReport {
        segments: segments.len(),
        records: scan.records,
        first_lsn: scan.first_lsn,
        last_lsn: scan.last_lsn,
        removed_temp_files: files.temp_files,
        torn_tail: scan.torn_tail,
        salvaged,
        duration: started.elapsed(),
    };
    tracing::info!(
        segments = report.segments, records = report.records, last_lsn = %report.last_lsn,
        ms = report.duration.as_secs_f64() * 1e3, "recovered the WAL"
    );
    Ok(Recovered {
        segments,
        append_offset,
        next_lsn,
        report,
    })
}

/// Pads the last segment from `end` to the next page boundary and syncs, so that appends
/// resume on a fresh page. A tail that ends mid-page holds records of a commit that was
/// torn by the crash and kept; once padded here they are never rewritten.
fn pad_tail_to_page(segment: &Segment, end: u64, next_lsn: Lsn) -> Result<u64> {
    let target = aligned_commit_end(end, segment.capacity());
    let gap = (target - end) as usize;
    if gap >= RECORD_HEADER_BYTES {
        let mut padding = Vec::with_capacity(gap);
        encode_padding(&mut padding, segment.header().salt, next_lsn, gap);
        let file = segment.file();
        file.write_all_at(&padding, end)
            .map_err(|e| WalError::io("padding the recovered tail", e))?;
        file.sync_data()
            .map_err(|e| WalError::io("syncing the recovered tail", e))?;
    }
    Ok(target)
}
