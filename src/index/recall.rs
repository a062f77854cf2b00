//! Recall: the k observations of a space nearest to a query, at a chosen consistency.
//!
//! The graph holds every record of a space up to its worker's indexed LSN (and perhaps
//! some after). Records after it are durable but maybe not in the graph yet: recall scans
//! them exactly, straight from the log, and merges the two. Index lag is bounded, so the
//! scan is too.

use std::collections::HashSet;

use super::distance::Scorer;
use super::space_index::SpaceIndex;
use super::{IndexError, SpaceIndexes, StoredForm};
use crate::observation::Observation;
use crate::space::Metric;
use crate::wal::{Lsn, Record, RecordKind, WalError, WalReader};

/// The most results one recall returns.
pub const RECALL_K_MAX: usize = 1024;
/// The largest search beam a request may ask for.
pub const RECALL_EF_MAX: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Every observation acknowledged before the recall arrived is a candidate.
    ReadYourWrites,
    /// Exactly the observations with LSN <= the given one, scored exactly: the same query
    /// at the same LSN always gives the same results.
    AsOf(Lsn),
    /// The graph alone, as far as it is built: fastest, may miss the latest writes.
    Eventual,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RecallQuery {
    pub space: String,
    pub embedding: Vec<f32>,
    pub k: usize,
    /// A wider search beam than the index's ef_search, for better recall.
    pub ef: Option<usize>,
    pub consistency: Consistency,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RecallHit {
    pub id: String,
    pub score: f32,
    pub what: String,
    pub when_unix_ns: i64,
    pub confidence: f32,
    pub lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Recalled {
    /// The results reflect every observation of the space up to this LSN (for Eventual,
    /// at least up to it).
    pub as_of: Lsn,
    /// Best first.
    pub hits: Vec<RecallHit>,
    /// Records read from the log's unindexed tail to answer.
    pub scanned: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecallError {
    #[error("space {space:?} does not exist")]
    UnknownSpace { space: String },
    #[error("embedding has {got} dimensions; space {space:?} has {expected}")]
    DimensionMismatch {
        space: String,
        expected: u32,
        got: usize,
    },
    #[error("embedding[{index}] is not a finite number")]
    NonFinite { index: usize },
    #[error("k is {got}; expected 1..={max}")]
    InvalidK { got: usize, max: usize },
    #[error("ef is {got}; expected at most {max}")]
    InvalidEf { got: usize, max: usize },
    #[error("as_of LSN {as_of} is not durable yet (durable LSN {durable}): results could change")]
    FutureLsn { as_of: Lsn, durable: Lsn },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("the record at LSN {lsn} is not a valid observation: {reason}")]
    BadRecord { lsn: Lsn, reason: String },
    #[error("no observation {id:?} is stored in space {space:?}")]
    UnknownId { space: String, id: String },
}

/// A candidate before the merge: from the graph by key, or from the log's tail.
enum Found {
    Key(u64),
    Tail(Record),
}

struct Candidate {
    score: f32,
    lsn: Lsn,
    found: Found,
}

/// Answers `query`. `shape` is the space's dimension and metric as ingest knows them
/// (`None`: no such space); `newest` the LSN of its newest stored observation, which
/// ingest records before acknowledging any observation up to it.
pub fn recall(
    indexes: &SpaceIndexes,
    shape: Option<(u32, Metric)>,
    newest: Lsn,
    reader: &WalReader,
    query: &RecallQuery,
) -> Result<Recalled, RecallError> {
    let (dim, metric) = shape.ok_or_else(|| RecallError::UnknownSpace {
        space: query.space.clone(),
    })?;
    check(query, dim)?;
    let durable = reader.durable_lsn();
    let progress = indexes.progress_of(&query.space);
    // The cursor first: the graph then holds at least everything before it.
    let tail = progress.resume_cursor();
    let indexed = tail.as_ref().map_or(Lsn::ZERO, |c| c.next_lsn().prev());
    let target = match query.consistency {
        // Every acknowledged observation of the space is at or below its newest LSN: the
        // log past it holds only other spaces' records (or this space's not yet
        // acknowledged), so a space that is not being written costs no scan however fast
        // another one streams.
        Consistency::ReadYourWrites => durable.min(newest.max(indexed)),
        Consistency::AsOf(as_of) if as_of > durable => {
            return Err(RecallError::FutureLsn { as_of, durable })
        }
        Consistency::AsOf(as_of) => as_of,
        Consistency::Eventual => indexed,
    };
    let index = indexes.get(&query.space);
    // Log records are scored as the graph stores them, so that where a record is found
    // (log or graph) does not change its score: AsOf stays repeatable as indexing moves.
    let form = index.as_ref().map_or(
        StoredForm::of_new_graph(metric, indexes.params().quantization),
        |i| i.graph().form(),
    );
    let scorer = Scorer::new(metric, &query.embedding);
    let mut candidates = match &index {
        None => Vec::new(),
        Some(index) => from_graph(
            index,
            query,
            &scorer,
            target.min(indexed),
            target,
            indexes.params().exact_search_max,
        )?,
    };
    let mut scanned = 0;
    if target > indexed {
        let mut cursor = tail.unwrap_or_else(|| reader.cursor(reader.oldest_lsn()));
        let mut seen = HashSet::new();
        while cursor.next_lsn() <= target {
            let Some(record) = cursor.read_next()? else {
                break;
            };
            scanned += 1;
            if record.kind != RecordKind::Observation {
                continue;
            }
            let obs = Observation::view(record.payload()).map_err(|e| RecallError::BadRecord {
                lsn: record.lsn,
                reason: e.to_string(),
            })?;
            if obs.space.as_str() != query.space {
                continue;
            }
            // The first LSN of an id stands (a crash can leave it twice in the log).
            let earlier = index.as_ref().is_some_and(|index| {
                let entries = index.entries();
                entries
                    .key_of(obs.id.as_str())
                    .and_then(|key| entries.get(key))
                    .is_some_and(|entry| entry.lsn < record.lsn)
            });
            if earlier || !seen.insert(obs.id.as_str().to_owned()) {
                continue;
            }
            let mut vector = obs.embedding().into_owned();
            form.apply(&mut vector);
            candidates.push(Candidate {
                score: scorer.score(&vector),
                lsn: record.lsn,
                found: Found::Tail(record),
            });
        }
    }
    // Best first; equal scores by LSN, so the order is repeatable.
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.lsn.cmp(&b.lsn)));
    let mut taken = HashSet::new();
    candidates.retain(|c| taken.insert(c.lsn));
    candidates.truncate(query.k);
    let hits = candidates
        .into_iter()
        .map(|c| hit(index.as_deref(), c))
        .collect::<Result<_, _>>()?;
    Ok(Recalled {
        as_of: target,
        hits,
        scanned,
    })
}

