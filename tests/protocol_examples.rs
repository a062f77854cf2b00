//! The engram/1 codec against docs/protocol.md, byte for byte, and its decoder's edges.

use std::collections::BTreeMap;

use engram::index::{Consistency, RecallHit};
use engram::observation::Observation;
use engram::space::Metric;
use engram::transport::protocol::{
    DefineOutcome, ErrorCode, Frame, Limits, LoadState, ObserveFrame, ProtocolError, RecallStatus,
    RejectCode, SpaceEntry, FRAME_BYTES_MAX_DEFAULT,
};
use engram::wal::Lsn;
use proptest::prelude::*;

/// The ```hex NAME blocks of docs/protocol.md.
fn doc_examples() -> BTreeMap<String, Vec<u8>> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let mut examples = BTreeMap::new();
    let mut current: Option<(String, Vec<u8>)> = None;
    for line in doc.lines() {
        if let Some(name) = line.strip_prefix("```hex ") {
            current = Some((name.trim().to_owned(), Vec::new()));
        } else if line.starts_with("```") {
            if let Some((name, bytes)) = current.take() {
                examples.insert(name, bytes);
            }
        } else if let Some((_, bytes)) = current.as_mut() {
            bytes.extend(
                line.split_whitespace()
                    .map(|h| u8::from_str_radix(h, 16).expect("hex byte")),
            );
        }
    }
    examples
}

fn expected_frames() -> BTreeMap<&'static str, Frame> {
    BTreeMap::from([
        (
            "hello",
            Frame::Hello {
                version: 1,
                client_name: "cli".into(),
                resume_token: None,
                auth_token: None,
            },
        ),
        (
            "hello_resume",
            Frame::Hello {
                version: 1,
                client_name: "cli".into(),
                resume_token: Some(std::array::from_fn(|i| i as u8)),
                auth_token: None,
            },
        ),
        (
            "hello_auth",
            Frame::Hello {
                version: 1,
                client_name: "cli".into(),
                resume_token: None,
                auth_token: Some("s3cret-token".into()),
            },
        ),
        (
            "observe",
            Frame::Observe(ObserveFrame {
                seq: 7,
                observation: Observation {
                    space: "notes".into(),
                    id: "n-1".into(),
                    when_unix_ns: 1_700_000_000_000_000_000,
                    confidence: 0.5,
                    what: "heron".into(),
                    embedding: vec![1.0, -0.5],
                },
            }),
        ),
        ("client_goodbye", Frame::ClientGoodbye { last_seq: 7 }),
        ("list_spaces", Frame::ListSpaces { request_id: 3 }),
        (
            "create_space",
            Frame::CreateSpace {
                request_id: 5,
                space: "notes".into(),
                dim: 384,
                metric: Metric::L2,
            },
        ),
        (
            "space_defined",
            Frame::SpaceDefined {
                request_id: 5,
                outcome: DefineOutcome::Created,
                lsn: 42,
                code: 0,
                message: String::new(),
            },
        ),
        (
            "check_ids",
            Frame::CheckIds {
                request_id: 4,
                space: "notes".into(),
                ids: vec!["n-1".into(), "n-2".into()],
            },
        ),
        (
            "space_list",
            Frame::SpaceList {
                request_id: 3,
                durable_lsn: 42,
                spaces: vec![SpaceEntry {
                    name: "notes".into(),
                    dim: 2,
                    observations: 2,
                    last_lsn: 42,
                }],
            },
        ),
        (
            "check_result",
            Frame::CheckResult {
                request_id: 4,
                found: vec![true, false, true],
            },
        ),
        (
            "welcome",
            Frame::Welcome {
                session_id: 3,
                resume_token: [0xaa; 16],
                last_acked_seq: 6,
                limits: Limits {
                    frame_bytes_max: 1 << 20,
                    space_name_bytes_max: 64,
                    id_bytes_max: 256,
                    what_bytes_max: 64 << 10,
                    embedding_dim_max: 4096,
                    inflight_bytes_max: 8 << 20,
                },
            },
        ),
        ("ack", Frame::Ack { seq: 7, lsn: 42 }),
        (
            "recall",
            Frame::Recall {
                request_id: 9,
                space: "notes".into(),
                k: 10,
                ef: 0,
                consistency: Consistency::AsOf(Lsn(42)),
                query_id: String::new(),
                embedding: vec![0.5, -1.0],
            },
        ),
        (
            "recall_result",
            Frame::RecallResult {
                request_id: 9,
                status: RecallStatus::Ok,
                message: String::new(),
                as_of_lsn: 42,
                more: false,
                hits: vec![RecallHit {
                    id: "n-1".into(),
                    score: 0.75,
                    what: "a heron".into(),
                    when_unix_ns: 1_700_000_000_000_000_000,
                    confidence: 0.5,
                    lsn: Lsn(42),
                }],
            },
        ),
        (
            "reject",
            Frame::Reject {
                seq: 8,
                code: RejectCode::DimensionMismatch as u16,
                field: "embedding".into(),
                expected: "dimension 384".into(),
                got: "dimension 2".into(),
            },
        ),
        (
            "flow_control",
            Frame::FlowControl {
                credits: 65536,
                state: LoadState::Warning,
                retry_after_ms: 0,
            },
        ),
        ("server_goodbye", Frame::ServerGoodbye { last_acked_seq: 7 }),
        (
            "error",
            Frame::Error {
                code: ErrorCode::UnsupportedVersion as u16,
                message: "version 2 is not supported".into(),
            },
        ),
    ])
}

