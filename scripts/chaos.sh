#!/usr/bin/env bash
# Every chaos test (tests/chaos/), also part of ./scripts/test.sh. For a soak run:
#   CHAOS_CYCLES=200 CHAOS_POWER_TRIALS=2000 ./scripts/chaos.sh
# CHAOS_SEED=N repeats a failing run (each test prints its seed).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --features fault-injection --test 'chaos_*' -- --nocapture --test-threads 1
