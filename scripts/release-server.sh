# Sourced by the bench scripts: a scratch directory `dir`, removed on exit with the server
# still running in it, and a release engram server on a fresh data directory.
#
#   start_release_server DATA_DIR LOG [SERVE FLAGS...]
#
# Starts `target/release/engram serve` on free loopback ports and waits until it says it
# is up; sets `server` (its pid), `quic_addr` and `http_addr`. Fails with the log if it
# does not come up.
dir=$(mktemp -d)
server=""
trap 'kill "$server" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT

start_release_server() {
  local data=$1 log=$2
  shift 2
  target/release/engram serve --data-dir "$data" --quic-addr 127.0.0.1:0 \
    --http-addr 127.0.0.1:0 "$@" 2>"$log" &
  server=$!
  for _ in $(seq 400); do
    grep -q "engram is up" "$log" 2>/dev/null && break
    sleep 0.05
  done
  quic_addr=$(grep -o 'quic_addr=[0-9.:]*' "$log" | head -1 | cut -d= -f2)
  http_addr=$(grep -o 'http_addr=[0-9.:]*' "$log" | head -1 | cut -d= -f2)
  [ -n "$quic_addr" ] && [ -n "$http_addr" ] || { cat "$log" >&2; return 1; }
}
