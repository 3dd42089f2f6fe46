"""The lake contract (keel.lake.base), one suite run on every engine: file:// and s3:// (moto_server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from keel.errors import NotFoundError, QueryError, SchemaError
from keel.lake import Lake, open_lake
from keel.lake.sql import SqlSession

SCHEMA = pa.schema([
    pa.field("user_id", pa.string(), nullable=False),
    pa.field("item_id", pa.string()),
    pa.field("ts", pa.timestamp("us", tz="UTC")),
    pa.field("event_date", pa.date32()),
])
DAY = date(2024, 3, 1)


def events(n: int, *, first: int = 0, day: date = DAY, users: int = 5) -> pa.Table:
    """`n` shop events; user u{i % users}, item i{i}, one second apart from `day` midnight."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    ids = range(first, first + n)
    return pa.table({
        "user_id": [f"u{i % users}" for i in ids],
        "item_id": [f"i{i}" for i in ids],
        "ts": pa.array([start + timedelta(seconds=i) for i in ids], pa.timestamp("us", tz="UTC")),
        "event_date": [day] * n,
    }, schema=SCHEMA)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def lake_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "file":
        return f"file://{tmp_path_factory.mktemp('lake')}"
    request.getfixturevalue("s3_env")
    url: str = request.getfixturevalue("s3_server").url()
    return url


@pytest.fixture
def lake(lake_url: str) -> Lake:
    return open_lake(lake_url)


@pytest.fixture
def shop(lake: Lake) -> Iterator[str]:
    lake.create_table("shop", SCHEMA, partition_by=["event_date"])
    yield "shop"


def state(lake: Lake, name: str) -> tuple[int, int, pa.Schema, list[dict[str, object]]]:
    info = lake.describe(name)
    return info.version, info.rows, info.schema, lake.read(name).sort_by("item_id").to_pylist()


# -- tables -----------------------------------------------------------------------------------


def test_engine_satisfies_the_protocol(lake: Lake) -> None:
    assert isinstance(lake, Lake)


def test_create_is_idempotent_and_keeps_the_first_schema(lake: Lake) -> None:
    lake.create_table("t", SCHEMA, partition_by=["event_date"])
    lake.create_table("t", pa.schema([("other", pa.int64())]))
    info = lake.describe("t")
    assert info.schema == SCHEMA
    assert info.partition_by == ["event_date"]
    assert (info.version, info.rows, info.files) == (0, 0, 0)
    assert lake.list_tables() == ["t"]


def test_describe_counts_rows_files_and_partitions(lake: Lake, shop: str) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    lake.append(shop, events(10))
    lake.append(shop, events(4, first=10, day=DAY + timedelta(days=1)))
    info = lake.describe(shop)
    assert (info.rows, info.files, info.partitions, info.version) == (14, 2, 2, 2)
    assert info.size_bytes > 0
    assert info.last_commit is not None and info.last_commit >= before


def test_list_tables_lists_every_table(lake: Lake) -> None:
    for name in ("b_table", "a_table"):
        lake.create_table(name, SCHEMA)
    assert lake.list_tables() == ["a_table", "b_table"]


# -- append / read ----------------------------------------------------------------------------


def test_append_then_read_returns_every_row_in_the_table_schema(lake: Lake, shop: str) -> None:
    assert lake.append(shop, events(20)) is True
    lake.append(shop, events(5, first=20).to_batches()[0])
    table = lake.read(shop)
    assert table.schema == SCHEMA
    assert sorted(table.column("item_id").to_pylist()) == sorted(f"i{i}" for i in range(25))


def test_read_selects_columns(lake: Lake, shop: str) -> None:
    lake.append(shop, events(3))
    table = lake.read(shop, columns=["item_id", "user_id"])
    assert table.column_names == ["item_id", "user_id"]


def test_read_filters_with_a_sql_expression(lake: Lake, shop: str) -> None:
    lake.append(shop, events(10))
    lake.append(shop, events(10, first=10, day=DAY + timedelta(days=1)))
    table = lake.read(shop, columns=["item_id"], filter="event_date = DATE '2024-03-02' AND user_id IN ('u1', 'u2')")
    assert sorted(table.column("item_id").to_pylist()) == ["i11", "i12", "i16", "i17"]


def test_dataset_scans_the_current_version(lake: Lake, shop: str) -> None:
    lake.append(shop, events(7))
    assert lake.dataset(shop).count_rows() == 7
    lake.append(shop, events(3, first=7))
    assert lake.dataset(shop).count_rows() == 10


