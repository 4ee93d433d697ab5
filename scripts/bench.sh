#!/usr/bin/env bash
# Reproduces the README's Performance table: builds the release binary, starts `memory all` on the
# durable PostgreSQL cluster (database `$BENCH_DB`, default `bench`, recreated unless --skip-load is
# given), the test NATS and Redis, with the hash provider (so the pipeline is measured, not a model)
# and rate limits out of the way; runs `memory bench` against it; stops it.
#
# Usage: scripts/bench.sh [memory bench options]
# The deployment's metrics at the end go to $MEMORY_CACHE_DIR/bench-metrics.prom.
# Default options: --messages 100000 --queries 300 (plus --nats and the subject prefix, always).
# Examples:
#   scripts/bench.sh                                   # the README table (about 5 minutes)
#   scripts/bench.sh --messages 10000 --run r10k       # a smaller tenant, named for later
#   scripts/bench.sh --run r10k --skip-load            # search the tenant that run loaded again
#   BENCH_ENV="MEMORY_EMBEDDER_CONCURRENCY=1" scripts/bench.sh   # with settings of your own
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh up >&2
scripts/services.sh up-durable >&2
while IFS= read -r line; do export "${line?}"; done < <(scripts/services.sh env)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$MEMORY_CACHE_DIR/target}
cargo build --locked --release -p memory --bin memory >&2
MEMORY=$CARGO_TARGET_DIR/release/memory

DB=${BENCH_DB:-bench}
PG=${MEMORY_LOCAL_DATABASE_URL%/*}
PSQL=("$MEMORY_TEST_PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$PG/postgres")
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--messages 100000 --queries 300)
if [[ " ${args[*]} " != *" --skip-load "* ]]; then
  "${PSQL[@]}" -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)"
  "${PSQL[@]}" -c "CREATE DATABASE \"$DB\""
fi

PREFIX=bench
HTTP=127.0.0.1:${BENCH_HTTP_PORT:-18080}
KEY=bench-operator-key-0123456789
(
  export MEMORY_DATABASE_URL=$PG/$DB MEMORY_NATS_URL=$MEMORY_TEST_NATS_URL MEMORY_REDIS_URL=$MEMORY_TEST_REDIS_URL
  export MEMORY_ADMIN_API_KEY=$KEY MEMORY_HTTP_ADDR=$HTTP MEMORY_METRICS_ADDR=127.0.0.1:${BENCH_METRICS_PORT:-19090}
  export MEMORY_EMBEDDING_PROVIDER=hash MEMORY_SUBJECT_PREFIX=$PREFIX MEMORY_LOG=${MEMORY_LOG:-warn}
  export MEMORY_RATE_LIMIT_CLIENT=1000000/second MEMORY_RATE_LIMIT_TENANT=1000000/second
  export MEMORY_INGEST_MAX_PER_TENANT=100000000
  for setting in ${BENCH_ENV:-}; do export "${setting?}"; done
  exec "$MEMORY" all
) >"$MEMORY_CACHE_DIR/bench.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -fsS "http://$HTTP/readyz" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$MEMORY_CACHE_DIR/bench.log" >&2; exit 1; }
  sleep 0.5
done
echo "bench: memory all on http://$HTTP (database $DB, log $MEMORY_CACHE_DIR/bench.log)" >&2
"$MEMORY" bench --url "http://$HTTP" --key "$KEY" --nats "$MEMORY_TEST_NATS_URL" --subject-prefix "$PREFIX" "${args[@]}"
# The deployment's own view (query-embedding and search histograms, say), before it stops.
METRICS_FILE=$MEMORY_CACHE_DIR/bench-metrics.prom
if curl -fsS "http://127.0.0.1:${BENCH_METRICS_PORT:-19090}/metrics" >"$METRICS_FILE" 2>/dev/null; then
  echo "bench: the deployment's metrics at the end: $METRICS_FILE" >&2
fi
