//! Transports: the engram/1 protocol over QUIC; later the WebSocket gateway and HTTP.

pub mod protocol;
