"""Ingest parsing: every bad field is named, and a request with one bad event is refused whole."""

from __future__ import annotations

import msgspec
import pyarrow as pa
import pytest

import keel
from keel.errors import ValidationError
from keel.serve.ingest import accepted_body, parse_events, to_batch
from keel.streaming.decode import to_events


class Purchase(keel.Event):
    user_id: str
    item_id: str
    price: float


def test_object_array_and_ndjson_are_accepted() -> None:
    one = parse_events(Purchase, b'{"user_id":"u","item_id":"i","price":1.5}', ndjson=False)
    many = parse_events(Purchase, b'[{"user_id":"u","item_id":"i","price":1},{"user_id":"v","item_id":"j","price":2}]',
                        ndjson=False)
    lines = parse_events(Purchase, b'{"user_id":"u","item_id":"i","price":1}\n\n{"user_id":"v","item_id":"j","price":2}\n',
                         ndjson=True)
    assert [e.user_id for e in one] == ["u"]
    assert [e.price for e in many] == [1.0, 2.0]
    assert [e.user_id for e in lines] == ["u", "v"]


def test_each_bad_field_of_each_event_is_named() -> None:
    body = b'[{"user_id":"u","item_id":"i","price":1},{"user_id":7,"price":"x","colour":"red"}]'
    with pytest.raises(ValidationError) as info:
        parse_events(Purchase, body, ndjson=False)
    found = {(e["index"], e["field"]) for e in info.value.errors}
    assert found == {(1, "user_id"), (1, "price"), (1, "item_id"), (1, "colour")}


def test_body_that_is_not_json() -> None:
    with pytest.raises(ValidationError) as info:
        parse_events(Purchase, b"{nope", ndjson=False)
    assert "not valid JSON" in str(info.value.errors[0]["error"])


def test_batch_round_trips_into_lake_rows() -> None:
    events = parse_events(Purchase, b'[{"user_id":"u","item_id":"i","price":2.5,"ts":"2024-05-01T10:00:00Z"},'
                                    b'{"user_id":"v","item_id":"j","price":3}]', ndjson=False)
    batch, ids = to_batch(events, "user_id", 1)
    assert batch.column("key").to_pylist() == [b"u", b"v"]
    records = pa.record_batch({
        "partition": pa.array([0, 0], pa.int32()), "offset": pa.array([0, 1], pa.int64()),
        "timestamp": batch.column("timestamp"), "key": batch.column("key"), "value": batch.column("value"),
        "headers": batch.column("headers")})
    rows = to_events(records, Purchase)
    assert rows.get_column("event_id").to_list() == ids.as_list()
    assert msgspec.json.decode(accepted_body(ids)) == {"accepted": 2, "event_ids": ids.as_list()}
    assert rows.get_column("price").to_list() == [2.5, 3.0]
    assert str(rows.get_column("event_date")[0]) == "2024-05-01"


class Reading(keel.Event):
    sensor: int | None
    note: str


def test_batch_columns_match_each_event_encoded_alone() -> None:
    """The columnar build gives what one encode per event would: values (newlines inside strings
    included), keys as text (ints in decimal, None as a null key) and event times."""
    events = parse_events(Reading, b'[{"sensor":12,"note":"two\\nlines"},{"sensor":null,"note":"}\\n{"},'
                                   b'{"sensor":-3,"note":"\xc3\xa9","ts":"2024-05-01T10:00:00.250Z"}]', ndjson=False)
    batch, ids = to_batch(events, "sensor", 4)
    assert batch.column("value").to_pylist() == [msgspec.json.encode(e) for e in events]
    assert batch.column("key").to_pylist() == [b"12", None, b"-3"]
    stamps = batch.column("timestamp").cast(pa.int64()).to_pylist()
    assert stamps[2] == 1714557600250 and abs(stamps[0] - stamps[1]) < 1000
    headers = batch.column("headers").to_pylist()
    assert [dict(h) for h in headers] == [{"event_id": i.encode(), "schema_version": b"4"} for i in ids.as_list()]
    assert len(set(ids.as_list())) == 3 and all(len(i) == 32 for i in ids.as_list())
    assert to_batch(events, "note", 1)[0].column("key").to_pylist() == ["two\nlines".encode(), b"}\n{", "é".encode()]
    huge = parse_events(Reading, b'[{"sensor":123456789012345678901234567890,"note":""},{"sensor":1,"note":""}]',
                        ndjson=False)
    assert to_batch(huge, "sensor", 1)[0].column("key").to_pylist() == [b"123456789012345678901234567890", b"1"]


class Priced(keel.Event):
    price: float


def test_a_float_key_is_its_python_text_in_every_batch() -> None:
    """Keys of the same value land on the same partition whatever else is in the batch."""
    alone = to_batch(parse_events(Priced, b'[{"price":2.0}]', ndjson=False), "price", 1)[0]
    mixed = to_batch(parse_events(Priced, b'[{"price":2.0},{"price":2.5}]', ndjson=False), "price", 1)[0]
    assert alone.column("key").to_pylist() == [b"2.0"]
    assert mixed.column("key").to_pylist() == [b"2.0", b"2.5"]
