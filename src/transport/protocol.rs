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

/// Negotiated in QUIC with ALPN.
pub const ALPN: &[u8] = b"engram/1";
pub const PROTOCOL_VERSION: u16 = 1;
pub const FRAME_HEADER_BYTES: usize = 5;
/// The default limit on a frame's length field; servers may lower it (advertised in Welcome).
pub const FRAME_BYTES_MAX_DEFAULT: u32 = 1 << 20;
pub const RESUME_TOKEN_BYTES: usize = 16;

/// Frame type codes: client to server below 0x40, server to client from 0x40.
/// 0x10..0x1F and 0x50..0x5F are kept for recall (issue 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    Hello = 0x01,
    Observe = 0x02,
    ClientGoodbye = 0x03,
    ListSpaces = 0x04,
    CheckIds = 0x05,
    Welcome = 0x41,
    Ack = 0x42,
    Reject = 0x43,
    FlowControl = 0x44,
    ServerGoodbye = 0x45,
    Error = 0x46,
    SpaceList = 0x47,
    CheckResult = 0x48,
}

impl FrameType {
    pub fn from_u8(code: u8) -> Option<FrameType> {
        Some(match code {
            0x01 => FrameType::Hello,
            0x02 => FrameType::Observe,
            0x03 => FrameType::ClientGoodbye,
            0x04 => FrameType::ListSpaces,
            0x05 => FrameType::CheckIds,
            0x41 => FrameType::Welcome,
            0x42 => FrameType::Ack,
            0x43 => FrameType::Reject,
            0x44 => FrameType::FlowControl,
            0x45 => FrameType::ServerGoodbye,
            0x46 => FrameType::Error,
            0x47 => FrameType::SpaceList,
            0x48 => FrameType::CheckResult,
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

#[derive(Clone, Debug, PartialEq)]
pub struct ObserveFrame {
    pub seq: u64,
    pub space: String,
    pub id: String,
    pub when_unix_ns: i64,
    pub confidence: f32,
    pub what: String,
    pub embedding: Vec<f32>,
}

impl ObserveFrame {
    /// The frame that carries `obs` as the session's `seq`-th observation.
    pub fn new(seq: u64, obs: &crate::observation::Observation) -> ObserveFrame {
        ObserveFrame {
            seq,
            space: obs.space.clone(),
            id: obs.id.clone(),
            when_unix_ns: obs.when_unix_ns,
            confidence: obs.confidence,
            what: obs.what.clone(),
            embedding: obs.embedding.clone(),
        }
    }

    /// Bytes this frame takes on the wire, header included: what it costs in credits.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_BYTES
            + 8
            + 1
            + self.space.len()
            + 2
            + self.id.len()
            + 8
            + 4
            + 4
            + self.what.len()
            + 4
            + 4 * self.embedding.len()
    }

    /// The observation this frame carries, as the log stores it.
    pub fn into_observation(self) -> crate::observation::Observation {
        crate::observation::Observation {
            space: self.space,
            id: self.id,
            when_unix_ns: self.when_unix_ns,
            confidence: self.confidence,
            what: self.what,
            embedding: self.embedding,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Hello {
        version: u16,
        client_name: String,
        resume_token: Option<[u8; RESUME_TOKEN_BYTES]>,
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
    /// Asks which of `ids` are stored durably in `space` (CheckResult). At most
    /// `CHECK_IDS_MAX` ids.
    CheckIds {
        request_id: u64,
        space: String,
        ids: Vec<String>,
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

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Observe(_) => FrameType::Observe,
            Frame::ClientGoodbye { .. } => FrameType::ClientGoodbye,
            Frame::ListSpaces { .. } => FrameType::ListSpaces,
            Frame::CheckIds { .. } => FrameType::CheckIds,
            Frame::Welcome { .. } => FrameType::Welcome,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Reject { .. } => FrameType::Reject,
            Frame::FlowControl { .. } => FrameType::FlowControl,
            Frame::ServerGoodbye { .. } => FrameType::ServerGoodbye,
            Frame::Error { .. } => FrameType::Error,
            Frame::SpaceList { .. } => FrameType::SpaceList,
            Frame::CheckResult { .. } => FrameType::CheckResult,
        }
    }

    /// Appends the encoded frame to `out`. Strings longer than their length field allows
    /// are a caller bug (validation bounds them first) and panic.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0u8; 4]);
        out.push(self.frame_type() as u8);
        let mut w = Writer(out);
        match self {
            Frame::Hello {
                version,
                client_name,
                resume_token,
            } => {
                w.u16(*version);
                w.str8(client_name);
                match resume_token {
                    Some(token) => {
                        w.u8(1);
                        w.bytes(token);
                    }
                    None => w.u8(0),
                }
            }
            Frame::Observe(o) => w.observe(
                o.seq,
                &o.space,
                &o.id,
                o.when_unix_ns,
                o.confidence,
                &o.what,
                &o.embedding,
            ),
            Frame::ClientGoodbye { last_seq } => w.u64(*last_seq),
            Frame::ListSpaces { request_id } => w.u64(*request_id),
            Frame::CheckIds {
                request_id,
                space,
                ids,
            } => {
                w.u64(*request_id);
                w.str8(space);
                w.u32(u32::try_from(ids.len()).expect("id count fits u32"));
                for id in ids {
                    w.str16(id);
                }
            }
            Frame::SpaceList {
                request_id,
                durable_lsn,
                spaces,
            } => {
                w.u64(*request_id);
                w.u64(*durable_lsn);
                w.u32(u32::try_from(spaces.len()).expect("space count fits u32"));
                for space in spaces {
                    w.str8(&space.name);
                    w.u32(space.dim);
                    w.u64(space.observations);
                    w.u64(space.last_lsn);
                }
            }
            Frame::CheckResult { request_id, found } => {
                w.u64(*request_id);
                w.u32(u32::try_from(found.len()).expect("id count fits u32"));
                let mut bits = vec![0u8; found.len().div_ceil(8)];
                for (i, _) in found.iter().enumerate().filter(|(_, f)| **f) {
                    bits[i / 8] |= 1 << (i % 8);
                }
                w.bytes(&bits);
            }
            Frame::Welcome {
                session_id,
                resume_token,
                last_acked_seq,
                limits,
            } => {
                w.u64(*session_id);
                w.bytes(resume_token);
                w.u64(*last_acked_seq);
                w.u32(limits.frame_bytes_max);
                w.u8(limits.space_name_bytes_max);
                w.u16(limits.id_bytes_max);
                w.u32(limits.what_bytes_max);
                w.u32(limits.embedding_dim_max);
                w.u32(limits.inflight_bytes_max);
            }
            Frame::Ack { seq, lsn } => {
                w.u64(*seq);
                w.u64(*lsn);
            }
            Frame::Reject {
                seq,
                code,
                field,
                expected,
                got,
            } => {
                w.u64(*seq);
                w.u16(*code);
                w.str8(field);
                w.str16(expected);
                w.str16(got);
            }
            Frame::FlowControl {
                credits,
                state,
                retry_after_ms,
            } => {
                w.u32(*credits);
                w.u8(*state as u8);
                w.u32(*retry_after_ms);
            }
            Frame::ServerGoodbye { last_acked_seq } => w.u64(*last_acked_seq),
            Frame::Error { code, message } => {
                w.u16(*code);
                w.str16(message);
            }
        }
        set_frame_length(out, start);
    }

    /// Appends the Observe frame that carries `obs` as the `seq`-th observation: the same
    /// bytes as encoding `Frame::Observe(ObserveFrame::new(seq, obs))`, without copying
    /// the observation into a frame first (clients send every observation this way).
    pub fn encode_observation(seq: u64, obs: &crate::observation::Observation, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(
            FRAME_HEADER_BYTES
                + 64
                + obs.space.len()
                + obs.id.len()
                + obs.what.len()
                + 4 * obs.embedding.len(),
        );
        out.extend_from_slice(&[0u8; 4]);
        out.push(FrameType::Observe as u8);
        Writer(out).observe(
            seq,
            &obs.space,
            &obs.id,
            obs.when_unix_ns,
            obs.confidence,
            &obs.what,
            &obs.embedding,
        );
        set_frame_length(out, start);
    }

    /// Decodes one frame from the start of `buf`: `Ok(Some((frame, bytes used)))`, `Ok(None)`
    /// if `buf` holds only part of a frame, or the error that makes the bytes invalid.
    pub fn decode(
        buf: &[u8],
        frame_bytes_max: u32,
    ) -> Result<Option<(Frame, usize)>, ProtocolError> {
        let Some(length) = buf.get(..4) else {
            return Ok(None);
        };
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes"));
        if length == 0 || length > frame_bytes_max {
            return Err(ProtocolError::FrameLength {
                length,
                max: frame_bytes_max,
            });
        }
        let total = 4 + length as usize;
        let Some(frame) = buf.get(4..total) else {
            return Ok(None);
        };
        let code = frame[0];
        let kind = FrameType::from_u8(code).ok_or(ProtocolError::UnknownType { code })?;
        let mut r = Reader {
            frame: kind,
            rest: &frame[1..],
        };
        let decoded = decode_body(kind, &mut r)?;
        if !r.rest.is_empty() {
            return Err(ProtocolError::TrailingBytes {
                frame: kind,
                extra: r.rest.len(),
            });
        }
        Ok(Some((decoded, total)))
    }
}

fn decode_body(kind: FrameType, r: &mut Reader<'_>) -> Result<Frame, ProtocolError> {
    Ok(match kind {
        FrameType::Hello => {
            let version = r.u16("version")?;
            let client_name = r.str8("client_name")?;
            let resume_token = match r.u8("has_resume_token")? {
                0 => None,
                1 => Some(r.array("resume_token")?),
                other => {
                    return Err(ProtocolError::InvalidValue {
                        field: "has_resume_token",
                        value: other.into(),
                    })
                }
            };
            Frame::Hello {
                version,
                client_name,
                resume_token,
            }
        }
        FrameType::Observe => {
            let seq = r.u64("seq")?;
            let space = r.str8("space")?;
            let id = r.str16("id")?;
            let when_unix_ns = r.u64("when_unix_ns")? as i64;
            let confidence = r.f32("confidence")?;
            let what = r.str32("what")?;
            let dim = r.u32("dim")? as usize;
            // The frame length bounds the dimension: check before allocating.
            if r.rest.len() != dim.saturating_mul(4) {
                return Err(if r.rest.len() < dim.saturating_mul(4) {
                    ProtocolError::Truncated {
                        frame: kind,
                        field: "embedding",
                    }
                } else {
                    ProtocolError::TrailingBytes {
                        frame: kind,
                        extra: r.rest.len() - dim * 4,
                    }
                });
            }
            let embedding = r.f32s(dim, "embedding")?;
            Frame::Observe(ObserveFrame {
                seq,
                space,
                id,
                when_unix_ns,
                confidence,
                what,
                embedding,
            })
        }
        FrameType::ClientGoodbye => Frame::ClientGoodbye {
            last_seq: r.u64("last_seq")?,
        },
        FrameType::Welcome => Frame::Welcome {
            session_id: r.u64("session_id")?,
            resume_token: r.array("resume_token")?,
            last_acked_seq: r.u64("last_acked_seq")?,
            limits: Limits {
                frame_bytes_max: r.u32("frame_bytes_max")?,
                space_name_bytes_max: r.u8("space_name_bytes_max")?,
                id_bytes_max: r.u16("id_bytes_max")?,
                what_bytes_max: r.u32("what_bytes_max")?,
                embedding_dim_max: r.u32("embedding_dim_max")?,
                inflight_bytes_max: r.u32("inflight_bytes_max")?,
            },
        },
        FrameType::Ack => Frame::Ack {
            seq: r.u64("seq")?,
            lsn: r.u64("lsn")?,
        },
        FrameType::Reject => Frame::Reject {
            seq: r.u64("seq")?,
            code: r.u16("code")?,
            field: r.str8("field")?,
            expected: r.str16("expected")?,
            got: r.str16("got")?,
        },
        FrameType::FlowControl => {
            let credits = r.u32("credits")?;
            let raw = r.u8("state")?;
            let state = LoadState::from_u8(raw).ok_or(ProtocolError::InvalidValue {
                field: "state",
                value: raw.into(),
            })?;
            Frame::FlowControl {
                credits,
                state,
                retry_after_ms: r.u32("retry_after_ms")?,
            }
        }
        FrameType::ServerGoodbye => Frame::ServerGoodbye {
            last_acked_seq: r.u64("last_acked_seq")?,
        },
        FrameType::Error => Frame::Error {
            code: r.u16("code")?,
            message: r.str16("message")?,
        },
        FrameType::ListSpaces => Frame::ListSpaces {
            request_id: r.u64("request_id")?,
        },
        FrameType::CheckIds => {
            let request_id = r.u64("request_id")?;
            let space = r.str8("space")?;
            let count = r.u32("count")?;
            if count > CHECK_IDS_MAX {
                return Err(ProtocolError::InvalidValue {
                    field: "count",
                    value: count.into(),
                });
            }
            // Each id takes at least its 2-byte length: `count` is checked against the
            // bytes left before anything is allocated for it.
            r.expect_at_least(count as usize * 2, "ids")?;
            let ids = (0..count)
                .map(|_| r.str16("ids"))
                .collect::<Result<_, _>>()?;
            Frame::CheckIds {
                request_id,
                space,
                ids,
            }
        }
        FrameType::SpaceList => {
            let request_id = r.u64("request_id")?;
            let durable_lsn = r.u64("durable_lsn")?;
            let count = r.u32("count")? as usize;
            r.expect_at_least(count.saturating_mul(1 + 4 + 8 + 8), "spaces")?;
            let spaces = (0..count)
                .map(|_| {
                    Ok(SpaceEntry {
                        name: r.str8("name")?,
                        dim: r.u32("dim")?,
                        observations: r.u64("observations")?,
                        last_lsn: r.u64("last_lsn")?,
                    })
                })
                .collect::<Result<_, ProtocolError>>()?;
            Frame::SpaceList {
                request_id,
                durable_lsn,
                spaces,
            }
        }
        FrameType::CheckResult => {
            let request_id = r.u64("request_id")?;
            let count = r.u32("count")? as usize;
            let bits = r.take(count.div_ceil(8), "found")?;
            let found = (0..count)
                .map(|i| bits[i / 8] & (1 << (i % 8)) != 0)
                .collect();
            Frame::CheckResult { request_id, found }
        }
    })
}

/// Fills in the length prefix of the frame that starts at `start` and runs to the end.
fn set_frame_length(out: &mut [u8], start: usize) {
    let length = u32::try_from(out.len() - start - 4).expect("frame fits u32");
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// A run of floats, written in one pass the compiler can vectorise: embeddings are most
    /// of an Observe frame's bytes.
    fn f32s(&mut self, values: &[f32]) {
        let start = self.0.len();
        self.0.resize(start + 4 * values.len(), 0);
        for (out, v) in self.0[start..].chunks_exact_mut(4).zip(values) {
            out.copy_from_slice(&v.to_le_bytes());
        }
    }
    /// An Observe frame's fields, in wire order (docs/protocol.md).
    #[allow(clippy::too_many_arguments)] // one per wire field; a struct would be a copy
    fn observe(
        &mut self,
        seq: u64,
        space: &str,
        id: &str,
        when_unix_ns: i64,
        confidence: f32,
        what: &str,
        embedding: &[f32],
    ) {
        self.u64(seq);
        self.str8(space);
        self.str16(id);
        self.u64(when_unix_ns as u64);
        self.f32(confidence);
        self.str32(what);
        self.u32(u32::try_from(embedding.len()).expect("dimension fits u32"));
        self.f32s(embedding);
    }
    fn str8(&mut self, s: &str) {
        self.u8(u8::try_from(s.len()).expect("str8 holds at most 255 bytes"));
        self.bytes(s.as_bytes());
    }
    fn str16(&mut self, s: &str) {
        self.u16(u16::try_from(s.len()).expect("str16 holds at most 65535 bytes"));
        self.bytes(s.as_bytes());
    }
    fn str32(&mut self, s: &str) {
        self.u32(u32::try_from(s.len()).expect("str32 fits u32"));
        self.bytes(s.as_bytes());
    }
}

struct Reader<'a> {
    frame: FrameType,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.rest.len() < n {
            return Err(ProtocolError::Truncated {
                frame: self.frame,
                field,
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    /// Fails unless at least `n` bytes are left, without consuming them.
    fn expect_at_least(&self, n: usize, field: &'static str) -> Result<(), ProtocolError> {
        if self.rest.len() < n {
            return Err(ProtocolError::Truncated {
                frame: self.frame,
                field,
            });
        }
        Ok(())
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        Ok(self.take(N, field)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    fn f32(&mut self, field: &'static str) -> Result<f32, ProtocolError> {
        Ok(f32::from_le_bytes(self.array(field)?))
    }
    fn f32s(&mut self, n: usize, field: &'static str) -> Result<Vec<f32>, ProtocolError> {
        let bytes = self.take(n.saturating_mul(4), field)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect())
    }
    fn string(&mut self, n: usize, field: &'static str) -> Result<String, ProtocolError> {
        let bytes = self.take(n, field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::InvalidUtf8 { field })
    }
    fn str8(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let n = self.u8(field)? as usize;
        self.string(n, field)
    }
    fn str16(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let n = self.u16(field)? as usize;
        self.string(n, field)
    }
    fn str32(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        // The frame length already bounds this: `take` fails before anything is allocated.
        let n = self.u32(field)? as usize;
        self.string(n, field)
    }
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
}
