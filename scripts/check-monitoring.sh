#!/usr/bin/env bash
# Checks the monitoring configuration: Prometheus scrape config and rules, the rules' unit tests, the
# generated PrometheusRule, and the Grafana dashboard.
#   1. promtool check config deploy/prometheus/prometheus.yml
#   2. promtool check rules deploy/prometheus/rules/*.yml
#   3. promtool test rules deploy/prometheus/tests/*.test.yml
#   4. deploy/k8s/base/prometheusrule.yaml is what deploy/prometheus/gen-prometheusrule.py generates
#      now (regenerated to a temp file and diffed), and its spec.groups equal the rules file's groups
#   5. the Grafana provisioning files and deploy/grafana/dashboards/*.json parse, and every metric
#      name in a dashboard query or a rule expression is in deploy/prometheus/metrics.txt (or is a
#      recording rule of the rules file, or Prometheus' own `up`); every alert has a unit test that
#      fires it and one that keeps it silent (deploy/prometheus/check-metric-names.py)
#   6. every dashboard query parses as PromQL (promtool check rules on them as recording rules)
#
# Tools: promtool comes from Debian's `prometheus` package (2.42), PyYAML from Debian's python3-yaml.
# When missing they are NOT installed system-wide: the .deb is fetched with `apt-get download` and
# unpacked with `dpkg -x` into $MEMORY_CACHE_DIR/monitoring-tools (default /var/cache/memory-layer as
# root, ~/.cache/memory-layer otherwise). That needs no root, starts no prometheus service and leaves
# nothing running. A promtool on PATH (or PROMTOOL=/path/to/promtool) is used instead if present.
# As a non-root user without apt package lists, the lists are fetched into the cache dir too.
#
# Usage: scripts/check-monitoring.sh          (idempotent; exit status 0 only if every check passes)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  CACHE=${MEMORY_CACHE_DIR:-/var/cache/memory-layer}
else
  CACHE=${MEMORY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/memory-layer}
fi
TOOLS="$CACHE/monitoring-tools"

log() { echo "check-monitoring: $*" >&2; }
step() { echo "== $*"; }

# apt-get with private package lists under $TOOLS/apt (for a non-root user on a machine whose
# system lists are missing or stale).
private_apt() {
  mkdir -p "$TOOLS/apt/lists/partial" "$TOOLS/apt/cache/archives/partial"
  apt-get -qq -o Dir::State::Lists="$TOOLS/apt/lists" -o Dir::Cache="$TOOLS/apt/cache" \
    -o Debug::NoLocking=1 -o APT::Sandbox::User="$(id -un)" "$@"
}

# fetch_deb PACKAGE DEST: unpack Debian's PACKAGE into DEST (no install, no maintainer scripts).
fetch_deb() {
  local pkg=$1 dest=$2 tmp
  command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
    log "apt-get/dpkg not found: install $pkg yourself (Debian/Ubuntu package names)"
    return 1
  }
  tmp=$(mktemp -d)
  # As root, apt cannot hand this private directory to its sandbox user _apt and downloads as root
  # instead (its warning about that is silenced on the first try).
  log "fetching Debian's $pkg into $dest"
  if ! (cd "$tmp" && apt-get -qq download "$pkg" 2>/dev/null); then
    if [ "$(id -u)" = 0 ]; then
      DEBIAN_FRONTEND=noninteractive apt-get -qq update >/dev/null
      (cd "$tmp" && apt-get -qq download "$pkg")
    else
      private_apt update >/dev/null
      (cd "$tmp" && private_apt download "$pkg")
    fi
  fi
  rm -rf "$dest.partial"
  dpkg -x "$tmp"/"${pkg}"_*.deb "$dest.partial"
  rm -rf "$dest" "$tmp"
  mv "$dest.partial" "$dest"
}

ensure_promtool() {
  if [ -n "${PROMTOOL:-}" ]; then
    return 0
  elif command -v promtool >/dev/null; then
    PROMTOOL=$(command -v promtool)
  else
    PROMTOOL="$TOOLS/bin/promtool"
    if ! "$PROMTOOL" --version >/dev/null 2>&1; then
      mkdir -p "$TOOLS/bin"
      fetch_deb prometheus "$TOOLS/prometheus-deb"
      # Keep promtool only (the package also holds the server and its web assets, ~95 MB).
      install -m 0755 "$TOOLS/prometheus-deb/usr/bin/promtool" "$PROMTOOL"
      rm -rf "$TOOLS/prometheus-deb"
    fi
  fi
  "$PROMTOOL" --version 2>&1 | head -n 1 >&2
}

# PYTHON: a python3 that can `import yaml`.
ensure_pyyaml() {
  PYTHON=${PYTHON:-python3}
  command -v "$PYTHON" >/dev/null || {
    log "python3 not found (Debian: apt-get install python3)"
    return 1
  }
  "$PYTHON" -c 'import yaml' 2>/dev/null && return 0
  local site="$TOOLS/python3-yaml/usr/lib/python3/dist-packages"
  if [ ! -f "$site/yaml/__init__.py" ]; then
    mkdir -p "$TOOLS"
    fetch_deb python3-yaml "$TOOLS/python3-yaml"
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  # The package's C extension is for Debian's python3; PyYAML falls back to pure Python elsewhere.
  "$PYTHON" -c 'import yaml' || {
    log "cannot import yaml from $site"
    return 1
  }
}

ensure_promtool
ensure_pyyaml

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=0
fail() {
  log "FAILED: $*"
  failed=1
}

