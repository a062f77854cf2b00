//! The HNSW libraries issue 4 chooses between, on the same real data and parameters:
//! build rate with 2 threads (`ENGRAM_BENCH_BUILD_THREADS` to change), single-thread
//! query rate and recall@10 against the exact ground truth of
//! `../shared/data/minilm-docs-384` (23,000 all-MiniLM-L6-v2 vectors, 1,000 queries). Vectors are unit length, so every library uses inner product.
//!
//!   cargo bench --features index-candidates --bench index_candidates
//!
//! Candidates: engram's own graph (usearch with engram's distance kernels) at the bench's
//! inner product and f32, and at the server's defaults (cosine, f16); usearch as it ships;
//! hnsw_rs. scripts/bench-index.sh runs it together with hnswlib (C++, from PyPI) on the same data.

use std::path::{Path, PathBuf};
use std::time::Instant;

use engram::index::{IndexParams, Quantization, VectorIndex};
use engram::space::Metric;

const DIM: usize = 384;
const M: usize = 16;
const EF_CONSTRUCTION: usize = 200;
const EF_SEARCH: usize = 64;
const K: usize = 10;
/// Passes over the query set, the fastest reported: 5, or `ENGRAM_BENCH_SEARCH_PASSES`.
fn search_passes() -> usize {
    std::env::var("ENGRAM_BENCH_SEARCH_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1)
}

/// Build threads: 2 (the machine's cores), or `ENGRAM_BENCH_BUILD_THREADS`.
fn build_threads() -> usize {
    std::env::var("ENGRAM_BENCH_BUILD_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

struct Data {
    base: Vec<f32>,
    queries: Vec<f32>,
    /// For each query, the rows of its exact top 10.
    truth: Vec<Vec<usize>>,
}

impl Data {
    fn load(dir: &Path) -> Data {
        let floats = |name: &str| -> Vec<f32> {
            let bytes = std::fs::read(dir.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()));
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        };
        let gt: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("groundtruth.json")).unwrap()).unwrap();
        let truth = gt["queries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                q["rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_u64().unwrap() as usize)
                    .collect()
            })
            .collect();
        Data {
            base: floats("base.f32"),
            queries: floats("queries.f32"),
            truth,
        }
    }

    fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.base.chunks_exact(DIM)
    }

    fn queries(&self) -> impl Iterator<Item = &[f32]> {
        self.queries.chunks_exact(DIM)
    }
}

/// One library behind the two operations measured.
trait Candidate: Sync {
    fn name(&self) -> &'static str;
    /// Inserts rows `[start, end)` of `data`; called from `build_threads()` threads at once.
    fn insert(&self, data: &Data, start: usize, end: usize);
    fn search(&self, query: &[f32]) -> Vec<usize>;
}

struct HnswRs(hnsw_rs::prelude::Hnsw<'static, f32, hnsw_rs::prelude::DistDot>);

impl Candidate for HnswRs {
    fn name(&self) -> &'static str {
        "hnsw_rs 0.3 (DistDot, scalar)"
    }
    fn insert(&self, data: &Data, start: usize, end: usize) {
        for (i, row) in data.rows().enumerate().take(end).skip(start) {
            self.0.insert_slice((row, i));
        }
    }
    fn search(&self, query: &[f32]) -> Vec<usize> {
        self.0
            .search(query, K, EF_SEARCH)
            .into_iter()
            .map(|n| n.d_id)
            .collect()
    }
}

struct USearch(usearch::Index);

impl Candidate for USearch {
    fn name(&self) -> &'static str {
        "usearch 2 (IP, f32)"
    }
    fn insert(&self, data: &Data, start: usize, end: usize) {
        for (i, row) in data.rows().enumerate().take(end).skip(start) {
            self.0.add(i as u64, row).unwrap();
        }
    }
    fn search(&self, query: &[f32]) -> Vec<usize> {
        let found = self.0.search(query, K).unwrap();
        found.keys.into_iter().map(|k| k as usize).collect()
    }
}

/// The graph engram serves from: usearch with this crate's distance kernels, behind the
/// index trait (its locks and caller slots included).
struct Engram {
    graph: engram::index::Hnsw,
    name: &'static str,
}

