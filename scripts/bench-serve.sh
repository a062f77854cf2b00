#!/usr/bin/env bash
# The serve benchmark of docs/performance.md, in one run: a release server on a fresh data
# directory, engram-load over QUIC at full speed and at a fixed rate, and the raw-quinn
# ceiling with the same message size, all on this machine's shared cores.
#
#   scripts/bench-serve.sh [COUNT] [RATE] [DIM]
#
# Prints one JSON line per case, prefixed with its name.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-300000}
rate=${2:-50000}
dim=${3:-384}
cargo build --release --bin engram --bin engram-load >&2
source scripts/release-server.sh
# Ingest alone: the index lag bound would otherwise hold the stream to the indexing rate.
start_release_server "$dir/data" "$dir/server.log" --index-lag-max "$((8 * count))"
addr=$quic_addr
load() {
  local name=$1; shift
  printf '%s ' "$name"
  target/release/engram-load --json --dim "$dim" --count "$count" "$@"
}
quic=(--target quic --addr "$addr" --cert "$dir/data/tls/cert.der")
raw=(--target raw-quic --data-dir "$dir/raw")
load "engram 1 conn, max rate" "${quic[@]}" --connections 1 --space c1
load "engram 4 conns, max rate" "${quic[@]}" --connections 4 --space c4
load "engram 1 conn, $rate/s" "${quic[@]}" --connections 1 --rate "$rate" --space r1
load "engram 4 conns, $rate/s" "${quic[@]}" --connections 4 --rate "$rate" --space r4
load "raw quinn 1 conn, max rate" "${raw[@]}" --connections 1
load "raw quinn 4 conns, max rate" "${raw[@]}" --connections 4
load "raw quinn 1 conn, $rate/s" "${raw[@]}" --connections 1 --rate "$rate"
load "raw quinn 4 conns, $rate/s" "${raw[@]}" --connections 4 --rate "$rate"
