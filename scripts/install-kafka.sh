#!/usr/bin/env bash
# Fetches Apache Kafka's jars from Maven Central into the tool cache (once per version).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

dest="$PSK_CACHE/kafka-$KAFKA_VERSION"
[[ -f $dest/.complete ]] && exit 0
command -v mvn >/dev/null || die "Maven (mvn) is required to fetch Kafka's jars"
command -v java >/dev/null || die "Java 17 is required to run Kafka"
log "fetching Apache Kafka $KAFKA_VERSION from Maven Central"
rm -rf "$dest" && mkdir -p "$dest/lib"
mvn -q -B -f "$(dirname "$0")/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
  dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dest/lib"
# Listing one member fails when it is absent (no pipe: grep -q would SIGPIPE unzip).
unzip -l "$dest/lib/kafka_2.13-$KAFKA_VERSION.jar" kafka/Kafka.class >/dev/null 2>&1 \
  || die "kafka_2.13-$KAFKA_VERSION.jar has no kafka.Kafka main class"
touch "$dest/.complete"
