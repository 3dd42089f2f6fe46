"""Jobs run on the profile's batch engine: opened only when a job runs SQL, results in DuckDB's types
whichever engine computed them, and `keel check` refusing on Spark the SQL it cannot translate.

The Spark side for real is in tests/integration/test_jobs_spark.py; here an engine double named
"spark" stands in where only the wiring is under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

import keel
from keel.batch import open_batch
from keel.batch.base import BatchEngine
from keel.errors import ProjectError
from keel.jobs.run import job_sql, run_job
from keel.kv import open_kv
from keel.kv.views import Views
from keel.lake import open_lake
from keel.lake.base import Lake
from keel.project.catalog import Catalog, collecting
from keel.run.deployed import batch_problems
from keel.run.runtime import Runtime
from tests.unit.test_check import make_project

DAY = datetime(2024, 5, 1, 3, tzinfo=UTC)
ORDERS = pa.schema([("user_id", pa.string()), ("amount", pa.decimal128(10, 2))])


class NarrowSpark:
    """A batch engine named "spark" that runs on DuckDB and then narrows the types as Spark does
    (decimal(20,2) for a sum of decimals, int32 for row_number), to test that jobs widen them back."""

    name = "spark"

    def __init__(self, lake: Lake) -> None:
        self.duck = open_batch("duckdb://", lake)
        self.queries: list[str] = []

    def query(self, sql: str) -> pa.Table:
        self.queries.append(sql)
        result = self.duck.query(sql)
        narrow = {pa.types.is_decimal: pa.decimal128(20, 2), pa.types.is_int64: pa.int32()}
        return result.cast(pa.schema([f.with_type(next((t for is_, t in narrow.items() if is_(f.type)), f.type))
                                      for f in result.schema]))

    def map_groups(self, *args: object, **kwargs: object) -> pa.Table:
        raise NotImplementedError

    def tables(self) -> list[str]:
        return self.duck.tables()

    def close(self) -> None:
        self.duck.close()


@dataclass
class CountingEngines:
    """JobEngines whose batch engine is built on first use, counting how often."""

    lake: Lake
    views: Views
    engine: BatchEngine | None = None
    opened: list[str] = field(default_factory=list)

    @property
    def batch(self) -> BatchEngine:
        self.opened.append("batch")
        assert self.engine is not None
        return self.engine


def declare() -> Catalog:
    with collecting() as catalog:
        keel.table("orders")

        @keel.job(schedule="0 3 * * *", inputs=["orders"], output=keel.table("revenue"))
        def revenue(ctx):  # type: ignore[no-untyped-def]
            return ("select user_id, sum(amount) as total, row_number() over (order by user_id) as n "
                    "from orders group by user_id")

        @keel.job(schedule="0 3 * * *", inputs=["orders"], output=keel.table("copied"))
        def copied(ctx):  # type: ignore[no-untyped-def]
            return ctx.read("orders")
    return catalog


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = open_lake(f"file://{tmp_path}/lake")
    lake.create_table("orders", ORDERS)
    lake.append("orders", pa.table({"user_id": ["u1", "u1", "u2"],
                                    "amount": [Decimal("1.50"), Decimal("2.25"), Decimal("9.99")]}, schema=ORDERS))
    return lake


def test_a_jobs_sql_runs_on_the_batch_engine_and_a_job_without_sql_never_opens_it(lake: Lake, tmp_path: Path) -> None:
    catalog = declare()
    kv = open_kv(f"file://{tmp_path}/kv.db")
    engines = CountingEngines(lake, Views(kv, {}), NarrowSpark(lake))
    run_job(engines, catalog.jobs["copied"], DAY)
    assert engines.opened == []  # a Python job returning a frame: no batch engine
    run_job(engines, catalog.jobs["revenue"], DAY)
    assert engines.opened == ["batch"]
    assert isinstance(engines.engine, NarrowSpark) and len(engines.engine.queries) == 1
    kv.close()


def test_the_table_a_job_writes_has_duckdbs_types_whichever_engine_computed_it(lake: Lake, tmp_path: Path) -> None:
    catalog = declare()
    kv = open_kv(f"file://{tmp_path}/kv.db")
    duck_lake = open_lake(f"file://{tmp_path}/duck-lake")
    duck_lake.create_table("orders", ORDERS)
    duck_lake.append("orders", lake.read("orders"))
    on_duckdb = CountingEngines(duck_lake, Views(kv, {}), open_batch("duckdb://", duck_lake))
    on_spark = CountingEngines(lake, Views(kv, {}), NarrowSpark(lake))
    run_job(on_duckdb, catalog.jobs["revenue"], DAY)
    run_job(on_spark, catalog.jobs["revenue"], DAY)
    schema = lake.describe("revenue").schema
    assert schema == duck_lake.describe("revenue").schema
    assert schema.field("total").type == pa.decimal128(38, 2) and schema.field("n").type == pa.int64()
    rows = sorted(lake.read("revenue").to_pylist(), key=lambda r: r["user_id"])
    assert rows == [{"user_id": "u1", "total": Decimal("3.75"), "n": 1}, {"user_id": "u2", "total": Decimal("9.99"), "n": 2}]
    kv.close()


def test_the_runtime_opens_the_batch_engine_only_when_asked_and_closes_it(tmp_path: Path) -> None:
    root = make_project(tmp_path, "")
    (root / "keel.toml").write_text((root / "keel.toml").read_text()
                                    + '[profiles.local]\nbatch = "spark://127.0.0.1:9"\n')
    rt = Runtime.open(root)
    rt.open_engines()
    assert rt.engines.lake is rt.lake
    assert "batch" not in rt.__dict__  # keel up opened bus, lake and kv, and no Spark
    rt.close()
    rt = Runtime.open(root, batch="duckdb://")
    engine = rt.batch
    assert engine.name == "duckdb" and rt.batch is engine
    rt.close()
    assert "batch" not in rt.__dict__


def test_spark_jars_come_from_the_profile_or_keel_spark_jars(tmp_path: Path) -> None:
    from keel.project.config import load_config

    root = make_project(tmp_path, "")
    (root / "keel.toml").write_text((root / "keel.toml").read_text() + '[profiles.local]\nspark_jars = "jars"\n')
    assert load_config(root, env={}).spark_jars == f"file://{root.resolve() / 'jars'}"
    assert load_config(root, env={"KEEL_SPARK_JARS": "/opt/jars"}).spark_jars == "file:///opt/jars"


BAD_JOBS = '''
@keel.job(schedule="0 3 * * *", inputs=["page_views"], output=keel.table("last_items"))
def last_items(ctx):
    return "select user_id, list(item_id)[-2:] as last from page_views group by user_id"

@keel.job(schedule="0 3 * * *", inputs=["page_views"], output=keel.table("needs_data"))
def needs_data(ctx):
    n = ctx.sql("select count(*) as n from page_views").column("n")[0].as_py()
    return f"select list(item_id)[-{n}:] as x from page_views"

@keel.job(schedule="0 3 * * *", inputs=["page_views"], output=keel.table("fine"))
def fine(ctx):
    return f"select item_id, count(*) as n from page_views where event_date <= '{ctx.logical_date:%Y-%m-%d}' group by 1"
'''


def test_check_refuses_on_spark_a_jobs_sql_it_cannot_translate_naming_the_job_and_the_construct(tmp_path: Path) -> None:
    from keel.project.loading import load_project

    catalog = load_project(make_project(tmp_path, BAD_JOBS)).catalog
    assert batch_problems(catalog, "duckdb://") == []
    (problem,) = batch_problems(catalog, "spark://local[2]")  # needs_data is skipped: its SQL needs data
    assert "job 'last_items'" in str(problem) and "list slice" in str(problem) and "[-2:]" in str(problem)
    assert problem.line > 0
    assert job_sql(catalog.jobs["needs_data"]) is None
    assert job_sql(catalog.jobs["fine"]) == ("select item_id, count(*) as n from page_views "
                                             "where event_date <= '2000-01-01' group by 1")


def test_keel_check_on_a_spark_profile_prints_the_untranslatable_job_and_exits_1(tmp_path: Path) -> None:
    root = make_project(tmp_path, BAD_JOBS)
    env = {**os.environ, "KEEL_BATCH": "spark://127.0.0.1:9", "COLUMNS": "200"}  # nothing listens: never opened
    r = subprocess.run([sys.executable, "-m", "keel.cli.commands", "check", "-p", str(root)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "last_items" in r.stdout + r.stderr and "list slice" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(ProjectError):
        from keel.project.loading import load_project
        from keel.run.deployed import check_deployed

        p = load_project(root, env={"KEEL_BATCH": "spark://local[2]"})
        check_deployed(p.config, p.catalog)
