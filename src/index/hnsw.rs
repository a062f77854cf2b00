//! The HNSW graph behind the `VectorIndex` trait, on usearch (chosen by benches/
//! index_candidates.rs; docs/architecture.md says why).

use std::borrow::Cow;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, RwLock};

use super::{
    kernels, scale_to_unit_length, IndexError, IndexParams, Quantization, StoredForm, VectorIndex,
};
use crate::space::Metric;

/// Capacity a new graph reserves; it doubles as it fills.
const INITIAL_CAPACITY: usize = 1024;

/// usearch keeps one search context per concurrent caller and must never be entered by
/// more callers than it reserved contexts for: this bounds them.
struct CallerSlots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct SlotGuard<'a>(&'a CallerSlots);

impl CallerSlots {
    fn new(slots: usize) -> CallerSlots {
        CallerSlots {
            free: Mutex::new(slots),
            freed: Condvar::new(),
        }
    }

    fn take(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().expect("slot lock");
        while *free == 0 {
            free = self.freed.wait(free).expect("slot lock");
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().expect("slot lock") += 1;
        self.0.freed.notify_one();
    }
}

/// One space's graph. Inserts and searches run concurrently; growing the capacity takes
/// the graph for itself for a moment. Callers that insert from many threads at once
/// reserve first: an insert that has to grow waits for the write lock while the other
/// threads go on inserting, and measured with 2 threads on 23,000 vectors that wait took
/// a quarter of the build's rate (docs/performance.md, "Index candidates").
pub struct Hnsw {
    graph: RwLock<usearch::Index>,
    /// Vectors inserted or being inserted: an insert claims its place before it starts,
    /// so concurrent inserters never pass the reserved capacity.
    claimed: AtomicUsize,
    slots: CallerSlots,
    slot_count: usize,
    metric: Metric,
    form: StoredForm,
}

fn options(dim: u32, metric: Metric, params: &IndexParams) -> usearch::IndexOptions {
    usearch::IndexOptions {
        dimensions: dim as usize,
        metric: match metric {
            Metric::Cosine => usearch::MetricKind::Cos,
            Metric::L2 => usearch::MetricKind::L2sq,
            Metric::Dot => usearch::MetricKind::IP,
        },
        quantization: match params.quantization {
            Quantization::F32 => usearch::ScalarKind::F32,
            Quantization::F16 => usearch::ScalarKind::F16,
        },
        connectivity: params.m,
        expansion_add: params.ef_construction,
        expansion_search: params.ef_search,
        multi: false,
    }
}

fn slot_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2 + 16
}

/// A usearch graph with this crate's distance kernels, loaded from `from` if given.
fn graph(
    dim: u32,
    metric: Metric,
    params: &IndexParams,
    form: StoredForm,
    from: Option<&Path>,
) -> Result<usearch::Index, IndexError> {
    let mut graph = usearch::Index::new(&options(dim, metric, params)).map_err(library)?;
    if let Some(path) = from {
        graph.load(&path_str(path)?).map_err(library)?;
        if graph.dimensions() != dim as usize {
            return Err(IndexError::Library(format!(
                "{} holds {}-dimensional vectors, not {dim}",
                path.display(),
                graph.dimensions()
            )));
        }
    }
    // After loading: a load puts back the file's built-in metric.
    kernels::install(&mut graph, metric, form, dim as usize);
    Ok(graph)
}

impl Hnsw {
    pub fn new(dim: u32, metric: Metric, params: &IndexParams) -> Result<Hnsw, IndexError> {
        let form = StoredForm::of_new_graph(metric, params.quantization);
        Hnsw::with_graph(graph(dim, metric, params, form, None)?, metric, form)
    }

    /// Loads a graph `save` wrote, whose vectors are at unit length if `unit_length`
    /// (what its `form` said when it was saved).
    pub fn load(
        path: &Path,
        dim: u32,
        metric: Metric,
        params: &IndexParams,
        unit_length: bool,
    ) -> Result<Hnsw, IndexError> {
        let form = StoredForm {
            unit_length,
            quantization: params.quantization,
        };
        Hnsw::with_graph(graph(dim, metric, params, form, Some(path))?, metric, form)
    }

