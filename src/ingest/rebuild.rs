//! Rebuilding ingest state on start, from the index checkpoints and then the log: which
//! (space, id) are stored, and each space's dimension.

use std::path::Path;

use crate::index::checkpoint::{load_checkpoints, CheckpointError};
use crate::index::SpaceIndexes;
use crate::observation::Observation;
use crate::space::SpaceDefinition;
use crate::wal::{Lsn, RecordKind, WalError, WalReader};

use super::dedupe::DedupeIndex;
use super::spaces::SpaceRegistry;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(
        "the record at LSN {lsn} has a valid checksum but is not a valid {kind} record: {reason}"
    )]
    BadRecord {
        lsn: Lsn,
        kind: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "the checkpoint of space {space:?} covers the log up to LSN {covered}, but the log \
         now starts at LSN {oldest}: the records between are gone. Restore the index folder \
         or the log from a backup"
    )]
    CheckpointGap {
        space: String,
        covered: Lsn,
        oldest: Lsn,
    },
}

/// Loads every space's checkpoint from `root` into `indexes`, and what it holds into
/// `dedupe` and `spaces`: the log may no longer have those records. Returns how many
/// observations the checkpoints held. `oldest` and `newest` are the log's first and last
/// LSN: a checkpoint that does not reach `oldest` leaves a gap, and is refused; one past
/// `newest` (a repaired log) is removed first.
pub fn restore_checkpoints(
    root: &Path,
    (oldest, newest): (Lsn, Lsn),
    dedupe: &DedupeIndex,
    spaces: &SpaceRegistry,
    indexes: &SpaceIndexes,
) -> Result<usize, RebuildError> {
    crate::index::checkpoint::discard_beyond(root, newest)?;
    let mut observations = 0;
    for checkpoint in load_checkpoints(root)? {
        if checkpoint.covered.next() < oldest {
            return Err(RebuildError::CheckpointGap {
                space: checkpoint.space,
                covered: checkpoint.covered,
                oldest,
            });
        }
        spaces.record_definition(&checkpoint.space, checkpoint.dim, checkpoint.metric);
        for entry in &checkpoint.entries {
            let first = dedupe.record_durable(&checkpoint.space, &entry.id, entry.lsn);
            spaces.record(&checkpoint.space, checkpoint.dim, entry.lsn, first);
        }
        observations += checkpoint.entries.len();
        tracing::info!(space = %checkpoint.space, covered = %checkpoint.covered,
            observations = checkpoint.entries.len(), path = %checkpoint.path.display(),
            "loaded an index checkpoint");
        indexes.restore(checkpoint);
    }
    Ok(observations)
}

/// Replays every observation still in the log into `dedupe` and `spaces`; returns how many.
/// If a key appears twice (a crash between append and dedupe can leave that), the first
/// LSN stands, as it did for the client that stored it.
pub fn rebuild(
    reader: &WalReader,
    dedupe: &DedupeIndex,
    spaces: &SpaceRegistry,
) -> Result<u64, RebuildError> {
    let mut cursor = reader.cursor(reader.oldest_lsn());
    let mut count = 0;
    while let Some(record) = cursor.read_next()? {
        match record.kind {
            RecordKind::Space => {
                let def = SpaceDefinition::view(record.payload()).map_err(|e| {
                    RebuildError::BadRecord {
                        lsn: record.lsn,
                        kind: "space",
                        reason: e.to_string(),
                    }
                })?;
                spaces.record_definition(def.name.as_str(), def.dim.to_native(), def.metric());
            }
            RecordKind::Observation => {
                let obs =
                    Observation::view(record.payload()).map_err(|e| RebuildError::BadRecord {
                        lsn: record.lsn,
                        kind: "observation",
                        reason: e.to_string(),
                    })?;
                let first = dedupe.record_durable(obs.space.as_str(), obs.id.as_str(), record.lsn);
                spaces.record(
                    obs.space.as_str(),
                    obs.dimension() as u32,
                    record.lsn,
                    first,
                );
                count += 1;
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ingest::Reservation;
    use crate::synthetic::{observation, Distribution};
    use crate::wal::{Entry, Wal, WalConfig};

    #[test]
    fn the_stored_ids_and_dimensions_come_back_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), WalConfig::default()).unwrap();
        let entry = |space: &str, n: u64, dim: usize| Entry {
            kind: RecordKind::Observation,
            payload: observation(1, space, "id-", n, dim, Distribution::Uniform).to_payload(),
        };
        wal.append_blocking(vec![entry("a", 0, 8), entry("a", 1, 8), entry("b", 0, 3)])
            .unwrap();
        wal.append_blocking(vec![entry("a", 0, 8)]).unwrap(); // a duplicate left by a crash
        let dedupe = Arc::new(DedupeIndex::default());
        let spaces = SpaceRegistry::default();
        assert_eq!(rebuild(&wal.reader(), &dedupe, &spaces).unwrap(), 4);
        let mut claims = dedupe.claims();
        assert!(
            matches!(
                dedupe.reserve("a", "id-0", &mut claims),
                Reservation::Durable(Lsn(1))
            ),
            "the first LSN stands"
        );
        assert!(matches!(
            dedupe.reserve("b", "id-0", &mut claims),
            Reservation::Durable(Lsn(3))
        ));
        assert!(matches!(
            dedupe.reserve("b", "id-1", &mut claims),
            Reservation::New
        ));
        assert_eq!(
            (spaces.dimension("a"), spaces.dimension("b"), spaces.len()),
            (Some(8), Some(3), 2)
        );
        let summaries = spaces.summaries();
        assert_eq!(
            summaries
                .iter()
                .map(|s| (s.name.as_str(), s.observations, s.last_lsn))
                .collect::<Vec<_>>(),
            vec![("a", 2, Lsn(2)), ("b", 1, Lsn(3))],
            "the duplicate left by a crash is counted once"
        );
    }
}
