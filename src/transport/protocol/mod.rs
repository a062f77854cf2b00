//! The engram/1 wire protocol: length-prefixed binary frames, little-endian.
//! docs/protocol.md specifies every field and gives hex examples that tests check.
//!
//! ```text
//! frame := length:u32 | type:u8 | body        length = 1 + body bytes, at most frame_bytes_max
//! str8  := len:u8  | utf-8 bytes              str16 := len:u16 | bytes     str32 := len:u32 | bytes
//! ```
//!
//! The decoder has three outcomes: a frame, `Ok(None)` when more bytes are needed, or a
//! typed `ProtocolError`. It checks a length against its limit before allocating for it.

use std::fmt;

use crate::index::{Consistency, RecallHit};
use crate::observation::Observation;
use crate::space::Metric;

mod codec;
mod wire;

pub use codec::RECALL_HIT_FIXED_BYTES;

/// Negotiated in QUIC with ALPN.
pub const ALPN: &[u8] = b"engram/1";
pub const PROTOCOL_VERSION: u16 = 1;
pub const FRAME_HEADER_BYTES: usize = 5;
/// The default limit on a frame's length field; servers may lower it (advertised in Welcome).
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 1 << 20;
pub const RESUME_TOKEN_BYTES: usize = 16;
/// Hello.flags: a resume token follows.
pub const HELLO_RESUME_TOKEN: u8 = 1;
/// Hello.flags: an auth token (str8) follows, after the resume token if both.
pub const HELLO_AUTH_TOKEN: u8 = 2;

/// Frame type codes: client to server below 0x40, server to client from 0x40.
/// 0x10..0x1F and 0x50..0x5F are for recall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Observe = 0x02,
    ClientGoodbye = 0x03,
    ListSpaces = 0x04,
    CheckIds = 0x05,
    CreateSpace = 0x06,
    Recall = 0x10,
    Welcome = 0x41,
    Ack = 0x42,
    Reject = 0x43,
    FlowControl = 0x44,
    ServerGoodbye = 0x45,
    Error = 0x46,
    SpaceList = 0x47,
    CheckResult = 0x48,
    SpaceDefined = 0x49,
    RecallResult = 0x50,
}

impl FrameType {
    pub fn from_u8(code: u8) -> Option<FrameType> {
        Some(match code {
            0x01 => FrameType::Hello,
            0x02 => FrameType::Observe,
            0x03 => FrameType::ClientGoodbye,
            0x04 => FrameType::ListSpaces,
            0x05 => FrameType::CheckIds,
            0x06 => FrameType::CreateSpace,
            0x10 => FrameType::Recall,
            0x41 => FrameType::Welcome,
            0x42 => FrameType::Ack,
            0x43 => FrameType::Reject,
            0x44 => FrameType::FlowControl,
            0x45 => FrameType::ServerGoodbye,
            0x46 => FrameType::Error,
            0x47 => FrameType::SpaceList,
            0x48 => FrameType::CheckResult,
            0x49 => FrameType::SpaceDefined,
            0x50 => FrameType::RecallResult,
            _ => return None,
        })
    }
}

/// The limits a server announces in Welcome; every one is also enforced by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub frame_bytes_max: u32,
    pub space_name_bytes_max: u8,
    pub id_bytes_max: u16,
    pub what_bytes_max: u32,
    pub embedding_dim_max: u32,
    /// Bytes of Observe frames a session may have sent but not yet had acknowledged.
    pub inflight_bytes_max: u32,
}

/// Load as the server sees it; sent in FlowControl.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum LoadState {
    #[default]
    Normal = 0,
    Warning = 1,
    Critical = 2,
    Overloaded = 3,
}

impl LoadState {
    fn from_u8(v: u8) -> Option<LoadState> {
        Some(match v {
            0 => LoadState::Normal,
            1 => LoadState::Warning,
            2 => LoadState::Critical,
            3 => LoadState::Overloaded,
            _ => return None,
        })
    }
}

/// An Observe frame: the session's `seq`-th observation.
#[derive(Clone, Debug, PartialEq)]
pub struct ObserveFrame {
    pub seq: u64,
    pub observation: Observation,
}