    fn with_graph(
        graph: usearch::Index,
        metric: Metric,
        form: StoredForm,
    ) -> Result<Hnsw, IndexError> {
        let slot_count = slot_count();
        let size = graph.size();
        graph
            .reserve_capacity_and_threads((size * 2).max(INITIAL_CAPACITY), slot_count)
            .map_err(library)?;
        Ok(Hnsw {
            graph: RwLock::new(graph),
            claimed: AtomicUsize::new(size),
            slots: CallerSlots::new(slot_count),
            slot_count,
            metric,
            form,
        })
    }

    /// Converts usearch's distance into the score `Scorer` computes.
    fn score(&self, distance: f32) -> f32 {
        match self.metric {
            Metric::Cosine | Metric::Dot => 1.0 - distance,
            Metric::L2 => -distance.max(0.0).sqrt(),
        }
    }

    /// The first `count` of `matches` that `keep` passes, with their scores.
    fn scored(
        &self,
        matches: usearch::ffi::Matches,
        count: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        matches
            .keys
            .into_iter()
            .zip(matches.distances)
            .filter(|&(key, _)| keep(key))
            .take(count)
            .map(|(key, distance)| (key, self.score(distance)))
            .collect()
    }

    /// `vector` as the graph takes it: usearch rounds to f16 itself.
    fn as_stored<'v>(&self, vector: &'v [f32]) -> Cow<'v, [f32]> {
        if self.form.unit_length {
            let mut scaled = vector.to_vec();
            scale_to_unit_length(&mut scaled);
            Cow::Owned(scaled)
        } else {
            Cow::Borrowed(vector)
        }
    }

    fn grow(&self, needed: usize) -> Result<(), IndexError> {
        let graph = self.graph.write().expect("graph lock");
        let capacity = graph.capacity();
        if needed > capacity {
            let target = needed.max(capacity * 2);
            graph
                .reserve_capacity_and_threads(target, self.slot_count)
                .map_err(library)?;
        }
        Ok(())
    }
}

impl VectorIndex for Hnsw {
    fn insert(&self, key: u64, vector: &[f32]) -> Result<(), IndexError> {
        let vector = &*self.as_stored(vector);
        let place = self.claimed.fetch_add(1, Ordering::AcqRel) + 1;
        loop {
            {
                let graph = self.graph.read().expect("graph lock");
                if place <= graph.capacity() {
                    let _slot = self.slots.take();
                    let _query = kernels::QueryScope::arm();
                    return graph.add(key, vector).map_err(|e| {
                        self.claimed.fetch_sub(1, Ordering::AcqRel);
                        library(e)
                    });
                }
            }
            if let Err(e) = self.grow(place) {
                self.claimed.fetch_sub(1, Ordering::AcqRel);
                return Err(e);
            }
        }
    }

    fn reserve(&self, additional: usize) -> Result<(), IndexError> {
        let needed = self.claimed.load(Ordering::Acquire) + additional;
        if needed > self.graph.read().expect("graph lock").capacity() {
            self.grow(needed)?;
        }
        Ok(())
    }

    fn search(
        &self,
        query: &[f32],
        count: usize,
        filter: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        let query = &*self.as_stored(query);
        let graph = self.graph.read().expect("graph lock");
        let _slot = self.slots.take();
        let _query = kernels::QueryScope::arm();
        let matches = match filter {
            Some(keep) => graph.filtered_search(query, count, keep),
            None => graph.search(query, count),
        }
        .map_err(library)?;
        Ok(self.scored(matches, count, |_| true))
    }

