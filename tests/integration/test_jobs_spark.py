"""The shop's jobs run by `keel run` on Spark for real (pyspark local[2] + delta-spark, no mock) write the
same output as on DuckDB, and a job's table has DuckDB's column types whichever engine computed it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import keel
from keel.batch.base import BatchEngine
from keel.jobs.run import LocalJobEngines, run_job
from keel.kv import open_kv
from keel.kv.views import Views
from keel.lake import open_lake
from keel.lake.base import Lake
from keel.project.catalog import collecting
from keel.run.runtime import Runtime
from tests.harness.spark import SPARK_JARS, spark_batch, spark_session  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

PAGE_VIEWS = pa.schema([("user_id", pa.string()), ("item_id", pa.string())])
VIEWS = [("u1", "i1"), ("u1", "i1"), ("u1", "i2"), ("u1", "i3"), ("u2", "i1"), ("u2", "i2"),
         ("u3", "i2"), ("u3", "i3"), ("u4", "i4")]
CO_VIEWS = {("i1", "i2", 2), ("i2", "i1", 2), ("i1", "i3", 1), ("i3", "i1", 1), ("i2", "i3", 2), ("i3", "i2", 2)}
SIMILAR = {"i1": ["i2", "i3"], "i2": ["i1", "i3"], "i3": ["i2", "i1"]}  # by users desc, then other_item


def keel_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel.cli.commands", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=400)


def shop_with_page_views(root: Path) -> Path:
    assert keel_cli("init", str(root)).returncode == 0
    lake = open_lake(f"file://{root}/.keel/lake")
    lake.create_table("page_views", PAGE_VIEWS)
    lake.append("page_views", pa.table({"user_id": [u for u, _ in VIEWS], "item_id": [i for _, i in VIEWS]},
                                       schema=PAGE_VIEWS))
    return root


def run_shop_jobs(root: Path, env: dict[str, str]) -> tuple[set[tuple[str, str, int]], dict[str, Any], pa.Schema]:
    for job, date in (("compute_co_views", "2026-12-01T03:00:00Z"), ("compute_similar_items", "2026-12-01T03:30:00Z")):
        r = keel_cli("run", job, "-p", str(root), "--date", date, env=env)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    rt = Runtime.open(root)
    try:
        co_views = {(r["item_id"], r["other_item"], r["users"]) for r in rt.lake.read("co_views").to_pylist()}
        similar = {item: rt.views.get("similar_items", item) for item in ("i1", "i2", "i3", "i4")}
        return co_views, similar, rt.lake.describe("co_views").schema
    finally:
        rt.close()


def test_keel_run_of_the_shops_jobs_on_spark_writes_what_duckdb_writes(tmp_path: Path) -> None:
    duck_root, spark_root = shop_with_page_views(tmp_path / "duck"), shop_with_page_views(tmp_path / "spark")
    on_duckdb = run_shop_jobs(duck_root, {})
    on_spark = run_shop_jobs(spark_root, {"KEEL_BATCH": "spark://local[2]", "KEEL_SPARK_JARS": str(SPARK_JARS)})
    expected_similar = {item: {"similar": items} for item, items in SIMILAR.items()} | {"i4": None}
    assert on_duckdb[:2] == (CO_VIEWS, expected_similar)
    assert on_spark[:2] == (CO_VIEWS, expected_similar)
    assert on_spark[2] == on_duckdb[2]  # the same table schema from either engine


ORDERS = pa.schema([("user_id", pa.string()), ("amount", pa.decimal128(10, 2))])


@dataclass
class SparkJobs:
    lake: Lake
    views: Views
    batch: BatchEngine


def test_a_table_a_job_computes_on_spark_has_duckdbs_types(spark_session: Any, tmp_path: Path) -> None:  # noqa: F811
    with collecting() as catalog:
        keel.table("orders")

        @keel.job(schedule="0 3 * * *", inputs=["orders"], output=keel.table("revenue"))
        def revenue(ctx):  # type: ignore[no-untyped-def]
            return ("select user_id, sum(amount) as total, row_number() over (order by user_id) as n "
                    "from orders group by user_id")

    kv = open_kv(f"file://{tmp_path}/kv.db")
    lakes = {}
    for engine in ("duck", "spark"):
        lake = lakes[engine] = open_lake(f"file://{tmp_path}/{engine}-lake")
        lake.create_table("orders", ORDERS)
        lake.append("orders", pa.table({"user_id": ["u1", "u1", "u2"],
                                        "amount": [Decimal("1.50"), Decimal("2.25"), Decimal("9.99")]}, schema=ORDERS))
    day = datetime(2024, 5, 1, 3, tzinfo=UTC)
    run_job(LocalJobEngines(lakes["duck"], Views(kv, {})), catalog.jobs["revenue"], day)
    run_job(SparkJobs(lakes["spark"], Views(kv, {}), spark_batch(spark_session, lakes["spark"])),
            catalog.jobs["revenue"], day)
    schema = lakes["spark"].describe("revenue").schema
    assert schema == lakes["duck"].describe("revenue").schema
    assert (schema.field("total").type, schema.field("n").type) == (pa.decimal128(38, 2), pa.int64())
    assert sorted(lakes["spark"].read("revenue").to_pylist(), key=lambda r: r["user_id"]) == [
        {"user_id": "u1", "total": Decimal("3.75"), "n": 1}, {"user_id": "u2", "total": Decimal("9.99"), "n": 2}]
    kv.close()
