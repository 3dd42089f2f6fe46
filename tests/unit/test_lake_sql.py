"""SqlSession and tables_summary over a local Delta lake."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from keel.errors import NotFoundError, QueryError
from keel.lake import open_lake
from keel.lake.delta import DeltaLake
from keel.lake.sql import SqlSession, tables_summary
from tests.contract.test_lake import DAY, SCHEMA, events


@pytest.fixture
def lake(tmp_path: Path) -> DeltaLake:
    lake = open_lake(f"file://{tmp_path / 'lake'}")
    assert isinstance(lake, DeltaLake)
    lake.create_table("shop", SCHEMA, partition_by=["event_date"])
    lake.append("shop", events(10))
    lake.append("shop", events(10, first=10, day=DAY + timedelta(days=1)))
    return lake


@pytest.fixture
def session(lake: DeltaLake) -> Iterator[SqlSession]:
    with SqlSession(lake) as s:
        yield s


def view_sql(session: SqlSession, name: str) -> str:
    rows = session.query(f"select sql from duckdb_views() where view_name = '{name}'").to_pylist()
    return str(rows[0]["sql"]) if rows else ""


def test_a_local_table_is_read_natively_with_its_types_and_partitions(session: SqlSession) -> None:
    result = session.query("select * from shop order by item_id")
    assert "read_parquet" in view_sql(session, "shop")
    assert result.schema.names == SCHEMA.names
    assert result.schema.field("event_date").type == pa.date32()
    assert result.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert session.query("select count(*) as n from shop where event_date = DATE '2024-03-02'").to_pylist() == [
        {"n": 10}]


def test_deleted_rows_and_evolved_columns_are_seen_as_the_table_has_them(lake: DeltaLake,
                                                                          session: SqlSession) -> None:
    lake.delete("shop", "user_id = 'u0'")
    lake.append("shop", events(2, first=21).append_column("price", pa.array([3.0, 4.0])))
    result = session.query("select count(*) as n, count(price) as priced, sum(price) as total from shop "
                           "where user_id <> 'u0'")
    assert result.to_pylist() == [{"n": 16 + 2, "priced": 2, "total": 7.0}]
    assert session.query("select count(*) as n from shop where user_id = 'u0'").to_pylist() == [{"n": 0}]


def test_tables_whose_files_are_not_plain_are_read_through_the_dataset(lake: DeltaLake,
                                                                        session: SqlSession) -> None:
    lake.create_table("by_name", pa.schema([("name", pa.string()), ("n", pa.int64())]), partition_by=["name"])
    lake.append("by_name", pa.table({"name": ["a b/c", None], "n": [1, 2]}))
    result = session.query("select name, n from by_name order by n")
    assert result.to_pylist() == [{"name": "a b/c", "n": 1}, {"name": None, "n": 2}]
    assert "read_parquet" not in view_sql(session, "by_name")  # a registered pyarrow dataset


def test_an_empty_table_has_its_columns(lake: DeltaLake, session: SqlSession) -> None:
    lake.create_table("empty", SCHEMA)
    result = session.query("select * from empty")
    assert result.num_rows == 0 and result.schema.names == SCHEMA.names


def test_tables_join_by_name(lake: DeltaLake, session: SqlSession) -> None:
    lake.create_table("items", pa.schema([("item_id", pa.string()), ("price", pa.float64())]))
    lake.append("items", pa.table({"item_id": ["i1", "i2"], "price": [2.0, 5.0]}))
    result = session.query("select sum(price) as revenue from shop join items using (item_id)")
    assert result.to_pylist() == [{"revenue": 7.0}]


def test_errors_name_what_is_wrong(session: SqlSession) -> None:
    with pytest.raises(NotFoundError, match=r"no table nope in the lake; tables: shop"):
        session.query("select * from nope")
    with pytest.raises(NotFoundError, match=r"no column 'price'.*columns of shop: user_id, item_id, ts, event_date"):
        session.query("select price from shop")
    with pytest.raises(QueryError, match="syntax error"):
        session.query("selec 1")


def test_statements_without_rows_return_an_empty_table(session: SqlSession) -> None:
    assert session.query("set threads = 1").num_rows == 0
    assert session.sql("select 42 as x").to_pylist() == [{"x": 42}]


def test_tables_summary_reports_size_freshness_and_maintenance(lake: DeltaLake) -> None:
    (row,) = tables_summary(lake)
    assert row["table"] == "shop"
    assert (row["rows"], row["files"], row["version"]) == (20, 2, 2)
    assert row["size_bytes"] > 0 and row["size"].endswith("KB")
    assert row["freshness"].endswith("s ago") and 0 <= row["freshness_s"] < 60
    assert row["needs_maintenance"] is False


def test_a_table_created_after_the_session_started_is_found(lake: DeltaLake, session: SqlSession) -> None:
    assert session.query("select count(*) as n from shop").to_pylist() == [{"n": 20}]
    lake.create_table("late", pa.schema([("x", pa.int64())]))
    lake.append("late", pa.table({"x": [1, 2, 3]}))
    assert session.query("select sum(x) as s from late").to_pylist() == [{"s": 6}]