impl Candidate for Engram {
    fn name(&self) -> &'static str {
        self.name
    }
    fn insert(&self, data: &Data, start: usize, end: usize) {
        for (i, row) in data.rows().enumerate().take(end).skip(start) {
            self.graph.insert(i as u64, row).unwrap();
        }
    }
    fn search(&self, query: &[f32]) -> Vec<usize> {
        let found = self.graph.search(query, K, None).unwrap();
        found.into_iter().map(|(k, _)| k as usize).collect()
    }
}

/// Room for `n` vectors is made up front, as hnswlib (max_elements) and usearch (reserve)
/// are given it, and as the server's workers reserve for each batch.
fn engram_graph(
    metric: Metric,
    quantization: Quantization,
    n: usize,
    name: &'static str,
) -> Engram {
    let params = IndexParams {
        m: M,
        ef_construction: EF_CONSTRUCTION,
        ef_search: EF_SEARCH,
        quantization,
        // The graph is what is compared: no exact scan of small spaces.
        exact_search_max: 0,
    };
    let graph = engram::index::Hnsw::new(DIM as u32, metric, &params).unwrap();
    graph.reserve(n).unwrap();
    Engram { graph, name }
}

fn measure(candidate: &dyn Candidate, data: &Data) -> serde_json::Value {
    let n = data.base.len() / DIM;
    let started = Instant::now();
    std::thread::scope(|s| {
        let threads = build_threads();
        for t in 0..threads {
            let (start, end) = (n * t / threads, n * (t + 1) / threads);
            s.spawn(move || candidate.insert(data, start, end));
        }
    });
    let build_s = started.elapsed().as_secs_f64();
    // The best of several passes over the queries: one pass takes under a second, so a
    // single one on this shared machine measures its neighbours as much as the library.
    let mut results = Vec::new();
    let mut search_s = f64::INFINITY;
    for _ in 0..search_passes() {
        let started = Instant::now();
        results = data.queries().map(|q| candidate.search(q)).collect();
        search_s = search_s.min(started.elapsed().as_secs_f64());
    }
    let hits: usize = results
        .iter()
        .zip(&data.truth)
        .map(|(got, truth)| got.iter().filter(|r| truth.contains(r)).count())
        .sum();
    serde_json::json!({
        "library": candidate.name(),
        "points": n,
        "build_points_per_s": (n as f64 / build_s).round(),
        "search_qps_1_thread": (results.len() as f64 / search_s).round(),
        "recall_at_10": hits as f64 / (results.len() * K) as f64,
    })
}

fn main() {
    let dir = std::env::var_os("MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/minilm-docs-384")
        });
    let data = Data::load(&dir);
    let n = data.base.len() / DIM;
    assert_eq!(data.queries.len() / DIM, data.truth.len());

    let mut hnsw =
        hnsw_rs::prelude::Hnsw::new(M, n, 16, EF_CONSTRUCTION, hnsw_rs::prelude::DistDot);
    hnsw.set_searching_mode(true);
    let hnsw = HnswRs(hnsw);
    let options = usearch::IndexOptions {
        dimensions: DIM,
        metric: usearch::MetricKind::IP,
        quantization: usearch::ScalarKind::F32,
        connectivity: M,
        expansion_add: EF_CONSTRUCTION,
        expansion_search: EF_SEARCH,
        multi: false,
    };
    let index = usearch::Index::new(&options).unwrap();
    index
        .reserve_capacity_and_threads(n, build_threads())
        .unwrap();
    let usearch = USearch(index);

    let engram_ip = engram_graph(
        Metric::Dot,
        Quantization::F32,
        n,
        "engram (usearch + own kernels, IP, f32)",
    );
    let engram_default = engram_graph(
        Metric::Cosine,
        Quantization::F16,
        n,
        "engram (cosine, f16: the defaults)",
    );
    for candidate in [
        &engram_ip as &dyn Candidate,
        &engram_default,
        &usearch,
        &hnsw,
    ] {
        // ENGRAM_BENCH_ONLY=text runs only the candidates whose name holds it (profiling).
        if let Ok(only) = std::env::var("ENGRAM_BENCH_ONLY") {
            if !candidate.name().contains(&only) {
                continue;
            }
        }
        println!("{}", measure(candidate, &data));
    }
}
