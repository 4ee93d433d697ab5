#!/usr/bin/env bash
# Static checks of the Kubernetes manifests in deploy/k8s (no cluster needed):
#   1. `kubectl kustomize` renders the base and every overlay (and the dev overlay's nats.conf equals
#      deploy/nats/nats.conf but for the monitoring listener);
#   2. every rendered object validates against the schema of its apiVersion/kind: Kubernetes API types
#      (npm kubernetes-models), KEDA (@kubernetes-models/keda), prometheus-operator
#      (@kubernetes-models/prometheus-operator); unknown kinds and unknown fields fail
#      (deploy/k8s/validate/validate.cjs, which first checks itself on deliberately broken objects);
#   3. checkov (PyPI) finds nothing in each rendered overlay that deploy/k8s/checkov-waivers.yaml does
#      not waive with a reason.
#
# Needs kubectl (>= 1.24, kustomize built in), node >= 18 with npm, and python3 with venv. Installs the
# npm packages (deploy/k8s/validate/package-lock.json, `npm ci`) and checkov into
#   ${MEMORY_CACHE_DIR:-/var/cache/memory-layer (root) or ~/.cache/memory-layer}/k8s-tools
# once; later runs reuse them. Prints a summary; exits non-zero if any check fails.
set -euo pipefail

CHECKOV_VERSION=3.3.30

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S="$ROOT/deploy/k8s"
if [ -n "${MEMORY_CACHE_DIR:-}" ]; then
  CACHE="$MEMORY_CACHE_DIR"
elif [ "$(id -u)" = 0 ]; then
  CACHE=/var/cache/memory-layer
else
  CACHE="$HOME/.cache/memory-layer"
fi
TOOLS="$CACHE/k8s-tools"
KUBECTL="${KUBECTL:-kubectl}"
TARGETS=(base overlays/dev overlays/production)
CHECKOV_OVERLAYS=(dev production)