impl ObserveFrame {
    /// Bytes this frame takes on the wire, header included: what it costs in credits.
    pub fn encoded_len(&self) -> usize {
        let o = &self.observation;
        FRAME_HEADER_BYTES
            + 8
            + 1
            + o.space.len()
            + 2
            + o.id.len()
            + 8
            + 4
            + 4
            + o.what.len()
            + 4
            + 4 * o.embedding.len()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Hello {
        version: u16,
        client_name: String,
        resume_token: Option<[u8; RESUME_TOKEN_BYTES]>,
        /// The token of the server's `--auth-file`, if it has one.
        auth_token: Option<String>,
    },
    Observe(ObserveFrame),
    /// The client will send nothing after `last_seq`.
    ClientGoodbye {
        last_seq: u64,
    },
    /// Asks for every space; answered in order with the session's acks (SpaceList).
    ListSpaces {
        request_id: u64,
    },
    /// Defines a space before its first observation (answer: SpaceDefined).
    CreateSpace {
        request_id: u64,
        space: String,
        dim: u32,
        metric: Metric,
    },
    /// Asks which of `ids` are stored durably in `space` (CheckResult). At most
    /// `CHECK_IDS_MAX` ids.
    CheckIds {
        request_id: u64,
        space: String,
        ids: Vec<String>,
    },
    /// The `k` observations of `space` nearest to `embedding`, or (with `query_id` not
    /// empty and no embedding) to the stored observation `query_id`'s own embedding
    /// (RecallResult). `ef`: a wider search beam than the server's, 0 for its own.
    Recall {
        request_id: u64,
        space: String,
        k: u16,
        ef: u16,
        consistency: Consistency,
        query_id: String,
        embedding: Vec<f32>,
    },
    Welcome {
        session_id: u64,
        resume_token: [u8; RESUME_TOKEN_BYTES],
        last_acked_seq: u64,
        limits: Limits,
    },
    /// Cumulative: every observation up to `seq` is durable; `lsn` is the log position of `seq`.
    Ack {
        seq: u64,
        lsn: u64,
    },
    /// One observation was refused; the session goes on.
    Reject {
        seq: u64,
        code: u16,
        field: String,
        expected: String,
        got: String,
    },
    FlowControl {
        credits: u32,
        state: LoadState,
        retry_after_ms: u32,
    },
    ServerGoodbye {
        last_acked_seq: u64,
    },
    /// The session cannot go on (wrong version, malformed frame); the server closes it.
    Error {
        code: u16,
        message: String,
    },
    SpaceList {
        request_id: u64,
        /// The log's durable LSN when the list was made.
        durable_lsn: u64,
        spaces: Vec<SpaceEntry>,
    },
    /// `found[i]`: whether the request's `ids[i]` is stored durably.
    CheckResult {
        request_id: u64,
        found: Vec<bool>,
    },
    /// What CreateSpace did. Refused: `code` is the RejectCode and `message` says why.
    SpaceDefined {
        request_id: u64,
        outcome: DefineOutcome,
        /// The definition's log position when created; 0 otherwise.
        lsn: u64,
        code: u16,
        message: String,
    },
    /// Results of a Recall, best first, possibly over several frames: every frame but
    /// the last has `more` set. On failure one frame with `status` not Ok, and `message`
    /// says why.
    RecallResult {
        request_id: u64,
        status: RecallStatus,
        message: String,
        /// The results reflect every observation of the space up to this LSN.
        as_of_lsn: u64,
        more: bool,
        hits: Vec<RecallHit>,
    },
}

/// RecallResult.status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum RecallStatus {
    Ok = 0,
    UnknownSpace = 1,
    DimensionMismatch = 2,
    /// k, ef or the embedding is out of range.
    InvalidQuery = 3,
    /// AsOf an LSN that is not durable yet.
    FutureLsn = 4,
    /// The server could not read its log or index; see the message.
    Failed = 5,
    /// Recall by id: no observation with that id is stored in the space.
    UnknownId = 6,
    /// The session's token may not read the space (whether or not it exists).
    Forbidden = 7,
}

impl RecallStatus {
    fn from_u16(v: u16) -> Option<RecallStatus> {
        Some(match v {
            0 => RecallStatus::Ok,
            1 => RecallStatus::UnknownSpace,
            2 => RecallStatus::DimensionMismatch,
            3 => RecallStatus::InvalidQuery,
            4 => RecallStatus::FutureLsn,
            5 => RecallStatus::Failed,
            6 => RecallStatus::UnknownId,
            7 => RecallStatus::Forbidden,
            _ => return None,
        })
    }
}

