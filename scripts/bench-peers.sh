#!/usr/bin/env bash
# Issue 8's peers, on this machine, one after another and repeated: durable acknowledged
# ingest into engram, Redis 7 (AOF, appendfsync always; XADD) and NATS JetStream (file
# storage; publish with acks), all driven by engram-load with the same payload (each
# observation's engram/1 Observe frame: about 1.6 KiB at 384-d), the same connections and
# the same requests in flight per connection. Then the index peers (scripts/bench-index.sh:
# usearch, hnswlib, faiss on the same vectors and parameters).
#
#   scripts/bench-peers.sh [COUNT] [REPS] [CONNECTIONS] [WINDOW] [--no-index]
#
# Prints one JSON line per run, then the medians and the ratios to engram.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-200000}
reps=${2:-3}
conns=${3:-4}
window=${4:-100}
index=${5:-}
dim=384

# The peers come from Debian, installed here when missing (root, as in CI).
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v nats-server >/dev/null || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
  apt-get install -y -qq "${need[@]}" >&2 || { apt-get update -qq >&2 && apt-get install -y -qq "${need[@]}" >&2; }
fi
cargo build --release --features peers --bin engram --bin engram-load >&2

source scripts/release-server.sh
results="$dir/results.jsonl"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() {
  for _ in $(seq 400); do
    (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  return 1
}
load() {
  local name=$1; shift
  local line
  line=$(target/release/engram-load --json --dim "$dim" --count "$count" \
    --connections "$conns" --window "$window" "$@")
  echo "$name $line"
  echo "{\"case\": \"$name\", \"report\": $line}" >> "$results"
}
stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  server=""
}

for rep in $(seq "$reps"); do
  rm -rf "$dir/engram" "$dir/redis" "$dir/nats"
  # The peers store and do not index: the index lag bound is lifted so that engram's
  # figure is its durable, acknowledged ingest too (the index follows behind; its own
  # rate is the worker_scaling bench's).
  start_release_server "$dir/engram" "$dir/engram.log" --index-lag-max "$((2 * count))"
  load engram --target quic --addr "$quic_addr" --cert "$dir/engram/tls/cert.der" --space "peers-$rep"
  stop

  mkdir -p "$dir/redis"
  port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir/redis" --appendonly yes \
    --appendfsync always --save "" --daemonize no --logfile "$dir/redis.log" &
  server=$!
  wait_port "$port"
  load redis --target redis --peer-addr "127.0.0.1:$port"
  stop

  mkdir -p "$dir/nats"
  port=$(free_port)
  nats-server -js -a 127.0.0.1 -p "$port" -sd "$dir/nats" -l "$dir/nats.log" &
  server=$!
  wait_port "$port"
  load nats --target nats --peer-addr "127.0.0.1:$port"
  stop
done

python3 - "$results" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in runs:
    by.setdefault(r["case"], []).append(r["report"])
med = {c: (statistics.median(x["obs_per_sec"] for x in rs),
           statistics.median(x["ack_latency_ms"]["p99"] for x in rs)) for c, rs in by.items()}
engram = med["engram"][0]
print(f"{'target':8} {'acked/s (median)':>17} {'p99 ms':>8} {'engram / it':>12}")
for c, (rate, p99) in med.items():
    print(f"{c:8} {rate:17,.0f} {p99:8.2f} {engram / rate:12.2f}")
PY

if [ "$index" != "--no-index" ]; then
  scripts/bench-index.sh
fi