#[test]
fn every_documented_example_matches_the_codec_byte_for_byte() {
    let examples = doc_examples();
    let frames = expected_frames();
    assert_eq!(
        examples.keys().map(String::as_str).collect::<Vec<_>>(),
        frames.keys().copied().collect::<Vec<_>>()
    );
    for (name, frame) in frames {
        let mut encoded = Vec::new();
        frame.encode(&mut encoded);
        assert_eq!(
            encoded, examples[name],
            "example {name}: the codec and docs/protocol.md differ"
        );
        let (decoded, used) = Frame::decode(&examples[name], FRAME_BYTES_MAX_DEFAULT)
            .unwrap()
            .unwrap();
        assert_eq!(
            (decoded, used),
            (frame, examples[name].len()),
            "example {name}"
        );
    }
}

#[test]
fn malformed_frames_get_typed_errors() {
    let examples = doc_examples();
    let ack = &examples["ack"];
    // A length over the limit is refused before the body is even there.
    assert_eq!(
        Frame::decode(&[0xff, 0xff, 0xff, 0x7f], 1 << 20),
        Err(ProtocolError::FrameLength {
            length: 0x7fff_ffff,
            max: 1 << 20
        })
    );
    assert_eq!(
        Frame::decode(&[0, 0, 0, 0, 0x42], 1 << 20),
        Err(ProtocolError::FrameLength {
            length: 0,
            max: 1 << 20
        })
    );
    let mut unknown = ack.clone();
    unknown[4] = 0x7e;
    assert_eq!(
        Frame::decode(&unknown, 1 << 20),
        Err(ProtocolError::UnknownType { code: 0x7e })
    );
    let mut trailing = ack.clone();
    trailing.push(0);
    trailing[0] += 1;
    assert!(matches!(
        Frame::decode(&trailing, 1 << 20),
        Err(ProtocolError::TrailingBytes { extra: 1, .. })
    ));
    let mut short = ack.clone();
    short.pop();
    short[0] -= 1;
    assert!(matches!(
        Frame::decode(&short, 1 << 20),
        Err(ProtocolError::Truncated { field: "lsn", .. })
    ));
    // An Observe whose dimension promises more floats than the frame holds.
    let mut observe = examples["observe"].clone();
    let dim_at = observe.len() - 12;
    observe[dim_at] = 200;
    assert!(matches!(
        Frame::decode(&observe, 1 << 20),
        Err(ProtocolError::Truncated {
            field: "embedding",
            ..
        })
    ));
    let mut bad_utf8 = examples["hello"].clone();
    bad_utf8[8] = 0xff;
    assert_eq!(
        Frame::decode(&bad_utf8, 1 << 20),
        Err(ProtocolError::InvalidUtf8 {
            field: "client_name"
        })
    );
    // A CheckIds that claims more ids than allowed, or than its bytes can hold, is refused
    // before anything is allocated for them.
    let mut too_many = examples["check_ids"].clone();
    let count_at = 4 + 1 + 8 + 6;
    too_many[count_at..count_at + 4].copy_from_slice(&4097u32.to_le_bytes());
    assert_eq!(
        Frame::decode(&too_many, 1 << 20),
        Err(ProtocolError::InvalidValue {
            field: "count",
            value: 4097
        })
    );
    let mut overclaimed = examples["check_ids"].clone();
    overclaimed[count_at..count_at + 4].copy_from_slice(&4000u32.to_le_bytes());
    assert!(matches!(
        Frame::decode(&overclaimed, 1 << 20),
        Err(ProtocolError::Truncated { field: "ids", .. })
    ));
    let mut bad_state = examples["flow_control"].clone();
    bad_state[9] = 9;
    assert_eq!(
        Frame::decode(&bad_state, 1 << 20),
        Err(ProtocolError::InvalidValue {
            field: "state",
            value: 9
        })
    );
}