/// Recall.consistency on the wire: a code, then the AsOf LSN (0 for the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConsistencyCode {
    ReadYourWrites = 0,
    AsOf = 1,
    Eventual = 2,
}

/// SpaceDefined.outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DefineOutcome {
    Created = 0,
    /// It existed with the same dimension and metric.
    Existed = 1,
    Refused = 2,
}

impl DefineOutcome {
    fn from_u8(v: u8) -> Option<DefineOutcome> {
        Some(match v {
            0 => DefineOutcome::Created,
            1 => DefineOutcome::Existed,
            2 => DefineOutcome::Refused,
            _ => return None,
        })
    }
}

/// One space in a SpaceList.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceEntry {
    pub name: String,
    pub dim: u32,
    pub observations: u64,
    /// The log position of its newest stored observation; 0 if none.
    pub last_lsn: u64,
}

/// The most ids one CheckIds frame may carry.
pub const CHECK_IDS_MAX: u32 = 4096;

/// Why bytes are not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame length {length} is outside 1..={max}")]
    FrameLength { length: u32, max: u32 },
    #[error("unknown frame type {code:#04x}")]
    UnknownType { code: u8 },
    #[error("{frame:?} frame ends inside field {field}")]
    Truncated {
        frame: FrameType,
        field: &'static str,
    },
    #[error("{frame:?} frame has {extra} bytes after its last field")]
    TrailingBytes { frame: FrameType, extra: usize },
    #[error("field {field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("field {field} has invalid value {value}")]
    InvalidValue { field: &'static str, value: u64 },
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why one observation was refused (Reject.code). The session goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum RejectCode {
    InvalidSpace = 1,
    InvalidId = 2,
    DimensionMismatch = 3,
    NonFiniteEmbedding = 4,
    WhatTooLong = 5,
    ConfidenceOutOfRange = 6,
    DimensionTooLarge = 7,
    /// Retryable: resend after `retry_after_ms` of the latest FlowControl.
    Overloaded = 8,
    /// Retryable: the server's disk is full.
    StorageFull = 9,
    EmptyEmbedding = 10,
    /// A new space beyond the server's `spaces_max`.
    TooManySpaces = 11,
    /// The session's token may not write this space (or the space does not exist: the
    /// answer is the same, so that it reveals nothing).
    Forbidden = 12,
}

impl RejectCode {
    pub const ALL: [RejectCode; 12] = [
        RejectCode::InvalidSpace,
        RejectCode::InvalidId,
        RejectCode::DimensionMismatch,
        RejectCode::NonFiniteEmbedding,
        RejectCode::WhatTooLong,
        RejectCode::ConfidenceOutOfRange,
        RejectCode::DimensionTooLarge,
        RejectCode::Overloaded,
        RejectCode::StorageFull,
        RejectCode::EmptyEmbedding,
        RejectCode::TooManySpaces,
        RejectCode::Forbidden,
    ];

    /// The name used in metrics, logs and the WebSocket gateway.
    pub fn name(self) -> &'static str {
        match self {
            RejectCode::InvalidSpace => "invalid_space",
            RejectCode::InvalidId => "invalid_id",
            RejectCode::DimensionMismatch => "dimension_mismatch",
            RejectCode::NonFiniteEmbedding => "non_finite_embedding",
            RejectCode::WhatTooLong => "what_too_long",
            RejectCode::ConfidenceOutOfRange => "confidence_out_of_range",
            RejectCode::DimensionTooLarge => "dimension_too_large",
            RejectCode::Overloaded => "overloaded",
            RejectCode::StorageFull => "storage_full",
            RejectCode::EmptyEmbedding => "empty_embedding",
            RejectCode::TooManySpaces => "too_many_spaces",
            RejectCode::Forbidden => "forbidden",
        }
    }
}

/// Why the session ends (Error.code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    UnsupportedVersion = 1,
    MalformedFrame = 2,
    UnexpectedFrame = 3,
    UnknownResumeToken = 4,
    ShuttingDown = 5,
    /// The log failed (a sync error): nothing more is acknowledged until a restart.
    StorageFailed = 6,
    /// No token, or one the server does not know (the server has an auth file).
    Unauthenticated = 7,
    /// The token may not read the space a CheckIds asked about.
    Forbidden = 8,
    /// A server limit (sessions, time to Hello) was reached; the message names it.
    LimitReached = 9,
}
