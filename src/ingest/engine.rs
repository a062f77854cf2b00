//! The ingest engine: validation, exactly-once dedupe and the durable append, shared by
//! every session and transport.

use std::path::Path;
use std::sync::Arc;

use crate::transport::protocol::{ObserveFrame, RejectCode};
use crate::wal::{wal_dir, Entry, Lsn, RecordKind, Wal, WalConfig, WalError};

use super::dedupe::{DedupeIndex, Reservation};
use super::limits::IngestLimits;
use super::load::ServerLoad;
use super::rebuild::{rebuild, RebuildError};
use super::spaces::SpaceRegistry;
use super::validate::{validate, Rejection};

/// What became of one observation.
#[derive(Clone, Debug, PartialEq)]
pub enum Handled {
    Stored {
        lsn: Lsn,
    },
    /// The same (space, id) was stored before, at `lsn`; it is not stored again.
    Duplicate {
        lsn: Lsn,
    },
    Rejected(Rejection),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Rebuild(#[from] RebuildError),
}

pub struct Engine {
    wal: Wal,
    dedupe: Arc<DedupeIndex>,
    spaces: SpaceRegistry,
    limits: IngestLimits,
    load: Arc<ServerLoad>,
}

impl Engine {
    /// Recovers the log in `data_dir` and rebuilds which observations it holds.
    pub fn open(
        data_dir: &Path,
        wal_config: WalConfig,
        limits: IngestLimits,
    ) -> Result<Engine, EngineError> {
        let wal = Wal::open(wal_dir(data_dir), wal_config)?;
        let dedupe = Arc::new(DedupeIndex::default());
        let spaces = SpaceRegistry::default();
        let replayed = rebuild(&wal.reader(), &dedupe, &spaces)?;
        tracing::info!(
            observations = replayed,
            spaces = spaces.len(),
            "rebuilt ingest state from the log"
        );
        Ok(Engine {
            wal,
            dedupe,
            spaces,
            load: Arc::new(ServerLoad::new(limits.queue_bytes_max)),
            limits,
        })
    }

    /// Waits until everything appended is durable, then closes the log.
    pub fn close(self) -> Result<(), WalError> {
        self.wal.close()
    }

    pub fn limits(&self) -> &IngestLimits {
        &self.limits
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The commit queue every session shares: admit a batch before ingesting it.
    pub fn load(&self) -> &Arc<ServerLoad> {
        &self.load
    }

    pub fn spaces(&self) -> &SpaceRegistry {
        &self.spaces
    }

    /// Handles a session's observations, in order; one log append for all the new ones.
    /// Returns an outcome per observation, in the same order. An error means the log can
    /// take nothing more (a latched failure): the session ends.
    pub async fn ingest(&self, batch: Vec<ObserveFrame>) -> Result<Vec<Handled>, EngineError> {
        let mut outcomes: Vec<Option<Handled>> = vec![None; batch.len()];
        let mut claims = self.dedupe.claims();
        let mut claimed = Vec::new();
        let mut entries = Vec::new();
        let mut waits = Vec::new();
        for (i, obs) in batch.into_iter().enumerate() {
            if let Err(rejection) = validate(&obs, &self.limits, &self.spaces) {
                outcomes[i] = Some(Handled::Rejected(rejection));
                continue;
            }
            match self.dedupe.reserve(&obs.space, &obs.id, &mut claims) {
                Reservation::Durable(lsn) => outcomes[i] = Some(Handled::Duplicate { lsn }),
                Reservation::InFlight(wait) => waits.push((i, obs, wait)),
                Reservation::New => {
                    claimed.push(i);
                    entries.push(Entry {
                        kind: RecordKind::Observation,
                        payload: obs.into_observation().to_payload(),
                    });
                }
            }
        }
        if !entries.is_empty() {
            match self.wal.append(entries).await {
                Ok(range) => {
                    for (&i, lsn) in claimed.iter().zip(range.iter()) {
                        outcomes[i] = Some(Handled::Stored { lsn });
                    }
                    claims.commit(range.iter());
                }
                // Dropping the claims frees the keys for a retry.
                Err(e @ WalError::StorageFull { .. }) => {
                    let rejection = Rejection {
                        code: RejectCode::StorageFull,
                        field: "observation",
                        expected: "free space on the server's disk".into(),
                        got: e.to_string(),
                    };
                    for &i in &claimed {
                        outcomes[i] = Some(Handled::Rejected(rejection.clone()));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        for (i, obs, wait) in waits {
            outcomes[i] = Some(match wait.outcome().await {
                Some(lsn) => Handled::Duplicate { lsn },
                // The other append failed: store it here, on its own.
                None => Box::pin(self.ingest(vec![obs])).await?.remove(0),
            });
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every observation handled"))
            .collect())
    }
}
