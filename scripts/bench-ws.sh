#!/usr/bin/env bash
# WebSocket gateway (JSON, and binary engram/1 frames) against native QUIC, one connection
# each, alternated on one release
# server in one run (the machine is shared: compare the ratio, not the absolute rates).
#
#   scripts/bench-ws.sh [COUNT] [ROUNDS] [DIM]
#
# The index lag bound is raised above everything sent, so that the index, slower than the
# log, does not throttle the ingest being measured.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-50000}
rounds=${2:-3}
dim=${3:-384}
cargo build --release --bin engram --bin engram-load >&2
source scripts/release-server.sh
start_release_server "$dir/data" "$dir/log" --index-lag-max "$((4 * count * rounds))"
quic=$quic_addr http=$http_addr
for n in $(seq "$rounds"); do
  target/release/engram-load --json --target ws --http-addr "$http" --dim "$dim" \
    --count "$count" --connections 1 --space "ws-$n" | tee -a "$dir/ws.jsonl"
  target/release/engram-load --json --target ws --ws-binary --http-addr "$http" --dim "$dim" \
    --count "$count" --connections 1 --space "wsb-$n" | tee -a "$dir/wsb.jsonl"
  target/release/engram-load --json --target quic --addr "$quic" --cert "$dir/data/tls/cert.der" \
    --dim "$dim" --count "$count" --connections 1 --space "quic-$n" | tee -a "$dir/quic.jsonl"
done
python3 - "$dir/ws.jsonl" "$dir/wsb.jsonl" "$dir/quic.jsonl" <<'PY'
import json, statistics, sys
runs = {name: [json.loads(l)["obs_per_sec"] for l in open(path)]
        for name, path in zip(("ws-json", "ws-binary", "quic"), sys.argv[1:4])}
quic = statistics.median(runs["quic"])
for name, rates in runs.items():
    m = statistics.median(rates)
    print(f"{name}: median {m:,.0f} obs/s per connection ({min(rates):,.0f}-{max(rates):,.0f}); "
          f"/quic = {m / quic:.3f}")
PY
