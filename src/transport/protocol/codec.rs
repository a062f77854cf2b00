//! Encoding and decoding frames: the byte layout of every frame, as docs/protocol.md gives
//! it.

use crate::observation::Observation;

use super::wire::{set_frame_length, Reader, Writer};
use crate::space::Metric;

use super::{
    ConsistencyCode, DefineOutcome, Frame, FrameType, Limits, LoadState, ObserveFrame,
    ProtocolError, RecallStatus, SpaceEntry, CHECK_IDS_MAX, FRAME_HEADER_BYTES, HELLO_AUTH_TOKEN,
    HELLO_RESUME_TOKEN,
};
use crate::index::{Consistency, RecallHit};
use crate::wal::Lsn;

/// Bytes of a recall hit besides its id and text: lsn, score, when, confidence, lengths.
pub const RECALL_HIT_FIXED_BYTES: usize = 8 + 4 + 8 + 4 + 2 + 4;

impl Frame {
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Observe(_) => FrameType::Observe,
            Frame::ClientGoodbye { .. } => FrameType::ClientGoodbye,
            Frame::ListSpaces { .. } => FrameType::ListSpaces,
            Frame::CheckIds { .. } => FrameType::CheckIds,
            Frame::CreateSpace { .. } => FrameType::CreateSpace,
            Frame::Welcome { .. } => FrameType::Welcome,
            Frame::Ack { .. } => FrameType::Ack,
            Frame::Reject { .. } => FrameType::Reject,
            Frame::FlowControl { .. } => FrameType::FlowControl,
            Frame::ServerGoodbye { .. } => FrameType::ServerGoodbye,
            Frame::Error { .. } => FrameType::Error,
            Frame::SpaceList { .. } => FrameType::SpaceList,
            Frame::CheckResult { .. } => FrameType::CheckResult,
            Frame::SpaceDefined { .. } => FrameType::SpaceDefined,
            Frame::Recall { .. } => FrameType::Recall,
            Frame::RecallResult { .. } => FrameType::RecallResult,
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
                auth_token,
            } => {
                w.u16(*version);
                w.str8(client_name);
                let mut flags = 0;
                if resume_token.is_some() {
                    flags |= HELLO_RESUME_TOKEN;
                }
                if auth_token.is_some() {
                    flags |= HELLO_AUTH_TOKEN;
                }
                w.u8(flags);
                if let Some(token) = resume_token {
                    w.bytes(token);
                }
                if let Some(token) = auth_token {
                    w.str8(token);
                }
            }
            Frame::Observe(o) => w.observe(o.seq, &o.observation),
            Frame::ClientGoodbye { last_seq } => w.u64(*last_seq),
            Frame::ListSpaces { request_id } => w.u64(*request_id),
            Frame::CreateSpace {
                request_id,
                space,
                dim,
                metric,
            } => {
                w.u64(*request_id);
                w.str8(space);
                w.u32(*dim);
                w.u8(*metric as u8);
            }
            Frame::SpaceDefined {
                request_id,
                outcome,
                lsn,
                code,
                message,
            } => {
                w.u64(*request_id);
                w.u8(*outcome as u8);
                w.u64(*lsn);
                w.u16(*code);
                w.str16(message);
            }
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
            Frame::Recall {
                request_id,
                space,
                k,
                ef,
                consistency,
                query_id,
                embedding,
            } => {
                w.u64(*request_id);
                w.str8(space);
                w.u16(*k);
                w.u16(*ef);
                let (code, as_of) = match consistency {
                    Consistency::ReadYourWrites => (ConsistencyCode::ReadYourWrites, 0),
                    Consistency::AsOf(lsn) => (ConsistencyCode::AsOf, lsn.0),
                    Consistency::Eventual => (ConsistencyCode::Eventual, 0),
                };
                w.u8(code as u8);
                w.u64(as_of);
                w.str16(query_id);
                w.u32(u32::try_from(embedding.len()).expect("dimension fits u32"));
                w.f32s(embedding);
            }
            Frame::RecallResult {
                request_id,
                status,
                message,
                as_of_lsn,
                more,
                hits,
            } => {
                w.u64(*request_id);
                w.u16(*status as u16);
                w.str16(message);
                w.u64(*as_of_lsn);
                w.u8(u8::from(*more));
                w.u16(u16::try_from(hits.len()).expect("hit count fits u16"));
                for hit in hits {
                    w.u64(hit.lsn.0);
                    w.f32(hit.score);
                    w.u64(hit.when_unix_ns as u64);
                    w.f32(hit.confidence);
                    w.str16(&hit.id);
                    w.str32(&hit.what);
                }
            }
            Frame::Error { code, message } => {
                w.u16(*code);
                w.str16(message);
            }
        }
        set_frame_length(out, start);
    }

    /// Appends the Observe frame that carries `obs` as the `seq`-th observation: the same
    /// bytes as encoding `Frame::Observe`, without moving the observation into a frame
    /// first (clients keep each one until it is acknowledged).
    pub fn encode_observation(seq: u64, obs: &Observation, out: &mut Vec<u8>) {
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
        Writer(out).observe(seq, obs);
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
            let flags = r.u8("flags")?;
            if flags & !(HELLO_RESUME_TOKEN | HELLO_AUTH_TOKEN) != 0 {
                return Err(ProtocolError::InvalidValue {
                    field: "flags",
                    value: flags.into(),
                });
            }
            let resume_token = if flags & HELLO_RESUME_TOKEN != 0 {
                Some(r.array("resume_token")?)
            } else {
                None
            };
            let auth_token = if flags & HELLO_AUTH_TOKEN != 0 {
                Some(r.str8("auth_token")?)
            } else {
                None
            };
            Frame::Hello {
                version,
                client_name,
                resume_token,
                auth_token,
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
                observation: Observation {
                    space,
                    id,
                    when_unix_ns,
                    confidence,
                    what,
                    embedding,
                },
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
        FrameType::CreateSpace => Frame::CreateSpace {
            request_id: r.u64("request_id")?,
            space: r.str8("space")?,
            dim: r.u32("dim")?,
            metric: {
                let v = r.u8("metric")?;
                Metric::from_u8(v).ok_or(ProtocolError::InvalidValue {
                    field: "metric",
                    value: v.into(),
                })?
            },
        },
        FrameType::SpaceDefined => Frame::SpaceDefined {
            request_id: r.u64("request_id")?,
            outcome: {
                let v = r.u8("outcome")?;
                DefineOutcome::from_u8(v).ok_or(ProtocolError::InvalidValue {
                    field: "outcome",
                    value: v.into(),
                })?
            },
            lsn: r.u64("lsn")?,
            code: r.u16("code")?,
            message: r.str16("message")?,
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
        FrameType::Recall => {
            let request_id = r.u64("request_id")?;
            let space = r.str8("space")?;
            let k = r.u16("k")?;
            let ef = r.u16("ef")?;
            let code = r.u8("consistency")?;
            let as_of = r.u64("as_of_lsn")?;
            let consistency = match code {
                c if c == ConsistencyCode::ReadYourWrites as u8 => Consistency::ReadYourWrites,
                c if c == ConsistencyCode::AsOf as u8 => Consistency::AsOf(Lsn(as_of)),
                c if c == ConsistencyCode::Eventual as u8 => Consistency::Eventual,
                other => {
                    return Err(ProtocolError::InvalidValue {
                        field: "consistency",
                        value: other.into(),
                    })
                }
            };
            // Only AsOf has an LSN; an LSN with another mode would be silently ignored
            // (found by fuzzing).
            if as_of != 0 && !matches!(consistency, Consistency::AsOf(_)) {
                return Err(ProtocolError::InvalidValue {
                    field: "as_of_lsn",
                    value: as_of,
                });
            }
            let query_id = r.str16("query_id")?;
            let dim = r.u32("dim")? as usize;
            r.expect_at_least(dim.saturating_mul(4), "embedding")?;
            let embedding = r.f32s(dim, "embedding")?;
            Frame::Recall {
                request_id,
                space,
                k,
                ef,
                consistency,
                query_id,
                embedding,
            }
        }
        FrameType::RecallResult => {
            let request_id = r.u64("request_id")?;
            let raw = r.u16("status")?;
            let status = RecallStatus::from_u16(raw).ok_or(ProtocolError::InvalidValue {
                field: "status",
                value: raw.into(),
            })?;
            let message = r.str16("message")?;
            let as_of_lsn = r.u64("as_of_lsn")?;
            let more = match r.u8("more")? {
                0 => false,
                1 => true,
                other => {
                    return Err(ProtocolError::InvalidValue {
                        field: "more",
                        value: other.into(),
                    })
                }
            };
            let count = r.u16("count")? as usize;
            r.expect_at_least(count * RECALL_HIT_FIXED_BYTES, "hits")?;
            let hits = (0..count)
                .map(|_| {
                    Ok(RecallHit {
                        lsn: Lsn(r.u64("lsn")?),
                        score: r.f32("score")?,
                        when_unix_ns: r.u64("when_unix_ns")? as i64,
                        confidence: r.f32("confidence")?,
                        id: r.str16("id")?,
                        what: r.str32("what")?,
                    })
                })
                .collect::<Result<_, ProtocolError>>()?;
            Frame::RecallResult {
                request_id,
                status,
                message,
                as_of_lsn,
                more,
                hits,
            }
        }
        FrameType::CheckResult => {
            let request_id = r.u64("request_id")?;
            let count = r.u32("count")? as usize;
            let bits = r.take(count.div_ceil(8), "found")?;
            // The bits past `count` are zero: one encoding per answer (found by fuzzing).
            if let Some(&last) = bits.last().filter(|_| !count.is_multiple_of(8)) {
                if last >> (count % 8) != 0 {
                    return Err(ProtocolError::InvalidValue {
                        field: "found",
                        value: last.into(),
                    });
                }
            }
            let found = (0..count)
                .map(|i| bits[i / 8] & (1 << (i % 8)) != 0)
                .collect();
            Frame::CheckResult { request_id, found }
        }
    })
}
