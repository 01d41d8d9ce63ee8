#!/usr/bin/env bash
# Builds this project's images (`make images`), reusing what exists:
#
#   retention-fanout/kafka:4.1.1       deploy/images/kafka      (jars from infra/kafka/pom.xml)
#   retention-fanout/postgres:15       deploy/images/postgres
#   retention-fanout/app:local         deploy/images/app        (the repository as context)
#   retention-fanout/prometheus:local  deploy/images/prometheus (only the compose check uses it)
#
# Each is FROM a base given as the BASE build argument: the official debian:bookworm-slim /
# python:3.11-slim where a registry serves them (or they are already local), otherwise
# retention-fanout/debian:bookworm, made here with debootstrap (deploy/images/base/build.sh).
# Builds use the host's network, so apt and pip inside them reach what the host reaches.
#
#   deploy/images/build.sh [all|kafka|postgres|app|prometheus|clean|tags]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/deploy/images"
STAGE="$ROOT/.cache/images"
LOCAL_BASE=retention-fanout/debian:bookworm
KAFKA=retention-fanout/kafka:4.1.1
POSTGRES=retention-fanout/postgres:15
APP=retention-fanout/app:local
PROMETHEUS=retention-fanout/prometheus:local

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

[[ "${1:-}" == tags ]] || docker info >/dev/null 2>&1 || die "no Docker engine answers: run \`make docker-up\` first"

have() { docker image inspect "$1" >/dev/null 2>&1; }

# The official image if it is here or can be pulled, else our debootstrap base.
base_for() {
  local official=$1
  if have "$official" || timeout 120 docker pull -q "$official" >/dev/null 2>&1; then
    echo "$official"; return
  fi
  if ! have "$LOCAL_BASE"; then
    log "no registry serves $official: building $LOCAL_BASE with debootstrap"
    local started=$SECONDS
    mkdir -p "$STAGE"; DEBOOTSTRAP_LOG="$STAGE/debootstrap.log" "$HERE/base/build.sh" "$LOCAL_BASE"
    log "$LOCAL_BASE built in $((SECONDS - started)) s"
  fi
  echo "$LOCAL_BASE"
}

build() {
  local tag=$1 dockerfile=$2 context=$3 base=$4 started=$SECONDS
  log "building $tag FROM $base"
  # The legacy builder (no buildx in Debian bookworm) warns that it is deprecated; it works.
  local out="$STAGE/build-${tag//[\/:]/-}.log"
  mkdir -p "$STAGE"
  DOCKER_BUILDKIT=0 docker build --force-rm --network host --build-arg "BASE=$base" \
    -t "$tag" -f "$dockerfile" "$context" >"$out" 2>&1 || { tail -30 "$out" >&2; die "building $tag failed (log: $out)"; }
  log "$tag ready in $((SECONDS - started)) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%d MB", $1/1e6}'))"
}

build_kafka() {
  "$ROOT/infra/infra.sh" kafka-fetch
  rm -rf "$STAGE/kafka"; mkdir -p "$STAGE/kafka"
  cp "$HERE"/kafka/{entrypoint.sh,kafka-topics.sh} "$ROOT"/infra/kafka/{server.properties,log4j2.properties} "$STAGE/kafka/"
  # Hard links when the cache shares a file system with the jars: no copy of ~100 MB.
  cp -al "$ROOT/.cache/kafka/lib" "$STAGE/kafka/lib" 2>/dev/null || cp -a "$ROOT/.cache/kafka/lib" "$STAGE/kafka/lib"
  rm -f "$STAGE/kafka/lib/.complete"
  build "$KAFKA" "$HERE/kafka/Dockerfile" "$STAGE/kafka" "$(base_for debian:bookworm-slim)"
}

build_postgres() { build "$POSTGRES" "$HERE/postgres/Dockerfile" "$HERE/postgres" "$(base_for debian:bookworm-slim)"; }
# pip in the app build trusts what the host trusts (a TLS-inspecting proxy's authority too).
host_ca() {
  mkdir -p "$STAGE"
  local bundle=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
  if [[ -s "$bundle" ]]; then cp "$bundle" "$STAGE/build-ca.crt"; else : >"$STAGE/build-ca.crt"; fi
}

build_app() { host_ca; build "$APP" "$HERE/app/Dockerfile" "$ROOT" "$(base_for python:3.11-slim)"; }
build_prometheus() { build "$PROMETHEUS" "$HERE/prometheus/Dockerfile" "$HERE/prometheus" "$(base_for debian:bookworm-slim)"; }

clean() {
  local ids tag
  for tag in "$KAFKA" "$POSTGRES" "$APP" "$PROMETHEUS" "$LOCAL_BASE"; do
    ids=$(docker ps -aq --filter "ancestor=$tag")
    [[ -z "$ids" ]] || docker rm -f $ids >/dev/null
    if have "$tag"; then docker image rm -f "$tag" >/dev/null; log "removed $tag"; fi
  done
  docker image prune -f >/dev/null
}

# The base first (once), then the four images side by side: apt and pip downloads overlap.
build_all() {
  base_for debian:bookworm-slim >/dev/null
  base_for python:3.11-slim >/dev/null
  local names=(postgres kafka app prometheus) pids=() failed=() i
  for i in "${names[@]}"; do "build_$i" & pids+=($!); done
  for i in "${!names[@]}"; do wait "${pids[$i]}" || failed+=("${names[$i]}"); done
  ((${#failed[@]} == 0)) || die "images not built: ${failed[*]}"
}

case "${1:-all}" in
  all) build_all ;;
  kafka) build_kafka ;;
  postgres) build_postgres ;;
  app) build_app ;;
  prometheus) build_prometheus ;;
  clean) clean ;;
  tags) printf '%s\n' "$KAFKA" "$POSTGRES" "$APP" "$PROMETHEUS" ;;
  *) echo "usage: $0 [all|kafka|postgres|app|prometheus|clean|tags]" >&2; exit 2 ;;
esac
