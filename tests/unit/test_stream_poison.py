"""Poison records on the file:// bus: whatever a producer writes, every processor of the stream (a
landing, a keel.processor, an aggregation) goes on; every good record lands exactly once, every bad
one is in `<stream>.dlq` with its source partition, offset, unchanged bytes and reason, and
`keel dlq` shows and replays it. The records are produced raw (bus.produce of a record batch), as a
plain Kafka producer would, not through the gateway."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

import keel
from keel.bus import dlq_name, ops
from keel.bus.base import HEADERS_TYPE, StreamConfig
from keel.project.catalog import collecting
from keel.streaming.runner import Runner
from tests.unit.test_stream_runner import engines

BASE = datetime(2024, 1, 1, tzinfo=UTC)
BASE_MS = int(BASE.timestamp() * 1000)
MB = 1 << 20


class Click(keel.Event):
    user_id: str
    item_id: str
    n: int | None = None
    price: float | None = None


def good(user: str, item: str, second: float) -> bytes:
    return json.dumps({"user_id": user, "item_id": item, "ts": (BASE + timedelta(seconds=second)).isoformat()}).encode()


@dataclass
class Record:
    value: bytes | None  # None: a Kafka tombstone (the file:// bus takes no null value)
    reason: str | None = None  # a part of the dead-letter reason; None for a good record
    timestamp_ms: int | None = None  # the bus timestamp (default: BASE + 1 min)


def poison() -> list[Record]:
    """Every kind of bad record, between good ones, in one batch."""
    far = (BASE + timedelta(days=2)).isoformat()
    soon = datetime.now(UTC) + timedelta(days=2)  # the stream's max_future is 1 day
    return [
        Record(good("u1", "a", 1)),
        Record(b"hello, not json", "not JSON"),
        Record(good("u2", "a", 2)),
        Record(b'{"user_id": "\xff\xfe", "item_id": "a"}', "not UTF-8"),
        Record(b'{"user_id": "u3"}', "missing required field `item_id`"),
        Record(good("u3", "b", 3)),
        Record(b'{"user_id": 5, "item_id": "a"}', "Expected `str`, got `int` - at `$.user_id`"),
        Record(b'{"user_id": "u4", "item_id": "a", "n": "five"}', "Expected `int | null`, got `str` - at `$.n`"),
        Record(b"[1, 2, 3]", "Expected `object`, got `array`"),
        Record(b"", "empty value"),
        Record(good("u4", "a", 4) + b"\n" + good("u5", "a", 5), "not JSON"),  # two events in one value
        Record(b'{"user_id": "' + b"x" * (10 * MB) + b'"}', "missing required field `item_id`"),
        Record(json.dumps({"user_id": "u" * (3 * MB), "item_id": "c",
                           "ts": (BASE + timedelta(seconds=6)).isoformat()}).encode()),  # 3 MB, good
        Record(json.dumps({"user_id": "u6", "item_id": "a", "ts": far}).encode(), "ahead of the record's bus timestamp"),
        Record(json.dumps({"user_id": "u6", "item_id": "a", "ts": soon.isoformat()}).encode(), "ahead of now",
               timestamp_ms=int(soon.timestamp() * 1000)),  # its producer stamps records with their event time
        Record(b'{"user_id": "u7", "item_id": "a", "ts": "0000-06-01T00:00:00Z"}', "outside the event times"),
        Record(b'{"user_id": "u8", "item_id": "a"}', "outside the event times", timestamp_ms=10**15),  # bus time
        Record(good("u1", "b", 7)),
    ]


def produce(rt: Any, stream: str, records: list[Record], first_id: int = 0) -> list[tuple[int, int]]:
    """Produce raw records (event ids e<first_id>...); returns each one's (partition, offset)."""
    n = len(records)
    produced = rt.bus.produce(stream, pa.table({
        "key": pa.array([f"k{(first_id + i) % 5}".encode() for i in range(n)], pa.binary()),
        "value": pa.array([r.value for r in records], pa.binary()),
        "timestamp": pa.array([r.timestamp_ms if r.timestamp_ms is not None else BASE_MS + 60_000 for r in records],
                              pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "headers": pa.array([[("event_id", f"e{first_id + i}".encode())] for i in range(n)], HEADERS_TYPE)}))
    return list(zip(produced.partitions.tolist(), produced.offsets.tolist()))


def drain(runner: Runner, steps: int = 30) -> None:
    for _ in range(steps):
        runner.step(timeout=0.02)
    runner.flush()


def raw_dead_letters(rt: Any, stream: str) -> list[dict[str, Any]]:
    """The dead-letter stream as stored (bytes, not decoded), read by a group of the test's own."""
    consumer = rt.bus.consumer(dlq_name(stream), "test-raw-reader", partitions=[0])
    consumer.seek(0, 0)
    out: list[dict[str, Any]] = []
    for _ in range(50):
        batch = consumer.poll(10_000, timeout=0.05)
        out += batch.drop_columns(["timestamp"]).to_pylist()  # a bus timestamp may be beyond datetime
        if batch.num_rows == 0 and out:
            break
    consumer.close()
    return out


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[SimpleNamespace]:
    with collecting():
        clicks = keel.stream("clicks", Click, key="user_id", partitions=2)
        land = keel.land(clicks, keel.table("clicks"))

        @keel.processor(clicks, into=keel.table("items"))
        def items(batch):  # type: ignore[no-untyped-def]
            return batch.select("event_id", "item_id")

        @keel.aggregate(clicks, by="item_id", window=keel.tumbling("1m"), lateness="10s",
                        into=[keel.view("counts"), keel.table("counts_1m")])
        def counts(w):  # type: ignore[no-untyped-def]
            return {"views": w.count()}
    rt = engines(tmp_path, ["counts"])
    rt.bus.create_stream(StreamConfig("clicks", 2))
    yield SimpleNamespace(rt=rt, land=land, items=items, counts=counts)
    rt.bus.close()
    rt.views.kv.close()


def test_every_processor_goes_on_past_poison_records_and_dead_letters_each_with_its_reason(shop: Any) -> None:
    records = poison()
    where = produce(shop.rt, "clicks", records)
    runners = [Runner(decl, shop.rt, max_records=100) for decl in (shop.land, shop.items, shop.counts)]
    for r in runners:
        r.start()
        drain(r)
    ids = {f"e{i}" for i, r in enumerate(records) if r.reason is None}
    landed = shop.rt.lake.read("clicks", columns=["event_id"]).column("event_id").to_pylist()
    assert sorted(landed) == sorted(ids)  # every good record once, and nothing else
    assert sorted(shop.rt.lake.read("items", columns=["event_id"]).column("event_id").to_pylist()) == sorted(ids)

    shown = ops.dlq_show(shop.rt.bus, "clicks")
    bad = {where[i]: r for i, r in enumerate(records) if r.reason is not None}
    assert {(d["partition"], d["offset"]) for d in shown} == set(bad)
    assert len(shown) == len(bad)  # each once, though three processors dead-lettered most of them
    for d in shown:
        record = bad[(d["partition"], d["offset"])]
        assert d["stream"] == "clicks"
        assert record.reason in d["reason"]
        assert sorted(d["processor"].split(", ")) == ["counts", "items", "land_clicks"]
    # the stored dead letters hold the records as produced: bytes, key, timestamp and headers
    for raw in raw_dead_letters(shop.rt, "clicks"):
        h = dict(raw["headers"])
        i = int(h["event_id"].decode()[1:])
        assert raw["value"] == records[i].value
        assert where[i] == (int(h["source_partition"]), int(h["source_offset"]))
        assert raw["key"] == f"k{i % 5}".encode()

    # the far-future event did not move the watermark: later ordinary events are on time
    more = [Record(good("u1", "a", 30))] + [Record(good(f"u{i}", "q", 200)) for i in range(5)]  # every key
    produce(shop.rt, "clicks", more, first_id=len(records))
    drain(runners[2])
    assert "counts_late" not in shop.rt.lake.list_tables()
    closed = pl.from_arrow(shop.rt.lake.read("counts_1m")).sort("window_start", "item_id")
    assert closed.select(pl.col("window_start").dt.epoch("s") - int(BASE.timestamp()), "item_id", "views").rows() == \
        [(0, "a", 3), (0, "b", 2), (0, "c", 1)]  # u1 a, u2 a, u1 a @30 s; u3 b, u1 b; the 3 MB event
    for r in runners:
        r.consumer.close()


def test_a_restart_neither_dies_nor_loses_nor_dead_letters_again(shop: Any) -> None:
    records = poison()
    produce(shop.rt, "clicks", records)
    for decl in (shop.land, shop.counts):
        first = Runner(decl, shop.rt, max_records=7)  # several batches, some of only dead letters
        first.start()
        drain(first)
        first.consumer.close()
    dead = shop.rt.bus.describe(dlq_name("clicks")).partitions[0].end_offset
    assert dead > 0
    more = [Record(good("u1", "a", 40)), Record(b"garbage"), Record(good("u2", "a", 41))]
    produce(shop.rt, "clicks", more, first_id=len(records))
    for decl in (shop.land, shop.counts):
        again = Runner(decl, shop.rt, max_records=7)
        again.start()
        drain(again)
        assert again.stats.events == 3  # resumed after the dead letters, not at them
        again.consumer.close()
    assert shop.rt.bus.describe(dlq_name("clicks")).partitions[0].end_offset == dead + 2  # the new one, twice
    ids = {f"e{i}" for i, r in enumerate(records) if r.reason is None}
    ids |= {f"e{len(records)}", f"e{len(records) + 2}"}
    landed = shop.rt.lake.read("clicks", columns=["event_id"]).column("event_id").to_pylist()
    assert sorted(landed) == sorted(ids)


def test_dead_letters_replay_once_into_the_stream_after_the_schema_is_fixed(tmp_path: Path) -> None:
    class Strict(keel.Event):
        user_id: str
        item_id: str
        n: int

    class Fixed(keel.Event):  # the field the producer omits becomes optional: a compatible change
        user_id: str
        item_id: str
        n: int | None = None

    def declare(schema: type[keel.Event]) -> Any:
        with collecting():
            clicks = keel.stream("clicks", schema, key="user_id")

            @keel.aggregate(clicks, by="item_id", window=keel.tumbling("1m"), into=[keel.table("counts_1m")])
            def counts(w):  # type: ignore[no-untyped-def]
                return {"views": w.count()}
        return counts

    rt = engines(tmp_path, [])
    rt.bus.create_stream(StreamConfig("clicks", 1))
    values = [b'{"user_id": "u1", "item_id": "a", "n": 1, "ts": "2024-01-01T00:00:01Z"}',
              b'{"user_id": "u2", "item_id": "a", "ts": "2024-01-01T00:00:02Z"}',  # no n
              b'{"user_id": "u3", "item_id": "a", "ts": "2024-01-01T00:00:03Z"}']  # no n
    produce(rt, "clicks", [Record(v) for v in values])
    runner = Runner(declare(Strict), rt)
    runner.start()
    drain(runner)
    runner.consumer.close()
    assert [d["reason"] for d in ops.dlq_show(rt.bus, "clicks")] == ["not a valid Strict: Object missing required field `n`"] * 2

    assert ops.dlq_replay(rt.bus, "clicks") == 2
    assert ops.dlq_show(rt.bus, "clicks") == []
    fixed = Runner(declare(Fixed), rt)
    fixed.start()
    produce(rt, "clicks", [Record(good("u4", "b", 70))], first_id=3)  # closes the first minute
    drain(fixed)
    fixed.consumer.close()
    closed = pl.from_arrow(rt.lake.read("counts_1m"))
    assert closed.select("item_id", "views").rows() == [("a", 3)]  # u1, and u2 and u3 replayed once each
    assert ops.dlq_show(rt.bus, "clicks") == []
    rt.bus.close()
    rt.views.kv.close()


def test_the_fast_path_parses_a_batch_of_good_records_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Isolation costs nothing when nothing is bad: one parse of the whole batch, no bisection."""
    from keel.streaming import decode as decode_mod

    calls = []
    real = decode_mod.parse_values
    monkeypatch.setattr(decode_mod, "parse_values", lambda v, s: calls.append(len(v)) or real(v, s))
    n = 1000
    batch = pa.record_batch({
        "partition": pa.array([0] * n, pa.int32()), "offset": pa.array(range(n), pa.int64()),
        "timestamp": pa.array([BASE_MS] * n, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "key": pa.nulls(n, pa.binary()), "value": pa.array([good("u", "a", i) for i in range(n)], pa.binary()),
        "headers": pa.nulls(n, HEADERS_TYPE)})
    decoded = decode_mod.decode_records(batch, Click)
    assert calls == [n] and decoded.bad == [] and decoded.events.height == n
    one_bad = pa.record_batch([batch.column(i) if batch.schema.names[i] != "value" else
                               pa.array([good("u", "a", i) if i != 500 else b"{" for i in range(n)], pa.binary())
                               for i in range(batch.num_columns)], schema=batch.schema)
    calls.clear()
    decoded = decode_mod.decode_records(one_bad, Click)
    assert [i for i, _ in decoded.bad] == [500] and decoded.events.height == n - 1
    assert calls == [n, n - 1]  # the batch, then the values the screen let through: no per-record parse


def test_a_record_is_judged_alike_in_a_clean_batch_and_beside_a_bad_one() -> None:
    """The slow path takes exactly what the fast path takes: values Arrow reads but msgspec would not."""
    from keel.streaming.decode import decode_records

    edge = [b'{"user_id": "u", "item_id": "a", "ts": "2024-01-01"}',  # a date for a datetime
            b'{"user_id": "u", "item_id": "a", "price": NaN}',  # not JSON, but Arrow reads NaN
            b'{"user_id": "u", "item_id": "a", "price": 3}',  # an int for a float
            b'{"user_id": "u", "item_id": "a", "n": 99999999999999999999}',  # beyond int64: Arrow refuses
            b'{"user_id": "u", "item_id": "a", "item_id": "b"}']  # a field twice: Arrow refuses
    alone = [decode_records(records([v], [BASE_MS]), Click).rows.size for v in edge]
    assert alone == [1, 1, 1, 0, 0]
    mixed = decode_records(records(edge + [b"garbage"], [BASE_MS] * 6), Click)
    assert mixed.rows.tolist() == [0, 1, 2] and [i for i, _ in mixed.bad] == [3, 4, 5]


def records(values: list[bytes], bus_ms: list[int]) -> pa.RecordBatch:
    n = len(values)
    return pa.record_batch({
        "partition": pa.array([0] * n, pa.int32()), "offset": pa.array(range(n), pa.int64()),
        "timestamp": pa.array(bus_ms, pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "key": pa.nulls(n, pa.binary()), "value": pa.array(values, pa.binary()), "headers": pa.nulls(n, HEADERS_TYPE)})


def test_event_times_outside_the_stream_bounds_are_refused_with_the_bound_named() -> None:
    from keel.streaming.decode import TimeBounds, decode_records

    def at(iso: str) -> bytes:
        return b'{"user_id": "u", "item_id": "a", "ts": "' + iso.encode() + b'"}'

    bounds = TimeBounds(max_future=60.0, max_past=3600.0, earliest_us=0, latest_us=4_102_444_800_000_000 - 1)
    bus = BASE_MS
    batch = records([at("2024-01-01T00:00:59Z"), at("2024-01-01T00:01:01Z"),  # 59 s, 61 s ahead
                     at("2023-12-31T23:00:00Z"), at("2023-12-31T22:59:59Z"),  # 1 h, 1 h 1 s behind
                     at("1969-12-31T23:59:59Z"), b'{"user_id": "u", "item_id": "a"}'],  # before the earliest; no ts
                    [bus, bus, bus, bus, bus, 4_102_444_800_000])  # the last one's bus time is the latest + 1 µs
    decoded = decode_records(batch, Click, bounds)
    assert decoded.rows.tolist() == [0, 2]
    reasons = dict(decoded.bad)
    assert "more than 60 s ahead" in reasons[1] and "more than 3600 s behind" in reasons[3]
    assert "outside" in reasons[4] and "outside" in reasons[5]
    unbounded = decode_records(batch, Click, TimeBounds(max_future=None, earliest_us=0))
    assert unbounded.rows.tolist() == [0, 1, 2, 3, 5]
    # stamped with their own event times, 59 s and 61 s after the processor's clock
    stamped = records([at("2024-01-01T00:00:59Z"), at("2024-01-01T00:01:01Z")], [bus + 59_000, bus + 61_000])
    decoded = decode_records(stamped, Click, bounds, now_us=bus * 1000)
    assert decoded.rows.tolist() == [0] and "more than 60 s ahead of now" in dict(decoded.bad)[1]


@pytest.mark.parametrize("window", ["tumbling", "session"])
def test_an_event_whose_window_would_end_after_the_year_9999_is_dead_lettered_not_a_crash(
        tmp_path: Path, window: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reachable when a stream's bounds let such times through (the default bounds of streams do not)."""
    from keel.streaming import stateful as stateful_mod
    from keel.streaming.decode import TimeBounds

    with collecting():
        clicks = keel.stream("clicks", Click, key="user_id")

        @keel.aggregate(clicks, by="item_id", window=keel.tumbling("1h") if window == "tumbling" else keel.session("1h"),
                        into=[keel.table("counts"), keel.view("counts")], top=3)
        def counts(w):  # type: ignore[no-untyped-def]
            return {"views": w.count()}
    rt = engines(tmp_path, ["counts"])
    rt.bus.create_stream(StreamConfig("clicks", 1))
    end_ms = 253_402_300_740_000  # 9999-12-31T23:59:00Z
    produce_at = [Record(b'{"user_id": "u", "item_id": "a", "ts": "9999-12-31T23:59:00Z"}', timestamp_ms=end_ms),
                  Record(b'{"user_id": "u", "item_id": "a", "ts": "9999-12-31T21:00:00Z"}', timestamp_ms=end_ms)]
    produce(rt, "clicks", produce_at)
    monkeypatch.setattr(stateful_mod, "time_bounds", lambda stream: TimeBounds(max_future=None))  # years 1-9999
    runner = Runner(counts, rt)
    runner.start()
    drain(runner)
    runner.consumer.close()
    shown = ops.dlq_show(rt.bus, "clicks")
    assert [(d["offset"], d["stage"]) for d in shown] == [(0, "window")]
    assert "after the year 9999" in shown[0]["reason"]
    assert runner.stats.events == 2
    assert rt.views.get("counts", "a")["views"] == 1  # the other event was counted
    rt.bus.close()
    rt.views.kv.close()


def test_an_event_id_header_that_is_not_text_falls_back_to_partition_and_offset() -> None:
    from keel.streaming.decode import decode_records

    batch = records([good("u", "a", 1), good("u", "a", 2)], [BASE_MS, BASE_MS])
    batch = batch.set_column(batch.schema.get_field_index("headers"), "headers",
                             pa.array([[("event_id", b"\xff\xfe")], [("event_id", b"e1")]], HEADERS_TYPE))
    decoded = decode_records(batch, Click)
    assert decoded.events.get_column("event_id").to_list() == ["0:0", "e1"]


def test_a_record_without_a_value_is_refused_with_its_reason() -> None:
    """A Kafka tombstone (null value) reaches a processor only from Kafka; decode must refuse it."""
    from keel.streaming.decode import decode_records

    decoded = decode_records(records([None, good("u", "a", 1)], [BASE_MS, BASE_MS]), Click)  # type: ignore[list-item]
    assert decoded.rows.tolist() == [1] and decoded.bad[0][0] == 0 and "no value" in decoded.bad[0][1]


def test_a_stateful_function_that_raises_dead_letters_its_records_and_keeps_the_state_of_the_rest(
        tmp_path: Path) -> None:
    with collecting():
        clicks = keel.stream("clicks", Click, key="user_id")

        @keel.stateful(clicks, key="user_id", into=keel.view("totals"))
        def totals(batch, state):  # type: ignore[no-untyped-def]
            seen = batch.group_by("user_id").agg(pl.len().alias("n"))
            old = state.get(seen["user_id"], schema={"n": pl.UInt32})
            new = seen.join(old, on="user_id", how="left", suffix="_old").select(
                "user_id", (pl.col("n") + pl.col("n_old").fill_null(0)).alias("n"))
            state.put(new)  # the state is changed before the function fails below
            if (batch["item_id"] == "boom").any():
                raise ValueError("item boom cannot be counted")
            return new
    rt = engines(tmp_path, ["totals"])
    rt.bus.create_stream(StreamConfig("clicks", 1))
    produce(rt, "clicks", [Record(good("u1", "a", 1)), Record(good("u2", "boom", 2)), Record(good("u1", "b", 3)),
                           Record(good("u2", "c", 4))])
    runner = Runner(totals, rt)
    runner.start()
    drain(runner)
    runner.consumer.close()
    runner.engine.close()
    dead = ops.dlq_show(rt.bus, "clicks")
    assert [(d["offset"], d["stage"]) for d in dead] == [(1, "transform")]
    assert "item boom cannot be counted" in dead[0]["reason"]
    # the failing record's change to the state was rolled back: u2 counts only its good event
    assert rt.views.get("totals", "u1")["n"] == 2
    assert rt.views.get("totals", "u2")["n"] == 1
    restarted = Runner(totals, rt)  # and a restart goes on from the checkpoint instead of failing again
    restarted.start()
    drain(restarted, steps=3)
    restarted.consumer.close()
    restarted.engine.close()
    assert len(ops.dlq_show(rt.bus, "clicks")) == 1
    rt.bus.close()
    rt.views.kv.close()
