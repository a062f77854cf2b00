//! The WebSocket gateway's JSON messages (docs/protocol.md, "WebSocket") and how each
//! maps onto an engram/1 frame: the gateway speaks JSON to browsers and frames to the one
//! session code both transports share.

use serde::{Deserialize, Serialize};

use crate::index::{Consistency, RecallHit};
use crate::observation::Observation;
use crate::transport::protocol::{
    ErrorCode, Frame, LoadState, ObserveFrame, RecallStatus, RejectCode, PROTOCOL_VERSION,
    RESUME_TOKEN_BYTES,
};
use crate::wal::Lsn;

/// What a browser sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// The first message: the space observations go to, and the token of a session to
    /// resume (hex), if any.
    Init {
        space: String,
        resume_token: Option<String>,
        /// Unacknowledged observations the client keeps at most; answered with the
        /// server's bound in init_ack.
        buffer_size: Option<u32>,
        client_name: Option<String>,
        /// The auth file's token, unless the upgrade request carried it as a bearer.
        token: Option<String>,
    },
    Observation {
        seq: u64,
        episode: Episode,
    },
    /// The client cannot take more messages for now (pause), or can again (resume).
    FlowControl {
        action: FlowAction,
    },
    Heartbeat {},
    Recall {
        request_id: u64,
        /// The session's space unless given.
        space: Option<String>,
        k: u16,
        ef: Option<u16>,
        consistency: Option<ConsistencyName>,
        /// With consistency "as_of": the LSN the results reflect exactly.
        as_of_lsn: Option<u64>,
        /// Recall by a stored observation's own embedding instead of `embedding`.
        query_id: Option<String>,
        embedding: Option<Vec<f32>>,
    },
    /// The client sends nothing after `last_seq`; the server answers close once every
    /// observation up to it is acknowledged.
    Close {
        last_seq: u64,
    },
}

/// An observation message alone. Parsed first, since nearly every message is one: serde
/// reads an internally tagged enum (`ClientMessage`) by buffering the whole message into
/// an intermediate tree, a node per float, which took most of the gateway's time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObservationMessage {
    #[serde(rename = "type")]
    _type: ObservationType,
    seq: u64,
    episode: Episode,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ObservationType {
    Observation,
}

/// Parses a message; observations take the direct path, anything else (and any message
/// that fails it, for the full error) the general one.
pub fn parse(text: &str) -> Result<ClientMessage, serde_json::Error> {
    match serde_json::from_str::<ObservationMessage>(text) {
        Ok(ObservationMessage { seq, episode, .. }) => {
            Ok(ClientMessage::Observation { seq, episode })
        }
        Err(_) => serde_json::from_str(text),
    }
}

/// One observation as a browser sends it: `when` in Unix milliseconds (what JavaScript's
/// `Date.now()` gives; fractions keep sub-millisecond time).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Episode {
    pub id: String,
    pub when: f64,
    pub what: String,
    pub embedding: Vec<f32>,
    pub confidence: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowAction {
    Pause,
    Resume,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsistencyName {
    ReadYourWrites,
    AsOf,
    Eventual,
}

/// What the gateway sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    InitAck {
        session_id: u64,
        resume_token: String,
        last_acked_seq: u64,
        limits: LimitsMessage,
        heartbeat_ms: u64,
    },
    /// Cumulative: every observation up to `seq` is durable (or was refused with an error).
    Ack {
        seq: u64,
        lsn: u64,
    },
    /// With `seq`: that observation was refused and the session goes on. Without: a
    /// message could not be taken (the session goes on), or, with `fatal`, the session ends.
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        code: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expected: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        got: Option<String>,
        message: String,
        retryable: bool,
        fatal: bool,
    },
    FlowControl {
        action: FlowAction,
        state: &'static str,
        credits: u32,
        retry_after_ms: u32,
    },
    Heartbeat {},
    RecallResult {
        request_id: u64,
        status: &'static str,
        message: String,
        as_of_lsn: u64,
        more: bool,
        hits: Vec<HitMessage>,
    },
    Close {
        last_acked_seq: u64,
    },
}

#[derive(Debug, Serialize)]
pub struct LimitsMessage {
    pub message_bytes_max: u32,
    pub space_name_bytes_max: u8,
    pub id_bytes_max: u16,
    pub what_bytes_max: u32,
    pub embedding_dim_max: u32,
    pub inflight_bytes_max: u32,
    pub buffer_size: u32,
}

#[derive(Debug, Serialize)]
pub struct HitMessage {
    pub id: String,
    pub score: f32,
    pub what: String,
    /// Unix milliseconds, as sent.
    pub when: f64,
    pub confidence: f32,
    pub lsn: u64,
}

