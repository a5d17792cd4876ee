#!/usr/bin/env bash
# Build the service image from deploy/Dockerfile: `make image`, and the image test of
# `make test` (tests/test_image.py) through the same command.
#
#   scripts/image.sh [--standin] [--tag TAG]
#
# Docker when a daemon answers; otherwise buildah (Debian's package) with chroot
# isolation and the host's network, which needs no daemon and no OCI runtime. Layers are
# cached by the builder, so only a code change rebuilds, and only its last layers.
# --standin builds on a stand-in for the official Python base, for a machine that reaches
# Debian's mirror and PyPI but no image registry: Debian 12 (the slim image's release)
# from debootstrap with python3 (3.11, as the slim image) and python3-venv, this
# machine's CA bundle, and `python` on the PATH; made once and kept as
# localhost/deepfake-monitor-base:bookworm-py3.11.
# Prints the image's name, size and the seconds the build took.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
tag="localhost/deepfake-monitor:$version"
standin=0
while [ $# -gt 0 ]; do
  case "$1" in
    --standin) standin=1 ;;
    --tag) tag="$2"; shift ;;
    *) echo "image.sh: unknown option $1 (use --standin, --tag TAG)" >&2; exit 2 ;;
  esac
  shift
done

say() { echo "image: $*" >&2; }
if docker info >/dev/null 2>&1; then builder=docker; else builder=buildah; fi
command -v "$builder" >/dev/null \
  || { say "no Docker engine and no buildah: install one (apt-get install buildah podman)"; exit 1; }

exists() {
  if [ $builder = docker ]; then docker image inspect "$1" >/dev/null 2>&1
  else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

args=()
if [ $standin = 1 ]; then
  base=localhost/deepfake-monitor-base:bookworm-py3.11
  if ! exists "$base"; then
    t0=$SECONDS
    say "making the stand-in base $base (debootstrap of Debian 12; about a minute)"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$root" http://deb.debian.org/debian >"$root.log" 2>&1 \
      || { tail -20 "$root.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root.log"
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    tar -C "$root" -c . | $([ $builder = docker ] && echo docker || echo podman) import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$base" >/dev/null 2>&1
    say "  done in $((SECONDS - t0)) s"
  fi
  args+=(--build-arg "BASE=$base")
fi

t0=$SECONDS
say "building $tag with $builder from deploy/Dockerfile"
if [ $builder = docker ]; then
  docker build -f deploy/Dockerfile -t "$tag" "${args[@]}" . >&2
else
  # The pip cache of the Dockerfile's cache mount lives in buildah's own cache folder.
  buildah bud --isolation chroot --network host --layers --pull=false --format docker -q \
    -f deploy/Dockerfile -t "$tag" "${args[@]}" . >/dev/null || {
    [ $standin = 1 ] || say "no image registry reachable? build on a stand-in base: make image STANDIN=1"
    exit 1; }
  buildah rmi --prune >/dev/null 2>&1 || true   # the images an earlier build left untagged
fi
if [ $builder = docker ]; then
  size=$(docker image inspect --format '{{.Size}}' "$tag")
else
  size=$(podman image inspect --format '{{.Size}}' "$tag")
fi
say "$tag: $(numfmt --to=si --suffix=B "$size"), built in $((SECONDS - t0)) s"
