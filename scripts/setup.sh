#!/usr/bin/env bash
# Installs what the tests need, idempotently. Today that is the Rust toolchain with
# rustfmt and clippy, which the machine image provides; later issues add packages here.
set -euo pipefail
for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is missing from this machine" >&2; exit 1; }
done