/// Why a message could not be turned into a frame.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("resume_token: expected {expected} hex digits, got {got:?}")]
    ResumeToken { expected: usize, got: String },
    #[error("consistency as_of needs as_of_lsn")]
    AsOfWithoutLsn,
    #[error("recall needs an embedding or a query_id, not both and not neither")]
    RecallQuery,
    #[error("{0} is only valid as the first message")]
    Misplaced(&'static str),
    #[error("the first message must be init")]
    NotInit,
    #[error("token: expected at most {max} bytes, got {0}", max = crate::auth::TOKEN_BYTES_MAX)]
    TokenLength(usize),
    #[error("episode.when: expected Unix milliseconds within ±292 years of 1970, got {0}")]
    When(f64),
}

impl MessageError {
    /// The error message a browser gets for it.
    pub fn to_message(&self, seq: Option<u64>) -> ServerMessage {
        let code = match self {
            MessageError::Json(e) if e.is_syntax() || e.is_eof() => "malformed_json",
            MessageError::Json(_) => "invalid_message",
            MessageError::ResumeToken { .. }
            | MessageError::When(_)
            | MessageError::TokenLength(_) => "invalid_message",
            MessageError::AsOfWithoutLsn | MessageError::RecallQuery => "invalid_message",
            MessageError::Misplaced(_) | MessageError::NotInit => "unexpected_message",
        };
        ServerMessage::Error {
            seq,
            code: code.into(),
            field: None,
            expected: None,
            got: None,
            message: self.to_string(),
            retryable: false,
            fatal: false,
        }
    }
}

/// The Hello frame an init asks for.
pub fn hello(
    resume_token: Option<&str>,
    client_name: Option<String>,
    auth_token: Option<String>,
) -> Result<Frame, MessageError> {
    let resume_token = resume_token.map(parse_token).transpose()?;
    if let Some(token) = &auth_token {
        if token.len() > crate::auth::TOKEN_BYTES_MAX {
            return Err(MessageError::TokenLength(token.len()));
        }
    }
    Ok(Frame::Hello {
        version: PROTOCOL_VERSION,
        client_name: client_name.unwrap_or_else(|| "websocket".into()),
        resume_token,
        auth_token,
    })
}

fn parse_token(hex: &str) -> Result<[u8; RESUME_TOKEN_BYTES], MessageError> {
    let bad = || MessageError::ResumeToken {
        expected: 2 * RESUME_TOKEN_BYTES,
        got: hex.chars().take(64).collect(),
    };
    if hex.len() != 2 * RESUME_TOKEN_BYTES {
        return Err(bad());
    }
    let mut token = [0u8; RESUME_TOKEN_BYTES];
    for (i, byte) in token.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(token)
}

fn token_hex(token: &[u8; RESUME_TOKEN_BYTES]) -> String {
    token.iter().map(|b| format!("{b:02x}")).collect()
}

const NS_PER_MS: f64 = 1e6;

/// Unix milliseconds to nanoseconds. Whole milliseconds convert exactly; only the
/// fraction is rounded (a product in f64 would lose the nanoseconds of today's times).
fn unix_ns(ms: f64) -> Option<i64> {
    let whole = ms.floor();
    if !whole.is_finite() || whole.abs() >= (i64::MAX / 1_000_000) as f64 {
        return None;
    }
    let fraction_ns = ((ms - whole) * NS_PER_MS).round() as i64;
    Some(whole as i64 * 1_000_000 + fraction_ns)
}

/// Nanoseconds to Unix milliseconds: whole milliseconds exactly, as they were sent (a
/// division in f64 gave 1234.9998 for 1235).
fn unix_ms(ns: i64) -> f64 {
    ns.div_euclid(1_000_000) as f64 + ns.rem_euclid(1_000_000) as f64 / NS_PER_MS
}

/// The frame for a message after init; `space` is the session's.
/// What a text message asks of the gateway.
#[derive(Debug)]
pub enum Inbound {
    /// A frame for the session.
    Frame(Frame),
    /// Pause (true) or resume (false) the messages to the client.
    Pause(bool),
    Heartbeat,
}

/// Decodes one text message of a session in `space`: everything a socket sends after
/// init goes through here.
pub fn decode_text(text: &str, space: &str) -> Result<Inbound, MessageError> {
    Ok(match parse(text)? {
        ClientMessage::FlowControl { action } => Inbound::Pause(action == FlowAction::Pause),
        ClientMessage::Heartbeat {} => Inbound::Heartbeat,
        message => Inbound::Frame(to_frame(message, space)?),
    })
}

