//! The ingest engine: validation, exactly-once dedupe and the durable append, shared by
//! every session and transport.

use std::path::Path;
use std::sync::Arc;

use crate::index::{recall, RecallError, RecallQuery, Recalled, SpaceIndexes};
use crate::observation::Observation;
use crate::space::{Metric, SpaceDefinition};
use crate::transport::protocol::RejectCode;
use crate::wal::{
    wal_dir, Entry, Lsn, OsStorage, RecordKind, Storage, Submitted, Wal, WalConfig, WalError,
};

use super::checkpointer::CheckpointPolicy;
use super::dedupe::{Claims, DedupeIndex, InFlight, Reservation};
use super::limits::IngestLimits;
use super::load::ServerLoad;
use super::rebuild::{rebuild, restore_checkpoints, RebuildError};
use super::spaces::Definition;
use super::spaces::SpaceRegistry;
use super::validate::{validate, validate_definition, Rejection};
use super::workers::{IndexConfig, IndexWorkers, WorkerCounters};
use crate::index::checkpoint::checkpoints_dir;

/// What defining a space explicitly did.
#[derive(Clone, Debug, PartialEq)]
pub enum Defined {
    /// Defined and logged at `lsn`.
    Created {
        lsn: Lsn,
    },
    /// It existed with the same dimension and metric.
    Existed,
    Refused(Rejection),
}

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
    #[error("starting the index workers: {0}")]
    Workers(std::io::Error),
}

pub struct Engine {
    // Before the log: dropping the engine stops the workers, then closes the log.
    workers: IndexWorkers,
    indexes: Arc<SpaceIndexes>,
    checkpoints: Arc<CheckpointPolicy>,
    // Shared with the workers, which truncate it after checkpoints.
    wal: Arc<Wal>,
    dedupe: Arc<DedupeIndex>,
    spaces: SpaceRegistry,
    limits: IngestLimits,
    load: Arc<ServerLoad>,
}

impl Engine {
    /// Recovers the log in `data_dir`, rebuilds which observations it holds and starts
    /// the index workers on it.
    pub fn open(
        data_dir: &Path,
        wal_config: WalConfig,
        limits: IngestLimits,
        index: IndexConfig,
    ) -> Result<Engine, EngineError> {
        Engine::open_with_storage(data_dir, wal_config, Arc::new(OsStorage), limits, index)
    }

    /// `open` with the log on `storage` (tests run it on a backend that loses power).
    pub fn open_with_storage(
        data_dir: &Path,
        wal_config: WalConfig,
        storage: Arc<dyn Storage>,
        limits: IngestLimits,
        index: IndexConfig,
    ) -> Result<Engine, EngineError> {
        let wal = Arc::new(Wal::open_with_storage(
            wal_dir(data_dir),
            wal_config,
            storage,
        )?);
        let dedupe = Arc::new(DedupeIndex::default());
        let spaces = SpaceRegistry::default();
        let indexes = Arc::new(SpaceIndexes::new(index.params, index.workers));
        let root = checkpoints_dir(data_dir);
        let started = std::time::Instant::now();
        let log_range = (wal.reader().oldest_lsn(), wal.durable_lsn());
        let from_checkpoints = restore_checkpoints(&root, log_range, &dedupe, &spaces, &indexes)?;
        let replayed = rebuild(&wal.reader(), &dedupe, &spaces)?;
        tracing::info!(
            from_checkpoints,
            replayed_from_log = replayed,
            spaces = spaces.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "rebuilt ingest state from the checkpoints and the log"
        );
        let load = Arc::new(ServerLoad::new(
            limits.queue_bytes_max,
            limits.index_lag_max,
        ));
        let truncating = wal.clone();
        let checkpoints = Arc::new(CheckpointPolicy {
            root,
            every_records: index.checkpoint_records,
            every: index.checkpoint_interval,
            truncate: Box::new(move |below| {
                truncating.truncate_below(below).map_err(|e| e.to_string())
            }),
            written: Default::default(),
            failed: Default::default(),
        });
        let reader = wal.reader();
        // From the log's start: records a checkpoint holds are recognised and skipped.
        let workers = IndexWorkers::start(
            &reader,
            indexes.clone(),
            load.clone(),
            checkpoints.clone(),
            reader.oldest_lsn(),
            &index,
        )
        .map_err(EngineError::Workers)?;
        Ok(Engine {
            workers,
            indexes,
            checkpoints,
            wal,
            dedupe,
            spaces,
            load,
            limits,
        })
    }

