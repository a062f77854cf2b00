//! The engram/1 frame decoder on arbitrary bytes: frames, a need for more bytes, or a
//! typed error; never a panic. A decoded frame encodes back to the bytes it came from.
#![no_main]

use engram::transport::protocol::{Frame, FRAME_BYTES_MAX_DEFAULT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = Frame::decode(rest, FRAME_BYTES_MAX_DEFAULT) {
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(again, rest[..used], "{frame:?} re-encodes to other bytes");
        rest = &rest[used..];
    }
});