step "promtool check config deploy/prometheus/prometheus.yml"
"$PROMTOOL" check config deploy/prometheus/prometheus.yml || fail "promtool check config"
# The config names the rules as mounted in compose (/etc/prometheus/rules/*.yml), which matches
# nothing here; check a copy pointing at deploy/prometheus/rules/ too, so that the glob is known to
# pick up the rules file and the config loads with it.
rules_config="$work/prometheus.yml"
sed "s#/etc/prometheus/rules/#$PWD/deploy/prometheus/rules/#" deploy/prometheus/prometheus.yml >"$rules_config"
if ! grep -q "$PWD/deploy/prometheus/rules/" "$rules_config"; then
  fail "prometheus.yml does not load rules from /etc/prometheus/rules/"
elif ! out=$("$PROMTOOL" check config "$rules_config" 2>&1); then
  echo "$out"
  fail "promtool check config (with the rules from deploy/prometheus/rules/)"
elif ! grep -q "memory.rules.yml" <<<"$out"; then
  echo "$out"
  fail "prometheus.yml's rule_files do not match deploy/prometheus/rules/memory.rules.yml"
else
  echo "with the rules as mounted in compose: valid, loads deploy/prometheus/rules/memory.rules.yml"
fi

step "promtool check rules deploy/prometheus/rules/*.yml"
"$PROMTOOL" check rules deploy/prometheus/rules/*.yml || fail "promtool check rules"

step "promtool test rules deploy/prometheus/tests/*.test.yml"
"$PROMTOOL" test rules deploy/prometheus/tests/*.test.yml || fail "promtool test rules"

step "deploy/k8s/base/prometheusrule.yaml is generated from the rules file"
generated="$work/prometheusrule.yaml"
if "$PYTHON" deploy/prometheus/gen-prometheusrule.py --output "$generated" 2>/dev/null; then
  if diff -u deploy/k8s/base/prometheusrule.yaml "$generated"; then
    echo "up to date"
  else
    fail "deploy/k8s/base/prometheusrule.yaml is stale: run deploy/prometheus/gen-prometheusrule.py"
  fi
else
  fail "deploy/prometheus/gen-prometheusrule.py failed"
fi
"$PYTHON" - <<'EOF' || fail "PrometheusRule content"
import sys
import yaml

rules = yaml.safe_load(open("deploy/prometheus/rules/memory.rules.yml", encoding="utf-8"))
cr = yaml.safe_load(open("deploy/k8s/base/prometheusrule.yaml", encoding="utf-8"))
problems = []
if (cr.get("apiVersion"), cr.get("kind")) != ("monitoring.coreos.com/v1", "PrometheusRule"):
    problems.append("not a monitoring.coreos.com/v1 PrometheusRule")
labels = (cr.get("metadata") or {}).get("labels") or {}
for key, value in {"app.kubernetes.io/name": "memory", "app.kubernetes.io/part-of": "memory-layer"}.items():
    if labels.get(key) != value:
        problems.append(f"metadata.labels[{key}] should be {value!r}")
if (cr.get("spec") or {}).get("groups") != rules.get("groups"):
    problems.append("spec.groups differ from the groups of deploy/prometheus/rules/memory.rules.yml")
for p in problems:
    print(f"prometheusrule.yaml: {p}", file=sys.stderr)
if not problems:
    print("spec.groups == the rules file's groups; labels and kind as expected")
sys.exit(1 if problems else 0)
EOF

# kustomize (kyaml) re-serialises the YAML; folded scalars with more-indented lines come out changed.
if command -v kubectl >/dev/null && kubectl kustomize deploy/k8s/base >"$work/kustomized.yaml" 2>"$work/kustomize.err"; then
  "$PYTHON" - "$work/kustomized.yaml" <<'EOF' || fail "the PrometheusRule's groups change through kustomize"
import sys
import yaml

rules = yaml.safe_load(open("deploy/prometheus/rules/memory.rules.yml", encoding="utf-8"))
found = [d for d in yaml.safe_load_all(open(sys.argv[1], encoding="utf-8")) if d and d.get("kind") == "PrometheusRule"]
if len(found) != 1:
    sys.exit(f"kubectl kustomize deploy/k8s/base: expected one PrometheusRule, found {len(found)}")
if found[0]["spec"]["groups"] != rules["groups"]:
    sys.exit("kubectl kustomize deploy/k8s/base: the PrometheusRule's groups differ from the rules file "
             "(avoid more-indented lines inside folded >- scalars; use |- instead)")
print("kubectl kustomize deploy/k8s/base: the PrometheusRule's groups survive kustomize unchanged")
EOF
else
  log "skipped the kustomize round trip (no kubectl, or kubectl kustomize deploy/k8s/base failed: $(head -c 300 "$work/kustomize.err" 2>/dev/null))"
fi

step "Grafana provisioning and dashboards; metric names against deploy/prometheus/metrics.txt"
"$PYTHON" deploy/prometheus/check-metric-names.py --emit-rules "$work/dashboard-queries.yml" ||
  fail "dashboard / metric names"
step "the dashboard queries parse (promtool check rules on them as recording rules)"
if [ -s "$work/dashboard-queries.yml" ]; then
  "$PROMTOOL" check rules "$work/dashboard-queries.yml" || fail "dashboard queries do not parse"
else
  fail "no dashboard queries extracted"
fi

if [ "$failed" != 0 ]; then
  log "some checks failed"
  exit 1
fi
echo "== all monitoring checks passed"
