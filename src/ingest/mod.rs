//! Ingest: validation, per-space dimensions and exactly-once dedupe, between the transport
//! and the log. Sessions, the durable-to-index dispatch and backpressure join them with the
//! serve and index issues.

pub mod checkpointer;
pub mod dedupe;
pub mod engine;
pub mod limits;
pub mod load;
mod pace;
pub mod priority;
pub mod rebuild;
pub mod spaces;
pub mod validate;
pub mod workers;

pub use dedupe::{DedupeIndex, Reservation};
pub use engine::{Defined, Engine, EngineError, Handled, SubmittedBatch};
pub use limits::IngestLimits;
pub use load::{LoadPermit, Overloaded, ServerLoad};
pub use rebuild::{rebuild, RebuildError};
pub use spaces::SpaceRegistry;
pub use validate::{validate, Rejection};
pub use workers::{IndexConfig, IndexWorkers};
