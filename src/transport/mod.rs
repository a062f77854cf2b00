//! Transports: the engram/1 protocol over QUIC; later the WebSocket gateway and HTTP.

pub mod endpoint;
pub mod framed;
pub mod http;
pub mod protocol;
pub mod quic;
pub mod tls;