fn to_frame(message: ClientMessage, space: &str) -> Result<Frame, MessageError> {
    Ok(match message {
        ClientMessage::Init { .. } => return Err(MessageError::Misplaced("init")),
        ClientMessage::Observation { seq, episode } => {
            let when_ns = unix_ns(episode.when).ok_or(MessageError::When(episode.when))?;
            Frame::Observe(ObserveFrame {
                seq,
                observation: Observation {
                    space: space.to_owned(),
                    id: episode.id,
                    when_unix_ns: when_ns,
                    confidence: episode.confidence,
                    what: episode.what,
                    embedding: episode.embedding,
                },
            })
        }
        ClientMessage::Recall {
            request_id,
            space: recall_space,
            k,
            ef,
            consistency,
            as_of_lsn,
            query_id,
            embedding,
        } => {
            let consistency = match consistency.unwrap_or(ConsistencyName::ReadYourWrites) {
                ConsistencyName::ReadYourWrites => Consistency::ReadYourWrites,
                ConsistencyName::Eventual => Consistency::Eventual,
                ConsistencyName::AsOf => {
                    Consistency::AsOf(Lsn(as_of_lsn.ok_or(MessageError::AsOfWithoutLsn)?))
                }
            };
            let (query_id, embedding) = match (query_id, embedding) {
                (Some(id), None) => (id, Vec::new()),
                (None, Some(embedding)) => (String::new(), embedding),
                _ => return Err(MessageError::RecallQuery),
            };
            Frame::Recall {
                request_id,
                space: recall_space.unwrap_or_else(|| space.to_owned()),
                k,
                ef: ef.unwrap_or(0),
                consistency,
                query_id,
                embedding,
            }
        }
        ClientMessage::Close { last_seq } => Frame::ClientGoodbye { last_seq },
        // `decode_text` answers these itself.
        ClientMessage::FlowControl { .. } | ClientMessage::Heartbeat {} => {
            unreachable!("decode_text handles flow_control and heartbeat")
        }
    })
}

fn state_name(state: LoadState) -> &'static str {
    match state {
        LoadState::Normal => "normal",
        LoadState::Warning => "warning",
        LoadState::Critical => "critical",
        LoadState::Overloaded => "overloaded",
    }
}

fn recall_status_name(status: RecallStatus) -> &'static str {
    match status {
        RecallStatus::Ok => "ok",
        RecallStatus::UnknownSpace => "unknown_space",
        RecallStatus::DimensionMismatch => "dimension_mismatch",
        RecallStatus::InvalidQuery => "invalid_query",
        RecallStatus::FutureLsn => "future_lsn",
        RecallStatus::Failed => "failed",
        RecallStatus::UnknownId => "unknown_id",
        RecallStatus::Forbidden => "forbidden",
    }
}

fn error_code_name(code: u16) -> String {
    let name = [
        (ErrorCode::UnsupportedVersion, "unsupported_version"),
        (ErrorCode::MalformedFrame, "malformed_frame"),
        (ErrorCode::UnexpectedFrame, "unexpected_frame"),
        (ErrorCode::UnknownResumeToken, "unknown_resume_token"),
        (ErrorCode::ShuttingDown, "shutting_down"),
        (ErrorCode::StorageFailed, "storage_failed"),
        (ErrorCode::Unauthenticated, "unauthenticated"),
        (ErrorCode::Forbidden, "forbidden"),
        (ErrorCode::LimitReached, "limit_reached"),
    ]
    .into_iter()
    .find(|(c, _)| *c as u16 == code)
    .map(|(_, name)| name);
    name.map_or_else(|| format!("error_{code}"), str::to_owned)
}

fn reject_code_name(code: u16) -> String {
    RejectCode::ALL
        .into_iter()
        .find(|c| *c as u16 == code)
        .map_or_else(|| format!("reject_{code}"), |c| c.name().to_owned())
}

