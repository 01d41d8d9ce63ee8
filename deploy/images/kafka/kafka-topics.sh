#!/bin/bash
# The one admin tool the compose healthcheck uses, at the path the apache/kafka image has it.
exec java -Xmx128m -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  -cp '/opt/kafka/libs/*' org.apache.kafka.tools.TopicCommand "$@"
