#!/usr/bin/env bash
# Runs every check and test: installs and starts NATS, PostgreSQL+pgvector and Redis on loopback
# (scripts/services.sh; chromium too, to render Swagger UI), fetches the local embedding model (scripts/fetch-model.sh), checks the
# deployment files (alert rules and dashboard, Kubernetes manifests, MEMORY_* variables), then fmt,
# clippy and the whole test suite against the services.
#
#   scripts/test.sh               the above (a warm run takes a few minutes)
#   scripts/test.sh --containers  also the container smoke test (scripts/container-smoke.sh: builds
#                                 the image, runs docker-compose.yml with podman, walks through the
#                                 README); CI=true turns it on too. Needs root.
#   scripts/test.sh --fuzz-long   the fuzzers' long mode: 100,000 requests and 20,000 events instead
#                                 of 5,000 and 2,000 (MEMORY_FUZZ_SEED=<n> replays a run).
#   scripts/test.sh --faults-long the fault suite's long mode: 100,000 messages and 60 faults at
#                                 random instead of each kind once (MEMORY_FAULTS_SEED=<n> replays).
set -euo pipefail
cd "$(dirname "$0")/.."

containers=false
if [ "${CI:-}" = true ]; then containers=true; fi
for flag in "$@"; do
  case "$flag" in
    --containers) containers=true ;;
    --fuzz-long) export MEMORY_FUZZ_CASES=${MEMORY_FUZZ_CASES:-100000} MEMORY_FUZZ_EVENTS=${MEMORY_FUZZ_EVENTS:-20000} ;;
    --faults-long) export MEMORY_FAULTS_LONG=1 ;;
    *) echo "unknown flag $flag: use --containers, --fuzz-long or --faults-long" >&2; exit 2 ;;
  esac
done

scripts/services.sh up
scripts/services.sh test-tools
scripts/services.sh clean
while IFS= read -r line; do export "${line?}"; done < <(scripts/services.sh env)
# The local embedding model (all-MiniLM-L6-v2), for the tests of the `local` provider.
MEMORY_TEST_MODEL_DIR=$(scripts/fetch-model.sh)
export MEMORY_TEST_MODEL_DIR
# A build cache outside the clone, so a fresh clone (CI) starts warm.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$MEMORY_CACHE_DIR/target}

echo "== alert rules, promtool tests, dashboard"
scripts/check-monitoring.sh
echo "== Kubernetes manifests"
scripts/check-k8s.sh
echo "== MEMORY_* variables in compose, Dockerfile and Kubernetes"
rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for overlay in dev production; do
  kubectl kustomize "deploy/k8s/overlays/$overlay" >"$rendered/$overlay.yaml"
done
# check-k8s.sh installed checkov, whose venv has PyYAML.
"$MEMORY_CACHE_DIR/k8s-tools/checkov-venv/bin/python" scripts/check-deploy-config.py "$rendered"/*.yaml

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked

if [ "$containers" = true ]; then
  echo "== container smoke test"
  scripts/container-smoke.sh
fi
