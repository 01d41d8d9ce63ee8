#!/usr/bin/env bash
# Brings up (or finds) the real Kafka broker and PostgreSQL server the project needs,
# without Docker, and writes their connection settings to one env file.
#
#   infra/infra.sh up | down | status | env-file
#   infra/infra.sh kafka-start | kafka-stop [--kill]     (used by the fault tests)
#   infra/infra.sh secure-start DIR [SERVICE...] | secure-stop DIR [--kill]
#
# `secure-start` runs a second, private broker from the same jars with TLS, SCRAM users
# and ACL enforcement (infra/kafka/secure.properties) in DIR, for the transport-security
# test; see docs/security.md. It never touches the broker `up` starts or reuses.
#   infra/infra.sh secure-start DIR [SERVICE...] | secure-stop DIR
#
# `secure-start` runs a second, private broker from the same jars with TLS, SCRAM and
# ACLs (infra/kafka/secure.properties) in DIR, for the transport-security test; see
# docs/security.md. It never touches the broker `up` starts or reuses.
#
# Settings already in the environment win: RETENTION_KAFKA_BOOTSTRAP_SERVERS or
# KAFKA_BOOTSTRAP_SERVERS, RETENTION_DATABASE_URL or DATABASE_URL. Then, a broker or
# server this script started before is reused. With a Docker engine answering and
# INFRA_USE_DOCKER=1, docker compose provides both. Otherwise Kafka runs from Maven
# Central jars and PostgreSQL from Debian's package.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="$ROOT/.cache"
KAFKA_HOME="$CACHE/kafka"
KAFKA_LIB="$KAFKA_HOME/lib"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_PID="$KAFKA_HOME/broker.pid"
KAFKA_LOG="$KAFKA_HOME/broker.log"
KAFKA_VERSION=4.1.1
KAFKA_PORT=${INFRA_KAFKA_PORT:-19092}
KAFKA_CONTROLLER_PORT=${INFRA_KAFKA_CONTROLLER_PORT:-19093}
# What kafka_wait_ready asks, and with which client settings (the secured broker's differ).
KAFKA_PROBE_PORT=$KAFKA_PORT
KAFKA_PROBE_ARGS=()
# Appended to server.properties (a later key wins), and extra `kafka-storage format` args.
KAFKA_OVERLAYS=()
KAFKA_FORMAT_ARGS=()
# A broker restarted over many test topics (~15,000 partitions after a day of test runs)
# needs 90 s and more on a busy 2-core machine just to load its logs.
KAFKA_START_TIMEOUT=${INFRA_KAFKA_START_TIMEOUT:-300}
PG_STATE="$CACHE/postgres"
PG_PORT=${INFRA_PG_PORT:-5432}
PG_USER=retention
PG_PASSWORD=retention
PG_DATABASES=(retention retention_services)
ENV_FILE="$CACHE/infra.env"
# Fixed so a re-format after a wiped data dir cannot mismatch a stale meta.properties.
CLUSTER_ID=cmV0ZW50aW9uLWZhbm91dA