    /// Stops the index workers, waits until everything appended is durable, then closes
    /// the log.
    pub fn close(self) -> Result<(), WalError> {
        drop(self.workers);
        drop(self.checkpoints);
        match Arc::try_unwrap(self.wal) {
            Ok(wal) => wal.close(),
            // Only the stopped workers shared it; if a holder is left, dropping the last
            // handle closes the log the same way.
            Err(shared) => match shared.failure() {
                Some(cause) => Err(WalError::Failed { cause }),
                None => Ok(()),
            },
        }
    }

    /// Checkpoints written and failed since start.
    pub fn checkpoint_counts(&self) -> (u64, u64) {
        let load = std::sync::atomic::Ordering::Relaxed;
        (
            self.checkpoints.written.load(load),
            self.checkpoints.failed.load(load),
        )
    }

    /// The k nearest observations of a space (src/index/recall.rs). Runs on the calling
    /// thread: async callers use `spawn_blocking`.
    pub fn recall(&self, query: &RecallQuery) -> Result<Recalled, RecallError> {
        recall(
            &self.indexes,
            self.spaces.shape(&query.space),
            self.spaces.newest_lsn(&query.space),
            &self.wal.reader(),
            query,
        )
    }

    /// The embedding stored with (space, id): as sent, from the log while it still holds
    /// the record; after checkpoints let the log drop it, as the graph holds it (rounded
    /// to f16 by default, at unit length in a cosine space: the same recall either way).
    pub fn embedding_of(&self, space: &str, id: &str) -> Result<Vec<f32>, RecallError> {
        if self.spaces.shape(space).is_none() {
            return Err(RecallError::UnknownSpace {
                space: space.to_owned(),
            });
        }
        let unknown = || RecallError::UnknownId {
            space: space.to_owned(),
            id: id.to_owned(),
        };
        let lsn = self.dedupe.durable(space, id).ok_or_else(unknown)?;
        let from_log = self.logged_embedding(lsn);
        if let Ok(Some(embedding)) = from_log {
            return Ok(embedding);
        }
        if let Some(index) = self.indexes.get(space) {
            if let Some(key) = index.key_of(id) {
                let mut vector = vec![0f32; index.dim() as usize];
                if index.graph().vector(key, &mut vector) {
                    return Ok(vector);
                }
            }
        }
        // Neither holds it: the log's error, if reading it failed, says why.
        from_log?.ok_or_else(unknown)
    }

    /// The embedding of the observation at `lsn`; None once the log no longer holds it.
    fn logged_embedding(&self, lsn: Lsn) -> Result<Option<Vec<f32>>, RecallError> {
        let reader = self.wal.reader();
        if lsn < reader.oldest_lsn() {
            return Ok(None);
        }
        let Some(record) = reader.cursor(lsn).read_next()? else {
            return Ok(None);
        };
        let obs = Observation::view(record.payload()).map_err(|e| RecallError::BadRecord {
            lsn,
            reason: e.to_string(),
        })?;
        Ok(Some(obs.embedding().into_owned()))
    }

    pub fn indexes(&self) -> &Arc<SpaceIndexes> {
        &self.indexes
    }

    pub fn index_counters(&self) -> &WorkerCounters {
        self.workers.counters()
    }

