#!/usr/bin/env bash
# Install what keel's Kafka engine and its tests need, idempotently:
#   * Apache Kafka's broker, storage tool and perf tools as jars from Maven Central into
#     .cache/kafka/lib (git-ignored), fetched with mvn on a generated pom;
#   * the confluent-kafka Python client (keel's `kafka` extra).
# The harness (tests/harness/kafka.py) runs `java -cp '.cache/kafka/lib/*' kafka.Kafka`.
# Override the version with KAFKA_VERSION=...; a different version re-fetches.
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
PY="${PYTHON:-python3}"  # the interpreter whose environment gets confluent-kafka (make passes the venv's)
LOG4J_VERSION="2.25.5"  # the log4j-core that kafka_2.13 $KAFKA_VERSION depends on
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/kafka"
LIB="$CACHE/lib"
STAMP="$LIB/.version"

apt_install() {  # a missing Debian package, when this machine can install one
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}
command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
if ! command -v java >/dev/null 2>&1; then
  echo "install-kafka: java not found; Kafka $KAFKA_VERSION needs Java 17+ (apt-get install openjdk-17-jre-headless)" >&2
  exit 1
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$KAFKA_VERSION+$LOG4J_VERSION" ]] && compgen -G "$LIB/kafka_2.13-*.jar" >/dev/null \
   && compgen -G "$LIB/kafka-tools-[0-9]*.jar" >/dev/null; then
  echo "install-kafka: Kafka $KAFKA_VERSION jars already in $LIB"
else
  command -v mvn >/dev/null 2>&1 || apt_install maven
  if ! command -v mvn >/dev/null 2>&1; then
    echo "install-kafka: mvn not found; install it (apt-get install maven) and run again" >&2
    exit 1
  fi
  mkdir -p "$CACHE"
  cat >"$CACHE/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.keel</groupId>
  <artifactId>kafka-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- The broker logs through slf4j 1.x; this binds it to the log4j2 core Kafka already ships. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$LIB.tmp"
  mvn -B -q -f "$CACHE/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$LIB.tmp" -DincludeScope=runtime
  rm -rf "$LIB"
  mv "$LIB.tmp" "$LIB"
  echo "$KAFKA_VERSION+$LOG4J_VERSION" >"$STAMP"
  echo "install-kafka: Kafka $KAFKA_VERSION jars in $LIB ($(ls "$LIB" | wc -l) files)"
fi

if ! "$PY" -c "import confluent_kafka" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "confluent-kafka>=2.4"
fi
echo "install-kafka: confluent-kafka $("$PY" -c 'import confluent_kafka; print(confluent_kafka.version()[0])')"