/// The message for a frame the session sent; `buffer_size` is what init asked for.
pub fn from_frame(frame: Frame, buffer_size: u32, heartbeat_ms: u64) -> ServerMessage {
    match frame {
        Frame::Welcome {
            session_id,
            resume_token,
            last_acked_seq,
            limits,
        } => ServerMessage::InitAck {
            session_id,
            resume_token: token_hex(&resume_token),
            last_acked_seq,
            limits: LimitsMessage {
                message_bytes_max: limits.frame_bytes_max,
                space_name_bytes_max: limits.space_name_bytes_max,
                id_bytes_max: limits.id_bytes_max,
                what_bytes_max: limits.what_bytes_max,
                embedding_dim_max: limits.embedding_dim_max,
                inflight_bytes_max: limits.inflight_bytes_max,
                buffer_size,
            },
            heartbeat_ms,
        },
        Frame::Ack { seq, lsn } => ServerMessage::Ack { seq, lsn },
        Frame::Reject {
            seq,
            code,
            field,
            expected,
            got,
        } => ServerMessage::Error {
            seq: Some(seq),
            message: format!("{field}: expected {expected}, got {got}"),
            retryable: code == RejectCode::Overloaded as u16
                || code == RejectCode::StorageFull as u16,
            code: reject_code_name(code),
            field: Some(field),
            expected: Some(expected),
            got: Some(got),
            fatal: false,
        },
        Frame::FlowControl {
            credits,
            state,
            retry_after_ms,
        } => ServerMessage::FlowControl {
            action: if state >= LoadState::Critical {
                FlowAction::Pause
            } else {
                FlowAction::Resume
            },
            state: state_name(state),
            credits,
            retry_after_ms,
        },
        Frame::ServerGoodbye { last_acked_seq } => ServerMessage::Close { last_acked_seq },
        Frame::Error { code, message } => ServerMessage::Error {
            seq: None,
            code: error_code_name(code),
            field: None,
            expected: None,
            got: None,
            message,
            retryable: code == ErrorCode::ShuttingDown as u16,
            fatal: true,
        },
        Frame::RecallResult {
            request_id,
            status,
            message,
            as_of_lsn,
            more,
            hits,
        } => ServerMessage::RecallResult {
            request_id,
            status: recall_status_name(status),
            message,
            as_of_lsn,
            more,
            hits: hits.into_iter().map(hit_message).collect(),
        },
        other => unreachable!(
            "a session sends {} only in answer to requests the gateway never makes",
            other.frame_type()
        ),
    }
}

fn hit_message(hit: RecallHit) -> HitMessage {
    HitMessage {
        id: hit.id,
        score: hit.score,
        what: hit.what,
        when: unix_ms(hit.when_unix_ns),
        confidence: hit.confidence,
        lsn: hit.lsn.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_becomes_an_observe_frame_in_the_sessions_space() {
        let message = parse(
            r#"{"type":"observation","seq":7,"episode":{"id":"a","when":1700000000123.5,
                "what":"hi","embedding":[0.5,1],"confidence":0.9}}"#,
        )
        .unwrap();
        let Frame::Observe(observe) = to_frame(message, "notes").unwrap() else {
            panic!("an Observe frame")
        };
        assert_eq!(observe.seq, 7);
        assert_eq!(observe.observation.space, "notes");
        assert_eq!(observe.observation.when_unix_ns, 1_700_000_000_123_500_000);
        assert_eq!(observe.observation.embedding, vec![0.5, 1.0]);
    }

    #[test]
    fn times_round_trip_whole_milliseconds_exactly() {
        for ms in [1_700_000_001_234.0, 1_700_000_000_123.5, -1.25, 0.0] {
            assert_eq!(unix_ms(unix_ns(ms).unwrap()), ms);
        }
    }

    #[test]
    fn a_wrong_field_names_it_and_what_was_expected() {
        let err = parse(
            r#"{"type":"observation","seq":1,"episode":{"id":"a","when":1,"what":"x",
                "embedding":"nope","confidence":1}}"#,
        )
        .map_err(MessageError::from)
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("invalid type") && text.contains("sequence"),
            "{text}"
        );
        let ServerMessage::Error { code, fatal, .. } = err.to_message(None) else {
            panic!("an error")
        };
        assert_eq!((code.as_str(), fatal), ("invalid_message", false));
        let err = MessageError::from(parse("{oops").unwrap_err());
        let ServerMessage::Error { code, .. } = err.to_message(None) else {
            panic!("an error")
        };
        assert_eq!(code, "malformed_json");
    }

    #[test]
    fn resume_tokens_round_trip_as_hex_and_bad_ones_are_refused() {
        let token = [0xab; RESUME_TOKEN_BYTES];
        let Frame::Hello { resume_token, .. } =
            hello(Some(&token_hex(&token)), None, None).unwrap()
        else {
            panic!("a Hello")
        };
        assert_eq!(resume_token, Some(token));
        assert!(matches!(
            hello(Some("zz"), None, None),
            Err(MessageError::ResumeToken { .. })
        ));
    }

    #[test]
    fn a_reject_names_its_field_and_says_whether_to_retry() {
        let message = from_frame(
            Frame::Reject {
                seq: 3,
                code: RejectCode::Overloaded as u16,
                field: "observation".into(),
                expected: "room".into(),
                got: "full".into(),
            },
            64,
            30_000,
        );
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["seq"], 3);
        assert_eq!(json["code"], "overloaded");
        assert_eq!(json["retryable"], true);
        assert_eq!(json["fatal"], false);
    }
}
