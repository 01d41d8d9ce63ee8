#!/bin/bash
# Writes server.properties, formats the KRaft storage once, then runs the broker.
#
# With no KAFKA_* setting in the environment, the properties are infra/kafka/server.properties
# (what `make infra-up` runs), on 127.0.0.1:$BROKER_PORT with its controller on
# 127.0.0.1:$CONTROLLER_PORT. With KAFKA_* settings, as the apache/kafka image reads them
# (KAFKA_FOO_BAR -> foo.bar; __ -> _; ___ -> -), those settings alone are the properties:
# docker-compose.yml configures Kafka that way. Data stays in the container, so a `docker
# start` after a kill or a stop finds the same topics and offsets.
set -euo pipefail

KAFKA=/opt/kafka
PROPS=$KAFKA/config/run.properties
DATA=${KAFKA_DATA_DIR:-/var/lib/kafka/data}
# Fixed, as in infra/infra.sh: a restart must not find a mismatched meta.properties.
CLUSTER_ID=${CLUSTER_ID:-cmV0ZW50aW9uLWZhbm91dA}
NOT_PROPERTIES=" KAFKA_HEAP_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_OPTS KAFKA_LOG4J_OPTS KAFKA_DATA_DIR "

settings=$(env | grep -E '^KAFKA_[A-Z0-9_]+=' | while IFS='=' read -r name value; do
  [[ "$NOT_PROPERTIES" == *" $name "* ]] && continue
  key=${name#KAFKA_}; key=${key,,}; key=${key//___/-}; key=${key//__/@}; key=${key//_/.}; key=${key//@/_}
  printf '%s=%s\n' "$key" "$value"
done)

mkdir -p "$DATA"
if [[ -n "$settings" ]]; then
  printf '%s\n' "$settings" >"$PROPS"
  grep -q '^log\.dirs=' "$PROPS" || echo "log.dirs=$DATA" >>"$PROPS"
else
  sed -e "s#@DATA_DIR@#$DATA#" -e "s#@PORT@#$BROKER_PORT#g" -e "s#@CONTROLLER_PORT@#$CONTROLLER_PORT#g" \
    "$KAFKA/config/server.properties" >"$PROPS"
fi

java_run() {
  # shellcheck disable=SC2086  # the *_OPTS are word lists
  exec java $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$KAFKA/config/log4j2.properties" ${KAFKA_OPTS:-} -cp "$KAFKA/libs/*" "$@"
}

log_dir=$(sed -n 's/^log\.dirs=//p' "$PROPS" | tail -1 | cut -d, -f1)
if [[ ! -f "$log_dir/meta.properties" ]]; then
  # A static quorum (controller.quorum.voters) is formatted as is; a dynamic one standalone.
  standalone=--standalone
  grep -q '^controller\.quorum\.voters=' "$PROPS" && standalone=
  (java_run kafka.tools.StorageTool format $standalone -t "$CLUSTER_ID" -c "$PROPS")
fi
java_run kafka.Kafka "$PROPS"
