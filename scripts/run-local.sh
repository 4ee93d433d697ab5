#!/usr/bin/env bash
# Brings up the whole local pipeline: NATS, PostgreSQL+pgvector and Redis on loopback
# (scripts/services.sh), then the embedder (local all-MiniLM-L6-v2 embeddings, model fetched by
# scripts/fetch-model.sh), the searcher, the retention service and the gateway on http://127.0.0.1:8080.
# Ctrl-C stops the three workers gracefully (the services keep running; scripts/services.sh down).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh up
scripts/services.sh createdb memory
while IFS= read -r line; do export "${line?}"; done < <(scripts/services.sh env)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$MEMORY_CACHE_DIR/target}

export MEMORY_DATABASE_URL=${MEMORY_DATABASE_URL:-postgres://postgres@127.0.0.1:15432/memory}
export MEMORY_NATS_URL=${MEMORY_NATS_URL:-$MEMORY_TEST_NATS_URL}
export MEMORY_ADMIN_API_KEY=${MEMORY_ADMIN_API_KEY:-local-dev-admin-key}
export MEMORY_HTTP_ADDR=${MEMORY_HTTP_ADDR:-127.0.0.1:8080}
export MEMORY_REDIS_URL=${MEMORY_REDIS_URL:-$MEMORY_TEST_REDIS_URL}
# Local embeddings (all-MiniLM-L6-v2) unless told otherwise; the model is fetched once.
export MEMORY_EMBEDDING_PROVIDER=${MEMORY_EMBEDDING_PROVIDER:-local}
if [ "$MEMORY_EMBEDDING_PROVIDER" = local ] && [ -z "${MEMORY_MODEL_DIR:-}" ]; then
  MEMORY_MODEL_DIR=$(scripts/fetch-model.sh)
  export MEMORY_MODEL_DIR
fi

cargo build --locked --bins
bin="$CARGO_TARGET_DIR/debug"

pids=()
stop() {
  trap - INT TERM
  echo "run-local: stopping workers" >&2
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait
  exit 0
}
trap stop INT TERM

MEMORY_METRICS_ADDR=127.0.0.1:9091 "$bin/memory-embedder" & pids+=($!)
MEMORY_METRICS_ADDR=127.0.0.1:9092 "$bin/memory-searcher" & pids+=($!)
MEMORY_METRICS_ADDR=127.0.0.1:9093 "$bin/memory-retention" & pids+=($!)
"$bin/memory-gateway" & pids+=($!)

for _ in $(seq 1 100); do
  if curl -fsS "http://$MEMORY_HTTP_ADDR/readyz" >/dev/null 2>&1; then
    echo "run-local: ready on http://$MEMORY_HTTP_ADDR (x-api-key: $MEMORY_ADMIN_API_KEY); Ctrl-C to stop" >&2
    break
  fi
  sleep 0.2
done
# If any worker exits on its own, stop the others too.
wait -n "${pids[@]}" || true
echo "run-local: a worker exited" >&2
stop
