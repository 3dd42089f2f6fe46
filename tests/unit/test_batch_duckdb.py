"""The DuckDB batch engine over a local Delta lake: the shop's job SQL, a join/window/null/decimal/timestamp
query with an empty input, and grouped Python functions, each against rows written out by hand.

The fixture tables, queries and expected rows live here so that `tests/integration/test_batch_spark.py`
runs the same ones on Spark and checks DuckDB == Spark == the expected rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from keel.batch import ENGINES, open_batch
from keel.batch.base import BatchEngine
from keel.batch.duckdb import DuckDBBatch, split_groups
from keel.errors import ConfigError, MissingExtraError, NotFoundError, QueryError, SchemaError, UnknownSchemeError
from keel.lake import open_lake
from keel.lake.base import Lake
from keel.project.loading import import_declarations


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


TS = pa.timestamp("us", tz="UTC")
PAGE_VIEWS = pa.table({
    "user_id": ["u1", "u1", "u1", "u1", "u2", "u2", "u3", "u3", None],
    "item_id": ["a", "b", "c", "a", "a", "b", "b", "d", "e"],
    "ts": pa.array([at(1, 9), at(1, 10), at(1, 11), at(2, 9), at(1, 12), at(2, 8), at(3, 7), at(3, 8), at(3, 9)], TS),
})
# co_views as the similar-items job reads it: item z has 12 others (the top 10 are kept), item n ties a null
CO_VIEWS = pa.table({
    "item_id": ["z"] * 12 + ["n", "n", "m"],
    "other_item": [f"o{i:02d}" for i in range(12)] + [None, "x", "y"],
    "users": pa.array([i % 3 for i in range(12)] + [5, 5, 1], pa.int64()),
})
USERS = pa.table({"user_id": ["u1", "u2"], "country": ["DE", None]})
MONEY = pa.decimal128(10, 2)
ORDERS = pa.table({
    "order_id": pa.array([1, 2, 3, 4, 5], pa.int64()),
    "user_id": ["u1", "u1", "u2", None, "u3"],
    "amount": pa.array([Decimal("10.50"), Decimal("5.25"), Decimal("7.00"), Decimal("1.10"), Decimal("2.00")], MONEY),
    "ts": pa.array([at(1, 9), at(1, 23, 30), at(2, 0, 15), at(2, 12), at(3, 8)], TS),
})
REFUNDS = pa.schema([("order_id", pa.int64()), ("amount", MONEY)])  # an empty input


def write_fixture(lake: Lake) -> None:
    for name, data in (("page_views", PAGE_VIEWS), ("co_views", CO_VIEWS), ("users", USERS), ("orders", ORDERS)):
        lake.create_table(name, data.schema)
        lake.append(name, data)
    lake.create_table("refunds", REFUNDS)


SHOP = Path(__file__).resolve().parents[2] / "src" / "keel" / "examples" / "shop"
SHOP_JOBS = import_declarations(SHOP, "shop.pipelines").jobs


def job_sql(name: str) -> str:
    """The SQL text the shop's job returns (its function takes a context it does not use)."""
    sql: str = SHOP_JOBS[name].run(None)
    return sql


CO_VIEWS_SQL = job_sql("compute_co_views")
CO_VIEWS_ROWS = [("a", "b", 2), ("a", "c", 1), ("b", "a", 2), ("b", "c", 1), ("b", "d", 1), ("c", "a", 1),
                 ("c", "b", 1), ("d", "b", 1)]
SIMILAR_SQL = job_sql("compute_similar_items")
SIMILAR_ROWS = [
    ("z", ["o02", "o05", "o08", "o11", "o01", "o04", "o07", "o10", "o00", "o03"]),
    ("n", ["x", None]),  # a tie on users: other_item ascending, DuckDB's nulls last
    ("m", ["y"]),
]
ORDERS_SQL = """
    with o as (
        select o.order_id, o.user_id, u.country, o.amount, o.ts,
               row_number() over (partition by o.user_id order by o.ts, o.order_id) as nth,
               sum(o.amount) over (partition by o.user_id order by o.ts, o.order_id
                                   rows between unbounded preceding and current row) as running,
               lag(o.amount) over (partition by o.user_id order by o.ts, o.order_id) as previous
        from orders o left join users u on o.user_id = u.user_id
    )
    select o.order_id, o.user_id, coalesce(o.country, 'unknown') as country, o.amount, o.nth, o.running,
           o.previous, cast(o.ts as date) as day, r.amount as refunded
    from o left join refunds r on r.order_id = o.order_id
"""
D = Decimal
ORDERS_ROWS = [
    (1, "u1", "DE", D("10.50"), 1, D("10.50"), None, date(2026, 1, 1), None),
    (2, "u1", "DE", D("5.25"), 2, D("15.75"), D("10.50"), date(2026, 1, 1), None),
    (3, "u2", "unknown", D("7.00"), 1, D("7.00"), None, date(2026, 1, 2), None),
    (4, None, "unknown", D("1.10"), 1, D("1.10"), None, date(2026, 1, 2), None),
    (5, "u3", "unknown", D("2.00"), 1, D("2.00"), None, date(2026, 1, 3), None),
]
EMPTY_SQL = "select count(*) as n, sum(amount) as total, list(order_id order by order_id) as ids from refunds"
EMPTY_ROWS = [(0, None, None)]
EMPTY_GROUPS_SQL = "select order_id, sum(amount) as total from refunds group by order_id"

