#!/usr/bin/env bash
# Installs what the tests need, idempotently: the Rust toolchain with rustfmt and clippy
# (the machine image provides it); from Debian's packages if missing, a C++17 compiler for
# usearch (the HNSW library), Prometheus with promtool (tests/prometheus.rs runs the
# alert rules' unit tests and scrapes a real server with them), Chromium and Node.js with
# the TypeScript client's npm packages (tests/browser.rs).
set -euo pipefail
for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is missing from this machine" >&2; exit 1; }
done

apt_updated=""
# apt_install PACKAGE WHY
apt_install() {
  echo "setup: installing $1 ($2)" >&2
  local sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  if [ -z "$apt_updated" ]; then
    $sudo_cmd apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$1"
}

command -v c++ >/dev/null || apt_install g++ "usearch is C++"
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt_install prometheus "the monitoring tests use it"
fi
# The browser test (tests/browser.rs): Chromium, driven by playwright-core from Node.js,
# and the TypeScript compiler for the client (examples/streaming).
command -v chromium >/dev/null || apt_install chromium "the browser test streams from it"
command -v node >/dev/null || apt_install nodejs "the browser test and the TypeScript build run on it"
command -v npm >/dev/null || apt_install npm "installs the TypeScript compiler and playwright-core"
# npm ci reinstalls only when the lock file changed since the last install.
streaming=examples/streaming
if ! cmp -s "$streaming/package-lock.json" "$streaming/node_modules/.package-lock.json.installed" 2>/dev/null; then
  echo "setup: installing the TypeScript client's packages" >&2
  (cd "$streaming" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$streaming/package-lock.json" "$streaming/node_modules/.package-lock.json.installed"
fi
# The Python client (tests/python_client.rs): the package with aioquic, pytest and
# pytest-asyncio, installed editable so that the tests run the checkout's code.
if ! python3 -c "import engram_client, aioquic, pytest, pytest_asyncio" 2>/dev/null; then
  echo "setup: installing the Python client and its test tools" >&2
  python3 -m pip install -q --disable-pip-version-check -e "./clients/python[test]"
fi
