//! The log's errors: each variant is something a caller can act on.

use std::io;
use std::path::PathBuf;

use serde::Serialize;

use super::format::{HeaderError, InvalidRecord};
use super::lsn::Lsn;

/// Where damage was found, and what it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CorruptionAt {
    /// The segment's file name.
    pub segment: String,
    /// Byte offset in the segment file.
    pub offset: u64,
    /// The LSN the log expected at that position.
    pub lsn: Lsn,
    pub reason: CorruptionReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum CorruptionReason {
    #[error("bad segment header: {0}")]
    Header(HeaderError),
    #[error("{0}")]
    Record(InvalidRecord),
    #[error("the record is incomplete ({available} of {frame_len} bytes) but it is not at the tail of the log")]
    IncompleteRecord { frame_len: usize, available: usize },
    #[error(
        "nothing is written here, yet checksum-valid records follow at offset {next_valid_offset}"
    )]
    HoleBeforeValidRecords { next_valid_offset: u64 },
    #[error("segment starts at LSN {found} but the previous segment ends before LSN {expected}")]
    LsnGap { expected: Lsn, found: Lsn },
    #[error("{bytes} non-zero bytes follow the last record of a closed segment")]
    TrailingGarbage { bytes: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(
        "WAL corruption in segment {} at offset {} (LSN {}): {}. Nothing after it was read. \
         Inspect with `engram-wal verify`; `engram-wal repair --truncate-after-corruption` \
         keeps every record before this point (a backup of what it removes is kept)",
        .0.segment, .0.offset, .0.lsn, .0.reason
    )]
    Corruption(CorruptionAt),
    #[error(
        "the last segment {segment} has a torn tail at offset {offset} (LSN {lsn}, {bytes} bytes), \
         and recovery mode absolute_consistency refuses to cut it"
    )]
    TornTail {
        segment: String,
        offset: u64,
        lsn: Lsn,
        bytes: u64,
    },
    #[error("the log failed earlier and accepts no more appends: {cause}")]
    Failed { cause: String },
    #[error("no space to create WAL segment {path}: {source}; retry once space is freed")]
    StorageFull { path: PathBuf, source: io::Error },
    #[error("I/O error while {context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("an append of {bytes} bytes is larger than the limit of {max} bytes")]
    AppendTooLarge { bytes: u64, max: u64 },
    #[error("a record payload of {bytes} bytes is larger than the limit of {max} bytes")]
    RecordTooLarge { bytes: u64, max: u64 },
    #[error("an append must hold at least one record")]
    EmptyAppend,
    #[error("LSN {requested} is no longer in the log; the oldest record is LSN {oldest}")]
    Truncated { requested: Lsn, oldest: Lsn },
    #[error("the log is closed")]
    Closed,
    #[error("the WAL directory {dir} is locked by another process (is a server running?)")]
    Locked { dir: PathBuf },
    #[error("invalid WAL configuration: {0}")]
    Config(String),
}

impl WalError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> WalError {
        WalError::Io {
            context: context.into(),
            source,
        }
    }

    /// True if the same append may succeed later without operator action.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::StorageFull { .. })
    }
}

pub type Result<T, E = WalError> = std::result::Result<T, E>;