def test_time_travel_by_version_and_by_timestamp(lake: Lake, shop: str) -> None:
    lake.append(shop, events(3))
    time.sleep(1.1)  # object stores list modification times to the second
    between = datetime.now(UTC)
    time.sleep(1.1)
    lake.append(shop, events(4, first=3))
    assert lake.read(shop, version=1).num_rows == 3
    assert lake.read(shop, version=2).num_rows == 7
    assert lake.read(shop, as_of=between).num_rows == 3
    assert lake.read(shop).num_rows == 7
    with pytest.raises(NotFoundError, match="no version 9"):
        lake.read(shop, version=9)


def test_history_lists_commits_newest_first(lake: Lake, shop: str) -> None:
    lake.append(shop, events(2), writer="sink", version=1, metadata={"offsets": "{}"})
    lake.delete(shop, "user_id = 'u0'")
    history = lake.history(shop)
    assert [h["version"] for h in history] == [2, 1, 0]
    assert [h["operation"] for h in history] == ["DELETE", "WRITE", "CREATE TABLE"]
    assert history[1]["writer"] == "sink" and history[1]["writer_version"] == 1
    assert isinstance(history[0]["timestamp"], datetime)
    assert len(lake.history(shop, limit=1)) == 1


def test_delete_removes_every_row_of_one_user(lake: Lake, shop: str) -> None:
    lake.append(shop, events(10))
    lake.append(shop, events(10, first=10, day=DAY + timedelta(days=1)))
    assert lake.delete(shop, "user_id = 'u3'") == 4
    remaining = lake.read(shop).column("user_id").to_pylist()
    assert len(remaining) == 16 and "u3" not in remaining
    assert lake.delete(shop, "user_id = 'u3'") == 0
    assert lake.read(shop, version=2).num_rows == 20  # history keeps it until vacuum


def test_overwrite_replaces_all_rows_once_per_version(lake: Lake, shop: str) -> None:
    lake.append(shop, events(10))
    assert lake.overwrite(shop, events(3, first=100), writer="job", version=5) is True
    assert lake.overwrite(shop, events(1, first=200), writer="job", version=5) is False
    assert sorted(lake.read(shop).column("item_id").to_pylist()) == ["i100", "i101", "i102"]


# -- exactly once -----------------------------------------------------------------------------


def test_repeated_or_older_version_is_a_no_op(lake: Lake, shop: str) -> None:
    assert lake.append(shop, events(5), writer="sink", version=10) is True
    assert lake.append(shop, events(5), writer="sink", version=10) is False
    assert lake.append(shop, events(5), writer="sink", version=3) is False
    assert lake.append(shop, events(5, first=5), writer="sink", version=11) is True
    assert lake.read(shop).num_rows == 10
    assert lake.describe(shop).version == 2


def test_writer_commit_returns_the_last_version_and_its_metadata(lake_url: str, lake: Lake, shop: str) -> None:
    assert lake.writer_commit(shop, "sink") is None
    lake.append(shop, events(1), writer="sink", version=1, metadata={"offsets": '{"0": 1}'})
    lake.append(shop, events(1), writer="other", version=7, metadata={"offsets": '{"0": 99}'})
    lake.append(shop, events(1), writer="sink", version=2, metadata={"offsets": '{"0": 2}', "note": "x"})
    for _ in range(20):  # bury the commit under others: it must still be found
        lake.append(shop, events(1), writer="other", version=8 + _)
    restarted = open_lake(lake_url)
    commit = restarted.writer_commit(shop, "sink")
    assert commit is not None
    assert (commit.writer, commit.version, commit.metadata) == ("sink", 2, {"offsets": '{"0": 2}', "note": "x"})
    other = restarted.writer_commit(shop, "other")
    assert other is not None and other.version == 27


def test_writer_version_reads_the_last_committed_version_from_another_handle(lake_url: str, lake: Lake,
                                                                            shop: str) -> None:
    assert lake.writer_version(shop, "job") is None
    lake.overwrite(shop, events(2), writer="job", version=1_714_532_400_000_000_001)  # beyond 2**53
    lake.append(shop, events(1), writer="other", version=3)
    assert open_lake(lake_url).writer_version(shop, "job") == 1_714_532_400_000_000_001


def test_writers_are_independent(lake: Lake, shop: str) -> None:
    assert lake.append(shop, events(1), writer="a", version=5) is True
    assert lake.append(shop, events(1), writer="b", version=1) is True
    assert lake.append(shop, events(1), writer="a", version=1) is False


def test_same_writer_version_from_two_stale_handles_lands_once(lake_url: str, shop: str) -> None:
    first, second = open_lake(lake_url), open_lake(lake_url)
    first.describe(shop), second.describe(shop)  # both now hold the same snapshot
    assert first.append(shop, events(3), writer="sink", version=1) is True
    assert second.append(shop, events(3), writer="sink", version=1) is False  # its snapshot was stale
    assert second.append(shop, events(3, first=3), writer="sink", version=2) is True
    assert first.append(shop, events(3, first=3), writer="sink", version=2) is False
    assert first.read(shop).num_rows == 6


