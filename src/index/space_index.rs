//! Each space's index: its HNSW graph, what each key stands for, and the progress of the
//! worker that fills it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use super::{Hnsw, IndexError, IndexParams, VectorIndex};
use crate::space::Metric;
use crate::wal::{Lsn, RecordCursor};

/// What a stored observation's key stands for: recall answers with it.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedEntry {
    pub id: Arc<str>,
    pub lsn: Lsn,
    pub when_unix_ns: i64,
    pub confidence: f32,
    pub what: Box<str>,
}

/// What admitting an observation to its space's index found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// New: insert its vector under this key.
    New(u64),
    /// Admitted before but its vector never reached the graph (its worker was restarted
    /// in between): insert it under this key.
    Pending(u64),
    /// This very record is in the graph already (a restarted worker reads it again).
    Indexed,
    /// The same id was stored earlier at another LSN (a crash can leave a key twice in the
    /// log): the first stands, this one is not indexed.
    Duplicate,
}

#[derive(Default)]
pub(super) struct Entries {
    pub by_key: Vec<IndexedEntry>,
    by_id: HashMap<Arc<str>, u64>,
}

impl Entries {
    fn from_entries(by_key: Vec<IndexedEntry>) -> Entries {
        let by_id = by_key
            .iter()
            .enumerate()
            .map(|(key, e)| (e.id.clone(), key as u64))
            .collect();
        Entries { by_key, by_id }
    }

    pub fn get(&self, key: u64) -> Option<&IndexedEntry> {
        self.by_key.get(key as usize)
    }

    pub fn key_of(&self, id: &str) -> Option<u64> {
        self.by_id.get(id).copied()
    }
}

/// How far one ingest worker has indexed its spaces.
pub struct IndexProgress {
    /// Every record of the worker's spaces up to this LSN is in their graphs.
    indexed: AtomicU64,
    /// Reads on from just after `indexed`: where a recall starts its scan of the
    /// unindexed tail, and where the worker resumes after a panic.
    resume: Mutex<Option<RecordCursor>>,
    /// Nanoseconds the worker spent reading and indexing batches since start.
    busy_ns: AtomicU64,
}

impl IndexProgress {
    fn new() -> IndexProgress {
        IndexProgress {
            indexed: AtomicU64::new(0),
            resume: Mutex::new(None),
            busy_ns: AtomicU64::new(0),
        }
    }

    pub fn busy_ns(&self) -> u64 {
        self.busy_ns.load(Ordering::Relaxed)
    }

    pub fn add_busy(&self, took: std::time::Duration) {
        self.busy_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn indexed_lsn(&self) -> Lsn {
        Lsn(self.indexed.load(Ordering::Acquire))
    }

    /// Everything the cursor has read past is indexed. Only the owning worker calls it,
    /// with cursors that only move forward.
    pub fn advance(&self, cursor: &RecordCursor) {
        let indexed = cursor.next_lsn().prev();
        let mut resume = self.resume.lock().expect("progress lock");
        assert!(
            indexed.0 >= self.indexed.load(Ordering::Acquire),
            "the indexed LSN never goes back"
        );
        *resume = Some(cursor.clone());
        self.indexed.store(indexed.0, Ordering::Release);
    }

    /// A cursor at the first record not yet indexed, if the worker has started.
    pub fn resume_cursor(&self) -> Option<RecordCursor> {
        self.resume.lock().expect("progress lock").clone()
    }
}

/// One memory space's index.
pub struct SpaceIndex {
    name: String,
    dim: u32,
    metric: Metric,
    graph: Box<dyn VectorIndex>,
    entries: RwLock<Entries>,
    progress: Arc<IndexProgress>,
    /// Inserts since the last `relink_unreachable`.
    since_audit: AtomicU64,
}

/// Inserts between two audits of a space's links, at least.
const AUDIT_INSERTS_MIN: u64 = 256;

impl SpaceIndex {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dim(&self) -> u32 {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    pub fn graph(&self) -> &dyn VectorIndex {
        self.graph.as_ref()
    }

    pub fn progress(&self) -> &IndexProgress {
        &self.progress
    }

