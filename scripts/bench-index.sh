#!/usr/bin/env bash
# The HNSW candidates of issue 4 on the same real data, in one run: usearch and hnsw_rs
# (benches/index_candidates.rs), hnswlib and faiss from PyPI (scripts/bench_hnswlib.py).
# Needs ../shared/data/minilm-docs-384. Prints one JSON line per library.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import hnswlib, numpy, faiss' 2>/dev/null || pip install --quiet hnswlib numpy faiss-cpu >&2
cargo bench --features index-candidates --bench index_candidates 2>/dev/null | grep '^{'
python3 scripts/bench_hnswlib.py
