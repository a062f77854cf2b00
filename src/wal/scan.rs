//! Reads a log from disk and judges it: the one reader behind recovery, the WAL tool's
//! `dump`, `verify`, `stats` and `repair`, and their tests.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{CorruptionAt, CorruptionReason, Result, WalError};
use super::format::{decode_record, is_valid_record_at, Decoded, RecordRef, RECORD_ALIGN_BYTES};
use super::lsn::{Lsn, SegmentName};
use super::segment::{Segment, FIRST_RECORD_OFFSET};
use super::storage::Storage;

/// How a segment's records end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SegmentEnd {
    /// After the last record there is nothing, or only zeros.
    Clean,
    /// The last segment ends in bytes of a write that never completed: the normal result
    /// of a crash. Nothing in it was ever acknowledged (see docs/wal-format.md).
    TornTail {
        offset: u64,
        lsn: Lsn,
        bytes: u64,
    },
    Corrupt(CorruptionAt),
}

#[derive(Clone, Debug, Serialize)]
pub struct SegmentScan {
    pub segment: String,
    pub first_lsn: Lsn,
    pub records: u64,
    /// The LSN the record after the last valid one would have.
    pub next_lsn: Lsn,
    /// Offset just past the last valid record.
    pub valid_end: u64,
    pub file_bytes: u64,
    pub end: SegmentEnd,
}

/// A record found by a scan, and where it is.
#[derive(Clone, Copy, Debug)]
pub struct ScannedRecord<'a> {
    pub segment: &'a str,
    pub offset: u64,
    pub record: RecordRef<'a>,
}

/// Scans one segment from its first record, calling `on_record` for every valid one.
/// `is_last` decides whether damage at the end may be a torn tail.
pub fn scan_segment<'a>(
    segment: &'a Segment,
    is_last: bool,
    mut on_record: impl FnMut(ScannedRecord<'a>),
) -> SegmentScan {
    let bytes = segment.bytes();
    let salt = segment.header().salt;
    let mut offset = (FIRST_RECORD_OFFSET as usize).min(bytes.len());
    let mut expected = segment.first_lsn();
    let mut records = 0u64;
    let stop = loop {
        match decode_record(&bytes[offset..], salt, expected) {
            Decoded::Record(record) => {
                debug_assert_eq!(record.lsn, expected);
                on_record(ScannedRecord {
                    segment: segment.name(),
                    offset: offset as u64,
                    record,
                });
                offset += record.frame_len;
                expected = expected.next();
                records += 1;
            }
            Decoded::Padding { frame_len } => offset += frame_len,
            other => break other,
        }
    };
    let end = judge_end(segment, offset, expected, &stop, is_last);
    SegmentScan {
        segment: segment.name().to_owned(),
        first_lsn: segment.first_lsn(),
        records,
        next_lsn: expected,
        valid_end: offset as u64,
        file_bytes: bytes.len() as u64,
        end,
    }
}