def test_racing_threads_with_one_writer_land_each_version_once(lake_url: str, shop: str) -> None:
    lakes = [open_lake(lake_url) for _ in range(2)]
    versions = 4
    barrier = threading.Barrier(len(lakes))
    landed: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def race(lake: Lake) -> None:
        try:
            for v in range(1, versions + 1):
                barrier.wait(timeout=60)
                landed.append((v, lake.append(shop, events(2, first=10 * v), writer="sink", version=v)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(lk,)) for lk in lakes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for v in range(1, versions + 1):
        assert sorted(ok for version, ok in landed if version == v) == [False, True]
    assert lakes[0].read(shop).num_rows == 2 * versions


# -- schemas ----------------------------------------------------------------------------------


def test_a_new_nullable_column_evolves_the_table(lake: Lake, shop: str) -> None:
    lake.append(shop, events(2))
    lake.append(shop, events(2, first=2).append_column("price", pa.array([1.5, 2.5])))
    info = lake.describe(shop)
    assert info.schema.field("price").type == pa.float64() and info.schema.field("price").nullable
    prices = dict(zip(*lake.read(shop, columns=["item_id", "price"]).to_pydict().values()))
    assert prices == {"i0": None, "i1": None, "i2": 1.5, "i3": 2.5}
    lake.append(shop, events(1, first=4))  # the new column may be left out again
    assert lake.read(shop).num_rows == 5


def test_lossless_type_differences_are_accepted(lake: Lake) -> None:
    lake.create_table("n", pa.schema([("k", pa.int64()), ("s", pa.string())]))
    lake.append("n", pa.table({"k": pa.array([1], pa.int32()), "s": pa.array(["a"], pa.large_string())}))
    assert lake.read("n").to_pylist() == [{"k": 1, "s": "a"}]


@pytest.mark.parametrize(("data", "column"), [
    (lambda: events(2).drop_columns(["user_id"]), "user_id"),
    (lambda: events(2).set_column(1, "item_id", pa.array([1, 2])), "item_id"),
    (lambda: events(2).rename_columns(["user_id", "item", "ts", "event_date"]), "item_id"),
    (lambda: events(2).set_column(0, pa.field("user_id", pa.string()), pa.array(["u", None])), "user_id"),
], ids=["missing-required", "changed-type", "renamed", "null-in-required"])
def test_breaking_changes_are_refused_and_leave_the_table_as_it_was(lake: Lake, shop: str, data: object,
                                                                     column: str) -> None:
    lake.append(shop, events(3))
    before = state(lake, shop)
    with pytest.raises(SchemaError, match=column):
        lake.append(shop, data())  # type: ignore[operator]
    assert state(lake, shop) == before


# -- not found --------------------------------------------------------------------------------


def test_unknown_table_is_named_with_the_tables_that_exist(lake: Lake, shop: str) -> None:
    for call in (lambda: lake.read("nope"), lambda: lake.describe("nope"), lambda: lake.append("nope", events(1)),
                 lambda: lake.delete("nope", "true"), lambda: lake.history("nope")):
        with pytest.raises(NotFoundError, match=r"'nope'.*tables: shop"):
            call()


def test_unknown_column_is_named_with_the_columns_that_exist(lake: Lake, shop: str) -> None:
    lake.append(shop, events(1))
    for call in (lambda: lake.read(shop, columns=["price"]), lambda: lake.read(shop, filter="price > 1"),
                 lambda: lake.delete(shop, "price > 1")):
        with pytest.raises(NotFoundError, match=r"'price'.*columns: user_id, item_id, ts, event_date"):
            call()


def test_invalid_filter_is_a_query_error(lake: Lake, shop: str) -> None:
    with pytest.raises(QueryError, match="not valid"):
        lake.read(shop, filter="user_id = = 'x'")


# -- SQL --------------------------------------------------------------------------------------


def test_sql_session_queries_tables_by_name_and_sees_new_commits(lake: Lake, shop: str) -> None:
    lake.append(shop, events(10))
    with SqlSession(lake) as session:
        query = "select user_id, count(*) as n from shop group by user_id order by user_id"
        assert session.query(query).to_pylist()[0] == {"user_id": "u0", "n": 2}
        lake.append(shop, events(10, first=10))
        assert session.query(query).to_pylist()[0] == {"user_id": "u0", "n": 4}
        with pytest.raises(NotFoundError, match="nope.*tables: shop"):
            session.query("select * from nope")
