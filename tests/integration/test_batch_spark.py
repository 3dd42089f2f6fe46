"""Spark for real (pyspark local[2] + delta-spark, no mock) against DuckDB over the same Delta tables written
by keel's lake: the shop's two jobs' SQL, a join/window/null/decimal/timestamp query with an empty input and
grouped Python functions give the rows written out by hand, on both engines (order-insensitive)."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import pyarrow as pa
import pytest

from keel.batch import open_batch
from keel.batch.spark import SparkBatch, spark_master
from keel.errors import BackendError, ConfigError, NotFoundError, UntranslatableError
from keel.lake import open_lake
from keel.lake.base import Lake
from keel.batch.spark import spark_session as start_session
from tests.harness.spark import CONF, SPARK_JARS, spark_batch, spark_session  # noqa: F401 (a fixture)
from tests.unit.test_batch_duckdb import (PER_USER, PER_USER_ROWS, QUERIES, expected, normalized,
                                          per_user_arrow, per_user_polars, write_fixture)

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = open_lake(f"file://{tmp_path_factory.mktemp('batch') / 'lake'}")
    write_fixture(lake)
    return lake


@pytest.fixture(scope="module")
def spark(spark_session: Any, lake: Lake) -> SparkBatch:  # noqa: F811
    engine: SparkBatch = spark_batch(spark_session, lake)
    return engine


@pytest.mark.parametrize("name", list(QUERIES))
def test_duckdb_and_spark_give_the_rows_written_out_by_hand(spark: SparkBatch, lake: Lake, name: str) -> None:
    sql, rows = QUERIES[name]
    duck = open_batch("duckdb://", lake)
    try:
        on_duckdb = normalized(duck.query(sql))
    finally:
        duck.close()
    on_spark = normalized(spark.query(sql))
    assert on_spark == expected(rows)
    assert on_spark == on_duckdb


def test_result_columns_are_nullable_as_on_duckdb(spark: SparkBatch, lake: Lake) -> None:
    sql = QUERIES["co_views"][0]
    duck = open_batch("duckdb://", lake)
    try:
        assert spark.query(sql).schema == duck.query(sql).schema  # count(*) is int64 and nullable on both
    finally:
        duck.close()


@pytest.mark.parametrize("fn,frames", [(per_user_arrow, "arrow"), (per_user_polars, "polars")])
def test_the_same_grouped_function_runs_in_sparks_python_workers(spark: SparkBatch, fn: Any, frames: Any) -> None:
    result = spark.map_groups("select user_id, item_id, ts from page_views", "user_id", fn, PER_USER, frames=frames)
    assert result.schema == PER_USER
    assert normalized(result) == expected(PER_USER_ROWS)


def test_a_table_committed_after_the_first_query_is_seen(spark: SparkBatch, lake: Lake) -> None:
    lake.create_table("late", pa.schema([("n", pa.int64())]))
    lake.append("late", pa.table({"n": pa.array([1, 2], pa.int64())}))
    assert spark.query("select sum(n) as total from late").to_pylist() == [{"total": 3}]
    lake.append("late", pa.table({"n": pa.array([4], pa.int64())}))
    assert spark.query("select sum(n) as total from late").to_pylist() == [{"total": 7}]


def test_unknown_tables_and_columns_are_named(spark: SparkBatch) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        spark.query("select * from nope")
    with pytest.raises(NotFoundError, match="colour"):
        spark.query("select colour from users")


def test_an_untranslatable_query_is_refused_before_spark_runs_it(spark: SparkBatch) -> None:
    with pytest.raises(UntranslatableError, match=r"list slice"):
        spark.query("select list(item_id)[-2:] as last from page_views")


def test_the_scheme_table_opens_spark_local_mode(spark_session: Any, lake: Lake) -> None:  # noqa: F811
    engine = open_batch("spark://local[2]", lake, jars=SPARK_JARS, conf=CONF)  # joins the module's session
    assert isinstance(engine, SparkBatch) and engine.session is spark_session
    assert engine.query("select count(*) as n from users").to_pylist() == [{"n": 2}]


def test_spark_urls() -> None:
    assert spark_master("spark://local[2]") == "local[2]"
    assert spark_master("spark://spark-master.internal:7077") == "spark://spark-master.internal:7077"
    with pytest.raises(ConfigError, match="spark://HOST:7077"):
        spark_master("spark://")


def test_an_unreachable_master_is_a_backend_error_naming_the_url() -> None:
    from tests.harness.process import free_port

    url = f"spark://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(BackendError, match=re.escape(f"no Spark master answers at {url!r}")):
        start_session(url)


def test_a_session_without_the_delta_jars_names_the_install_script() -> None:
    # In a process of its own: Spark keeps one session per process, and the module's has the jars.
    code = ("from keel.batch.spark import spark_session\n"
            "from keel.errors import ConfigError\n"
            "try:\n"
            "    spark_session('spark://local[1]', conf={'spark.driver.memory': '512m'})\n"
            "except ConfigError as exc:\n"
            "    print('ConfigError:', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ConfigError:" in out.stdout and "scripts/install-spark.sh" in out.stdout, out.stderr[-2000:]
