//! The WebSocket gateway's decoding of a text message, as every message after init takes
//! it: a frame for the session, a flow or heartbeat message, or a typed error.
#![no_main]

use engram::transport::websocket::messages::{decode_text, Inbound};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Inbound::Frame(frame)) = decode_text(text, "fuzz") {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
    }
});
