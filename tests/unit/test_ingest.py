"""Ingest parsing: every bad field is named, and a request with one bad event is refused whole."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pyarrow as pa
import pytest

import keel
from keel.errors import ValidationError
from keel.project.declare import Stream
from keel.serve.ingest import accepted_body, check_bounds, parse_events, to_batch
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


@pytest.mark.parametrize("depth", [10_000, 100_000])
@pytest.mark.parametrize("shape", ["array", "object", "in_a_field"])
@pytest.mark.parametrize("ndjson", [False, True])
def test_deeply_nested_json_is_a_validation_error(depth: int, shape: str, ndjson: bool) -> None:
    nested = {"array": b"[" * depth + b"]" * depth, "object": b'{"a":' * depth + b"1" + b"}" * depth,
              "in_a_field": b'{"user_id":"u","item_id":' + b"[" * depth + b"]" * depth + b',"price":1}'}[shape]
    good = b'{"user_id":"u","item_id":"i","price":1}'
    body = good + b"\n" + nested if ndjson else nested
    with pytest.raises(ValidationError) as info:
        parse_events(Purchase, body, ndjson=ndjson)
    (error,) = info.value.errors
    assert "nested too deeply" in str(error["error"])
    assert error["index"] == (1 if ndjson else None)


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


class Priced(keel.Event):
    price: float


def test_a_float_key_is_its_python_text_in_every_batch() -> None:
    """Keys of the same value land on the same partition whatever else is in the batch."""
    alone = to_batch(parse_events(Priced, b'[{"price":2.0}]', ndjson=False), "price", 1)[0]
    mixed = to_batch(parse_events(Priced, b'[{"price":2.0},{"price":2.5}]', ndjson=False), "price", 1)[0]
    assert alone.column("key").to_pylist() == [b"2.0"]
    assert mixed.column("key").to_pylist() == [b"2.0", b"2.5"]


NOON = 1_900_000_000_000  # 2030-03-17T17:46:40Z, the ack time of the bound tests


def bounded(stream: Stream, body: bytes) -> list[tuple[object, object]]:
    events = parse_events(stream.schema, body, ndjson=False)
    batch, _ = to_batch(events, None, 1, NOON)
    try:
        check_bounds(stream, events, batch, NOON)
    except ValidationError as exc:
        return [(e["index"], e["field"]) for e in exc.errors]
    return []


def test_a_stream_declares_its_event_time_window() -> None:
    hour_back = Stream(name="s", schema=Purchase, max_past=3600.0, max_future=None)
    ev = b'{"user_id":"u","item_id":"i","price":1,"ts":"%s"}'
    body = b"[" + b",".join([ev % b"2030-03-17T16:46:40Z", ev % b"2030-03-17T16:46:39Z", ev % b"2199-12-31T00:00:00Z",
                             b'{"user_id":"u","item_id":"i","price":1}']) + b"]"
    assert bounded(hour_back, body) == [(1, "ts")]  # an hour back is in, a second more is out, no future bound
    assert bounded(Stream(name="s", schema=Purchase), body) == [(2, "ts")]  # defaults: 1 day ahead, no past bound
    assert bounded(Stream(name="s", schema=Purchase, max_future=0.0), ev % b"2030-03-17T17:46:40.001Z") == [(0, "ts")]
    assert hour_back.event_time_bounds(NOON) == (NOON - 3_600_000, 7258118399999)  # up to 2199-12-31T23:59:59.999


def test_the_declaration_takes_durations_and_refuses_nonsense() -> None:
    from keel.project.catalog import collecting

    with collecting():
        s = keel.stream("s", Purchase, max_future="2h", max_past="30d", max_event_bytes=4096)
        assert (s.max_future, s.max_past, s.max_event_bytes) == (7200.0, 2592000.0, 4096)
        d = keel.stream("d", Purchase)
        assert (d.max_future, d.max_past, d.max_event_bytes) == (86400.0, None, 900_000)
        for bad, why in (({"max_future": -5}, "max_future must be"), ({"max_past": "soon"}, "bad duration"),
                         ({"max_event_bytes": 0}, "max_event_bytes must be")):
            with pytest.raises(ValueError, match=why):
                keel.stream("x", Purchase, **bad)  # type: ignore[arg-type]
    sized = Stream(name="s", schema=Purchase, max_event_bytes=60)
    assert bounded(sized, b'[{"user_id":"u","item_id":"i","price":1},{"user_id":"u","item_id":"%s","price":1}]'
                   % (b"x" * 40)) == [(1, "item_id")]
    # the key counts too: 59 bytes of JSON pass alone, not with a 2-byte key
    events = parse_events(Purchase, b'{"user_id":"uu","item_id":"%s","price":1}' % (b"x" * 8), ndjson=False)
    assert len(to_batch(events, None, 1)[0].column("value")[0].as_py()) == 59
    for key, refused in ((None, False), ("user_id", True)):
        batch, _ = to_batch(events, key, 1, NOON)
        if refused:
            with pytest.raises(ValidationError, match="its JSON and its key"):
                check_bounds(sized, events, batch, NOON)
        else:
            check_bounds(sized, events, batch, NOON)


def test_an_event_time_without_offset_is_utc_whatever_the_servers_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the processors read it: the bus timestamp and the bounds must not move with the server's TZ."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        events = parse_events(Purchase, b'{"user_id":"u","item_id":"i","price":1,"ts":"2024-05-01T10:00:00"}', False)
        stamps = to_batch(events, None, 1)[0].column("timestamp").cast(pa.int64()).to_pylist()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert stamps == [1714557600000]  # 2024-05-01T10:00:00Z


class Counted(keel.Event):
    n: int
    maybe: int | None = None
    many: list[int] = []
    positive: Annotated[int, msgspec.Meta(ge=0)] = 0


@pytest.mark.parametrize(("body", "field"), [
    (b'{"n":9223372036854775808}', "n"), (b'{"n":-9223372036854775809}', "n"),
    (b'{"n":1,"maybe":123456789012345678901234567890}', "maybe"), (b'{"n":1,"many":[1,99999999999999999999]}', "many"),
    (b'{"n":1,"positive":99999999999999999999}', "positive"), (b'{"n":1,"positive":-1}', "positive")])
def test_ints_the_lake_cannot_store_and_declared_bounds_are_named(body: bytes, field: str) -> None:
    """An int beyond 64 bits would be dead-lettered by every processor (Arrow and Delta store int64):
    refused here, like a value outside the bounds a schema declares with msgspec.Meta."""
    with pytest.raises(ValidationError) as info:
        parse_events(Counted, body, ndjson=False)
    assert [(e["index"], e["field"]) for e in info.value.errors] == [(0, field)]


def test_int64_edges_are_accepted_and_events_keep_their_class() -> None:
    (event,) = parse_events(Counted, b'{"n":9223372036854775807,"maybe":-9223372036854775808,"many":[0]}', False)
    assert isinstance(event, Counted) and (event.n, event.maybe) == (2**63 - 1, -(2**63))
    assert msgspec.json.decode(to_batch([event], "n", 1)[0].column("value")[0].as_py())["n"] == 2**63 - 1
