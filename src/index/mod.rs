//! One HNSW index per memory space, and recall over it.
//!
//! The ingest workers (src/ingest/workers.rs) insert the durable log's observations;
//! `recall` answers queries from the graph merged with an exact scan of the records that
//! are durable but not yet indexed, so a client reads its own acknowledged writes.

pub mod checkpoint;
pub mod distance;
mod hnsw;
mod kernels;
pub mod recall;
pub mod space_index;

use std::path::Path;

use crate::space::Metric;

pub use distance::Scorer;
pub use hnsw::Hnsw;
pub use recall::{recall, Consistency, RecallError, RecallHit, RecallQuery, Recalled};
pub use space_index::{Admission, IndexedEntry, SpaceIndex, SpaceIndexes};

/// How the graph stores vectors.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// 4 bytes a component: exact.
    F32,
    /// 2 bytes a component: half the vector memory, scores within about 1e-3. The
    /// default: on 384-d data it indexed 40% faster, answered recalls faster while
    /// streaming, and kept recall@10 above 0.99 (docs/performance.md).
    #[default]
    F16,
}

/// The graph parameters every space's index is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexParams {
    /// Links per node (2 * m on the bottom layer): more is better recall, more memory.
    pub m: usize,
    /// The candidate list while inserting: more is a better graph, slower inserts.
    pub ef_construction: usize,
    /// The candidate list while searching, at least k: more is better recall, slower.
    pub ef_search: usize,
    pub quantization: Quantization,
    /// A space holding at most this many indexed observations is searched exactly, every
    /// vector compared, not through the graph: there the scan costs no more than the
    /// walk, and its answer is the true one whatever the graph's wiring. A search
    /// setting, not the graph's: the server's value applies to every space, also to one
    /// loaded from a checkpoint written with another.
    #[serde(default = "exact_search_max_default")]
    pub exact_search_max: usize,
}

pub const M_DEFAULT: usize = 16;
pub const EF_CONSTRUCTION_DEFAULT: usize = 200;
pub const EF_SEARCH_DEFAULT: usize = 64;
pub const EXACT_SEARCH_MAX_DEFAULT: usize = 1024;

fn exact_search_max_default() -> usize {
    EXACT_SEARCH_MAX_DEFAULT
}

impl Quantization {
    /// Each component as the graph stores it.
    pub fn round(self, vector: &mut [f32]) {
        if self == Quantization::F16 {
            for x in vector {
                *x = half::f16::from_f32(*x).to_f32();
            }
        }
    }
}

/// How a graph holds a vector. Recall brings a log record into the same form before it
/// scores it, so where a record is found (log or graph) does not change its score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredForm {
    /// Scaled to unit length: a cosine graph's distance is then an inner product, a
    /// third of the arithmetic (hnswlib does the same). Only f16 cosine graphs do this:
    /// they hold a rounded copy anyway, while an f32 graph gives back exactly the vector
    /// it was given (once checkpoints let the log drop a record, the graph holds the
    /// only copy). Cosine graphs checkpointed before this hold their vectors as given
    /// and are scored as a full cosine throughout.
    pub unit_length: bool,
    pub quantization: Quantization,
}

impl StoredForm {
    /// The form a graph created now holds its vectors in.
    pub fn of_new_graph(metric: Metric, quantization: Quantization) -> StoredForm {
        StoredForm {
            unit_length: metric == Metric::Cosine && quantization == Quantization::F16,
            quantization,
        }
    }

    /// `vector` as the graph stores it: the same values a graph search scores.
    pub fn apply(self, vector: &mut [f32]) {
        if self.unit_length {
            scale_to_unit_length(vector);
        }
        self.quantization.round(vector);
    }
}

/// Divides `vector` by its length; a zero vector stays zero (similar to nothing).
pub fn scale_to_unit_length(vector: &mut [f32]) {
    let norm = distance::dot(vector, vector).sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
impl IndexParams {
    /// A graph wired as poorly as usearch allows with `m` links: a beam of one while
    /// inserting and searching, exact vectors. Its walks miss, and it leaves nodes that
    /// nothing links to: what the tests of exact search and of the repairs need.
    pub(crate) fn poorly_wired(m: usize) -> IndexParams {
        IndexParams {
            m,
            ef_construction: 1,
            ef_search: 1,
            quantization: Quantization::F32,
            ..IndexParams::default()
        }
    }
}

impl Default for IndexParams {
    fn default() -> IndexParams {
        IndexParams {
            m: M_DEFAULT,
            ef_construction: EF_CONSTRUCTION_DEFAULT,
            ef_search: EF_SEARCH_DEFAULT,
            quantization: Quantization::default(),
            exact_search_max: EXACT_SEARCH_MAX_DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("the HNSW library failed: {0}")]
    Library(String),
}

/// An approximate nearest-neighbour index over vectors named by `u64` keys. Scores are
/// higher for closer vectors, as `Scorer` computes them.
pub trait VectorIndex: Send + Sync {
    /// Adds `vector` under `key`; safe to call from many threads at once.
    fn insert(&self, key: u64, vector: &[f32]) -> Result<(), IndexError>;
    /// Makes room for `additional` more vectors at once, so that inserts running
    /// concurrently never stop to grow the graph (an insert past the room still grows it).
    fn reserve(&self, additional: usize) -> Result<(), IndexError>;
    /// The `count` best keys and their scores, best first; only keys `filter` keeps.
    fn search(
        &self,
        query: &[f32],
        count: usize,
        filter: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Result<Vec<(u64, f32)>, IndexError>;
    /// As `search`, but comparing the query with every vector instead of walking the
    /// graph: the true best, at a cost linear in `len`. Small spaces are searched so
    /// (`IndexParams::exact_search_max`), where it costs no more than the walk.
    fn search_exact(
        &self,
        query: &[f32],
        count: usize,
        filter: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Result<Vec<(u64, f32)>, IndexError>;
    /// How the graph holds vectors: what `vector` copies out.
    fn form(&self) -> StoredForm;
    /// Copies the vector stored under `key` into `out`; false if there is none.
    fn vector(&self, key: u64, out: &mut [f32]) -> bool;
    fn contains(&self, key: u64) -> bool;
    /// Adds `key`, already present, once more, alone: links a node that concurrent
    /// inserts left where no search reaches it.
    fn relink(&self, key: u64, vector: &[f32]) -> Result<(), IndexError>;
    /// Of `keys`, in the graph, those none of their own bottom-level neighbours links
    /// back to: a walk reaches such a node only through a link from elsewhere, which a
    /// node just inserted rarely has. Reads the links in place, so the caller keeps
    /// inserts and relinks out meanwhile; searches may run.
    fn unlinked(&self, keys: &[u64]) -> Vec<u64>;
    /// The keys below `key_bound` in the graph that no walk can reach: not linked, at any
    /// level, from a node of the top level. Reads the links in place, so the caller keeps
    /// inserts and relinks out meanwhile; searches may run.
    fn unreachable(&self, key_bound: u64) -> Vec<u64>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn save(&self, path: &Path) -> Result<(), IndexError>;
}
