//! The log's configuration and its named limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::WalError;
use super::format::{frame_len, COMMIT_ALIGN_BYTES, RECORD_PAYLOAD_BYTES_MAX};
use super::segment::FIRST_RECORD_OFFSET;
use super::storage::Preallocation;

pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Small enough for tests that want many segments, large enough for one record.
pub const SEGMENT_BYTES_MIN: u64 = 8 << 10;
pub const COMMIT_BYTES_MAX_DEFAULT: u64 = 4 << 20;
pub const COMMIT_QUEUE_APPENDS_MAX_DEFAULT: usize = 4096;
pub const RECORD_PAYLOAD_BYTES_MAX_DEFAULT: u32 = 1 << 20;

/// What recovery does with damage it finds when the log is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryMode {
    /// Cut an incomplete or torn tail of the last segment (a normal result of a crash);
    /// refuse to open on damage anywhere else.
    #[default]
    TolerateTornTail,
    /// Refuse to open on any damage, a torn tail included.
    AbsoluteConsistency,
    /// Keep every record before the first damage and move everything after it into a
    /// backup folder: loses acknowledged records, so only an operator chooses it.
    SalvageBeforeCorruption,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WalConfig {
    /// Size every segment file is preallocated to.
    pub segment_bytes: u64,
    /// How a segment's space is reserved.
    pub preallocation: Preallocation,
    /// Most bytes the committer writes between two syncs; bounds the torn tail after a crash.
    pub commit_bytes_max: u64,
    /// How long the committer waits after the first waiting append for more to join the
    /// same sync. Zero: sync at once; appends that arrive during a sync share the next one.
    #[serde(with = "micros")]
    pub commit_window: Duration,
    /// Appends waiting for the committer before appenders wait for room.
    pub commit_queue_appends_max: usize,
    /// Largest record payload accepted.
    pub record_payload_bytes_max: u32,
    pub recovery_mode: RecoveryMode,
    /// Keep the next segment prepared (preallocated and synced) in the background, so a
    /// roll costs a header write and a rename, not a 64 MiB write while appenders wait.
    pub prepare_next_segment: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            preallocation: Preallocation::Fallocate,
            commit_bytes_max: COMMIT_BYTES_MAX_DEFAULT,
            commit_window: Duration::ZERO,
            commit_queue_appends_max: COMMIT_QUEUE_APPENDS_MAX_DEFAULT,
            record_payload_bytes_max: RECORD_PAYLOAD_BYTES_MAX_DEFAULT,
            recovery_mode: RecoveryMode::default(),
            prepare_next_segment: true,
        }
    }
}

impl WalConfig {
    /// The largest frame this configuration lets into the log.
    pub fn frame_bytes_max(&self) -> u64 {
        frame_len(self.record_payload_bytes_max as usize) as u64
    }

    /// The most bytes one append may take: it must fit in one empty segment, since an
    /// append is never split across segments.
    pub fn append_bytes_max(&self) -> u64 {
        self.segment_bytes - FIRST_RECORD_OFFSET
    }

    /// Most bytes written to a segment between two syncs: what a torn tail can span. The
    /// committer writes at most this much of frames, plus the padding to a page boundary.
    pub fn torn_window_bytes(&self) -> u64 {
        let window = self.commit_bytes_max.max(self.frame_bytes_max()) + 2 * COMMIT_ALIGN_BYTES;
        debug_assert!(super::format::commit_frames_max(window) >= self.frame_bytes_max());
        window
    }

    pub fn validate(&self) -> Result<(), WalError> {
        let fail = |msg: String| Err(WalError::Config(msg));
        if self.segment_bytes < SEGMENT_BYTES_MIN
            || !self.segment_bytes.is_multiple_of(COMMIT_ALIGN_BYTES)
        {
            return fail(format!(
                "segment_bytes must be a multiple of {COMMIT_ALIGN_BYTES} and at least {SEGMENT_BYTES_MIN}, got {}",
                self.segment_bytes
            ));
        }
        if self.record_payload_bytes_max == 0
            || self.record_payload_bytes_max > RECORD_PAYLOAD_BYTES_MAX
        {
            return fail(format!(
                "record_payload_bytes_max must be in 1..={RECORD_PAYLOAD_BYTES_MAX}, got {}",
                self.record_payload_bytes_max
            ));
        }
        if self.frame_bytes_max() > self.append_bytes_max() {
            return fail(format!(
                "a {}-byte record frame does not fit in a {}-byte segment",
                self.frame_bytes_max(),
                self.segment_bytes
            ));
        }
        if self.commit_bytes_max == 0 || self.commit_queue_appends_max == 0 {
            return fail("commit_bytes_max and commit_queue_appends_max must be positive".into());
        }
        Ok(())
    }
}

mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_micros() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}
