//! Every ingest limit, named, with its default. Each is announced to clients in Welcome.

use serde::{Deserialize, Serialize};

use crate::transport::protocol::{Limits, FRAME_BYTES_MAX_DEFAULT};

pub const SPACE_NAME_BYTES_MAX: u8 = 64;
pub const ID_BYTES_MAX: u16 = 256;
pub const WHAT_BYTES_MAX_DEFAULT: u32 = 64 << 10;
/// The largest dimension accepted: 4096 f32 is 16 KiB per embedding.
pub const EMBEDDING_DIM_MAX_DEFAULT: u32 = 4096;
pub const INFLIGHT_BYTES_MAX_DEFAULT: u32 = 8 << 20;
/// 10,000 spaces of the longest names list in about 850 KB, under the 1 MiB frame.
pub const SPACES_MAX_DEFAULT: u32 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestLimits {
    pub frame_bytes_max: u32,
    pub what_bytes_max: u32,
    pub embedding_dim_max: u32,
    pub inflight_bytes_max: u32,
    /// Observation bytes all sessions together may have unacknowledged (load.rs): past
    /// three quarters sessions pause, past all of it batches are refused as Overloaded.
    pub queue_bytes_max: u64,
    /// Spaces the server keeps at most; an observation for one more is refused
    /// (TooManySpaces). Bounds the space table and keeps a SpaceList within one frame.
    pub spaces_max: u32,
    /// Records durable but not yet indexed, at most (load.rs): past three quarters
    /// sessions pause, at the bound batches are refused as Overloaded.
    pub index_lag_max: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            what_bytes_max: WHAT_BYTES_MAX_DEFAULT,
            embedding_dim_max: EMBEDDING_DIM_MAX_DEFAULT,
            inflight_bytes_max: INFLIGHT_BYTES_MAX_DEFAULT,
            queue_bytes_max: super::load::QUEUE_BYTES_MAX_DEFAULT,
            spaces_max: SPACES_MAX_DEFAULT,
            index_lag_max: super::load::INDEX_LAG_MAX_DEFAULT,
        }
    }
}

impl IngestLimits {
    /// The limits as the protocol announces them.
    pub fn announced(&self) -> Limits {
        Limits {
            frame_bytes_max: self.frame_bytes_max,
            space_name_bytes_max: SPACE_NAME_BYTES_MAX,
            id_bytes_max: ID_BYTES_MAX,
            what_bytes_max: self.what_bytes_max,
            embedding_dim_max: self.embedding_dim_max,
            inflight_bytes_max: self.inflight_bytes_max,
        }
    }
}