/// Up to `max` chars (4 bytes each at most): str8 fields use max <= 60, within 255 bytes.
fn arb_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(|c| c.into_iter().collect::<String>())
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            any::<u16>(),
            arb_string(40),
            prop::option::of(any::<[u8; 16]>()),
            prop::option::of(arb_string(40)),
        )
            .prop_map(
                |(version, client_name, resume_token, auth_token)| Frame::Hello {
                    version,
                    client_name,
                    resume_token,
                    auth_token,
                }
            ),
        (
            any::<u64>(),
            arb_string(30),
            arb_string(100),
            any::<i64>(),
            any::<f32>(),
            arb_string(300),
            prop::collection::vec(any::<f32>(), 0..64)
        )
            .prop_map(
                |(seq, space, id, when_unix_ns, confidence, what, embedding)| Frame::Observe(
                    ObserveFrame {
                        seq,
                        observation: Observation {
                            space,
                            id,
                            when_unix_ns,
                            confidence,
                            what,
                            embedding
                        }
                    }
                )
            ),
        (any::<u64>(), any::<u64>()).prop_map(|(seq, lsn)| Frame::Ack { seq, lsn }),
        (
            any::<u64>(),
            any::<u16>(),
            arb_string(30),
            arb_string(60),
            arb_string(60)
        )
            .prop_map(|(seq, code, field, expected, got)| Frame::Reject {
                seq,
                code,
                field,
                expected,
                got
            }),
        (
            any::<u32>(),
            prop::sample::select(vec![
                LoadState::Normal,
                LoadState::Warning,
                LoadState::Critical,
                LoadState::Overloaded
            ]),
            any::<u32>()
        )
            .prop_map(|(credits, state, retry_after_ms)| Frame::FlowControl {
                credits,
                state,
                retry_after_ms
            }),
        (any::<u16>(), arb_string(100)).prop_map(|(code, message)| Frame::Error { code, message }),
        any::<u64>().prop_map(|request_id| Frame::ListSpaces { request_id }),
        (any::<u64>(), arb_string(15), any::<u32>(), 0u8..3).prop_map(
            |(request_id, space, dim, metric)| Frame::CreateSpace {
                request_id,
                space,
                dim,
                metric: Metric::from_u8(metric).unwrap()
            }
        ),
        (
            any::<u64>(),
            0u8..3,
            any::<u64>(),
            any::<u16>(),
            arb_string(60)
        )
            .prop_map(
                |(request_id, outcome, lsn, code, message)| Frame::SpaceDefined {
                    request_id,
                    outcome: [
                        DefineOutcome::Created,
                        DefineOutcome::Existed,
                        DefineOutcome::Refused
                    ][outcome as usize],
                    lsn,
                    code,
                    message
                }
            ),
        (
            any::<u64>(),
            arb_string(15),
            prop::collection::vec(arb_string(20), 0..20)
        )
            .prop_map(|(request_id, space, ids)| Frame::CheckIds {
                request_id,
                space,
                ids
            }),
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(
                (arb_string(15), any::<u32>(), any::<u64>(), any::<u64>()),
                0..10
            )
        )
            .prop_map(|(request_id, durable_lsn, spaces)| Frame::SpaceList {
                request_id,
                durable_lsn,
                spaces: spaces
                    .into_iter()
                    .map(|(name, dim, observations, last_lsn)| SpaceEntry {
                        name,
                        dim,
                        observations,
                        last_lsn
                    })
                    .collect()
            }),
        (any::<u64>(), prop::collection::vec(any::<bool>(), 0..40))
            .prop_map(|(request_id, found)| Frame::CheckResult { request_id, found }),
        (
            any::<u64>(),
            arb_string(20),
            any::<(u16, u16)>(),
            (0u8..3, any::<u64>()),
            arb_string(20),
            prop::collection::vec(any::<f32>(), 0..8)
        )
            .prop_map(
                |(request_id, space, (k, ef), (code, as_of), query_id, embedding)| {
                    Frame::Recall {
                        request_id,
                        space,
                        k,
                        ef,
                        consistency: match code {
                            0 => Consistency::ReadYourWrites,
                            1 => Consistency::AsOf(Lsn(as_of)),
                            _ => Consistency::Eventual,
                        },
                        query_id,
                        embedding,
                    }
                }
            ),
        (
            any::<u64>(),
            (0u16..7, arb_string(20)),
            any::<(u64, bool)>(),
            prop::collection::vec(
                (
                    arb_string(20),
                    any::<(f32, i64, f32, u64)>(),
                    arb_string(40)
                ),
                0..6
            )
        )
            .prop_map(|(request_id, (status, message), (as_of_lsn, more), hits)| {
                Frame::RecallResult {
                    request_id,
                    status: [
                        RecallStatus::Ok,
                        RecallStatus::UnknownSpace,
                        RecallStatus::DimensionMismatch,
                        RecallStatus::InvalidQuery,
                        RecallStatus::FutureLsn,
                        RecallStatus::Failed,
                        RecallStatus::UnknownId,
                    ][status as usize],
                    message,
                    as_of_lsn,
                    more,
                    hits: hits
                        .into_iter()
                        .map(
                            |(id, (score, when_unix_ns, confidence, lsn), what)| RecallHit {
                                id,
                                score,
                                what,
                                when_unix_ns,
                                confidence,
                                lsn: Lsn(lsn),
                            },
                        )
                        .collect(),
                }
            }),
    ]
}

