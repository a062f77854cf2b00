#!/usr/bin/env bash
# Ack latency while the index works through a backlog, by the index threads' nice value
# and slice (NICE or NICE/SLICE_MS, the slice 100 ms unless given; 0 is the kernel's own),
# or `idle` for SCHED_IDLE (docs/performance.md, "Index threads at a lower priority").
# For each value: a fresh
# release server, COUNT observations at full speed to give the index a backlog, then
# engram-load at RATE/s with 1 and 4 connections while the index is still busy.
#
#   scripts/bench-index-nice.sh [COUNT] [RATE] [NICE|NICE/SLICE_MS|idle...]
#
# Prints one JSON line per case, prefixed with its name, and the server's count of acks
# over 5 ms (arrival to ack).
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-100000}
rate=${2:-50000}
shift $(($# < 2 ? $# : 2))
nices=("$@")
[ ${#nices[@]} -gt 0 ] || nices=(0 10 19)
cargo build --release --bin engram --bin engram-load >&2
source scripts/release-server.sh
# "OVER TOTAL": the server's acks so far over the 5 ms goal, and all of them.
acks_over_goal() {
  curl -s "http://$http_addr/metrics" | awk '
    /^engram_streaming_observation_latency_seconds_bucket\{le="0.005"\}/ { under = $2 }
    /^engram_streaming_observation_latency_seconds_count/ { total = $2 }
    END { printf "%d %d\n", total - under, total }'
}
for i in "${!nices[@]}"; do
  nice=${nices[$i]}
  # A fresh data directory per case, also when a value repeats: a server on an old one
  # would find every id stored already and only acknowledge duplicates.
  run=$dir/case$i
  mkdir -p "$run"
  # The lag bound lifted: the stream must not be paced to the indexing rate.
  case $nice in
    idle) priority=(--index-sched-idle) ;;
    */*) priority=(--index-nice "${nice%/*}" --index-slice-ms "${nice#*/}") ;;
    *) priority=(--index-nice "$nice") ;;
  esac
  start_release_server "$run/data" "$run/server.log" "${priority[@]}" \
    --index-lag-max "$((40 * count))"
  quic=(--json --dim 384 --addr "$quic_addr" --cert "$run/data/tls/cert.der")
  target/release/engram-load "${quic[@]}" --count "$count" --connections 4 --space backlog >/dev/null
  for connections in 1 4; do
    printf 'nice %s, %s conn, %s/s ' "$nice" "$connections" "$rate"
    before=$(acks_over_goal)
    target/release/engram-load "${quic[@]}" --count "$((3 * rate))" --rate "$rate" \
      --connections "$connections" --space "c$connections"
    after=$(acks_over_goal)
    # The server's own count, from arrival to ack: the load generator's scheduling on
    # the same cores is not in it.
    printf '  server: %s of %s acks over 5 ms\n' \
      "$(( ${after% *} - ${before% *} ))" "$(( ${after#* } - ${before#* } ))"
  done
  kill "$server"
  wait "$server" || true
done
