#!/usr/bin/env bash
# The HNSW candidates of issue 4 on the same real data, in one run, repeated: engram's
# graph, usearch as shipped and hnsw_rs (benches/index_candidates.rs), then hnswlib and
# faiss from PyPI (scripts/bench_hnswlib.py). Needs ../shared/data/minilm-docs-384.
# Prints one JSON line per library and run, then each run's ratios against hnswlib.
#   scripts/bench-index.sh [REPS]    (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
reps="${1:-3}"
python3 -c 'import hnswlib, numpy, faiss' 2>/dev/null || pip install --quiet hnswlib numpy faiss-cpu >&2
cargo bench --features index-candidates --bench index_candidates --no-run >&2
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
for run in $(seq "$reps"); do
    {
        cargo bench --features index-candidates --bench index_candidates 2>/dev/null | grep '^{'
        python3 scripts/bench_hnswlib.py
    } | sed "s/^{/{\"run\":$run,/" | tee -a "$out"
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print("\nagainst hnswlib in the same run (build ratio, search ratio):")
for run in sorted({r["run"] for r in rows}):
    mine = [r for r in rows if r["run"] == run]
    ref = {space: next(r for r in mine if r["library"].startswith("hnswlib") and f"({space}," in r["library"])
           for space in ("ip", "cosine")}
    for r in mine:
        base = ref["cosine"] if "cosine" in r["library"] else ref["ip"]
        print(f"run {run}: {r['library']:<48} build {r['build_points_per_s'] / base['build_points_per_s']:.2f}"
              f"  search {r['search_qps_1_thread'] / base['search_qps_1_thread']:.2f}"
              f"  recall@10 {r['recall_at_10']:.4f}")
PY
