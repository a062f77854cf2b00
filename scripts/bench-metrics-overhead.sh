#!/usr/bin/env bash
# What metrics recording costs ingest, in one run: a release server with per-observation
# recording on and one with it off (--metrics-recording false), alternated ROUNDS times,
# each on a fresh data directory and fed the same engram-load run.
#
#   scripts/bench-metrics-overhead.sh [COUNT] [ROUNDS] [DIM]
#
# Prints one JSON line per run, then the median obs/s of each mode and their ratio, and
# the CPU the ingest path spent per observation (every thread of the server but the index
# workers', read from /proc before it stops): CPU time, unlike obs/s, barely moves with
# what else the machine runs, so it is the finer measure of what recording costs.
# The index lag bound is raised to twice COUNT (sessions pause at 75% of it), so that the
# index, slower than the log, does not throttle the ingest being measured.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-40000}
rounds=${2:-3}
dim=${3:-384}
cargo build --release --bin engram --bin engram-load >&2
source scripts/release-server.sh
run() {
  local mode=$1 n=$2
  local data="$dir/$mode-$n"
  start_release_server "$data" "$data.log" --index-lag-max "$((2 * count))" \
    --metrics-recording "$mode"
  local addr=$quic_addr
  printf 'recording=%s round=%s ' "$mode" "$n" >&2
  local report
  report=$(target/release/engram-load --json --target quic --addr "$addr" \
    --cert "$data/tls/cert.der" --dim "$dim" --count "$count" --connections 4 \
    --space overhead)
  python3 - "$server" "$report" <<'PY' | tee -a "$dir/$mode.jsonl"
import json, os, sys
pid, report = sys.argv[1], json.loads(sys.argv[2])
tick = os.sysconf("SC_CLK_TCK")
def cpu(stat):
    # Fields after the parenthesised name: utime and stime are the 12th and 13th.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick
total = cpu(open(f"/proc/{pid}/stat").read())
index = 0.0
for tid in os.listdir(f"/proc/{pid}/task"):
    try:
        stat = open(f"/proc/{pid}/task/{tid}/stat").read()
    except FileNotFoundError:
        continue
    if stat.split("(", 1)[1].startswith("engram-index"):
        index += cpu(stat)
report["ingest_cpu_us_per_obs"] = (total - index) * 1e6 / report["acked"]
report["index_cpu_s"] = index
print(json.dumps(report))
PY
  kill "$server"
  wait "$server" 2>/dev/null || true
}
for n in $(seq "$rounds"); do
  run true "$n"
  run false "$n"
done
python3 - "$dir/true.jsonl" "$dir/false.jsonl" <<'PY'
import json, statistics, sys
runs = [[json.loads(l) for l in open(p)] for p in sys.argv[1:3]]
for key, unit in (("obs_per_sec", "obs/s"), ("ingest_cpu_us_per_obs", "ingest CPU us/obs")):
    on, off = ([r[key] for r in mode] for mode in runs)
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"median {unit}: recording on {m_on:,.2f} ({min(on):,.2f}-{max(on):,.2f}), "
          f"off {m_off:,.2f} ({min(off):,.2f}-{max(off):,.2f}); on/off = {m_on / m_off:.4f}")
PY