fn check(query: &RecallQuery, dim: u32) -> Result<(), RecallError> {
    if query.embedding.len() != dim as usize {
        return Err(RecallError::DimensionMismatch {
            space: query.space.clone(),
            expected: dim,
            got: query.embedding.len(),
        });
    }
    if let Some(index) = query.embedding.iter().position(|x| !x.is_finite()) {
        return Err(RecallError::NonFinite { index });
    }
    if query.k == 0 || query.k > RECALL_K_MAX {
        return Err(RecallError::InvalidK {
            got: query.k,
            max: RECALL_K_MAX,
        });
    }
    if let Some(ef) = query.ef.filter(|&ef| ef > RECALL_EF_MAX) {
        return Err(RecallError::InvalidEf {
            got: ef,
            max: RECALL_EF_MAX,
        });
    }
    Ok(())
}

/// Candidates from the graph. `covered`: every record up to it is in the graph.
fn from_graph(
    index: &SpaceIndex,
    query: &RecallQuery,
    scorer: &Scorer<'_>,
    covered: Lsn,
    target: Lsn,
    exact_search_max: usize,
) -> Result<Vec<Candidate>, RecallError> {
    let entries = index.entries();
    if let Consistency::AsOf(_) = query.consistency {
        // Exact over the covered part: a snapshot read must not depend on how the graph
        // was wired by later inserts.
        let mut vector = vec![0f32; index.dim() as usize];
        let mut found = Vec::new();
        for (key, entry) in entries.by_key.iter().enumerate() {
            if entry.lsn <= covered && index.graph().vector(key as u64, &mut vector) {
                found.push(Candidate {
                    score: scorer.score(&vector),
                    lsn: entry.lsn,
                    found: Found::Key(key as u64),
                });
            }
        }
        return Ok(found);
    }
    let count = query.k.max(query.ef.unwrap_or(0));
    let keep = |key: u64| entries.get(key).is_some_and(|e| e.lsn <= target);
    let filter: Option<&(dyn Fn(u64) -> bool + Sync)> = match query.consistency {
        Consistency::Eventual => None,
        _ => Some(&keep),
    };
    let graph = index.graph();
    let hits = if graph.len() <= exact_search_max {
        graph.search_exact(&query.embedding, count, filter)?
    } else {
        graph.search(&query.embedding, count, filter)?
    };
    // The graph ranks by its own arithmetic (the query rounded to f16, a cosine as the inner
    // product of unit vectors). Each hit is scored again exactly, as a log record is: a
    // record scores the same wherever it is found, and near-duplicates within f16's
    // precision are ordered by their true similarity (a stored vector finds itself first).
    let mut vector = vec![0f32; index.dim() as usize];
    Ok(hits
        .into_iter()
        .filter_map(|(key, graph_score)| {
            let entry = entries.get(key)?;
            let score = if index.graph().vector(key, &mut vector) {
                scorer.score(&vector)
            } else {
                graph_score
            };
            Some(Candidate {
                score,
                lsn: entry.lsn,
                found: Found::Key(key),
            })
        })
        .collect())
}

