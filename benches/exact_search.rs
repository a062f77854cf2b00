//! `exact_search`: where comparing a query with every vector stops costing less than the
//! graph walk, which sets `IndexParams::exact_search_max`. Spaces of 512 to 16,384 real
//! sentence embeddings (the first rows of `../shared/data/minilm-docs-384`) in the
//! server's default graph (cosine, f16, M=16, ef_construction=200, ef_search=64); each
//! iteration is one k=10 search for the next of the data set's 1,000 queries.
//! `reachability_audit`: one audit of every link of the same graphs
//! (`VectorIndex::unreachable`), which the workers run once an eighth of a space is new.
//!
//!   cargo bench --bench exact_search

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use engram::index::{Hnsw, IndexParams, VectorIndex};
use engram::space::Metric;

const DIM: usize = 384;
const K: usize = 10;
const SIZES: [usize; 6] = [512, 1024, 2048, 4096, 8192, 16384];

fn floats(name: &str) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/data/minilm-docs-384")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn exact_search(c: &mut Criterion) {
    let base = floats("base.f32");
    let queries = floats("queries.f32");
    let queries: Vec<&[f32]> = queries.chunks_exact(DIM).collect();
    let mut group = c.benchmark_group("exact_search");
    for size in SIZES {
        let graph = Hnsw::new(DIM as u32, Metric::Cosine, &IndexParams::default()).unwrap();
        for (key, vector) in base.chunks_exact(DIM).take(size).enumerate() {
            graph.insert(key as u64, vector).unwrap();
        }
        let mut next = queries.iter().cycle();
        group.bench_function(BenchmarkId::new("graph", size), |b| {
            b.iter(|| graph.search(next.next().unwrap(), K, None).unwrap())
        });
        group.bench_function(BenchmarkId::new("exact", size), |b| {
            b.iter(|| graph.search_exact(next.next().unwrap(), K, None).unwrap())
        });
        group.bench_function(BenchmarkId::new("reachability_audit", size), |b| {
            b.iter(|| assert!(graph.unreachable(size as u64).len() < size / 100))
        });
    }
    group.finish();
}

criterion_group!(benches, exact_search);
criterion_main!(benches);
