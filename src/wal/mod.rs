//! The write-ahead log: segmented, preallocated, memory-mapped for reading, checksummed,
//! with group commit and crash recovery. docs/wal-format.md describes the format, the
//! commit protocol and every crash case.
//!
//! ```text
//! appenders --(bounded channel)--> committer thread: write batch, fdatasync, publish durable LSN
//!                                                           |
//! readers <--(watch: durable LSN)----------------------------+  read records in place via mmap
//! ```

mod committer;
mod config;
mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod format;
mod lock;
mod log;
mod lsn;
mod reader;
mod recovery;
mod repair;
mod scan;
mod segment;
mod storage;

pub use config::{
    RecoveryMode, WalConfig, COMMIT_BYTES_MAX_DEFAULT, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MIN,
};
pub use error::{CorruptionAt, CorruptionReason, Result, WalError};
pub use format::{
    decode_record, encode_record, frame_len, Decoded, HeaderError, InvalidRecord, RecordKind,
    RecordRef, SegmentHeader, FORMAT_VERSION, RECORD_HEADER_BYTES, RECORD_PAYLOAD_BYTES_MAX,
    SEGMENT_HEADER_BYTES,
};
pub use lock::DirLock;
pub use log::{Entry, Submitted, Wal, WalStats};
pub use lsn::{Lsn, LsnRange, SegmentName};
pub use reader::{Record, RecordCursor, WalReader};
pub use recovery::RecoveryReport;
pub use repair::{repair, Cut, RepairAction, RepairReport};
pub use scan::{
    scan_log, scan_segment, LogFiles, LogScan, ScannedRecord, SegmentEnd, SegmentScan, TornTail,
};
pub use segment::{Segment, FIRST_RECORD_OFFSET};
pub use storage::{FileMap, OsStorage, Preallocation, Storage, StorageFile};

/// The WAL's folder inside a data directory.
pub fn wal_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("wal")
}
