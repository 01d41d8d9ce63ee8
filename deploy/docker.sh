#!/usr/bin/env bash
# A Docker engine for the containers tests and the compose check.
#
#   deploy/docker.sh up | down | status | networks
#
# `up` uses an engine that already answers (DOCKER_HOST or the default socket) and touches
# nothing of it but our images and containers. Where none answers and this is root on Debian,
# it installs Debian's docker.io (plus debootstrap and docker-compose, which `make images`
# and `make compose-check` need) and starts dockerd by hand: no systemd on our machines.
# That dockerd has no bridge and no NAT (--bridge=none, --iptables=false, ...), so no
# private-range address or bridge network ever exists: every container runs with host
# networking. Its data and log live under .cache/docker/; `down` removes our containers,
# stops that dockerd by its pid and unmounts what it left mounted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE="$ROOT/.cache/docker"
DATA="$STATE/data"
LOG="$STATE/dockerd.log"
PID_FILE="$STATE/dockerd.pid"
# dockerd's own run state: the default, so `docker` answers without DOCKER_HOST.
EXEC_ROOT=/var/run/docker
START_TIMEOUT=${DOCKER_START_TIMEOUT:-60}
# The images this project builds (deploy/images/build.sh); containers of them are ours.
OUR_IMAGES=(retention-fanout/kafka:4.1.1 retention-fanout/postgres:15 retention-fanout/app:local
  retention-fanout/prometheus:local)

log() { printf '[docker] %s\n' "$*" >&2; }
die() { printf '[docker] ERROR: %s\n' "$*" >&2; exit 1; }

answers() { command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; }

ours_running() { [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

install() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  ((${#missing[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "no Docker engine answers and this is not root: install ${missing[*]} or start an engine"
  command -v apt-get >/dev/null || die "no Docker engine answers and there is no apt-get: install ${missing[*]}"
  log "installing ${missing[*]} (Debian packages)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } \
    || die "apt-get install ${missing[*]} failed"
}

start() {
  mkdir -p "$DATA"
  local driver=${DOCKER_STORAGE_DRIVER:-overlay2}
  log "starting dockerd (storage $driver, data $DATA, log $LOG)"
  # setsid: the engine outlives the make that started it; `down` stops it by pid.
  setsid dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false --ipv6=false \
    --storage-driver="$driver" --data-root="$DATA" --exec-root="$EXEC_ROOT" \
    >"$LOG" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  local deadline=$((SECONDS + START_TIMEOUT))
  until answers; do
    ours_running || { tail -20 "$LOG" >&2; die "dockerd exited during start-up (log: $LOG)"; }
    ((SECONDS < deadline)) || { tail -20 "$LOG" >&2; die "dockerd does not answer after $START_TIMEOUT s (log: $LOG)"; }
    sleep 0.3
  done
}

cmd_up() {
  if ours_running; then log "dockerd already running (pid $(cat "$PID_FILE"))"; return; fi
  rm -f "$PID_FILE"
  if answers; then
    log "a Docker engine already answers: using it for our images and containers only"
    return
  fi
  install
  start
  check_networks
  log "dockerd $(docker version --format '{{.Server.Version}}') ready (pid $(cat "$PID_FILE"))"
}

# Containers of our images, whichever engine runs them (testcontainers and compose both).
our_containers() {
  local image
  for image in "${OUR_IMAGES[@]}"; do docker ps -aq --filter "ancestor=$image"; done | sort -u
}

# What our dockerd and its containers mounted: the data root and overlays under it, and
# (when no engine answers, so none owns it) the exec root's netns mount. /var/run is a
# link to /run: mount targets are matched on the resolved paths.
our_mounts() {
  local data run=/nonexistent
  data=$(readlink -m "$DATA")
  answers || run=$(readlink -m "$EXEC_ROOT")
  findmnt -rn -o TARGET | awk -v data="$data" -v run="$run" \
    '$0 == data || index($0, data "/") == 1 || index($0, run "/") == 1' | sort -r
}

unmount_ours() {
  local mount
  while read -r mount; do
    [[ -n "$mount" ]] || continue
    log "unmounting $mount"
    umount "$mount" 2>/dev/null || umount -l "$mount"
  done < <(our_mounts)
  [[ -z "$(our_mounts)" ]] || die "mounts left behind: $(our_mounts | tr '\n' ' ')"
}

cmd_down() {
  if answers; then
    local ids; ids=$(our_containers)
    if [[ -n "$ids" ]]; then log "removing containers: $(echo $ids)"; docker rm -f $ids >/dev/null; fi
  fi
  if ! ours_running; then
    rm -f "$PID_FILE"
    log "no dockerd started by this checkout is running"
    unmount_ours
    return
  fi
  local pid; pid=$(cat "$PID_FILE")
  if answers; then
    # Any container left on our own engine is ours too (a compose check killed midway).
    local rest; rest=$(docker ps -aq)
    [[ -z "$rest" ]] || docker rm -f $rest >/dev/null
  fi
  # Its children (the containerd it manages) must end with it.
  local children; children=$(pgrep -P "$pid" | tr '\n' ' ' || true)
  log "stopping dockerd (pid $pid; children: ${children:-none})"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then log "dockerd still up after 30 s: SIGKILL"; kill -KILL "$pid"; sleep 1; fi
  rm -f "$PID_FILE"
  local child
  for child in $children; do
    for _ in $(seq 1 20); do kill -0 "$child" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$child" 2>/dev/null; then log "dockerd's child $child still up: SIGKILL"; kill -KILL "$child"; fi
  done
  unmount_ours
}

# Only `host` and `none` may exist: no bridge, no private addresses.
check_networks() {
  local names; names=$(docker network ls --format '{{.Name}}' | sort | tr '\n' ' ')
  [[ "$names" == "host none " ]] || die "docker networks other than host and none exist: $names"
  log "docker networks: $names"
}

cmd_status() {
  if ours_running; then echo "dockerd: running (pid $(cat "$PID_FILE"), started by this checkout)"
  elif answers; then echo "dockerd: an engine not started by this checkout answers"
  else echo "dockerd: no engine answers"; fi
  if answers; then docker ps --format '{{.ID}} {{.Image}} {{.Status}} {{.Names}}'; fi
  return 0
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  networks) check_networks ;;
  *) echo "usage: $0 up|down|status|networks" >&2; exit 2 ;;
esac
