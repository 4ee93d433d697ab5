#!/usr/bin/env bash
# Runs the whole service on this machine: NATS, PostgreSQL+pgvector and Redis on loopback
# (scripts/services.sh; the data lives in a durable PostgreSQL cluster of its own on :15433), then
# `memory all`: every role in one process, with local all-MiniLM-L6-v2 embeddings (model fetched
# by scripts/fetch-model.sh), the API on http://127.0.0.1:8080 and metrics on :9090.
# Ctrl-C stops it gracefully (the services keep running; `scripts/services.sh down` stops them).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh up
scripts/services.sh up-durable
while IFS= read -r line; do export "${line?}"; done < <(scripts/services.sh env)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$MEMORY_CACHE_DIR/target}

export MEMORY_DATABASE_URL=${MEMORY_DATABASE_URL:-$MEMORY_LOCAL_DATABASE_URL}
export MEMORY_NATS_URL=${MEMORY_NATS_URL:-$MEMORY_TEST_NATS_URL}
export MEMORY_REDIS_URL=${MEMORY_REDIS_URL:-$MEMORY_TEST_REDIS_URL}
export MEMORY_ADMIN_API_KEY=${MEMORY_ADMIN_API_KEY:-local-dev-admin-key}
export MEMORY_HTTP_ADDR=${MEMORY_HTTP_ADDR:-127.0.0.1:8080}
export MEMORY_METRICS_ADDR=${MEMORY_METRICS_ADDR:-127.0.0.1:9090}
# Local embeddings (all-MiniLM-L6-v2) unless told otherwise; the model is fetched once.
export MEMORY_EMBEDDING_PROVIDER=${MEMORY_EMBEDDING_PROVIDER:-local}
if [ "$MEMORY_EMBEDDING_PROVIDER" = local ] && [ -z "${MEMORY_MODEL_DIR:-}" ]; then
  MEMORY_MODEL_DIR=$(scripts/fetch-model.sh)
  export MEMORY_MODEL_DIR
fi

cargo build --locked -p memory --bin memory
echo "run-local: API on http://$MEMORY_HTTP_ADDR (x-api-key: $MEMORY_ADMIN_API_KEY), metrics on http://$MEMORY_METRICS_ADDR/metrics; Ctrl-C to stop" >&2
exec "$CARGO_TARGET_DIR/debug/memory" all
