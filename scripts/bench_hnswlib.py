"""hnswlib and faiss (C++, from PyPI) on the same data and parameters as
benches/index_candidates.rs: build rate with 2 threads, single-thread query rate,
recall@10. Prints one JSON line per library (faiss only if faiss-cpu is installed)."""
import json
import os
import sys
import time

import hnswlib
import numpy as np

DIM, M, EF_CONSTRUCTION, EF_SEARCH, K = 384, 16, 200, 64, 10
# Build threads, as benches/index_candidates.rs: 2, or ENGRAM_BENCH_BUILD_THREADS.
THREADS = int(os.environ.get("ENGRAM_BENCH_BUILD_THREADS", "2"))
# Passes over the queries, the fastest reported, as benches/index_candidates.rs.
SEARCH_PASSES = max(1, int(os.environ.get("ENGRAM_BENCH_SEARCH_PASSES", "5")))
data_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "minilm-docs-384")
base = np.fromfile(os.path.join(data_dir, "base.f32"), dtype="<f4").reshape(-1, DIM)
queries = np.fromfile(os.path.join(data_dir, "queries.f32"), dtype="<f4").reshape(-1, DIM)
truth = [q["rows"] for q in json.load(open(os.path.join(data_dir, "groundtruth.json")))["queries"]]

def report(library, build_s, search_s, found):
    """One JSON line: build rate, single-thread query rate and recall@10 against truth."""
    hits = sum(len(set(int(x) for x in f) & set(t)) for f, t in zip(found, truth))
    print(json.dumps({
        "library": library,
        "points": len(base),
        "build_points_per_s": round(len(base) / build_s),
        "search_qps_1_thread": round(len(queries) / search_s),
        "recall_at_10": hits / (len(queries) * K),
    }))


def timed_search(search):
    """All queries in one call of `search` (on one thread: the library loops in C++, so no
    Python runs per query), SEARCH_PASSES times: the results and the fastest pass."""
    best = float("inf")
    for _ in range(SEARCH_PASSES):
        started = time.perf_counter()
        found = search(queries)
        best = min(best, time.perf_counter() - started)
    return found, best


def hnswlib_run(space):
    """hnswlib with `space`: "ip", or "cosine" (which normalises every vector it is given)."""
    index = hnswlib.Index(space=space, dim=DIM)
    index.init_index(max_elements=len(base), M=M, ef_construction=EF_CONSTRUCTION)
    started = time.perf_counter()
    index.add_items(base, np.arange(len(base)), num_threads=THREADS)
    build_s = time.perf_counter() - started
    index.set_ef(EF_SEARCH)
    index.set_num_threads(1)
    found, search_s = timed_search(lambda qs: index.knn_query(qs, k=K, num_threads=1)[0])
    version = hnswlib.__version__ if hasattr(hnswlib, '__version__') else ''
    report(f"hnswlib {version} ({space}, from PyPI)", build_s, search_s, found)


hnswlib_run("ip")
hnswlib_run("cosine")

try:
    import faiss
except ImportError:
    faiss = None
if faiss is not None:
    index = faiss.IndexHNSWFlat(DIM, M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    faiss.omp_set_num_threads(THREADS)
    started = time.perf_counter()
    index.add(base)
    build_s = time.perf_counter() - started
    index.hnsw.efSearch = EF_SEARCH
    faiss.omp_set_num_threads(1)
    found, search_s = timed_search(lambda qs: index.search(qs, K)[1])
    report(f"faiss {faiss.__version__} (IndexHNSWFlat, inner product, from PyPI)",
           build_s, search_s, found)