    /// Observations in the graph.
    pub fn len(&self) -> usize {
        self.graph.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn entries(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries.read().expect("entries lock")
    }

    pub fn key_of(&self, id: &str) -> Option<u64> {
        self.entries().key_of(id)
    }

    /// Gives the observation stored at `lsn` its key, once per id.
    pub fn admit(
        &self,
        id: &str,
        lsn: Lsn,
        when_unix_ns: i64,
        confidence: f32,
        what: &str,
    ) -> Admission {
        let mut entries = self.entries.write().expect("entries lock");
        if let Some(key) = entries.key_of(id) {
            let entry = &entries.by_key[key as usize];
            return if entry.lsn != lsn {
                Admission::Duplicate
            } else if self.graph.contains(key) {
                Admission::Indexed
            } else {
                Admission::Pending(key)
            };
        }
        let key = entries.by_key.len() as u64;
        let id: Arc<str> = Arc::from(id);
        entries.by_key.push(IndexedEntry {
            id: id.clone(),
            lsn,
            when_unix_ns,
            confidence,
            what: what.into(),
        });
        entries.by_id.insert(id, key);
        Admission::New(key)
    }

    pub fn insert(&self, key: u64, vector: &[f32]) -> Result<(), IndexError> {
        assert_eq!(
            vector.len(),
            self.dim as usize,
            "ingest checked the dimension"
        );
        self.graph.insert(key, vector)
    }

    /// See `VectorIndex::reserve`.
    pub fn reserve(&self, additional: usize) -> Result<(), IndexError> {
        self.graph.reserve(additional)
    }

    /// See `VectorIndex::relink`.
    pub fn relink(&self, key: u64, vector: &[f32]) -> Result<(), IndexError> {
        self.graph.relink(key, vector)
    }

    /// Counts `inserted` more inserts toward the next audit; true when one is due: once
    /// an eighth of the graph (at least `AUDIT_INSERTS_MIN`) was inserted since the last.
    /// The audit walks every link, so its cost per insert stays a small constant.
    pub fn audit_due(&self, inserted: u64) -> bool {
        let since = self.since_audit.fetch_add(inserted, Ordering::Relaxed) + inserted;
        since >= AUDIT_INSERTS_MIN.max(self.len() as u64 / 8)
    }

    /// Links again, alone, every node no walk can reach (`VectorIndex::unreachable`):
    /// what the check after a parallel batch misses, a node an even later batch cut off.
    /// Called by the space's worker between batches. Returns the keys relinked.
    pub fn relink_unreachable(&self) -> Result<Vec<u64>, IndexError> {
        self.since_audit.store(0, Ordering::Relaxed);
        let bound = self.entries().by_key.len() as u64;
        let lost = self.graph.unreachable(bound);
        let mut vector = vec![0f32; self.dim as usize];
        for &key in &lost {
            // The graph's own copy, already in its stored form: storing it again
            // changes nothing.
            assert!(
                self.graph.vector(key, &mut vector),
                "an unreachable key is in the graph"
            );
            self.graph.relink(key, &vector)?;
        }
        Ok(lost)
    }
}

/// Every space's index, and the progress of the workers they are partitioned over.
pub struct SpaceIndexes {
    params: IndexParams,
    spaces: RwLock<HashMap<String, Arc<SpaceIndex>>>,
    workers: Vec<Arc<IndexProgress>>,
}

impl SpaceIndexes {
    pub fn new(params: IndexParams, workers: usize) -> SpaceIndexes {
        assert!(workers > 0, "at least one index worker");
        SpaceIndexes {
            params,
            spaces: RwLock::new(HashMap::new()),
            workers: (0..workers)
                .map(|_| Arc::new(IndexProgress::new()))
                .collect(),
        }
    }

