"""The Spark batch engine: pyspark + delta-spark, local (`spark://local[N]`) or a cluster (`spark://HOST:PORT`).

Queries are DuckDB SQL translated to Spark SQL (`keel.batch.translate`). Before each query the lake
tables its text names are (re)registered as temporary views over their Delta folders, at their latest
version, the way `keel.lake.sql.SqlSession` binds them for DuckDB. `map_groups` runs the query and then
Spark's Arrow-native grouped map (``groupBy(key).applyInArrow``): the function gets each group as an
Arrow table in a Python worker, the same body that runs in-process on DuckDB.

The session runs in UTC (as the DuckDB session does) and needs the Delta jars: `jars` names them (a
folder of jars, as `scripts/install-spark.sh` leaves in .cache/spark/jars, or a list of files); without
it they must already be on the cluster's class path. Lakes on local disk only for now (S3 would need
hadoop-aws on the class path).
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import polars as pl
import pyarrow as pa

from keel.batch.base import FrameKind, GroupFunction, conform_result, group_keys
from keel.batch.translate import to_spark
from keel.errors import BackendError, ConfigError, NotFoundError, QueryError
from keel.lake.base import Lake
from keel.schemes import file_path, require

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MISSING_TABLE = re.compile(r"The table or view `?([^`\s]+?)`? cannot be found", re.IGNORECASE)
_MISSING_COLUMN = re.compile(r"with name `?([^`\s]+?)`? cannot be resolved", re.IGNORECASE)
_DELTA_CLASS = "io.delta.sql.DeltaSparkSessionExtension"
_LOCAL_MASTER = re.compile(r"local(\[(\d+|\*)(,\d+)?\])?")


@runtime_checkable
class _HasUrl(Protocol):
    url: str


def open_spark_batch(url: str, *, lake: Lake, jars: str | Path | Sequence[str | Path] | None = None,
                     conf: Mapping[str, str] | None = None) -> SparkBatch:
    """Start (or join) the Spark session for `url` over `lake`; `conf` adds Spark settings."""
    return SparkBatch(spark_session(url, jars=jars, conf=conf), lake)


def spark_session(url: str, *, jars: str | Path | Sequence[str | Path] | None = None,
                  conf: Mapping[str, str] | None = None) -> Any:
    """The process's Spark session for batch URL `url`, with Delta and keel's settings (see the module
    docstring); MissingExtraError without pyspark, BackendError naming the URL when Spark cannot start."""
    require("pyspark", "Spark batch", "spark")
    master = spark_master(url)
    settings = {
        "spark.sql.extensions": _DELTA_CLASS,
        "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }
    if _LOCAL_MASTER.fullmatch(master):
        # Local mode: bind loopback only, and let Python workers run this interpreter with this
        # process's import path, so a job's function imports in the worker as it does here.
        settings |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                     "spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
                     "spark.executorEnv.PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    else:
        _check_reachable(url, master)
    jar_files = _jar_files(jars)
    if jar_files:
        settings["spark.jars"] = ",".join(jar_files)
    settings |= dict(conf or {})
    return _start_session(url, master, settings)


def _check_reachable(url: str, master: str) -> None:
    """Fail fast, naming the URL, when no master listens: Spark itself retries for a minute, then logs."""
    errors = []
    for address in master[len("spark://"):].split(","):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            return
        except OSError as exc:
            errors.append(f"{address}: {exc.strerror or exc}")
    raise BackendError(f"no Spark master answers at {url!r} ({'; '.join(errors)}): start the master, "
                       "or fix the `batch` entry of the profile")


def spark_master(url: str) -> str:
    """The Spark master of a batch URL: `spark://local[2]` -> local[2]; `spark://HOST:PORT` as is."""
    rest = url.split("://", 1)[1].rstrip("/")
    if _LOCAL_MASTER.fullmatch(rest):
        return rest
    if not re.fullmatch(r"[A-Za-z0-9.\-]+:\d+(,[A-Za-z0-9.\-]+:\d+)*", rest):
        raise ConfigError(f"batch URL {url!r}: write 'spark://local[2]' (local mode, 2 cores) or "
                          "'spark://HOST:7077' (a standalone cluster's master)")
    return f"spark://{rest}"


def _jar_files(jars: str | Path | Sequence[str | Path] | None) -> list[str]:
    if jars is None:
        return []
    if isinstance(jars, str | Path):
        folder = Path(jars)
        if not folder.is_dir():
            raise ConfigError(f"Spark jars folder {str(folder)!r} does not exist: run scripts/install-spark.sh")
        files = sorted(str(p) for p in folder.glob("*.jar"))
        if not any(Path(f).name.startswith("delta-spark_") for f in files):
            raise ConfigError(f"no Delta jars (delta-spark_*.jar) in {str(folder)!r}: run scripts/install-spark.sh")
        return files
    return [str(j) for j in jars]


def _start_session(url: str, master: str, settings: Mapping[str, str]) -> Any:
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName("keel")
    for name, value in settings.items():
        builder = builder.config(name, value)
    try:
        session = builder.getOrCreate()
        session.sql("SELECT 1").collect()  # a cluster that accepted the app but gives it no executor fails here
    except Exception as exc:  # py4j and Spark raise many kinds; each means "no Spark at this URL"
        raise BackendError(f"could not start a Spark session at {url!r} (master {master}): "
                           f"{_first_line(exc)}; check that the master is up and reachable, "
                           "or fix the `batch` entry of the profile") from exc
    _check_delta(session, url)
    return session


def _check_delta(session: Any, url: str) -> None:
    """ConfigError with the fix when Spark has no Delta classes: it only logs a missing extension."""
    jvm = session._jvm
    try:
        jvm.java.lang.Class.forName(_DELTA_CLASS, False, jvm.org.apache.spark.util.Utils.getContextOrSparkClassLoader())
    except Exception as exc:  # py4j's Py4JJavaError wrapping ClassNotFoundException
        raise ConfigError(f"the Spark session at {url!r} has no Delta Lake jars ({_DELTA_CLASS} not found): run "
                          "scripts/install-spark.sh and pass its .cache/spark/jars as `jars`, or put "
                          "delta-spark on the cluster's class path") from exc


class SparkBatch:
    """The `keel.batch.base.BatchEngine` contract on Spark; see the module docstring."""

    name = "spark"

    def __init__(self, session: Any, lake: Lake) -> None:
        self.session = session
        self.lake = lake
        self._known: set[str] | None = None

    def query(self, sql: str) -> pa.Table:
        result: pa.Table = self._collect(self._frame(sql), sql)
        return result

    def map_groups(self, sql: str, key: str | Sequence[str], fn: GroupFunction, schema: pa.Schema,
                   *, frames: FrameKind = "arrow") -> pa.Table:
        from pyspark.sql.pandas.types import from_arrow_schema

        frame = self._frame(sql)
        keys = group_keys(key, frame.columns)
        what = f"group function {getattr(fn, '__name__', fn)!r}"

        def each_group(group: pa.Table) -> pa.Table:
            return conform_result(fn(pl.from_arrow(group) if frames == "polars" else group), schema, what)

        grouped = frame.groupBy(*keys).applyInArrow(each_group, from_arrow_schema(schema))
        return self._collect(grouped, sql).cast(schema)

    def tables(self) -> list[str]:
        return self.lake.list_tables()

    def close(self) -> None:
        """Drop the views this engine registered; the session itself stays for the process (Spark allows one)."""
        for name in self._known or ():
            self.session.catalog.dropTempView(name)

    # -- internals -----------------------------------------------------------------------------

    def _frame(self, sql: str) -> Any:
        spark_sql = to_spark(sql)
        self._bind(sql)
        from pyspark.errors import PySparkException

        try:
            return self.session.sql(spark_sql)
        except PySparkException as exc:
            raise self._translate_error(exc, sql) from exc

    def _collect(self, frame: Any, sql: str) -> pa.Table:
        from pyspark.errors import PySparkException

        try:
            result = frame.toArrow()
        except PySparkException as exc:
            raise self._translate_error(exc, sql) from exc
        except Exception as exc:  # py4j: the JVM or the cluster went away
            raise BackendError(f"Spark failed running the query: {_first_line(exc)}") from exc
        # Spark marks columns it proves non-null (counts, row_number); DuckDB's are all nullable, and a
        # lake table created from a result must not refuse the nulls a later run brings.
        return result.cast(pa.schema([f.with_nullable(True) for f in result.schema], metadata=result.schema.metadata))

    def _bind(self, sql: str) -> None:
        """Register every lake table `sql` names as a temporary view of its latest Delta version."""
        self._known = set(self.lake.list_tables())
        for name in sorted(set(_IDENTIFIER.findall(sql)) & self._known):
            self.session.read.format("delta").load(self._path(name)).createOrReplaceTempView(name)

    def _path(self, name: str) -> str:
        url = self.lake.url if isinstance(self.lake, _HasUrl) else ""
        if not url.startswith("file://"):
            raise ConfigError(f"the Spark batch engine reads lakes on local disk (file://) for now, not "
                              f"{url or type(self.lake).__name__!r}: use batch = \"duckdb://\" for this lake")
        return str(file_path(url) / name)  # the Delta lake keeps table `name` in the folder `name` of its root

    def _translate_error(self, exc: Exception, sql: str) -> Exception:
        text = str(exc)
        table = _MISSING_TABLE.search(text)
        if table:
            known = ", ".join(sorted(self._known or ())) or "none"
            return NotFoundError(f"no table {table.group(1)} in the lake; tables: {known}")
        column = _MISSING_COLUMN.search(text)
        if column:
            return NotFoundError(f"no column {column.group(1)!r} ({_first_line(exc)})")
        return QueryError(f"Spark refused the query: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
