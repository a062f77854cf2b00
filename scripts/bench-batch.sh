#!/usr/bin/env bash
# The server's --ingest-batch-max swept over 10, 50, 100, 500, 1000 (and 4096), each on a
# fresh release server: engram-load at full speed and at a fixed rate, 4 connections,
# 384-d. Ingest alone: the index lag bound is lifted. The criterion bench `batch_size`
# (benches/streaming.rs) times the same at full speed.
#
#   scripts/bench-batch.sh [COUNT] [RATE]
#
# Prints one JSON line per case, prefixed with its name.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-200000}
rate=${2:-50000}
cargo build --release --bin engram --bin engram-load >&2
source scripts/release-server.sh
for batch in 10 50 100 500 1000 4096; do
  rm -rf "$dir/data"
  start_release_server "$dir/data" "$dir/log" --ingest-batch-max "$batch" \
    --index-lag-max "$((4 * count))"
  for offered in max "$rate"; do
    pace=()
    [ "$offered" = max ] || pace=(--rate "$offered")
    printf 'batch %s, %s/s ' "$batch" "$offered"
    target/release/engram-load --json --dim 384 --count "$count" --connections 4 \
      --addr "$quic_addr" --cert "$dir/data/tls/cert.der" --space "b$offered" "${pace[@]}"
  done
  kill "$server"; wait "$server" 2>/dev/null || true
done