    pub fn params(&self) -> &IndexParams {
        &self.params
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The worker that indexes `space`: spaces are partitioned by a hash of the name, so
    /// two workers never insert into one space.
    pub fn owner(&self, space: &str) -> usize {
        // SipHash with fixed keys: the same owner on every run.
        let mut hasher = std::hash::DefaultHasher::new();
        space.hash(&mut hasher);
        (hasher.finish() % self.workers.len() as u64) as usize
    }

    pub fn worker_progress(&self, worker: usize) -> &Arc<IndexProgress> {
        &self.workers[worker]
    }

    /// The progress of the worker that indexes `space`, whether or not it has seen it yet.
    pub fn progress_of(&self, space: &str) -> &Arc<IndexProgress> {
        &self.workers[self.owner(space)]
    }

    pub fn get(&self, space: &str) -> Option<Arc<SpaceIndex>> {
        self.spaces.read().expect("spaces lock").get(space).cloned()
    }

    /// The space's index, made empty on first use.
    pub fn get_or_create(
        &self,
        space: &str,
        dim: u32,
        metric: Metric,
    ) -> Result<Arc<SpaceIndex>, IndexError> {
        if let Some(index) = self.get(space) {
            return Ok(index);
        }
        let mut spaces = self.spaces.write().expect("spaces lock");
        if let Some(index) = spaces.get(space) {
            return Ok(index.clone());
        }
        let index = Arc::new(SpaceIndex {
            name: space.to_owned(),
            dim,
            metric,
            graph: Box::new(Hnsw::new(dim, metric, &self.params)?),
            entries: RwLock::new(Entries::default()),
            progress: self.progress_of(space).clone(),
            since_audit: AtomicU64::new(0),
        });
        spaces.insert(space.to_owned(), index.clone());
        Ok(index)
    }

    /// Puts back a space's index from its checkpoint (at start, before the workers run).
    pub fn restore(&self, checkpoint: super::checkpoint::LoadedCheckpoint) -> Arc<SpaceIndex> {
        let index = Arc::new(SpaceIndex {
            progress: self.progress_of(&checkpoint.space).clone(),
            name: checkpoint.space.clone(),
            dim: checkpoint.dim,
            metric: checkpoint.metric,
            graph: Box::new(checkpoint.graph),
            entries: RwLock::new(Entries::from_entries(checkpoint.entries)),
            // Its last inserts before the checkpoint were never audited: at the first batch.
            since_audit: AtomicU64::new(u64::MAX / 2),
        });
        let previous = self
            .spaces
            .write()
            .expect("spaces lock")
            .insert(checkpoint.space, index.clone());
        assert!(previous.is_none(), "one checkpoint per space");
        index
    }

    /// Every space's index, by name.
    pub fn all(&self) -> Vec<Arc<SpaceIndex>> {
        let mut all: Vec<_> = self
            .spaces
            .read()
            .expect("spaces lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_admitted_once_and_its_first_lsn_stands() {
        let indexes = SpaceIndexes::new(IndexParams::default(), 2);
        let space = indexes.get_or_create("s", 2, Metric::L2).unwrap();
        assert_eq!(space.admit("a", Lsn(1), 0, 1.0, "x"), Admission::New(0));
        assert_eq!(space.admit("b", Lsn(2), 0, 1.0, "y"), Admission::New(1));
        assert_eq!(space.admit("a", Lsn(1), 0, 1.0, "x"), Admission::Pending(0));
        space.insert(0, &[1.0, 2.0]).unwrap();
        assert_eq!(space.admit("a", Lsn(1), 0, 1.0, "x"), Admission::Indexed);
        assert_eq!(space.admit("a", Lsn(9), 0, 1.0, "x"), Admission::Duplicate);
        assert_eq!(space.key_of("b"), Some(1));
        assert_eq!(space.entries().get(1).unwrap().lsn, Lsn(2));
        assert!(Arc::ptr_eq(
            &indexes.get_or_create("s", 2, Metric::L2).unwrap(),
            &space
        ));
        assert!(indexes.owner("s") < 2);
    }

    #[test]
    fn relinking_the_unreachable_links_every_node_again_and_audits_come_by_an_eighth() {
        // Poorly wired, so that inserts one at a time leave hundreds of nodes unlinked
        // (measured: about 700 of 4,000; fewer links still and relinking cannot keep up).
        let poor = IndexParams::poorly_wired(4);
        let indexes = SpaceIndexes::new(poor, 1);
        let space = indexes.get_or_create("s", 4, Metric::L2).unwrap();
        let mut rng = rand::rng();
        let data: Vec<Vec<f32>> = (0..4000)
            .map(|_| (0..4).map(|_| rand::Rng::random::<f32>(&mut rng)).collect())
            .collect();
        for (n, v) in data.iter().enumerate() {
            let Admission::New(key) = space.admit(&format!("o-{n}"), Lsn(n as u64 + 1), 0, 1.0, "")
            else {
                panic!("o-{n} is new");
            };
            space.insert(key, v).unwrap();
        }
        let bound = data.len() as u64;
        let lost = space.graph().unreachable(bound);
        assert!(!lost.is_empty(), "the poor graph leaves some node unlinked");
        // Relinking can cut off another node in so poor a graph; a few rounds end it
        // (measured: 685, then 18, then none).
        let mut rounds = 0;
        while !space.relink_unreachable().unwrap().is_empty() {
            rounds += 1;
            assert!(rounds < 20, "relinking converges");
        }
        assert!(space.graph().unreachable(bound).is_empty());
        assert_eq!(
            space.len(),
            data.len(),
            "relinking adds no node and loses none"
        );
        let mut stored = vec![0f32; 4];
        for &key in &lost {
            assert!(space.graph().vector(key, &mut stored));
            assert_eq!(stored, data[key as usize], "relinked with its own vector");
        }

        // Audits: once at least 256 inserts, and an eighth of the graph, came since.
        assert!(!space.audit_due(255));
        assert!(!space.audit_due(bound / 8 - 256));
        assert!(space.audit_due(1));
        space.relink_unreachable().unwrap();
        assert!(!space.audit_due(bound / 8 - 1));
    }
}