    fn search_exact(
        &self,
        query: &[f32],
        count: usize,
        filter: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Result<Vec<(u64, f32)>, IndexError> {
        let query = &*self.as_stored(query);
        // Exclusive: usearch's scan reads every slot up to its size, and a concurrent
        // insert claims its slot before it fills it (a scan meeting it read a null node:
        // SIGSEGV, in a test and under the Prometheus test's load). Only small spaces are
        // scanned, so the inserts it holds back wait about 100 us.
        let graph = self.graph.write().expect("graph lock");
        let _slot = self.slots.take();
        let _query = kernels::QueryScope::arm();
        let keep = |key: u64| filter.is_none_or(|keep| keep(key));
        // usearch's exact scan takes no filter: ask for more until enough pass it (a
        // filter drops only the few keys being indexed past the recall's LSN).
        let size = graph.size();
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut wanted = count;
        loop {
            let matches = graph
                .exact_search(query, wanted.min(size))
                .map_err(library)?;
            let passed = matches.keys.iter().filter(|&&key| keep(key)).count();
            if passed >= count || wanted >= size {
                return Ok(self.scored(matches, count, keep));
            }
            wanted = wanted.saturating_mul(4);
        }
    }

    fn form(&self) -> StoredForm {
        self.form
    }

    fn vector(&self, key: u64, out: &mut [f32]) -> bool {
        let graph = self.graph.read().expect("graph lock");
        let _slot = self.slots.take();
        matches!(graph.get(key, out), Ok(1))
    }

    fn contains(&self, key: u64) -> bool {
        self.graph.read().expect("graph lock").contains(key)
    }

    fn relink(&self, key: u64, vector: &[f32]) -> Result<(), IndexError> {
        let vector = &*self.as_stored(vector);
        // Exclusive: no search may meet the node between its removal and its return.
        let graph = self.graph.write().expect("graph lock");
        graph.remove(key).map_err(library)?;
        let _query = kernels::QueryScope::arm();
        graph.add(key, vector).map_err(library)
    }

    fn len(&self) -> usize {
        self.graph.read().expect("graph lock").size()
    }

    fn unlinked(&self, keys: &[u64]) -> Vec<u64> {
        let graph = self.graph.read().expect("graph lock");
        let (mut linked, mut back) = (Vec::new(), Vec::new());
        keys.iter()
            .copied()
            .filter(|&key| {
                read_links(&graph, key, 0, &mut linked);
                // A node alone in the graph has nothing to be linked from.
                !linked.is_empty()
                    && !linked.iter().any(|&neighbor| {
                        read_links(&graph, neighbor, 0, &mut back);
                        back.contains(&key)
                    })
            })
            .collect()
    }

    fn unreachable(&self, key_bound: u64) -> Vec<u64> {
        let graph = self.graph.read().expect("graph lock");
        let bound = key_bound as usize;
        // The top level of each key in the graph; None for keys not in it.
        let levels: Vec<Option<usize>> = (0..key_bound)
            .map(|key| graph.contains(key).then(|| graph.level_of_key(key)))
            .collect();
        let top = levels.iter().flatten().copied().max();
        let mut reached = vec![false; bound];
        // The walk starts at one node of the top level; taking them all as starts can
        // only call a node reachable that is not, never the other way.
        let mut frontier: Vec<u64> = (0..key_bound)
            .filter(|&key| top.is_some() && levels[key as usize] == top)
            .collect();
        frontier
            .iter()
            .for_each(|&key| reached[key as usize] = true);
        let mut linked = Vec::new();
        while let Some(key) = frontier.pop() {
            for level in 0..=levels[key as usize].expect("only keys in the graph are reached") {
                read_links(&graph, key, level, &mut linked);
                for &next in &linked {
                    // A link to a removed node's slot carries usearch's free key.
                    let fresh = next < key_bound
                        && levels[next as usize].is_some()
                        && !reached[next as usize];
                    if fresh {
                        reached[next as usize] = true;
                        frontier.push(next);
                    }
                }
            }
        }
        (0..key_bound)
            .filter(|&key| levels[key as usize].is_some() && !reached[key as usize])
            .collect()
    }

    fn save(&self, path: &Path) -> Result<(), IndexError> {
        let graph = self.graph.read().expect("graph lock");
        let _slot = self.slots.take();
        graph.save(&path_str(path)?).map_err(library)
    }
}

/// The keys `key` links to at `level`, into `out` (reused between calls).
fn read_links(graph: &usearch::Index, key: u64, level: usize, out: &mut Vec<u64>) {
    let mut neighbors = graph.neighbors(key, level);
    out.resize(neighbors.total(), 0);
    let count = neighbors.drain_into(out);
    out.truncate(count);
}

fn library(e: impl std::fmt::Display) -> IndexError {
    IndexError::Library(e.to_string())
}

fn path_str(path: &Path) -> Result<String, IndexError> {
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| IndexError::Library(format!("{} is not UTF-8", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::distance::Scorer;

    fn vectors(n: usize, dim: usize) -> Vec<Vec<f32>> {
        let mut rng = rand::rng();
        (0..n)
            .map(|_| {
                (0..dim)
                    .map(|_| rand::Rng::random::<f32>(&mut rng) - 0.5)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn grows_past_its_first_capacity_from_many_threads_and_finds_each_vector() {
        for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
            let data = vectors(3 * INITIAL_CAPACITY, 16);
            let exact = IndexParams {
                quantization: Quantization::F32,
                ..IndexParams::default()
            };
            let hnsw = Hnsw::new(16, metric, &exact).unwrap();
            std::thread::scope(|s| {
                for part in 0..4 {
                    let (hnsw, data) = (&hnsw, &data);
                    s.spawn(move || {
                        for (key, v) in data.iter().enumerate().skip(part).step_by(4) {
                            hnsw.insert(key as u64, v).unwrap();
                        }
                    });
                }
            });
            assert_eq!(hnsw.len(), data.len());
            let mut found_self = 0;
            for (key, v) in data.iter().enumerate().step_by(97) {
                let hits = hnsw.search(v, 10, None).unwrap();
                let (top, score) = hits[0];
                if top == key as u64 {
                    found_self += 1;
                }
                let exact = Scorer::new(metric, v).score(&data[top as usize]);
                assert!(
                    (exact - score).abs() < 1e-3,
                    "{metric:?}: {exact} vs {score}"
                );
            }
            // Dot has no "self is nearest" guarantee; cosine and L2 do.
            if metric != Metric::Dot {
                assert!(found_self >= 30, "{metric:?}: {found_self} of 32");
            }
        }
    }

    /// The true best `count` keys that `keep` passes, best first.
    fn brute_force(
        data: &[Vec<f32>],
        metric: Metric,
        query: &[f32],
        count: usize,
        keep: impl Fn(u64) -> bool,
    ) -> Vec<u64> {
        let scorer = Scorer::new(metric, query);
        let mut scored: Vec<(u64, f32)> = (0..data.len() as u64)
            .filter(|&key| keep(key))
            .map(|key| (key, scorer.score(&data[key as usize])))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored.into_iter().take(count).map(|(key, _)| key).collect()
    }

    #[test]
    fn an_exact_search_finds_the_true_best_where_a_poor_graph_walk_does_not() {
        let poor = IndexParams::poorly_wired(2);
        for metric in [Metric::Cosine, Metric::L2, Metric::Dot] {
            let data = vectors(600, 8);
            let hnsw = Hnsw::new(8, metric, &poor).unwrap();
            for (key, v) in data.iter().enumerate() {
                hnsw.insert(key as u64, v).unwrap();
            }
            assert!(hnsw
                .search_exact(&data[0], 5, Some(&|_| false))
                .unwrap()
                .is_empty());
            let odd = |key: u64| key % 2 == 1;
            let mut walk_missed = 0;
            for query in vectors(40, 8) {
                let exact = hnsw.search_exact(&query, 5, None).unwrap();
                let keys: Vec<u64> = exact.iter().map(|&(key, _)| key).collect();
                assert_eq!(keys, brute_force(&data, metric, &query, 5, |_| true));
                let scorer = Scorer::new(metric, &query);
                for (key, score) in exact {
                    let true_score = scorer.score(&data[key as usize]);
                    assert!((true_score - score).abs() < 1e-4, "{metric:?}");
                }
                // Most keys filtered out: the scan asks for more until five pass.
                let rare = |key: u64| key % 50 == 7;
                let filtered = hnsw.search_exact(&query, 5, Some(&rare)).unwrap();
                let keys: Vec<u64> = filtered.iter().map(|&(key, _)| key).collect();
                assert_eq!(keys, brute_force(&data, metric, &query, 5, rare));
                let keys: Vec<u64> = hnsw
                    .search_exact(&query, 5, Some(&odd))
                    .unwrap()
                    .iter()
                    .map(|&(key, _)| key)
                    .collect();
                assert_eq!(keys, brute_force(&data, metric, &query, 5, odd));

                let walked: Vec<u64> = hnsw
                    .search(&query, 5, None)
                    .unwrap()
                    .iter()
                    .map(|&(key, _)| key)
                    .collect();
                if walked != brute_force(&data, metric, &query, 5, |_| true) {
                    walk_missed += 1;
                }
            }
            assert!(
                walk_missed > 0,
                "{metric:?}: the poor graph's walk should miss, or this test shows nothing"
            );
        }
        let empty = Hnsw::new(8, Metric::Cosine, &poor).unwrap();
        assert!(empty.search_exact(&[1.0; 8], 5, None).unwrap().is_empty());
    }

    #[test]
    fn the_audit_names_exactly_the_nodes_no_walk_reaches() {
        let poor = IndexParams::poorly_wired(2);
        let data = vectors(3000, 8);
        let hnsw = Hnsw::new(8, Metric::Cosine, &poor).unwrap();
        std::thread::scope(|s| {
            for part in 0..2 {
                let (hnsw, data) = (&hnsw, &data);
                s.spawn(move || {
                    for (key, v) in data.iter().enumerate().skip(part).step_by(2) {
                        hnsw.insert(key as u64, v).unwrap();
                    }
                });
            }
        });
        let bound = data.len() as u64;
        let lost = hnsw.unreachable(bound);
        assert!(
            !lost.is_empty(),
            "a graph this poorly wired leaves some node unlinked, or this test shows nothing"
        );
        // A walk as wide as the graph returns every node it can reach: none of the lost.
        for &key in &lost {
            let everything = hnsw.search(&data[key as usize], data.len(), None).unwrap();
            assert!(everything.iter().all(|&(found, _)| found != key), "{key}");
        }
        // Keys at or past the bound are not looked at.
        assert!(hnsw.unreachable(10).iter().all(|&key| key < 10));
        assert!(Hnsw::new(8, Metric::Cosine, &poor)
            .unwrap()
            .unreachable(5)
            .is_empty());
    }

    #[test]
    fn unlinked_names_the_nodes_their_neighbours_do_not_link_back_to() {
        let poor = IndexParams::poorly_wired(4);
        let data = vectors(4000, 4);
        let hnsw = Hnsw::new(4, Metric::L2, &poor).unwrap();
        for (key, v) in data.iter().enumerate() {
            hnsw.insert(key as u64, v).unwrap();
        }
        let keys: Vec<u64> = (0..data.len() as u64).collect();
        let named = hnsw.unlinked(&keys);
        assert!(!named.is_empty(), "a graph this poor leaves some");
        {
            let graph = hnsw.graph.read().unwrap();
            let links = |key: u64| graph.neighbors(key, 0).collect::<Vec<u64>>();
            for &key in &keys {
                let own = links(key);
                let linked_back = own.iter().any(|&n| links(n).contains(&key));
                assert_eq!(
                    named.contains(&key),
                    !own.is_empty() && !linked_back,
                    "{key}"
                );
            }
        }
        let lost_before = hnsw.unreachable(data.len() as u64).len();
        for &key in &named {
            hnsw.relink(key, &data[key as usize]).unwrap();
        }
        let still = hnsw.unlinked(&named).len();
        assert!(
            still < named.len() / 4,
            "relinking links most of them: {still} of {}",
            named.len()
        );
        assert!(hnsw.unreachable(data.len() as u64).len() < lost_before);
        assert!(hnsw.unlinked(&[]).is_empty());
    }

    #[test]
    fn exact_searches_run_safely_beside_inserts() {
        let data = vectors(3000, 16);
        let hnsw = Hnsw::new(16, Metric::Cosine, &IndexParams::default()).unwrap();
        let inserted = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for part in 0..2 {
                let (hnsw, data, inserted) = (&hnsw, &data, &inserted);
                s.spawn(move || {
                    for (key, v) in data.iter().enumerate().skip(part).step_by(2) {
                        hnsw.insert(key as u64, v).unwrap();
                        inserted.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            // Scans while the graph grows, one per 3 inserts: each must see only whole
            // nodes (a scan beside inserts crashed the process before it was exclusive).
            let mut scanned_at = 0;
            while inserted.load(Ordering::Relaxed) < data.len() {
                let now = inserted.load(Ordering::Relaxed);
                if now < scanned_at + 3 {
                    std::thread::yield_now();
                    continue;
                }
                scanned_at = now;
                let hits = hnsw.search_exact(&data[now % 100], 5, None).unwrap();
                assert!(hits.iter().all(|&(key, _)| (key as usize) < data.len()));
            }
        });
    }

    #[test]
    fn reserve_makes_room_beyond_the_inserts_claimed_and_never_shrinks() {
        let hnsw = Hnsw::new(8, Metric::Cosine, &IndexParams::default()).unwrap();
        let capacity = |h: &Hnsw| h.graph.read().unwrap().capacity();
        let data = vectors(INITIAL_CAPACITY / 2, 8);
        for (key, v) in data.iter().enumerate() {
            hnsw.insert(key as u64, v).unwrap();
        }
        let wanted = 5 * INITIAL_CAPACITY;
        hnsw.reserve(wanted).unwrap();
        assert!(
            capacity(&hnsw) >= data.len() + wanted,
            "{}",
            capacity(&hnsw)
        );
        let before = capacity(&hnsw);
        hnsw.reserve(1).unwrap();
        assert_eq!(
            capacity(&hnsw),
            before,
            "room already there is kept as it is"
        );
        assert_eq!(hnsw.len(), data.len());
    }

    #[test]
    fn f16_graphs_find_each_vector_with_scores_close_to_exact() {
        let data = vectors(500, 32);
        let params = IndexParams {
            quantization: Quantization::F16,
            ..IndexParams::default()
        };
        let hnsw = Hnsw::new(32, Metric::Cosine, &params).unwrap();
        for (key, v) in data.iter().enumerate() {
            hnsw.insert(key as u64, v).unwrap();
        }
        for (key, v) in data.iter().enumerate().step_by(25) {
            let (top, score) = hnsw.search(v, 1, None).unwrap()[0];
            assert_eq!(top, key as u64);
            assert!((score - 1.0).abs() < 2e-3, "{score}");
            let mut stored = vec![0f32; 32];
            assert!(hnsw.vector(key as u64, &mut stored));
            // Exactly what recall makes of a log record, so both score it the same.
            let mut rounded = v.clone();
            hnsw.form().apply(&mut rounded);
            assert_eq!(stored, rounded);
            let length = stored.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                (length - 1.0).abs() < 2e-3,
                "cosine graphs hold unit vectors: {length}"
            );
        }
    }

    #[test]
    fn a_filter_keeps_results_to_the_keys_it_allows() {
        let data = vectors(500, 8);
        let hnsw = Hnsw::new(8, Metric::Cosine, &IndexParams::default()).unwrap();
        for (key, v) in data.iter().enumerate() {
            hnsw.insert(key as u64, v).unwrap();
        }
        let even = |key: u64| key.is_multiple_of(2);
        let hits = hnsw.search(&data[1], 10, Some(&even)).unwrap();
        assert_eq!(hits.len(), 10);
        assert!(hits.iter().all(|(key, _)| key % 2 == 0), "{hits:?}");
    }

    #[test]
    fn saved_graphs_load_with_every_vector() {
        let dir = tempfile::tempdir().unwrap();
        let data = vectors(200, 8);
        let exact = IndexParams {
            quantization: Quantization::F32,
            ..IndexParams::default()
        };
        let hnsw = Hnsw::new(8, Metric::L2, &exact).unwrap();
        for (key, v) in data.iter().enumerate() {
            hnsw.insert(key as u64, v).unwrap();
        }
        let path = dir.path().join("g.usearch");
        hnsw.save(&path).unwrap();
        let loaded = Hnsw::load(&path, 8, Metric::L2, &exact, false).unwrap();
        assert_eq!(loaded.len(), 200);
        let mut v = vec![0f32; 8];
        assert!(loaded.vector(17, &mut v));
        assert_eq!(v, data[17]);
        loaded.insert(200, &data[0]).unwrap();
        assert_eq!(loaded.len(), 201);
        assert!(Hnsw::load(&path, 9, Metric::L2, &exact, false).is_err());
    }

    /// The graph with this crate's kernels installed (what release builds run) finds
    /// each vector and scores as the exact scorer does, in every metric and form.
    #[test]
    fn own_kernels_in_the_graph_find_each_vector_with_exact_scores() {
        let data = vectors(400, 40);
        for (metric, quantization) in [
            (Metric::Cosine, Quantization::F16),
            (Metric::Cosine, Quantization::F32),
            (Metric::Dot, Quantization::F32),
            (Metric::L2, Quantization::F16),
        ] {
            let params = IndexParams {
                quantization,
                ..IndexParams::default()
            };
            let form = StoredForm::of_new_graph(metric, quantization);
            let mut usearch = graph(40, metric, &params, form, None).unwrap();
            if !kernels::install_own(&mut usearch, metric, form, 40) {
                eprintln!("no AVX2/FMA/F16C here: usearch's kernels only");
                return;
            }
            let hnsw = Hnsw::with_graph(usearch, metric, form).unwrap();
            for (key, v) in data.iter().enumerate() {
                hnsw.insert(key as u64, v).unwrap();
            }
            let tolerance = if quantization == Quantization::F16 {
                5e-3
            } else {
                1e-4
            };
            let mut stored = vec![0f32; 40];
            for (key, v) in data.iter().enumerate().step_by(23) {
                let hits = hnsw.search(v, 5, None).unwrap();
                if metric != Metric::Dot {
                    assert_eq!(hits[0].0, key as u64, "{metric:?} {quantization:?}");
                }
                for (found, score) in hits {
                    assert!(hnsw.vector(found, &mut stored));
                    let exact = Scorer::new(metric, v).score(&stored);
                    assert!(
                        (exact - score).abs() < tolerance,
                        "{metric:?} {quantization:?}: {exact} vs {score}"
                    );
                }
            }
        }
    }

    /// The f16 kernels widen a search's or insert's query once (`kernels::QueryScope`):
    /// a graph built and searched that way must match, distance for distance, one built
    /// and searched with the query converted in every call.
    #[test]
    fn widening_the_query_once_changes_no_distance() {
        let data = vectors(600, 40);
        let params = IndexParams::default();
        let form = StoredForm::of_new_graph(Metric::L2, Quantization::F16);
        let mut two_graphs = Vec::new();
        for _ in 0..2 {
            let mut usearch = graph(40, Metric::L2, &params, form, None).unwrap();
            if !kernels::install_own(&mut usearch, Metric::L2, form, 40) {
                eprintln!("no AVX2/FMA/F16C here: usearch's kernels only");
                return;
            }
            two_graphs.push(Hnsw::with_graph(usearch, Metric::L2, form).unwrap());
        }
        let (widened, converted) = (&two_graphs[0], &two_graphs[1]);
        for (key, v) in data.iter().enumerate() {
            widened.insert(key as u64, v).unwrap();
            // The same add, outside any QueryScope.
            let raw = converted.graph.read().unwrap();
            raw.add(key as u64, v).unwrap();
        }
        for query in data.iter().step_by(7) {
            let armed = widened.search(query, 10, None).unwrap();
            let raw = converted.graph.read().unwrap().search(query, 10).unwrap();
            let plain: Vec<(u64, f32)> = raw
                .keys
                .into_iter()
                .zip(raw.distances)
                .map(|(key, d)| (key, converted.score(d)))
                .collect();
            assert_eq!(armed, plain);
        }
    }

    /// A cosine graph saved before graphs held unit vectors keeps its vectors as given:
    /// loaded as such, it still scores the exact cosine, old vectors and new alike.
    #[test]
    fn a_cosine_graph_of_vectors_as_given_scores_the_exact_cosine() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<Vec<f32>> = vectors(300, 24)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.iter().map(|x| x * (1 + i % 7) as f32).collect())
            .collect();
        let exact = IndexParams {
            quantization: Quantization::F32,
            ..IndexParams::default()
        };
        let as_given = StoredForm {
            unit_length: false,
            quantization: Quantization::F32,
        };
        let graph = graph(24, Metric::Cosine, &exact, as_given, None).unwrap();
        let old = Hnsw::with_graph(graph, Metric::Cosine, as_given).unwrap();
        for (key, v) in data.iter().enumerate().take(200) {
            old.insert(key as u64, v).unwrap();
        }
        let path = dir.path().join("g.usearch");
        old.save(&path).unwrap();
        let loaded = Hnsw::load(&path, 24, Metric::Cosine, &exact, false).unwrap();
        assert_eq!(loaded.form(), as_given);
        for (key, v) in data.iter().enumerate().skip(200) {
            loaded.insert(key as u64, v).unwrap();
        }
        let mut stored = vec![0f32; 24];
        assert!(loaded.vector(250, &mut stored));
        assert_eq!(stored, data[250], "held as given");
        for query in data.iter().step_by(31) {
            for (key, score) in loaded.search(query, 5, None).unwrap() {
                let exact = Scorer::new(Metric::Cosine, query).score(&data[key as usize]);
                assert!((exact - score).abs() < 1e-4, "{key}: {exact} vs {score}");
            }
        }
    }
}
