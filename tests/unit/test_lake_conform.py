"""Shaping Arrow data to a lake table's schema (keel.lake._conform): what evolves, what is refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from keel.errors import SchemaError
from keel.lake._conform import canonical_schema, canonical_type, conform

TABLE = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("name", pa.string()),
    pa.field("ts", pa.timestamp("us", tz="UTC")),
])


@pytest.mark.parametrize(("arrow", "stored"), [
    (pa.large_string(), pa.string()),
    (pa.string_view(), pa.string()),
    (pa.dictionary(pa.int32(), pa.string()), pa.string()),
    (pa.large_binary(), pa.binary()),
    (pa.timestamp("ns"), pa.timestamp("us")),
    (pa.timestamp("ns", tz="Europe/Paris"), pa.timestamp("us", tz="UTC")),
    (pa.uint32(), pa.int64()),
    (pa.uint8(), pa.int16()),
    (pa.date64(), pa.date32()),
    (pa.large_list(pa.large_string()), pa.list_(pa.string())),
    (pa.struct([("a", pa.large_string())]), pa.struct([("a", pa.string())])),
    (pa.int32(), pa.int32()),
])
def test_canonical_types_are_what_a_delta_table_stores(arrow: pa.DataType, stored: pa.DataType) -> None:
    assert canonical_type(arrow) == stored


def test_canonical_schema_keeps_names_and_nullability() -> None:
    schema = canonical_schema(pa.schema([pa.field("a", pa.large_string(), nullable=False)]))
    assert schema == pa.schema([pa.field("a", pa.string(), nullable=False)])


def test_data_in_another_column_order_is_reordered() -> None:
    data = pa.table({"ts": pa.array([None], pa.timestamp("us", tz="UTC")), "name": ["a"], "id": [1]})
    shaped, grows = conform(data, TABLE, "t")
    assert shaped.schema == TABLE and not grows


def test_missing_nullable_columns_are_filled_with_nulls() -> None:
    shaped, grows = conform(pa.table({"id": [1, 2]}), TABLE, "t")
    assert shaped.schema == TABLE and not grows
    assert shaped.column("name").to_pylist() == [None, None]


def test_new_columns_are_appended_as_nullable_stored_types() -> None:
    data = pa.table({"id": pa.array([1], pa.int64()), "name": ["a"], "ts": pa.array([None], pa.timestamp("us")),
                     "extra": pa.array(["x"], pa.large_string())},
                    schema=pa.schema([("id", pa.int64()), ("name", pa.string()), ("ts", pa.timestamp("us", tz="UTC")),
                                      pa.field("extra", pa.large_string(), nullable=False)]))
    shaped, grows = conform(data, TABLE, "t")
    assert grows
    assert shaped.schema.field("extra") == pa.field("extra", pa.string(), nullable=True)
    assert shaped.schema.names == ["id", "name", "ts", "extra"]


def test_lossless_casts_are_made() -> None:
    ns = pa.array([datetime(2024, 1, 1, 12, tzinfo=UTC)], pa.timestamp("ns", tz="Asia/Tokyo"))
    data = pa.table({"id": pa.array([7], pa.int8()), "name": pa.array(["a"], pa.large_string()), "ts": ns})
    shaped, _ = conform(data, TABLE, "t")
    assert shaped.schema == TABLE
    assert shaped.to_pylist() == [{"id": 7, "name": "a", "ts": datetime(2024, 1, 1, 12, tzinfo=UTC)}]


@pytest.mark.parametrize(("data", "message"), [
    (pa.table({"name": ["a"]}), "required column 'id'"),
    (pa.table({"id": pa.array([1.5])}), "column 'id' is int64 in the table but double"),
    (pa.table({"id": [1], "name": pa.array([1], pa.int64())}), "column 'name' is string in the table but int64"),
    (pa.table({"id": pa.array([1], pa.int64()), "qty": [3]}), None),
    (pa.table({"id": [None, 1]}, schema=pa.schema([("id", pa.int64())])), "required column 'id' has 1 null"),
])
def test_breaking_changes_are_refused_naming_the_column(data: pa.Table, message: str | None) -> None:
    if message is None:  # a new column of a type no missing column has is not a rename
        assert conform(data, TABLE, "t")[1] is True
        return
    with pytest.raises(SchemaError, match=message):
        conform(data, TABLE, "t")


def test_a_rename_is_refused_with_both_names() -> None:
    with pytest.raises(SchemaError, match=r"lacks column 'name' and brings a new column 'title'"):
        conform(pa.table({"id": [1], "title": ["a"], "ts": pa.array([None], pa.timestamp("us", tz="UTC"))}),
                TABLE, "t")


def test_narrowing_an_integer_is_refused() -> None:
    table = pa.schema([("n", pa.int32())])
    with pytest.raises(SchemaError, match="column 'n' is int32 in the table but int64"):
        conform(pa.table({"n": pa.array([1], pa.int64())}), table, "t")


def test_unsigned_values_that_do_not_fit_are_refused() -> None:
    table = pa.schema([("n", pa.int64())])
    with pytest.raises(SchemaError, match="do not fit"):
        conform(pa.table({"n": pa.array([2**64 - 1], pa.uint64())}), table, "t")


def test_duplicate_columns_are_refused() -> None:
    data = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["id", "id"])
    with pytest.raises(SchemaError, match="duplicate columns"):
        conform(data, TABLE, "t")
