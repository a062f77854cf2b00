#!/usr/bin/env bash
# Installs what the tests need, idempotently: the Rust toolchain with rustfmt and clippy
# (the machine image provides it), and a C++17 compiler for usearch, the HNSW library
# (installed from Debian's packages if missing).
set -euo pipefail
for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is missing from this machine" >&2; exit 1; }
done
if ! command -v c++ >/dev/null; then
  echo "setup: installing g++ (usearch is C++)" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq g++
fi
