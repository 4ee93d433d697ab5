#!/usr/bin/env bash
# Container smoke test: builds memory-layer:0.1.0 from the Dockerfile, runs docker-compose.yml with
# podman, walks through the README's example against the published API port, checks every role's
# ops /metrics, and tears everything down (volumes too), also on failure.
#
#   scripts/container-smoke.sh
#
# No registry is needed: scripts/podman-setup.sh installs podman and podman-compose and builds local
# stand-ins under the public image names (deploy/standins/), and nothing is pulled. The compose file
# and the Dockerfile are used as they are; deploy/compose/podman-up.py starts the services in
# depends_on order and runs their healthchecks (podman needs systemd for those, and there is none).
# The grafana service is left out: it has no stand-in.
#
# Settings (environment):
#   SMOKE_SKIP_IMAGE_BUILD=1   use the memory-layer:0.1.0 image that exists (no `podman build`)
#   SMOKE_READY_TIMEOUT=600    seconds for the whole stack to become healthy (the model download
#                              and the first start included)
#   SMOKE_KEEP=1               leave the stack running at the end (tear down with
#                              `$PODMAN_COMPOSE -f docker-compose.yml down -v`)
#   SMOKE_CHECK_PROMETHEUS=0   skip the check that Prometheus scrapes every role
# Needs root (rootful podman), and ports 8080 and 9091 free on the host.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=memory-layer:0.1.0
COMPOSE_FILE=docker-compose.yml
READY_TIMEOUT=${SMOKE_READY_TIMEOUT:-600}
# The compose file's default admin key (the README's); a value in the environment reaches both.
KEY=${MEMORY_ADMIN_API_KEY:-local-dev-admin-key}
API=http://127.0.0.1:8080
ROLES=(gateway embedder searcher retention)

