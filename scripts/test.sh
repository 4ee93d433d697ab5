#!/usr/bin/env bash
# Runs every check and test: installs and starts NATS, PostgreSQL+pgvector and Redis on loopback
# (scripts/services.sh), fetches the local embedding model (scripts/fetch-model.sh), then fmt,
# clippy and the whole test suite against them.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh up
scripts/services.sh clean
while IFS= read -r line; do export "${line?}"; done < <(scripts/services.sh env)
# The local embedding model (all-MiniLM-L6-v2), for the tests of the `local` provider.
MEMORY_TEST_MODEL_DIR=$(scripts/fetch-model.sh)
export MEMORY_TEST_MODEL_DIR
# A build cache outside the clone, so a fresh clone (CI) starts warm.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$MEMORY_CACHE_DIR/target}

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