fn hit(index: Option<&SpaceIndex>, candidate: Candidate) -> Result<RecallHit, RecallError> {
    Ok(match candidate.found {
        Found::Key(key) => {
            let index = index.expect("graph candidates come from an index");
            let entries = index.entries();
            let entry = entries.get(key).expect("a graph key has an entry");
            RecallHit {
                id: entry.id.to_string(),
                score: candidate.score,
                what: entry.what.to_string(),
                when_unix_ns: entry.when_unix_ns,
                confidence: entry.confidence,
                lsn: entry.lsn,
            }
        }
        Found::Tail(record) => {
            let obs = Observation::view(record.payload()).map_err(|e| RecallError::BadRecord {
                lsn: record.lsn,
                reason: e.to_string(),
            })?;
            RecallHit {
                id: obs.id.to_string(),
                score: candidate.score,
                what: obs.what.to_string(),
                when_unix_ns: obs.when_unix_ns.to_native(),
                confidence: obs.confidence.to_native(),
                lsn: record.lsn,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Admission, IndexParams, Quantization};
    use crate::synthetic::{observation, Distribution};
    use crate::wal::{Entry, Wal, WalConfig};

    const DIM: usize = 8;

    fn append(wal: &Wal, space: &str, range: std::ops::Range<u64>) -> Lsn {
        let entries = range
            .map(|n| Entry {
                kind: RecordKind::Observation,
                payload: observation(3, space, "o-", n, DIM, Distribution::Uniform).to_payload(),
            })
            .collect();
        wal.append_blocking(entries).unwrap().last
    }

    fn query(space: &str, n: u64) -> RecallQuery {
        let mut query = RecallQuery::new(
            space,
            observation(3, space, "o-", n, DIM, Distribution::Uniform).embedding,
            3,
        );
        query.consistency = Consistency::ReadYourWrites;
        query
    }

    /// Nothing is indexed here (no workers run), so every record is in the log's tail.
    #[test]
    fn read_your_writes_scans_the_tail_only_up_to_the_spaces_newest_record() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), WalConfig::default()).unwrap();
        let indexes = SpaceIndexes::new(IndexParams::default(), 1);
        let quiet_newest = append(&wal, "quiet", 0..5);
        let busy_newest = append(&wal, "busy", 0..500);
        let shape = Some((DIM as u32, Metric::Cosine));
        let answer = |newest: Lsn, query: &RecallQuery| {
            recall(&indexes, shape, newest, &wal.reader(), query).unwrap()
        };

        let quiet = answer(quiet_newest, &query("quiet", 2));
        assert_eq!(
            quiet.scanned, 5,
            "the busy space's 500 records are not read"
        );
        assert_eq!(
            quiet.as_of, quiet_newest,
            "what the answer reflects, truthfully"
        );
        assert_eq!(
            quiet.hits[0].id, "o-2",
            "the quiet space's own records are all there"
        );

        let busy = answer(busy_newest, &query("busy", 480));
        assert_eq!(busy.scanned, 505);
        assert_eq!(busy.as_of, busy_newest);
        assert_eq!(busy.hits[0].id, "o-480");

        // A snapshot is exact at the LSN asked, whatever the space's newest record.
        let mut snapshot = query("quiet", 2);
        snapshot.consistency = Consistency::AsOf(busy_newest);
        let at = answer(quiet_newest, &snapshot);
        assert_eq!((at.scanned, at.as_of), (505, busy_newest));
    }

    /// A graph too poor to walk well: below `exact_search_max` recall is still exact.
    #[test]
    fn a_space_up_to_exact_search_max_is_recalled_exactly_past_it_through_the_graph() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), WalConfig::default()).unwrap();
        let poor = |exact_search_max| IndexParams {
            exact_search_max,
            quantization: Quantization::F16,
            ..IndexParams::poorly_wired(2)
        };
        let count = 500u64;
        let exact = SpaceIndexes::new(poor(count as usize), 1);
        let walked = SpaceIndexes::new(poor(count as usize - 1), 1);
        for indexes in [&exact, &walked] {
            let space = indexes
                .get_or_create("s", DIM as u32, Metric::Cosine)
                .unwrap();
            for n in 0..count {
                let obs = observation(3, "s", "o-", n, DIM, Distribution::Uniform);
                let Admission::New(key) = space.admit(&obs.id, Lsn(n + 1), 0, 1.0, "") else {
                    panic!("o-{n} is new");
                };
                space.insert(key, &obs.embedding).unwrap();
            }
        }
        let shape = Some((DIM as u32, Metric::Cosine));
        let mut walk_missed = 0;
        for n in 0..60 {
            let mut query = query("s", 10_000 + n);
            query.consistency = Consistency::Eventual;
            let truth = {
                let scorer = Scorer::new(Metric::Cosine, &query.embedding);
                let mut all: Vec<(String, f32)> = (0..count)
                    .map(|n| {
                        let obs = observation(3, "s", "o-", n, DIM, Distribution::Uniform);
                        let mut stored = obs.embedding.clone();
                        StoredForm::of_new_graph(Metric::Cosine, Quantization::F16)
                            .apply(&mut stored);
                        (obs.id, scorer.score(&stored))
                    })
                    .collect();
                all.sort_by(|a, b| b.1.total_cmp(&a.1));
                all.into_iter()
                    .take(query.k)
                    .map(|(id, _)| id)
                    .collect::<Vec<_>>()
            };
            let ids = |indexes: &SpaceIndexes| {
                recall(indexes, shape, Lsn::ZERO, &wal.reader(), &query)
                    .unwrap()
                    .hits
                    .into_iter()
                    .map(|hit| hit.id)
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(&exact), truth, "query {n}");
            if ids(&walked) != truth {
                walk_missed += 1;
            }
        }
        assert!(
            walk_missed > 0,
            "one past the bound the poor graph is walked, and misses"
        );
    }
}