log() { echo "container-smoke: $*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- podman and the stand-in images ------------------------------------------------------------------
if [ "${SMOKE_SKIP_IMAGE_BUILD:-0}" = 1 ]; then
  # The rust stand-in only serves the image build.
  scripts/podman-setup.sh standins debian nats postgres redis prometheus
else
  scripts/podman-setup.sh all
fi
while IFS= read -r line; do export "${line?}"; done < <(scripts/podman-setup.sh env)
CDIR=$(dirname "$CONTAINERS_CONF")
PY="$CDIR/venv/bin/python"
compose() { "$PODMAN_COMPOSE" -f "$COMPOSE_FILE" "$@"; }

TMP=$(mktemp -d)
PROJECT=$("$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["name"])' "$COMPOSE_FILE")

project_containers() {
  podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}' | sort
}
service_containers() {
  podman ps -a --filter "label=io.podman.compose.project=$PROJECT" \
    --filter "label=com.docker.compose.service=$1" --format '{{.Names}}' | sort
}

# On failure: the logs of every container that exited with an error or fails its healthcheck.
dump_unhealthy() {
  local c state code
  for c in $(project_containers); do
    state=$(podman inspect --format '{{.State.Status}}' "$c" 2>/dev/null || echo gone)
    code=$(podman inspect --format '{{.State.ExitCode}}' "$c" 2>/dev/null || echo '?')
    if [ "$state" = running ]; then
      if [ "$(podman inspect --format '{{if .Config.Healthcheck}}yes{{end}}' "$c")" != yes ] ||
         podman healthcheck run "$c" >/dev/null 2>&1; then
        continue
      fi
      log "--- $c: running but unhealthy; its last 200 log lines:"
    elif [ "$state" = exited ] && [ "$code" = 0 ]; then
      continue
    else
      log "--- $c: $state (exit code $code); its last 200 log lines:"
    fi
    podman logs --tail 200 "$c" 2>&1 | sed "s/^/  $c| /" >&2 || true
  done
}

cleanup() {
  local rc=$?
  trap - EXIT
  if [ "$rc" != 0 ]; then
    dump_unhealthy || true
  fi
  if [ "${SMOKE_KEEP:-0}" = 1 ]; then
    log "SMOKE_KEEP=1: the stack keeps running (down: $PODMAN_COMPOSE -f $COMPOSE_FILE down -v)"
  else
    log "tearing down (down -v)"
    compose down -v >"$TMP/down.log" 2>&1 || { grep -v 'systemd' "$TMP/down.log" >&2 || true; }
    # A container restarting (restart: unless-stopped) while `down` ran can outlive it.
    left=$(project_containers)
    if [ -n "$left" ]; then
      log "removing what down left: $(echo "$left" | tr '\n' ' ')"
      echo "$left" | xargs podman rm -f >/dev/null 2>&1 || true
      compose down -v >/dev/null 2>&1 || true
    fi
  fi
  rm -rf "$TMP"
  if [ "$rc" = 0 ]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT

# --- the image -----------------------------------------------------------------------------------------
if [ "${SMOKE_SKIP_IMAGE_BUILD:-0}" = 1 ]; then
  log "SMOKE_SKIP_IMAGE_BUILD=1: using the existing $IMAGE"
else
  revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
  log "building $IMAGE (revision $revision)"
  started=$SECONDS
  # docker format keeps the Dockerfile's HEALTHCHECK (the OCI format has none).
  podman build --pull=never --format docker --build-arg REVISION="$revision" -t "$IMAGE" . ||
    fail "podman build failed"
  log "built $IMAGE in $((SECONDS - started)) s"
fi
podman image exists "$IMAGE" || fail "no image $IMAGE (build it, or drop SMOKE_SKIP_IMAGE_BUILD)"
log "image $IMAGE: $(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec) ($(podman image inspect --format '{{.Size}}' "$IMAGE") bytes)"

# --- up --------------------------------------------------------------------------------------------------
# Every service whose image exists here (grafana has no stand-in).
mapfile -t SERVICES < <(compose config 2>/dev/null | "$PY" -c '
import subprocess, sys, yaml
for name, svc in yaml.safe_load(sys.stdin)["services"].items():
    image = svc.get("image")
    if image and subprocess.run(["podman", "image", "exists", image]).returncode != 0:
        print(f"container-smoke: leaving out {name}: no image {image} here", file=sys.stderr)
        continue
    print(name)
')
[ ${#SERVICES[@]} -gt 0 ] || fail "no services to run"

log "removing what an earlier run left"
compose down -v >"$TMP/down.log" 2>&1 || true
for port in 8080 9091; do
  ! port_open "$port" || fail "port $port is in use on the host (scripts/run-local.sh running?)"
done

log "up: ${SERVICES[*]}"
started=$SECONDS
"$PY" deploy/compose/podman-up.py --timeout "$READY_TIMEOUT" --podman-compose "$PODMAN_COMPOSE" \
  -- -f "$COMPOSE_FILE" -- "${SERVICES[@]}" || fail "the stack did not become healthy"
deadline=$((started + READY_TIMEOUT))
until curl -fsS -o /dev/null "$API/readyz" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "$API/readyz did not answer 2xx within $READY_TIMEOUT s"
  sleep 1
done
log "gateway ready on $API after $((SECONDS - started)) s (from up, model download included)"

# --- the README walk-through ---------------------------------------------------------------------------
# api METHOD URL [curl args…]: the status code on stdout, the body in $TMP/body.
api() {
  local method=$1 url=$2
  shift 2
  curl -sS -o "$TMP/body" -w '%{http_code}' -X "$method" "$url" -H "x-api-key: $KEY" "$@"
}
expect() { # expect CODE GOT WHAT
  [ "$2" = "$1" ] || { cat "$TMP/body" >&2; echo >&2; fail "$3: HTTP $2, expected $1"; }
}
field() { jq -r "$1" "$TMP/body"; }

code=$(api POST "$API/v1/messages" -H 'content-type: application/json' \
  -d '{"tenant_id":"my-app","conversation_id":"user-123","role":"user","content":"I moved to Lisbon in May and I love the tiles"}')
expect 202 "$code" "store a message"
lisbon=$(field .id)
[ "$(field .status)" = queued ] || fail "a stored message is $(field .status), expected queued"
log "stored $lisbon: 202 queued"

code=$(api POST "$API/v1/messages?wait=embedded" -H 'content-type: application/json' \
  -d '{"tenant_id":"my-app","conversation_id":"user-123","role":"assistant","content":"Noted! Anything else about your budget for the trip?"}')
expect 201 "$code" "store a message and wait until it is embedded"
budget=$(field .id)
[ "$(field .status)" = embedded ] || fail "?wait=embedded answered status $(field .status)"
log "stored $budget: 201 embedded"

# The first message went to the other embedder replica, maybe: wait until it is embedded too.
status=
for _ in $(seq 1 60); do
  code=$(api GET "$API/v1/messages/$lisbon?tenant_id=my-app")
  expect 200 "$code" "read message $lisbon"
  status=$(field .status)
  [ "$status" = embedded ] && break
  sleep 1
done
[ "$status" = embedded ] || fail "message $lisbon is still $status after 60 s"
log "message $lisbon: status embedded"

code=$(api GET "$API/v1/memory/search" -G --data-urlencode tenant_id=my-app \
  --data-urlencode 'query=Which city do I live in?' --data-urlencode top_k=3)
expect 200 "$code" "search"
[ "$(field '.items[0].message_id')" = "$lisbon" ] ||
  { jq . "$TMP/body" >&2; fail "the top hit is not the Lisbon message"; }
[ "$(field '.items | length')" -ge 2 ] || { jq . "$TMP/body" >&2; fail "search found fewer than 2 messages"; }
log "search: the Lisbon message is the top hit (score $(field '.items[0].score'))"

code=$(api GET "$API/v1/messages/$budget?tenant_id=my-app")
expect 200 "$code" "read message $budget"
[ "$(field .status)" = embedded ] || fail "message $budget is $(field .status), expected embedded"
[ "$(field .content)" = "Noted! Anything else about your budget for the trip?" ] || fail "message $budget has other content"
log "message $budget: status embedded, content intact"

# --- every role's ops port --------------------------------------------------------------------------------
for role in "${ROLES[@]}"; do
  mapfile -t containers < <(service_containers "$role")
  [ ${#containers[@]} -gt 0 ] || fail "no container for $role"
  for c in "${containers[@]}"; do
    podman exec "$c" memory probe http://127.0.0.1:9090/metrics >"$TMP/metrics" 2>&1 ||
      { cat "$TMP/metrics" >&2; fail "$c: GET :9090/metrics failed"; }
    grep -q '^memory_build_info{' "$TMP/metrics" || fail "$c: no memory_build_info in /metrics"
    grep -q "^# TYPE memory_${role}_" "$TMP/metrics" || fail "$c: no memory_${role}_* metric in /metrics"
    podman exec "$c" memory probe http://127.0.0.1:9090/healthz >/dev/null 2>&1 || fail "$c: /healthz failed"
    log "$c: /metrics ($(grep -c '^memory_' "$TMP/metrics") memory_* samples), /healthz ok"
  done
done
[ "$(service_containers embedder | wc -l)" = 2 ] || fail "expected 2 embedder replicas"

# --- Prometheus scrapes every role (when it runs) ---------------------------------------------------------
if [ "${SMOKE_CHECK_PROMETHEUS:-1}" = 1 ] && printf '%s\n' "${SERVICES[@]}" | grep -qx prometheus; then
  declare -A want=([memory-gateway]=1 [memory-embedder]=2 [memory-searcher]=1 [memory-retention]=1)
  ok=
  for _ in $(seq 1 30); do
    curl -fsS http://127.0.0.1:9091/api/v1/targets >"$TMP/targets" 2>/dev/null || { sleep 2; continue; }
    ok=1
    for job in "${!want[@]}"; do
      up=$(jq --arg job "$job" '[.data.activeTargets[] | select(.labels.job == $job and .health == "up")] | length' "$TMP/targets")
      [ "$up" -ge "${want[$job]}" ] || ok=
    done
    [ -n "$ok" ] && break
    sleep 2
  done
  [ -n "$ok" ] || { jq -c '[.data.activeTargets[] | {job: .labels.job, instance: .labels.instance, health, lastError}]' "$TMP/targets" >&2 || true
                    fail "Prometheus does not scrape every role"; }
  log "prometheus: every role's targets are up (embedder: 2)"
fi

log "image $IMAGE: $(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec)"