/// Frames equal for our purpose: floats compared by bits, so NaN round-trips count.
fn same(a: &Frame, b: &Frame) -> bool {
    let mut x = Vec::new();
    let mut y = Vec::new();
    a.encode(&mut x);
    b.encode(&mut y);
    x == y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frames_round_trip_and_every_prefix_asks_for_more(frames in prop::collection::vec(arb_frame(), 1..5)) {
        let mut stream = Vec::new();
        for f in &frames {
            f.encode(&mut stream);
        }
        let mut at = 0;
        for f in &frames {
            let (decoded, used) = Frame::decode(&stream[at..], FRAME_BYTES_MAX_DEFAULT).unwrap().expect("a whole frame");
            prop_assert!(same(&decoded, f));
            if let Frame::Observe(o) = f {
                prop_assert_eq!(o.encoded_len(), used, "credits are counted in real bytes");
                // Clients encode straight from an Observation: the same bytes.
                let mut direct = Vec::new();
                Frame::encode_observation(o.seq, &o.observation, &mut direct);
                prop_assert_eq!(&direct[..], &stream[at..at + used]);
            }
            for cut in 0..used {
                prop_assert_eq!(Frame::decode(&stream[at..at + cut], FRAME_BYTES_MAX_DEFAULT), Ok(None), "a prefix of {} bytes", cut);
            }
            at += used;
        }
        prop_assert_eq!(at, stream.len());
    }

    /// Whatever the bytes, the decoder answers without panicking, and a frame it accepts
    /// encodes back to exactly the bytes it came from: one encoding per frame.
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder_and_decode_canonically(
        bytes in prop::collection::vec(any::<u8>(), 0..2000),
    ) {
        if let Ok(Some((frame, used))) = Frame::decode(&bytes, 4096) {
            let mut again = Vec::new();
            frame.encode(&mut again);
            prop_assert_eq!(&again[..], &bytes[..used], "{:?}", frame);
        }
    }
}

/// Found by the `protocol_frame` fuzz target: a Recall in a mode other than AsOf with an
/// `as_of_lsn` decoded, and the LSN was dropped.
#[test]
fn an_as_of_lsn_outside_as_of_is_refused() {
    let recall = |consistency| Frame::Recall {
        request_id: 1,
        space: "s".into(),
        k: 5,
        ef: 0,
        consistency,
        query_id: "q".into(),
        embedding: Vec::new(),
    };
    let mut bytes = Vec::new();
    recall(Consistency::ReadYourWrites).encode(&mut bytes);
    // request_id (8), space (1 + 1), k (2), ef (2), consistency (1): the LSN's first byte.
    let lsn_at = 4 + 1 + 8 + 2 + 2 + 2 + 1;
    bytes[lsn_at] = 50;
    assert_eq!(
        Frame::decode(&bytes, 4096),
        Err(ProtocolError::InvalidValue {
            field: "as_of_lsn",
            value: 50
        })
    );
    let mut as_of = Vec::new();
    recall(Consistency::AsOf(Lsn(50))).encode(&mut as_of);
    assert_eq!(as_of[lsn_at], 50);
    assert!(Frame::decode(&as_of, 4096).unwrap().is_some());
}

/// Found by the `protocol_frame` fuzz target: a CheckResult whose bitmap had bits set
/// past its count decoded, and encoded back to other bytes.
#[test]
fn check_result_bits_past_the_count_are_refused() {
    // request_id 3 << 24, count 26: four bitmap bytes, the last with bits past bit 1.
    let mut bytes = vec![17, 0, 0, 0, 0x48, 0, 0, 0, 3, 0, 0, 0, 0, 26, 0, 0, 0];
    bytes.extend_from_slice(&[9, 2, 72, 72]);
    assert_eq!(
        Frame::decode(&bytes, 4096),
        Err(ProtocolError::InvalidValue {
            field: "found",
            value: 72
        })
    );
    bytes[20] = 0b10;
    assert!(matches!(
        Frame::decode(&bytes, 4096),
        Ok(Some((Frame::CheckResult { .. }, 21)))
    ));
}
