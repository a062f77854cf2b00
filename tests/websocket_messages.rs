//! The WebSocket gateway's JSON decoder against hostile input (the fuzzing issue's
//! "WebSocket JSON decoder" target, as proptest so that it runs in CI on stable Rust;
//! fuzz/ holds the cargo-fuzz target for long runs).

use engram::transport::protocol::Frame;
use engram::transport::websocket::messages::{decode_text, Inbound};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Decodes `text` as the gateway does, and encodes the frame it makes, so that every
/// step a message takes in the gateway is exercised.
fn decode(text: &str) -> Option<Frame> {
    let Inbound::Frame(frame) = decode_text(text, "fuzz").ok()? else {
        return None;
    };
    let mut bytes = Vec::new();
    frame.encode(&mut bytes);
    Some(frame)
}

const KEYS: &[&str] = &[
    "type",
    "seq",
    "episode",
    "id",
    "when",
    "what",
    "embedding",
    "confidence",
    "space",
    "resume_token",
    "buffer_size",
    "client_name",
    "token",
    "action",
    "request_id",
    "k",
    "ef",
    "consistency",
    "as_of_lsn",
    "query_id",
];

const TYPES: &[&str] = &[
    "init",
    "observation",
    "flow_control",
    "heartbeat",
    "recall",
    "close",
    "unknown",
];

/// Any JSON value, built from the words the gateway knows, so that many reach deep into
/// the decoder instead of failing at the first key.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(TYPES).prop_map(|s| json!(s)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn valid_observation(seq: u64, dim: usize) -> Value {
    json!({"type": "observation", "seq": seq, "episode": {
        "id": format!("id-{seq}"), "when": 1.7e12, "what": "w",
        "embedding": vec![0.5f32; dim], "confidence": 0.5}})
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn arbitrary_text_never_panics_the_decoder(text in ".{0,300}") {
        decode(&text);
    }

    #[test]
    fn arbitrary_json_in_the_gateway_vocabulary_never_panics_it(
        message in value(),
        kind in prop::sample::select(TYPES),
    ) {
        decode(&message.to_string());
        // The same with a known type, so that its fields are read.
        if let Value::Object(mut fields) = message {
            fields.insert("type".into(), json!(kind));
            decode(&Value::Object(fields).to_string());
        }
    }

    #[test]
    fn a_valid_observation_cut_or_mangled_anywhere_is_an_error_or_a_frame(
        seq in any::<u64>(),
        dim in 1usize..64,
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let text = valid_observation(seq, dim).to_string();
        match decode(&text) {
            Some(Frame::Observe(frame)) => {
                prop_assert_eq!(frame.seq, seq);
                prop_assert_eq!(frame.observation.embedding.len(), dim);
            }
            other => prop_assert!(false, "a valid observation decoded to {:?}", other),
        }
        let cut_at = cut.index(text.len());
        prop_assert!(decode(&text[..cut_at]).is_none(), "a cut message is refused");
        let mut mangled = text.into_bytes();
        let at = flip.index(mangled.len());
        mangled[at] = byte;
        if let Ok(mangled) = String::from_utf8(mangled) {
            decode(&mangled);
        }
    }
}