log() { printf '%s\n' "$*"; }
die() { printf 'check-k8s: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

START="$(now)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- prerequisites ------------------------------------------------------------------------------

if ! command -v "$KUBECTL" >/dev/null 2>&1; then
  die "kubectl not found (needed for \`kubectl kustomize\`). Install kubectl >= 1.24, e.g. from the
Kubernetes apt repository (https://pkgs.k8s.io, package kubectl) or the release binary
(https://dl.k8s.io/release/v1.32.4/bin/linux/amd64/kubectl into /usr/local/bin), or point KUBECTL at
one. Debian 12's kubernetes-client (1.20) is too old."
fi
KUBECTL_MINOR="$("$KUBECTL" version --client -o json 2>/dev/null |
  sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -n1)"
if [ -z "$KUBECTL_MINOR" ] || [ "$KUBECTL_MINOR" -lt 24 ]; then
  die "kubectl $("$KUBECTL" version --client 2>/dev/null | head -n1) is too old: need >= 1.24 (kustomize v4.5+)"
fi
command -v node >/dev/null 2>&1 || die "node not found: install Node.js >= 18 with npm (Debian: apt-get install nodejs npm)"
command -v npm >/dev/null 2>&1 || die "npm not found: install it (Debian: apt-get install npm)"
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
  die "node $(node --version) is too old: need >= 18"
command -v python3 >/dev/null 2>&1 || die "python3 not found (Debian: apt-get install python3 python3-venv)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum not found (coreutils)"

mkdir -p "$TOOLS" || die "cannot create $TOOLS (set MEMORY_CACHE_DIR to a writable directory)"
# One installer at a time (concurrent runs share the cache).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$TOOLS/.lock"
  flock 9
fi

# --- tools --------------------------------------------------------------------------------------

INSTALL_START="$(now)"
INSTALLED=()

# npm packages: `npm ci` from the committed lockfile, redone when the lockfile or node's major changes.
NODE_DIR="$TOOLS/node"
NODE_STAMP="$(cat "$K8S/validate/package.json" "$K8S/validate/package-lock.json" | sha256sum | cut -c1-16)-node$(node -p 'process.versions.node.split(".")[0]')"
if [ "$(cat "$NODE_DIR/.stamp" 2>/dev/null || true)" != "$NODE_STAMP" ] || [ ! -d "$NODE_DIR/node_modules" ]; then
  log "installing the schema packages (npm ci) into $NODE_DIR"
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  cp "$K8S/validate/package.json" "$K8S/validate/package-lock.json" "$NODE_DIR/"
  (cd "$NODE_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error \
    --cache "$TOOLS/npm-cache" >"$NODE_DIR/npm-ci.log" 2>&1) ||
    { cat "$NODE_DIR/npm-ci.log" >&2; die "npm ci failed (log above)"; }
  printf '%s\n' "$NODE_STAMP" >"$NODE_DIR/.stamp"
  INSTALLED+=("npm packages")
fi

# checkov in a virtualenv, redone when the pinned version or python's version changes.
VENV="$TOOLS/checkov-venv"
PY_VERSION="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
CHECKOV_STAMP="checkov-$CHECKOV_VERSION-py$PY_VERSION"
if [ "$(cat "$VENV/.stamp" 2>/dev/null || true)" != "$CHECKOV_STAMP" ] || [ ! -x "$VENV/bin/checkov" ]; then
  log "installing checkov $CHECKOV_VERSION into $VENV"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >"$WORK/venv.log" 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "python3 has no venv/ensurepip: installing Debian's python3-venv"
      rm -rf "$VENV"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; } ||
        die "could not install python3-venv"
      python3 -m venv "$VENV" || die "python3 -m venv failed"
    else
      cat "$WORK/venv.log" >&2
      die "python3 -m venv failed: install python3-venv (Debian: sudo apt-get install python3-venv)"
    fi
  fi
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --cache-dir "$TOOLS/pip-cache" \
    "checkov==$CHECKOV_VERSION" >"$WORK/pip.log" 2>&1 ||
    { cat "$WORK/pip.log" >&2; die "pip install checkov==$CHECKOV_VERSION failed (log above)"; }
  printf '%s\n' "$CHECKOV_STAMP" >"$VENV/.stamp"
  INSTALLED+=("checkov")
fi
INSTALL_SECS=$(($(now) - INSTALL_START))
if [ "${#INSTALLED[@]}" -gt 0 ]; then
  log "tools installed in ${INSTALL_SECS}s (${INSTALLED[*]})"
fi

# --- checks -------------------------------------------------------------------------------------

FAILED=()
SUMMARY=()

# 1. render
log ""
log "1. kubectl kustomize ($("$KUBECTL" version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p' | head -n1 || true))"
RENDERED=()
render_ok=1
for target in "${TARGETS[@]}"; do
  name="${target##*/}"
  out="$WORK/$name.yaml"
  if "$KUBECTL" kustomize "$K8S/$target" >"$out" 2>"$WORK/$name.err"; then
    count="$(grep -c '^kind:' "$out" || true)"
    log "  $target: $count objects"
    RENDERED+=("$out")
  else
    log "  $target: FAILED"
    sed 's/^/    /' "$WORK/$name.err"
    if [ "$target" = base ] && [ ! -f "$K8S/base/prometheusrule.yaml" ]; then
      log "    (deploy/k8s/base/prometheusrule.yaml is generated by deploy/prometheus/gen-prometheusrule.py)"
    fi
    render_ok=0
  fi
done

# The dev overlay's NATS config must be deploy/nats/nats.conf with only the monitoring listener
# changed (comments and blank lines aside).
strip_conf() { sed -e 's/^[[:space:]]*#.*$//' -e 's/[[:space:]]*$//' "$1" | grep -v '^$' || true; }
if diff <(strip_conf "$ROOT/deploy/nats/nats.conf" | grep -v '^http:') \
        <(strip_conf "$K8S/overlays/dev/nats.conf" | grep -v '^http:') >"$WORK/nats.diff" &&
   [ "$(strip_conf "$K8S/overlays/dev/nats.conf" | grep '^http:')" = 'http: "0.0.0.0:8222"' ]; then
  log "  overlays/dev/nats.conf: deploy/nats/nats.conf with monitoring on 0.0.0.0:8222"
else
  log "  overlays/dev/nats.conf: differs from deploy/nats/nats.conf beyond the http line:"
  sed 's/^/    /' "$WORK/nats.diff"
  render_ok=0
fi
if [ "$render_ok" = 1 ]; then
  SUMMARY+=("render: ok (${#RENDERED[@]} targets)")
else
  FAILED+=(render)
  SUMMARY+=("render: FAILED")
fi

# 2. schema validation
log ""
log "2. schema validation (kubernetes-models, keda, prometheus-operator)"
VALIDATE=(node "$K8S/validate/validate.cjs" --modules "$NODE_DIR/node_modules")
if "${VALIDATE[@]}" --self-test >"$WORK/selftest.log" 2>&1; then
  tail -n1 "$WORK/selftest.log" | sed 's/^/  /'
  if [ "${#RENDERED[@]}" -gt 0 ] && "${VALIDATE[@]}" "${RENDERED[@]}" >"$WORK/schema.log" 2>&1; then
    sed -e "s|$WORK/||" -e 's/^/  /' "$WORK/schema.log"
    SUMMARY+=("schema: ok")
  else
    sed -e "s|$WORK/||" -e 's/^/  /' "$WORK/schema.log" 2>/dev/null || true
    FAILED+=(schema)
    SUMMARY+=("schema: FAILED")
  fi
else
  sed 's/^/  /' "$WORK/selftest.log"
  FAILED+=(schema)
  SUMMARY+=("schema: FAILED (the validator accepts broken objects)")
fi

# 3. checkov
log ""
log "3. checkov $CHECKOV_VERSION (waivers: deploy/k8s/checkov-waivers.yaml)"
REPORTS=()
checkov_ok=1
for overlay in "${CHECKOV_OVERLAYS[@]}"; do
  file="$WORK/$overlay.yaml"
  if [ ! -s "$file" ]; then
    log "  $overlay: not rendered"
    checkov_ok=0
    continue
  fi
  # Exit status 1 means "findings"; the gate below decides. No network: --skip-download.
  set +e
  "$VENV/bin/checkov" -f "$file" --framework kubernetes -o json --skip-download \
    >"$WORK/$overlay.checkov.json" 2>"$WORK/$overlay.checkov.err"
  rc=$?
  set -e
  if [ "$rc" -gt 1 ] || ! "$VENV/bin/python" -c 'import json,sys; json.load(open(sys.argv[1]))' \
      "$WORK/$overlay.checkov.json" 2>/dev/null; then
    log "  $overlay: checkov failed to run (exit $rc)"
    sed 's/^/    /' "$WORK/$overlay.checkov.err" | tail -n 20
    checkov_ok=0
    continue
  fi
  REPORTS+=("$overlay=$WORK/$overlay.checkov.json")
done
if [ "${#REPORTS[@]}" -gt 0 ] &&
   "$VENV/bin/python" "$K8S/validate/checkov_gate.py" "$K8S/checkov-waivers.yaml" "${REPORTS[@]}"; then
  :
else
  checkov_ok=0
fi
if [ "$checkov_ok" = 1 ]; then
  SUMMARY+=("checkov: ok")
else
  FAILED+=(checkov)
  SUMMARY+=("checkov: FAILED")
fi

# --- summary ------------------------------------------------------------------------------------

log ""
log "summary ($(($(now) - START))s; tools in $TOOLS):"
for line in "${SUMMARY[@]}"; do log "  $line"; done
if [ "${#FAILED[@]}" -gt 0 ]; then
  log "check-k8s: FAILED (${FAILED[*]})"
  exit 1
fi
log "check-k8s: all checks passed"
