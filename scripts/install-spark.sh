#!/usr/bin/env bash
# Install what keel's Spark batch engine and its tests need, idempotently:
#   * pyspark + delta-spark (keel's `spark` extra) into the environment of $PYTHON;
#   * the Delta Lake jars from Maven Central into .cache/spark/jars (git-ignored), fetched with mvn on a
#     generated pom, keeping only the jars pyspark does not ship already.
# keel.batch.spark passes .cache/spark/jars/*.jar to Spark as spark.jars (KEEL_SPARK_JARS overrides the folder).
# spark.jars.packages is not used: with Spark's default Ivy settings it fails or hangs on this network.
# delta-spark on Maven Central lags PyPI (4.4.0 there, 4.4.1 on PyPI): both are pinned to the same version.
set -euo pipefail

DELTA_VERSION="${DELTA_VERSION:-4.4.0}"
SPARK_MINOR="4.2"       # the Spark minor of pyspark 4.2.x; Delta's Maven artifact carries it in its name
PY="${PYTHON:-python3}"  # the interpreter whose environment gets pyspark (make passes the venv's)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$ROOT/.cache/spark"
JARS="$CACHE/jars"
STAMP="$JARS/.version"

apt_install() {  # a missing Debian package, when this machine can install one
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}
command -v java >/dev/null 2>&1 || apt_install openjdk-17-jre-headless
if ! command -v java >/dev/null 2>&1; then
  echo "install-spark: java not found; Spark $SPARK_MINOR needs Java 17+ (apt-get install openjdk-17-jre-headless)" >&2
  exit 1
fi

# pandas < 3, as the spark extra pins it: pyspark 4.2 warns that it does not yet fully support pandas 3
if ! "$PY" -c "import pyspark, delta, sqlglot, pandas; assert pyspark.__version__.startswith('$SPARK_MINOR.'); assert int(pandas.__version__.split('.')[0]) < 3" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "pyspark[sql]>=$SPARK_MINOR,<4.3" "delta-spark==$DELTA_VERSION" "sqlglot>=30.0" "pandas>=2.2,<3"
fi
PYSPARK_JARS="$("$PY" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$DELTA_VERSION+$SPARK_MINOR" ]] && compgen -G "$JARS/delta-spark_*.jar" >/dev/null; then
  echo "install-spark: Delta $DELTA_VERSION jars already in $JARS"
else
  command -v mvn >/dev/null 2>&1 || apt_install maven
  if ! command -v mvn >/dev/null 2>&1; then
    echo "install-spark: mvn not found; install it (apt-get install maven) and run again" >&2
    exit 1
  fi
  mkdir -p "$CACHE"
  cat >"$CACHE/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.keel</groupId>
  <artifactId>spark-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>io.delta</groupId><artifactId>delta-spark_${SPARK_MINOR}_2.13</artifactId><version>$DELTA_VERSION</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$JARS.tmp" "$JARS.all"
  mvn -B -q -f "$CACHE/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$JARS.all" -DincludeScope=runtime
  mkdir -p "$JARS.tmp"
  # Only what pyspark lacks: a second copy of a jar pyspark ships (another version of the same artifact)
  # on the classpath is a conflict waiting to happen.
  for jar in "$JARS.all"/*.jar; do
    artifact="$(basename "$jar" | sed -E 's/-[0-9][^-]*(-[A-Za-z0-9.]+)?\.jar$//')"
    if ! compgen -G "$PYSPARK_JARS/$artifact-[0-9]*.jar" >/dev/null; then
      cp "$jar" "$JARS.tmp/"
    fi
  done
  rm -rf "$JARS" "$JARS.all"
  mv "$JARS.tmp" "$JARS"
  echo "$DELTA_VERSION+$SPARK_MINOR" >"$STAMP"
  echo "install-spark: Delta $DELTA_VERSION jars in $JARS ($(ls "$JARS" | wc -l) files)"
fi
echo "install-spark: pyspark $("$PY" -c 'import pyspark; print(pyspark.__version__)'), delta-spark $DELTA_VERSION"
