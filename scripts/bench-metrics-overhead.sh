#!/usr/bin/env bash
# What metrics recording costs ingest, in one run: a release server with per-observation
# recording on and one with it off (--metrics-recording false), alternated ROUNDS times,
# each on a fresh data directory and fed the same engram-load run.
#
#   scripts/bench-metrics-overhead.sh [COUNT] [ROUNDS] [DIM]
#
# Prints one JSON line per run, then the median obs/s of each mode and their ratio.
# The index lag bound is raised to twice COUNT (sessions pause at 75% of it), so that the
# index, slower than the log, does not throttle the ingest being measured.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-40000}
rounds=${2:-3}
dim=${3:-384}
cargo build --release --bin engram --bin engram-load >&2
dir=$(mktemp -d)
server=""
trap 'kill "$server" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
run() {
  local mode=$1 n=$2
  local data="$dir/$mode-$n"
  target/release/engram serve --data-dir "$data" --quic-addr 127.0.0.1:0 \
    --http-addr 127.0.0.1:0 --index-lag-max "$((2 * count))" --metrics-recording "$mode" \
    2>"$data.log" &
  server=$!
  for _ in $(seq 400); do
    grep -q "engram is up" "$data.log" 2>/dev/null && break
    sleep 0.05
  done
  local addr
  addr=$(grep -o 'quic_addr=[0-9.:]*' "$data.log" | head -1 | cut -d= -f2)
  [ -n "$addr" ] || { cat "$data.log" >&2; exit 1; }
  printf 'recording=%s round=%s ' "$mode" "$n"
  target/release/engram-load --json --target quic --addr "$addr" \
    --cert "$data/tls/cert.der" --dim "$dim" --count "$count" --connections 4 \
    --space overhead | tee -a "$dir/$mode.jsonl"
  kill "$server"
  wait "$server" 2>/dev/null || true
}
for n in $(seq "$rounds"); do
  run true "$n"
  run false "$n"
done
python3 - "$dir/true.jsonl" "$dir/false.jsonl" <<'PY'
import json, statistics, sys
on, off = ([json.loads(l)["obs_per_sec"] for l in open(p)] for p in sys.argv[1:3])
m_on, m_off = statistics.median(on), statistics.median(off)
print(f"median obs/s: recording on {m_on:,.0f}, off {m_off:,.0f}; on/off = {m_on / m_off:.3f}")
PY