/// Decides what the bytes after the last valid record of a segment mean.
///
/// A crash can only damage what was written after the last completed sync, and the
/// committer writes at most `torn_window_bytes` to a segment between two syncs. So in the
/// last segment, damage with no valid record beyond that window is a torn tail; a valid
/// record further on proves the damaged bytes were synced, so they are corruption. Closed
/// segments were synced whole before the next one was created: any damage is corruption.
fn judge_end(
    segment: &Segment,
    offset: usize,
    expected: Lsn,
    stop: &Decoded<'_>,
    is_last: bool,
) -> SegmentEnd {
    let bytes = segment.bytes();
    let rest = &bytes[offset..];
    let written = written_len(rest) as u64;
    let corrupt = |reason| {
        SegmentEnd::Corrupt(CorruptionAt {
            segment: segment.name().to_owned(),
            offset: offset as u64,
            lsn: expected,
            reason,
        })
    };
    let stop_reason = |next_valid: Option<u64>| match stop {
        Decoded::Invalid(invalid) => CorruptionReason::Record(invalid.clone()),
        Decoded::Incomplete {
            frame_len,
            available,
        } => CorruptionReason::IncompleteRecord {
            frame_len: *frame_len,
            available: *available,
        },
        Decoded::End => match next_valid {
            Some(next_valid_offset) => {
                CorruptionReason::HoleBeforeValidRecords { next_valid_offset }
            }
            None => CorruptionReason::TrailingGarbage { bytes: written },
        },
        Decoded::Record(_) | Decoded::Padding { .. } => {
            unreachable!("a scan stops only at a non-frame")
        }
    };
    if !is_last {
        if matches!(stop, Decoded::End) && written == 0 {
            return SegmentEnd::Clean;
        }
        return corrupt(stop_reason(None));
    }
    let window = segment.header().torn_window_bytes as usize;
    let search_from = (offset + window).next_multiple_of(RECORD_ALIGN_BYTES);
    // Past the last non-zero byte nothing can be valid: most of a live segment is zeros.
    let next_valid = (search_from..offset + written as usize)
        .step_by(RECORD_ALIGN_BYTES)
        .find(|&at| is_valid_record_at(&bytes[at..], segment.header().salt, expected));
    if let Some(at) = next_valid {
        return corrupt(stop_reason(Some(at as u64)));
    }
    if matches!(stop, Decoded::End) && written == 0 {
        return SegmentEnd::Clean;
    }
    SegmentEnd::TornTail {
        offset: offset as u64,
        lsn: expected,
        bytes: written.max(1),
    }
}

/// How many bytes of `bytes` there are up to and including the last non-zero one. Compares
/// whole pages first, so a mostly empty 64 MiB segment takes microseconds, not a byte loop.
pub fn written_len(bytes: &[u8]) -> usize {
    const PAGE: usize = 4096;
    static ZEROS: [u8; PAGE] = [0; PAGE];
    let full_pages = bytes.len() / PAGE;
    if let Some(i) = bytes[full_pages * PAGE..].iter().rposition(|&b| b != 0) {
        return full_pages * PAGE + i + 1;
    }
    let last_page = (0..full_pages)
        .rev()
        .find(|&p| bytes[p * PAGE..(p + 1) * PAGE] != ZEROS);
    last_page.map_or(0, |p| {
        let page = &bytes[p * PAGE..(p + 1) * PAGE];
        p * PAGE + page.iter().rposition(|&b| b != 0).expect("a non-zero page") + 1
    })
}

/// The segment files of a log directory, opened and mapped in LSN order.
pub struct LogFiles {
    pub dir: PathBuf,
    /// Segments in LSN order, up to (not including) the first whose header is bad.
    pub segments: Vec<Segment>,
    /// The first segment whose header could not be read, if any.
    pub bad_header: Option<CorruptionAt>,
    /// Leftovers of interrupted segment creations.
    pub temp_files: Vec<String>,
}

