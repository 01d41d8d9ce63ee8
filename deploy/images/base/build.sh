#!/usr/bin/env bash
# retention-fanout/debian:bookworm, the base image where no registry serves debian:bookworm-slim:
# a minimal Debian bookworm made with debootstrap from the host's own Debian mirror, imported
# with `docker import`. Needs root, debootstrap and a Docker engine.
#
#   deploy/images/base/build.sh IMAGE_TAG
set -euo pipefail

TAG=${1:?usage: $0 IMAGE_TAG}
SOURCES=/etc/apt/sources.list.d/debian.sources
command -v debootstrap >/dev/null || { echo "debootstrap not found (Debian: apt-get install debootstrap)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "debootstrap needs root" >&2; exit 1; }

# The first URIs line of the host's deb822 sources, else of sources.list.
mirror=$(awk '/^URIs:/ {print $2; exit}' "$SOURCES" 2>/dev/null || true)
[[ -n "$mirror" ]] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[[ -n "$mirror" ]] || { echo "no Debian mirror found in $SOURCES or /etc/apt/sources.list" >&2; exit 1; }

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
log=${DEBOOTSTRAP_LOG:-/dev/stderr}
debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$log" 2>&1 \
  || { [[ "$log" == /dev/stderr ]] || tail -20 "$log" >&2; echo "debootstrap failed" >&2; exit 1; }
# apt inside image builds uses the same mirror (and security suite) as the host.
if [[ -f "$SOURCES" ]]; then
  cp "$SOURCES" "$rootfs/etc/apt/sources.list.d/debian.sources"
  rm -f "$rootfs/etc/apt/sources.list"
fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' - "$TAG" >/dev/null