log() { printf '[infra] %s\n' "$*" >&2; }
die() { printf '[infra] ERROR: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE"

# ---------------------------------------------------------------- Kafka
kafka_env_override() { printf '%s' "${RETENTION_KAFKA_BOOTSTRAP_SERVERS:-${KAFKA_BOOTSTRAP_SERVERS:-}}"; }

kafka_running() { [[ -f "$KAFKA_PID" ]] && kill -0 "$(cat "$KAFKA_PID")" 2>/dev/null; }

java_opts() {
  printf '%s ' -Xms256m -Xmx768m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$ROOT/infra/kafka/log4j2.properties"
}

kafka_fetch() {
  if [[ -f "$KAFKA_LIB/kafka_2.13-$KAFKA_VERSION.jar" && -f "$KAFKA_LIB/.complete" ]]; then return; fi
  command -v java >/dev/null || die "java not found: install a Java 17+ JDK (Debian: openjdk-17-jre-headless)"
  command -v mvn >/dev/null || die "mvn not found: install Maven (Debian: maven)"
  log "fetching Kafka $KAFKA_VERSION jars from Maven Central into $KAFKA_LIB"
  rm -rf "$KAFKA_LIB"
  # The plugin version is pinned: Maven 3.8's super-POM would pick dependency-plugin 2.8.
  mvn -B -q -f "$ROOT/infra/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB" >&2 || die "Maven could not fetch the Kafka jars"
  touch "$KAFKA_LIB/.complete"
}

kafka_wait_ready() {
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  until grep -q "Kafka Server started" "$KAFKA_LOG" 2>/dev/null; do
    kafka_running || { tail -30 "$KAFKA_LOG" >&2; die "Kafka exited during start-up (log: $KAFKA_LOG)"; }
    ((SECONDS < deadline)) || { tail -30 "$KAFKA_LOG" >&2; die "Kafka not started after $KAFKA_START_TIMEOUT s (log: $KAFKA_LOG)"; }
    sleep 0.5
  done
  # The log line comes before the listener serves metadata to clients: ask it like a client.
  until java $(java_opts) -cp "$KAFKA_LIB/*" org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "127.0.0.1:$KAFKA_PROBE_PORT" "${KAFKA_PROBE_ARGS[@]}" --list >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "Kafka does not answer an admin client on 127.0.0.1:$KAFKA_PROBE_PORT"
    sleep 1
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A listener port inside the kernel's ephemeral range can be taken by any outgoing
# connection while the broker is down, and a restart then fails with "Address already
# in use" (seen with 39092 in a broker-restart test).
warn_ephemeral() {
  local range lo hi
  range=$(cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null) || return 0
  read -r lo hi <<<"$range"
  if (( $1 >= lo && $1 <= hi )); then
    log "WARNING: port $1 is in the ephemeral range $lo-$hi: a restart may find it taken; prefer a port below $lo"
  fi
}

kafka_start() {
  if kafka_running; then log "Kafka already running (pid $(cat "$KAFKA_PID"))"; return; fi
  if port_open "$KAFKA_PORT"; then
    # Another checkout's broker (or the user's): reuse it, as with PostgreSQL.
    log "a broker not started by this checkout already listens on 127.0.0.1:$KAFKA_PORT: reusing it"
    return
  fi
  port_open "$KAFKA_CONTROLLER_PORT" && die "port $KAFKA_CONTROLLER_PORT is taken by another process: \
set INFRA_KAFKA_PORT / INFRA_KAFKA_CONTROLLER_PORT to free ports"
  warn_ephemeral "$KAFKA_PORT"; warn_ephemeral "$KAFKA_CONTROLLER_PORT"
  kafka_launch
}

# Writes server.properties (template + overlays), formats the storage once, starts the
# broker in the background and waits until it answers.
kafka_launch() {
  kafka_fetch
  mkdir -p "$KAFKA_DATA"
  local template
  for template in "$ROOT/infra/kafka/server.properties" "${KAFKA_OVERLAYS[@]}"; do
    sed -e "s#@DATA_DIR@#$KAFKA_DATA#" -e "s#@PORT@#$KAFKA_PORT#g" \
      -e "s#@CONTROLLER_PORT@#$KAFKA_CONTROLLER_PORT#g" \
      -e "s#@TLS_PORT@#${SECURE_TLS_PORT:-}#g" -e "s#@SECURE_DIR@#${SECURE_DIR:-}#g" "$template"
  done > "$KAFKA_HOME/server.properties"
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    # --standalone goes with controller.quorum.bootstrap.servers (dynamic quorum).
    java $(java_opts) -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format --standalone \
      -t "$CLUSTER_ID" -c "$KAFKA_HOME/server.properties" "${KAFKA_FORMAT_ARGS[@]}" >&2 \
      || die "kafka storage format failed"
  fi
  local started=$SECONDS
  : > "$KAFKA_LOG"
  # setsid: the broker must outlive the shell (and make) that started it.
  setsid nohup java $(java_opts) -cp "$KAFKA_LIB/*" kafka.Kafka "$KAFKA_HOME/server.properties" \
    >> "$KAFKA_LOG" 2>&1 < /dev/null &
  echo $! > "$KAFKA_PID"
  kafka_wait_ready
  log "Kafka $KAFKA_VERSION ready on 127.0.0.1:$KAFKA_PORT in $((SECONDS - started)) s (pid $(cat "$KAFKA_PID"))"
}

kafka_stop() {
  local sig=TERM
  [[ "${1:-}" == "--kill" ]] && sig=KILL
  if ! kafka_running; then rm -f "$KAFKA_PID"; return; fi
  local pid; pid=$(cat "$KAFKA_PID")
  log "stopping Kafka (pid $pid, SIG$sig)"
  kill "-$sig" "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$KAFKA_PID"
}

# ---------------------------------------------------------------- secured Kafka
# A private broker in DIR: its own certificates, users, data, pid and log, on its own ports.
SECURE_PORT=${INFRA_SECURE_PORT:-19192}
SECURE_TLS_PORT=${INFRA_SECURE_TLS_PORT:-19193}
SECURE_CONTROLLER_PORT=${INFRA_SECURE_CONTROLLER_PORT:-19194}
SECURE_CERT_DAYS=30

secure_use() {
  SECURE_DIR=$1
  KAFKA_HOME=$SECURE_DIR KAFKA_DATA=$SECURE_DIR/data
  KAFKA_PID=$SECURE_DIR/broker.pid KAFKA_LOG=$SECURE_DIR/broker.log
  KAFKA_PORT=$SECURE_PORT KAFKA_CONTROLLER_PORT=$SECURE_CONTROLLER_PORT
  KAFKA_PROBE_PORT=$SECURE_TLS_PORT
  KAFKA_PROBE_ARGS=(--command-config "$SECURE_DIR/admin.properties")
  KAFKA_OVERLAYS=("$ROOT/infra/kafka/secure.properties")
}

# A CA, and keys and certificates it signs for the broker (server and inter-broker client)
# and the admin tool; EC P-256, so generating them takes milliseconds.
secure_certs() {
  local dir=$SECURE_DIR name
  command -v openssl >/dev/null || die "openssl not found: install it (Debian: openssl)"
  [[ -f "$dir/ca.pem" ]] && return
  (
    umask 077
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$dir/ca.key" -out "$dir/ca.pem" -days "$SECURE_CERT_DAYS" \
      -subj "/CN=retention-fanout test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    for name in broker admin; do
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" -subj "/CN=$name"
      printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=IP:127.0.0.1,DNS:localhost" \
        "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" > "$dir/$name.ext"
      openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -set_serial "0x$(openssl rand -hex 8)" -days "$SECURE_CERT_DAYS" \
        -extfile "$dir/$name.ext" -out "$dir/$name.pem"
      rm -f "$dir/$name.csr" "$dir/$name.ext"
    done
    # Kafka's PEM key store: the PKCS#8 key, then the certificate chain.
    cat "$dir/broker.key" "$dir/broker.pem" > "$dir/broker.keystore.pem"
    cat "$dir/admin.key" "$dir/admin.pem" > "$dir/admin.keystore.pem"
  ) 2> "$dir/openssl.log" || { cat "$dir/openssl.log" >&2; die "openssl could not make the certificates"; }
}

# Client settings per principal: `<user>.env` (RETENTION_KAFKA_* for our clients, SCRAM
# over SASL_SSL) and `admin.env` / `admin.properties` (mutual TLS, a super user).
secure_client_files() {
  local dir=$SECURE_DIR user password
  cat > "$dir/admin.env" <<EOF
RETENTION_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$SECURE_TLS_PORT
RETENTION_KAFKA_SECURITY_PROTOCOL=SSL
RETENTION_KAFKA_SSL_CAFILE=$dir/ca.pem
RETENTION_KAFKA_SSL_CERTFILE=$dir/admin.pem
RETENTION_KAFKA_SSL_KEYFILE=$dir/admin.key
EOF
  cat > "$dir/admin.properties" <<EOF
security.protocol=SSL
ssl.truststore.type=PEM
ssl.truststore.location=$dir/ca.pem
ssl.keystore.type=PEM
ssl.keystore.location=$dir/admin.keystore.pem
EOF
  for user in "$@"; do
    password=$(openssl rand -hex 16)
    (umask 077; cat > "$dir/$user.env" <<EOF
RETENTION_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$SECURE_PORT
RETENTION_KAFKA_SECURITY_PROTOCOL=SASL_SSL
RETENTION_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
RETENTION_KAFKA_SASL_USERNAME=$user
RETENTION_KAFKA_SASL_PASSWORD=$password
RETENTION_KAFKA_SSL_CAFILE=$dir/ca.pem
EOF
    )
    KAFKA_FORMAT_ARGS+=(--add-scram "SCRAM-SHA-512=[name=$user,password=$password]")
  done
}

# The ACLs of coordinator/kafka_acls.py (one list for docs, operators and this broker),
# created by the project's own CLI as the admin principal; they live in the cluster metadata.
secure_acls() {
  local retention=${INFRA_RETENTION:-$ROOT/.venv/bin/retention} args=() name
  [[ -x "$retention" ]] || die "$retention not found: run make venv (it creates the ACLs)"
  for name in "$@"; do args+=(--service "$name"); done
  (
    for name in $(compgen -e | grep '^RETENTION_KAFKA_' || true); do unset "$name"; done
    set -a; source "$SECURE_DIR/admin.env"; set +a
    "$retention" kafka acls --apply "${args[@]}"
  ) || die "creating the ACLs failed"
  touch "$SECURE_DIR/.acls"
}

secure_start() {
  local dir=${1:-}
  [[ -n "$dir" ]] || die "usage: $0 secure-start DIR [SERVICE...]"
  shift
  mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
  secure_use "$dir"
  if kafka_running; then log "secured Kafka already running in $dir (pid $(cat "$KAFKA_PID"))"; return; fi
  local port
  for port in "$SECURE_PORT" "$SECURE_TLS_PORT" "$SECURE_CONTROLLER_PORT"; do
    port_open "$port" && die "port $port is taken: set INFRA_SECURE_PORT / INFRA_SECURE_TLS_PORT / INFRA_SECURE_CONTROLLER_PORT to free ports"
  done
  secure_certs
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    # Users exist from the format on: SCRAM credentials are cluster metadata.
    secure_client_files coordinator "$@"
  fi
  kafka_launch
  [[ -f "$SECURE_DIR/.acls" ]] || secure_acls "$@"
  log "secured Kafka: SASL_SSL 127.0.0.1:$SECURE_PORT, mutual TLS 127.0.0.1:$SECURE_TLS_PORT; client settings in $dir/*.env"
}

secure_stop() {
  local dir=${1:-}
  [[ -n "$dir" && -d "$dir" ]] || die "usage: $0 secure-stop DIR [--kill]"
  secure_use "$(cd "$dir" && pwd)"
  kafka_stop "${2:-}"
}

# ---------------------------------------------------------------- PostgreSQL
pg_env_override() { printf '%s' "${RETENTION_DATABASE_URL:-${DATABASE_URL:-}}"; }

pg_answers() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT" 2>/dev/null; }

pg_cluster() { pg_lsclusters --no-header 2>/dev/null | awk -v p="$PG_PORT" '$3 == p {print $1" "$2; exit}'; }

as_postgres() {
  if [[ $(id -u) == 0 ]]; then su postgres -c "$1"; else sudo -u postgres bash -c "$1"; fi
}

pg_install() {
  command -v pg_ctlcluster >/dev/null && [[ -n "$(pg_cluster)" ]] && return
  [[ $(id -u) == 0 ]] || die "PostgreSQL is not installed and this is not root: install Debian's postgresql package or set RETENTION_DATABASE_URL"
  log "installing Debian's postgresql package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 && apt-get install -y -q postgresql >&2 || die "apt-get install postgresql failed"
  [[ -n "$(pg_cluster)" ]] || die "no PostgreSQL cluster on port $PG_PORT after install (pg_lsclusters)"
}

pg_start() {
  if pg_answers; then
    log "PostgreSQL already answers on 127.0.0.1:$PG_PORT: reusing it"
  else
    pg_install
    local ver name; read -r ver name <<< "$(pg_cluster)"
    # The packaged cluster runs as the postgres user; PostgreSQL refuses to run as root.
    pg_ctlcluster "$ver" "$name" start || die "pg_ctlcluster $ver $name start failed"
    for _ in $(seq 1 60); do pg_answers && break; sleep 0.5; done
    pg_answers || die "PostgreSQL did not come up on port $PG_PORT"
    mkdir -p "$PG_STATE"
    head -1 "/var/lib/postgresql/$ver/$name/postmaster.pid" > "$PG_STATE/started.pid"
    echo "$ver $name" > "$PG_STATE/cluster"
    log "PostgreSQL $ver/$name started (pid $(cat "$PG_STATE/started.pid"))"
  fi
  pg_provision
}

pg_provision() {
  if PGPASSWORD=$PG_PASSWORD psql -qAtX -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres \
      -c 'select 1' >/dev/null 2>&1; then
    :
  elif [[ -n "$(pg_cluster)" ]]; then
    as_postgres "psql -qAtX -p $PG_PORT -d postgres -c \"CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD'\"" >&2 \
      || die "could not create role $PG_USER"
  else
    die "PostgreSQL on port $PG_PORT refuses $PG_USER/$PG_PASSWORD and is not a local cluster: set RETENTION_DATABASE_URL"
  fi
  local db
  for db in "${PG_DATABASES[@]}"; do
    if [[ -z $(PGPASSWORD=$PG_PASSWORD psql -qAtX -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres \
        -c "select 1 from pg_database where datname = '$db'") ]]; then
      PGPASSWORD=$PG_PASSWORD createdb -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$db" || die "createdb $db failed"
    fi
  done
}

pg_stop() {
  [[ -f "$PG_STATE/started.pid" ]] || return 0
  local ver name pid; read -r ver name < "$PG_STATE/cluster"; pid=$(cat "$PG_STATE/started.pid")
  local current; current=$(head -1 "/var/lib/postgresql/$ver/$name/postmaster.pid" 2>/dev/null || true)
  if [[ "$current" == "$pid" ]]; then
    log "stopping PostgreSQL $ver/$name (pid $pid)"
    pg_ctlcluster "$ver" "$name" stop || true
  fi
  rm -f "$PG_STATE/started.pid" "$PG_STATE/cluster"
}

# ---------------------------------------------------------------- Docker
docker_answers() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

# ---------------------------------------------------------------- commands
write_env() {
  local kafka=$1 db=$2
  cat > "$ENV_FILE" <<EOF
# Written by infra/infra.sh; read by the Makefile, the tests and the demo.
RETENTION_KAFKA_BOOTSTRAP_SERVERS=$kafka
RETENTION_DATABASE_URL=$db
EOF
  log "settings written to $ENV_FILE"
}

cmd_up() {
  local kafka db
  kafka=$(kafka_env_override); db=$(pg_env_override)
  if [[ -z "$kafka$db" && "${INFRA_USE_DOCKER:-0}" == 1 ]] && docker_answers; then
    log "Docker engine answers: docker compose up kafka postgres"
    docker compose -f "$ROOT/docker-compose.yml" up -d --wait kafka postgres >&2
    write_env "127.0.0.1:19092" "postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:5432/retention"
    return
  fi
  if [[ -n "$kafka" ]]; then log "using Kafka from the environment: $kafka"; else
    kafka_start; kafka="127.0.0.1:$KAFKA_PORT"; fi
  KAFKA_BOOTSTRAP=$kafka
  if [[ -n "$db" ]]; then log "using PostgreSQL from the environment"; else
    pg_start; db="postgresql://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/retention"; fi
  write_env "$kafka" "$db"
  cmd_versions
}

cmd_versions() {
  local pgv
  pgv=$(PGPASSWORD=$PG_PASSWORD psql -qAtX -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres \
    -c 'show server_version' 2>/dev/null || echo "unknown (external)")
  if kafka_running; then log "Kafka $KAFKA_VERSION (KRaft, started by this project, pid $(cat "$KAFKA_PID"))"
  else log "Kafka: not started by this checkout (${KAFKA_BOOTSTRAP:-$(kafka_env_override)})"; fi
  log "PostgreSQL $pgv"
}

cmd_down() {
  kafka_stop
  pg_stop
  rm -f "$ENV_FILE"
}

cmd_status() {
  if kafka_running; then echo "kafka: running (pid $(cat "$KAFKA_PID"), 127.0.0.1:$KAFKA_PORT)"
  else echo "kafka: not started by this project"; fi
  if pg_answers; then echo "postgres: answers on 127.0.0.1:$PG_PORT"
  else echo "postgres: not answering on 127.0.0.1:$PG_PORT"; fi
  if [[ -f "$PG_STATE/started.pid" ]]; then echo "postgres: started by this project (pid $(cat "$PG_STATE/started.pid"))"; fi
  [[ -f "$ENV_FILE" ]] && cat "$ENV_FILE"
  return 0
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  versions) cmd_versions ;;
  kafka-start) kafka_start ;;
  kafka-fetch) kafka_fetch ;;
  kafka-stop) shift; kafka_stop "${1:-}" ;;
  secure-start) shift; secure_start "$@" ;;
  secure-stop) shift; secure_stop "$@" ;;
  *) echo "usage: $0 up|down|status|versions|kafka-start|kafka-stop [--kill]|kafka-fetch|secure-start DIR [SERVICE...]|secure-stop DIR [--kill]" >&2; exit 2 ;;
esac
