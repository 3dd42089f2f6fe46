"""A real Spark for the tests: pyspark in local mode (local[2]) with the Delta jars, no mock.

The jars come from ``scripts/install-spark.sh`` (into ``.cache/spark/jars``; KEEL_SPARK_JARS overrides the
folder), pyspark from the `spark` extra it installs. Starting a session takes ~15 s, so a test module
shares one (``spark_session``, module scope, stopped at the module's end) and each test opens the engine
over its own lake with ``spark_batch(session, lake)``. Memory stays modest (1 GB driver) and shuffles
use 2 partitions: other tests share the machine's 2 cores. If Spark is not installed the fixture FAILS,
naming the install script.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPARK_JARS = Path(os.environ.get("KEEL_SPARK_JARS", ROOT / ".cache" / "spark" / "jars"))
INSTALL_HINT = "run `bash scripts/install-spark.sh` (pip-installs the spark extra, fetches the Delta jars with mvn)"
URL = "spark://local[2]"
CONF = {"spark.driver.memory": "1g", "spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"}


def start_spark() -> Any:
    """A local[2] Spark session with the cached Delta jars, or a test failure naming the install script."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        pytest.fail(f"pyspark is not installed: {INSTALL_HINT}")
    if not any(SPARK_JARS.glob("delta-spark_*.jar")):
        pytest.fail(f"no Delta jars in {SPARK_JARS}: {INSTALL_HINT}")
    if shutil.which("java") is None:
        pytest.fail("no `java` on PATH: Spark needs Java 17+ (apt-get install openjdk-17-jre-headless)")
    from keel.batch.spark import spark_session

    return spark_session(URL, jars=SPARK_JARS, conf=CONF)


@pytest.fixture(scope="module")
def spark_session() -> Iterator[Any]:
    session = start_spark()
    yield session
    session.stop()


def spark_batch(session: Any, lake: Any) -> Any:
    from keel.batch.spark import SparkBatch

    return SparkBatch(session, lake)
