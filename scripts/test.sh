#!/usr/bin/env bash
# The full test suite (README's test command): formatting, lints, every test.
# WAL_POWER_LOSS_TRIALS sets the seeded power-loss trials per crash mode (default 120);
# CHAOS_CYCLES, CHAOS_POWER_TRIALS and CHAOS_SEED size the chaos tests (scripts/chaos.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets --features fault-injection -- -D warnings
cargo clippy -- -D warnings
cargo test --features fault-injection