    pub fn limits(&self) -> &IngestLimits {
        &self.limits
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Defines `space` explicitly, before its first observation: its dimension and metric
    /// are logged, so an empty space survives a restart. Defining an existing space again
    /// with the same dimension and metric is not an error.
    pub async fn define_space(
        &self,
        space: &str,
        dim: u32,
        metric: Metric,
    ) -> Result<Defined, EngineError> {
        let definition = match validate_definition(space, dim, metric, &self.limits, &self.spaces) {
            Ok(definition) => definition,
            Err(rejection) => return Ok(Defined::Refused(rejection)),
        };
        if definition == Definition::Exists {
            return Ok(Defined::Existed);
        }
        let record = SpaceDefinition {
            name: space.to_owned(),
            dim,
            metric,
        };
        let appended = self
            .wal
            .append(vec![Entry {
                kind: RecordKind::Space,
                payload: record.to_payload(),
            }])
            .await;
        match appended {
            Ok(range) => Ok(Defined::Created { lsn: range.first }),
            Err(e) => {
                // Not logged: not defined (unless observations already use it).
                self.spaces.undefine(space);
                match e {
                    WalError::StorageFull { .. } => Ok(Defined::Refused(Rejection {
                        code: RejectCode::StorageFull,
                        field: "space",
                        expected: "free space on the server's disk".into(),
                        got: e.to_string(),
                    })),
                    e => Err(e.into()),
                }
            }
        }
    }

    /// For each (space, id) of `space`: whether it is stored durably.
    pub fn contains(&self, space: &str, ids: &[String]) -> Vec<bool> {
        ids.iter()
            .map(|id| self.dedupe.durable(space, id).is_some())
            .collect()
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
    pub async fn ingest(
        self: &Arc<Self>,
        batch: Vec<Observation>,
    ) -> Result<Vec<Handled>, EngineError> {
        self.submit(batch).await?.outcome().await
    }

    /// The first half of `ingest`: validates, reserves the keys and queues the new
    /// observations in the log, waiting only for room in the commit queue. A session
    /// that submits its batches one after the other keeps its observations in log order
    /// while their syncs overlap.
    pub async fn submit(
        self: &Arc<Self>,
        batch: Vec<Observation>,
    ) -> Result<SubmittedBatch, EngineError> {
        let mut outcomes: Vec<Option<Handled>> = vec![None; batch.len()];
        let mut claims = self.dedupe.claims();
        let mut claimed = Vec::new();
        // Claimed observations per space, in runs: (space, how many in a row).
        let mut claimed_spaces: Vec<(String, u64)> = Vec::new();
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
                    match claimed_spaces.last_mut() {
                        Some((space, n)) if *space == obs.space => *n += 1,
                        _ => claimed_spaces.push((obs.space.clone(), 1)),
                    }
                    entries.push(Entry {
                        kind: RecordKind::Observation,
                        payload: obs.to_payload(),
                    });
                }
            }
        }
        let append = if entries.is_empty() {
            None
        } else {
            Some(self.wal.submit(entries).await?)
        };
        Ok(SubmittedBatch {
            engine: self.clone(),
            outcomes,
            claims,
            claimed,
            claimed_spaces,
            append,
            waits,
        })
    }
}

/// A batch whose new observations are in the commit queue (`Engine::submit`).
///
/// Call `outcome` to the end even if nobody waits for it any more: the append will be
/// durable, and only `outcome` commits its dedupe claims. Dropped early, the claims are
/// released and a resend of the same (space, id) could be stored a second time.
#[must_use = "the claims are committed only by outcome()"]
pub struct SubmittedBatch {
    engine: Arc<Engine>,
    outcomes: Vec<Option<Handled>>,
    claims: Claims,
    /// Indexes of the observations appended, in append order.
    claimed: Vec<usize>,
    claimed_spaces: Vec<(String, u64)>,
    append: Option<Submitted>,
    /// Observations another batch is storing right now.
    waits: Vec<(usize, Observation, InFlight)>,
}

impl SubmittedBatch {
    /// Waits until the batch is durable: an outcome per observation, in order.
    pub async fn outcome(self) -> Result<Vec<Handled>, EngineError> {
        let SubmittedBatch {
            engine,
            mut outcomes,
            claims,
            claimed,
            claimed_spaces,
            append,
            waits,
        } = self;
        if let Some(append) = append {
            match append.durable().await {
                Ok(range) => {
                    for (&i, lsn) in claimed.iter().zip(range.iter()) {
                        outcomes[i] = Some(Handled::Stored { lsn });
                    }
                    assert_eq!(
                        range.last.0 + 1 - range.first.0,
                        claims.len() as u64,
                        "one record per claimed observation"
                    );
                    // Each space's newest LSN before the claims wake anyone: a duplicate
                    // waiting on them is acknowledged next, and a read-your-writes recall
                    // scans a space's log tail only up to its newest LSN.
                    let mut next = range.first.0;
                    for (space, n) in &claimed_spaces {
                        next += n;
                        engine.spaces.stored(space, *n, Lsn(next - 1));
                        if let Some(metrics) = crate::metrics::recording() {
                            metrics
                                .observations
                                .with_label_values(&[metrics.space_label(space)])
                                .inc_by(*n);
                        }
                    }
                    claims.commit(range.first);
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
                None => Box::pin(engine.ingest(vec![obs])).await?.remove(0),
            });
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every observation handled"))
            .collect())
    }
}