QUERIES = {  # name -> (DuckDB SQL, expected rows)
    "co_views": (CO_VIEWS_SQL, CO_VIEWS_ROWS),
    "similar_items": (SIMILAR_SQL, SIMILAR_ROWS),
    "orders": (ORDERS_SQL, ORDERS_ROWS),
    "empty_aggregate": (EMPTY_SQL, EMPTY_ROWS),
    "empty_groups": (EMPTY_GROUPS_SQL, []),
}

PER_USER = pa.schema([("user_id", pa.string()), ("items", pa.int64()), ("first_view", TS)])
PER_USER_ROWS = [("u1", 3, at(1, 9)), ("u2", 2, at(1, 12)), ("u3", 2, at(3, 7)), (None, 1, at(3, 9))]


def per_user_arrow(group: pa.Table) -> pa.Table:
    """One row per group: distinct items and first view (Arrow in, Arrow out)."""
    return pa.table({"user_id": group.column("user_id").slice(0, 1),
                     "items": [len(set(group.column("item_id").to_pylist()))],
                     "first_view": pa.array([pc.min(group.column("ts")).as_py()], TS)})


def per_user_polars(frame: pl.DataFrame) -> pl.DataFrame:
    """The same with Polars."""
    return frame.group_by("user_id").agg(pl.col("item_id").n_unique().cast(pl.Int64).alias("items"),
                                         pl.col("ts").min().alias("first_view"))


def normalized(table: pa.Table) -> list[tuple[Any, ...]]:
    """A result's rows as comparable Python values, in a fixed order (results carry no order of their own)."""
    return expected([tuple(row.values()) for row in table.to_pylist()])


def expected(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with equal values made equal in repr (10.50 and 10.5; any UTC offset), sorted."""
    def value(v: Any) -> Any:
        if isinstance(v, Decimal):
            return v.normalize()
        if isinstance(v, datetime):
            return v.astimezone(UTC) if v.tzinfo else v
        if isinstance(v, list):
            return [value(x) for x in v]
        return v
    return sorted((tuple(value(v) for v in row) for row in rows), key=repr)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = open_lake(f"file://{tmp_path / 'lake'}")
    write_fixture(lake)
    return lake


@pytest.fixture
def engine(lake: Lake) -> Iterator[BatchEngine]:
    engine = open_batch("local://", lake)
    yield engine
    engine.close()


@pytest.mark.parametrize("name", list(QUERIES))
def test_each_query_gives_the_rows_written_out_by_hand(engine: BatchEngine, name: str) -> None:
    sql, rows = QUERIES[name]
    assert normalized(engine.query(sql)) == expected(rows)


@pytest.mark.parametrize("fn,frames", [(per_user_arrow, "arrow"), (per_user_polars, "polars")])
def test_a_grouped_function_gets_each_group_once(engine: BatchEngine, fn: Any, frames: Any) -> None:
    result = engine.map_groups("select user_id, item_id, ts from page_views", "user_id", fn, PER_USER, frames=frames)
    assert result.schema == PER_USER
    assert normalized(result) == expected(PER_USER_ROWS)


def test_a_grouped_function_over_no_rows_is_never_called(engine: BatchEngine) -> None:
    def never(group: pa.Table) -> pa.Table:
        raise AssertionError("called")
    result = engine.map_groups("select * from refunds", "order_id", never, REFUNDS)
    assert result.num_rows == 0 and result.schema == REFUNDS


def test_a_grouped_function_that_returns_the_wrong_shape_is_a_schema_error(engine: BatchEngine) -> None:
    with pytest.raises(SchemaError, match="items"):
        engine.map_groups("select * from page_views", "user_id", lambda g: g.select(["user_id"]), PER_USER)


def test_an_unknown_key_column_is_named(engine: BatchEngine) -> None:
    with pytest.raises(NotFoundError, match="customer"):
        engine.map_groups("select * from page_views", "customer", per_user_arrow, PER_USER)


def test_split_groups_keeps_rows_in_order_and_nulls_together() -> None:
    rows = pa.table({"k": ["x", None, "x", None, "y"], "v": [1, 2, 3, 4, 5]})
    groups = {g.column("k")[0].as_py(): g.column("v").to_pylist() for g in split_groups(rows, ["k"])}
    assert groups == {"x": [1, 3], None: [2, 4], "y": [5]}


def test_unknown_tables_and_columns_are_named(engine: BatchEngine) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        engine.query("select * from nope")
    with pytest.raises(NotFoundError, match="colour"):
        engine.query("select colour from users")
    with pytest.raises(QueryError):
        engine.query("select from where")


def test_the_scheme_table_picks_duckdb_for_local_and_duckdb(lake: Lake) -> None:
    for url in ("local://", "duckdb://"):
        engine = open_batch(url, lake)
        assert isinstance(engine, DuckDBBatch) and engine.name == "duckdb"
        engine.close()
    assert set(ENGINES) == {"local", "duckdb", "spark"}
    with pytest.raises(UnknownSchemeError, match="spark://"):
        open_batch("flink://x", lake)
    with pytest.raises(ConfigError, match="no address"):
        open_batch("duckdb://somewhere:1234", lake)


def test_spark_without_pyspark_names_the_extra_to_install(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyspark", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'keel-platform\[spark\]'"):
        open_batch("spark://local[2]", lake)
