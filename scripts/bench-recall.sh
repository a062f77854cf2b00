#!/usr/bin/env bash
# The index and recall benchmark of docs/performance.md, in one run on a release server:
#   1. stream COUNT 384-d clustered observations into one space; time until indexed;
#   2. the server's RSS per observation at COUNT and at 3 x COUNT;
#   3. recall latency (k=10) on the COUNT-vector space alone, then while another space
#      streams at STREAM_RATE/s, read-your-writes and eventual;
#   4. time to ready after kill -9, with the checkpoints, and without (a second server
#      that never checkpoints, COUNT observations).
#
#   scripts/bench-recall.sh [COUNT] [QUERIES] [STREAM_RATE]
#
# ENGRAM_BENCH_FLAGS adds serve flags to the main server (e.g. "--index-quantization f32");
# BENCH_SKIP_PLAIN=1 skips step 4's second server.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-100000}
queries=${2:-2000}
stream_rate=${3:-1000}
dim=384
cargo build --release --bin engram --bin engram-load >&2
dir=$(mktemp -d)
trap 'kill -9 $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT

start_server() { # name, extra flags...
  local name=$1; shift
  target/release/engram serve --data-dir "$dir/$name" --quic-addr 127.0.0.1:0 \
    --http-addr 127.0.0.1:0 "$@" 2>>"$dir/$name.log" &
  server=$!
  for _ in $(seq 600); do
    [ "$(grep -c 'engram is up' "$dir/$name.log" 2>/dev/null)" -ge "${ups:-1}" ] && break
    sleep 0.05
  done
  addr=$(grep -o 'quic_addr=[0-9.:]*' "$dir/$name.log" | tail -1 | cut -d= -f2)
  http=$(grep -o 'http_addr=[0-9.:]*' "$dir/$name.log" | tail -1 | cut -d= -f2)
  cert="$dir/$name/tls/cert.der"
}
wait_indexed() {
  while :; do
    s=$(curl -s "http://$http/stats")
    d=$(echo "$s" | jq '.wal.durable_lsn')
    i=$(echo "$s" | jq '[.index.workers_indexed_lsn[]] | min')
    [ "$i" -ge "$d" ] && break
    sleep 0.2
  done
}
rss_kib() { # total, anonymous (heap) and file-backed (the log's mapped pages) RSS, KiB
  awk '/^(VmRSS|RssAnon|RssFile)/ {printf "%s %s  ", $1, $2}' "/proc/$server/status"
}
load() { target/release/engram-load --json --addr "$addr" --cert "$cert" --dim "$dim" \
  --distribution clustered "$@"; }

flags=(${ENGRAM_BENCH_FLAGS:-})
start_server main "${flags[@]}"
t0=$(date +%s.%N)
load --target quic --connections 2 --count "$count" --space big >/dev/null
wait_indexed
t1=$(date +%s.%N)
echo "stream+index $count: $(echo "$count / ($t1 - $t0)" | bc -l | cut -c1-7) obs/s end to end"
echo "rss at $count: $(rss_kib) KiB"

for mode in read-your-writes eventual; do
  printf 'recall alone %s: ' "$mode"
  load --target recall --space big --count "$queries" --connections 1 --consistency "$mode" \
    | jq -c '{qps: .obs_per_sec, ms: .ack_latency_ms}'
done
load --target quic --connections 1 --count $((stream_rate * 30)) --rate "$stream_rate" \
  --space other --seed 2 >/dev/null &
streaming=$!
for mode in read-your-writes eventual; do
  printf 'recall while streaming %s/s, %s: ' "$stream_rate" "$mode"
  load --target recall --space big --count "$queries" --connections 1 --consistency "$mode" \
    | jq -c '{qps: .obs_per_sec, ms: .ack_latency_ms}'
done
wait "$streaming"

load --target quic --connections 2 --count $((2 * count)) --start "$count" --space big >/dev/null
wait_indexed
echo "rss at $((3 * count)) (+$((stream_rate * 30)) in other): $(rss_kib) KiB"

kill -9 "$server"; wait "$server" 2>/dev/null || true
t0=$(date +%s.%N)
ups=2 start_server main "${flags[@]}"
until curl -sf "http://$http/ready" >/dev/null; do sleep 0.02; done
t1=$(date +%s.%N)
wait_indexed
t2=$(date +%s.%N)
echo "restart with checkpoints ($((3 * count + stream_rate * 30)) obs): ready $(echo "$t1 - $t0" | bc -l | cut -c1-6) s, indexed $(echo "$t2 - $t0" | bc -l | cut -c1-6) s"
grep -E "rebuilt ingest state|caught up" "$dir/main.log" | tail -3 | sed 's/^[^ ]* *//' | cut -c1-220
kill -9 "$server"; wait "$server" 2>/dev/null || true

[ -n "${BENCH_SKIP_PLAIN:-}" ] && exit 0
start_server plain --checkpoint-records 0 --checkpoint-interval-s 0
load --target quic --connections 2 --count "$count" --space big >/dev/null
wait_indexed
kill -9 "$server"; wait "$server" 2>/dev/null || true
t0=$(date +%s.%N)
ups=2 start_server plain --checkpoint-records 0 --checkpoint-interval-s 0
until curl -sf "http://$http/ready" >/dev/null; do sleep 0.02; done
t1=$(date +%s.%N)
wait_indexed
t2=$(date +%s.%N)
echo "restart without checkpoints ($count obs): ready $(echo "$t1 - $t0" | bc -l | cut -c1-6) s, indexed $(echo "$t2 - $t0" | bc -l | cut -c1-6) s"
