//! Transports: the engram/1 protocol over QUIC, its sessions, the WebSocket gateway
//! onto them, and HTTP.

pub mod endpoint;
pub mod framed;
pub mod http;
pub mod https;
pub mod protocol;
pub mod quic;
pub mod session;
pub mod tls;
pub mod websocket;