impl LogFiles {
    /// Opens every segment in `dir`. With `writable_last`, the last one is opened for writing
    /// (recovery seals it). A missing directory is an empty log.
    pub fn open(storage: &dyn Storage, dir: &Path, writable_last: bool) -> Result<LogFiles> {
        let names = match storage.list_files(dir) {
            Ok(names) => names,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(WalError::io(format!("listing {}", dir.display()), e)),
        };
        let temp_files = names
            .iter()
            .filter(|n| SegmentName::is_temp(n))
            .cloned()
            .collect();
        let mut segment_names: Vec<(Lsn, &String)> = names
            .iter()
            .filter_map(|n| SegmentName::parse(n).map(|lsn| (lsn, n)))
            .collect();
        segment_names.sort();
        let mut segments = Vec::with_capacity(segment_names.len());
        let mut bad_header = None;
        let count = segment_names.len();
        for (i, (_, name)) in segment_names.into_iter().enumerate() {
            match Segment::open(storage, dir, name, writable_last && i + 1 == count) {
                Ok(segment) => segments.push(segment),
                Err(WalError::Corruption(at)) => {
                    bad_header = Some(at);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(LogFiles {
            dir: dir.to_owned(),
            segments,
            bad_header,
            temp_files,
        })
    }
}

/// The verdict on a whole log.
#[derive(Clone, Debug, Serialize)]
pub struct LogScan {
    pub segments: Vec<SegmentScan>,
    pub records: u64,
    pub first_lsn: Option<Lsn>,
    /// The LSN of the last valid record (zero for an empty log).
    pub last_lsn: Lsn,
    /// A torn tail of the last segment, if there is one.
    pub torn_tail: Option<TornTail>,
    /// The first corruption, after which nothing was read.
    pub corruption: Option<CorruptionAt>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TornTail {
    pub segment: String,
    pub offset: u64,
    pub lsn: Lsn,
    pub bytes: u64,
}

impl LogScan {
    pub fn is_clean(&self) -> bool {
        self.torn_tail.is_none() && self.corruption.is_none()
    }
}

/// Scans every segment in order, checking that LSNs continue across segments. Stops at the
/// first corruption. `on_segment` sees each segment's result as it is done (for progress).
pub fn scan_log<'a>(
    files: &'a LogFiles,
    mut on_record: impl FnMut(ScannedRecord<'a>),
    mut on_segment: impl FnMut(&SegmentScan),
) -> LogScan {
    let mut scan = LogScan {
        segments: Vec::new(),
        records: 0,
        first_lsn: None,
        last_lsn: Lsn::ZERO,
        torn_tail: None,
        corruption: None,
    };
    let count = files.segments.len();
    let mut expected: Option<Lsn> = None;
    for (i, segment) in files.segments.iter().enumerate() {
        if let Some(expected) = expected.filter(|&e| e != segment.first_lsn()) {
            scan.corruption = Some(CorruptionAt {
                segment: segment.name().to_owned(),
                offset: 0,
                lsn: expected,
                reason: CorruptionReason::LsnGap {
                    expected,
                    found: segment.first_lsn(),
                },
            });
            return scan;
        }
        // A segment followed by one with a bad header is not the last: the bad header is
        // itself corruption, so this one's tail must be clean.
        let is_last = i + 1 == count && files.bad_header.is_none();
        let result = scan_segment(segment, is_last, &mut on_record);
        on_segment(&result);
        expected = Some(result.next_lsn);
        scan.records += result.records;
        if result.records > 0 {
            scan.first_lsn.get_or_insert(result.first_lsn);
            scan.last_lsn = result.next_lsn.prev();
        }
        match &result.end {
            SegmentEnd::Clean => {}
            SegmentEnd::TornTail { offset, lsn, bytes } => {
                scan.torn_tail = Some(TornTail {
                    segment: result.segment.clone(),
                    offset: *offset,
                    lsn: *lsn,
                    bytes: *bytes,
                });
            }
            SegmentEnd::Corrupt(at) => scan.corruption = Some(at.clone()),
        }
        scan.segments.push(result);
        if scan.corruption.is_some() {
            return scan;
        }
    }
    scan.corruption = files.bad_header.clone();
    scan
}

#[cfg(test)]
mod tests {
    use super::written_len;

    #[test]
    fn written_len_finds_the_last_non_zero_byte() {
        let mut bytes = vec![0u8; 3 * 4096 + 100];
        assert_eq!(written_len(&bytes), 0);
        bytes[5000] = 1;
        assert_eq!(written_len(&bytes), 5001);
        bytes[4095] = 1;
        assert_eq!(written_len(&bytes), 5001);
        bytes[3 * 4096 + 50] = 2;
        assert_eq!(written_len(&bytes), 3 * 4096 + 51);
        assert_eq!(written_len(&bytes[..4096]), 4096);
    }
}
