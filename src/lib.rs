//! engram: a durable streaming memory server.
//!
//! Data flows one way: transport -> ingest (validate) -> wal (durable) -> ack;
//! wal -> ingest workers -> index -> recall. See docs/architecture.md.

pub mod auth;
pub mod chaos;
pub mod client;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod observation;
pub mod space;
pub mod synthetic;
pub mod transport;
pub mod wal;
