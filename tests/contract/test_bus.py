"""The bus contract (keel.bus.base), one suite for every engine. Uses only the Protocol."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pytest

from keel.bus import Bus, Consumer, StreamConfig, dlq_name
from keel.bus.base import HEADERS_TYPE, RECORD_SCHEMA, TIMESTAMP_TYPE, partition_for
from keel.bus.kafka import KafkaBus, kafka_partitions
from keel.errors import ConflictError, NotFoundError, SchemaError

DEADLINE = 30.0  # seconds a test waits for records that must arrive (never reached when the engine works)


def values(n: int, prefix: str = "v") -> pa.RecordBatch:
    return pa.record_batch({"value": pa.array([f"{prefix}{i}".encode() for i in range(n)], pa.binary())})


def keyed(keys: list[bytes | None], prefix: str = "v") -> pa.RecordBatch:
    return pa.record_batch({
        "key": pa.array(keys, pa.binary()),
        "value": pa.array([f"{prefix}{i}".encode() for i in range(len(keys))], pa.binary()),
    })


def drain(consumer: Consumer, n: int, max_records: int = 10_000) -> pa.Table:
    """Poll until `n` records came (or the deadline passed); then check that no more come."""
    got: list[pa.RecordBatch] = []
    count, end = 0, time.monotonic() + DEADLINE
    while count < n and time.monotonic() < end:
        batch = consumer.poll(max_records, timeout=0.5)
        got.append(batch)
        count += batch.num_rows
    return pa.Table.from_batches(got, schema=RECORD_SCHEMA)


def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


Placement = Callable[[pa.Array, int], np.ndarray]


@pytest.fixture
def place(bus: Bus) -> Placement:
    """The engine's key placement: Kafka's is the Java clients' (murmur2), file://'s CRC-32."""
    return kafka_partitions if isinstance(bus, KafkaBus) else partition_for


@pytest.fixture
def stream(bus: Bus, stream_name: str) -> str:
    bus.create_stream(StreamConfig(stream_name, partitions=3))
    return stream_name


# -- streams ---------------------------------------------------------------------------------


def test_engine_satisfies_the_protocols(bus: Bus, stream: str) -> None:
    assert isinstance(bus, Bus)
    consumer = bus.consumer(stream, group())
    assert isinstance(consumer, Consumer)
    consumer.close()


def test_create_stream_is_idempotent_and_creates_its_dead_letter_stream(bus: Bus, stream_name: str) -> None:
    config = StreamConfig(stream_name, partitions=2)
    bus.create_stream(config)
    bus.create_stream(config)
    assert {stream_name, dlq_name(stream_name)} <= set(bus.list_streams())
    info = bus.describe(stream_name)
    assert info.config.partitions == 2 and [p.partition for p in info.partitions] == [0, 1]
    assert [p.partition for p in bus.describe(dlq_name(stream_name)).partitions] == [0]


def test_create_stream_with_another_partition_count_conflicts(bus: Bus, stream: str) -> None:
    with pytest.raises(ConflictError):
        bus.create_stream(StreamConfig(stream, partitions=5))
    assert bus.describe(stream).config.partitions == 3


def test_unknown_stream_is_not_found(bus: Bus) -> None:
    with pytest.raises(NotFoundError):
        bus.describe("no-such-stream")
    with pytest.raises(NotFoundError):
        bus.produce("no-such-stream", values(1))
    with pytest.raises(NotFoundError):
        bus.consumer("no-such-stream", group())


def test_delete_stream_removes_it(bus: Bus, stream: str) -> None:
    bus.delete_stream(stream)
    assert stream not in bus.list_streams()
    with pytest.raises(NotFoundError):
        bus.describe(stream)


def test_new_stream_is_empty(bus: Bus, stream: str) -> None:
    info = bus.describe(stream)
    assert [(p.start_offset, p.end_offset) for p in info.partitions] == [(0, 0)] * 3
    assert info.lag("nobody") == {0: 0, 1: 0, 2: 0}


# -- produce ---------------------------------------------------------------------------------


def test_produce_reports_where_each_record_landed(bus: Bus, stream: str, place: Placement) -> None:
    keys = [f"user-{i % 7}".encode() for i in range(40)]
    first = bus.produce(stream, keyed(keys))
    second = bus.produce(stream, keyed(keys))
    expected = place(pa.array(keys, pa.binary()), 3)
    assert first.partitions.tolist() == expected.tolist() == second.partitions.tolist()
    for p in range(3):
        rows = np.flatnonzero(expected == p)
        assert first.offsets[rows].tolist() == list(range(len(rows)))  # offsets start at 0, +1 per record
        assert second.offsets[rows].tolist() == list(range(len(rows), 2 * len(rows)))
    ends = {p.partition: p.end_offset for p in bus.describe(stream).partitions}
    assert ends == {p: 2 * int((expected == p).sum()) for p in range(3)}


def test_keyless_records_are_spread_round_robin(bus: Bus, stream: str) -> None:
    produced = bus.produce(stream, values(30))
    assert np.bincount(produced.partitions, minlength=3).tolist() == [10, 10, 10]


def test_records_round_trip_with_key_timestamp_and_headers(bus: Bus, stream_name: str) -> None:
    bus.create_stream(StreamConfig(stream_name, partitions=1))
    batch = pa.record_batch({
        "key": pa.array([b"k1", None], pa.binary()),
        "value": pa.array([b'{"a": 1}', b"\x00\xff"], pa.binary()),
        "timestamp": pa.array([1_700_000_000_123, 1_700_000_000_456], pa.int64()).cast(TIMESTAMP_TYPE),
        "headers": pa.array([[("event_id", b"e1"), ("schema_version", b"2")], None], HEADERS_TYPE),
    })
    bus.produce(stream_name, batch)
    consumer = bus.consumer(stream_name, group())
    got = drain(consumer, 2)
    consumer.close()
    assert got.schema.equals(RECORD_SCHEMA)
    assert got.column("offset").to_pylist() == [0, 1]
    assert got.column("partition").to_pylist() == [0, 0]
    assert got.column("key").to_pylist() == [b"k1", None]
    assert got.column("value").to_pylist() == [b'{"a": 1}', b"\x00\xff"]
    assert got.column("timestamp").cast(pa.int64()).to_pylist() == [1_700_000_000_123, 1_700_000_000_456]
    assert got.column("headers").to_pylist() == [[("event_id", b"e1"), ("schema_version", b"2")], None]


def test_a_record_without_timestamp_gets_the_append_time(bus: Bus, stream: str) -> None:
    before = time.time_ns() // 1_000_000
    bus.produce(stream, values(3))
    after = time.time_ns() // 1_000_000
    consumer = bus.consumer(stream, group())
    stamps = drain(consumer, 3).column("timestamp").cast(pa.int64()).to_pylist()
    consumer.close()
    assert len(stamps) == 3 and all(before - 1000 <= t <= after + 1000 for t in stamps)


def test_produce_takes_a_table_of_several_chunks(bus: Bus, stream: str) -> None:
    table = pa.Table.from_batches([values(4, "a"), values(5, "b")])
    produced = bus.produce(stream, table)
    assert len(produced.offsets) == 9
    consumer = bus.consumer(stream, group())
    got = drain(consumer, 9)
    consumer.close()
    assert sorted(got.column("value").to_pylist()) == sorted(table.column("value").to_pylist())


def test_bad_batches_are_refused_and_nothing_is_written(bus: Bus, stream: str) -> None:
    with pytest.raises(SchemaError):
        bus.produce(stream, pa.record_batch({"key": pa.array([b"k"])}))  # no value column
    with pytest.raises(SchemaError):
        bus.produce(stream, pa.record_batch({"value": pa.array([b"v", None], pa.binary())}))
    with pytest.raises(SchemaError):
        bus.produce(stream, pa.record_batch({"value": pa.array([b"v"]), "colour": pa.array(["red"])}))
    assert [p.end_offset for p in bus.describe(stream).partitions] == [0, 0, 0]


def test_the_dead_letter_stream_takes_records(bus: Bus, stream: str) -> None:
    produced = bus.produce(dlq_name(stream), keyed([b"a", b"b", None]))
    assert produced.partitions.tolist() == [0, 0, 0] and produced.offsets.tolist() == [0, 1, 2]


# -- poll --------------------------------------------------------------------------------------


def test_records_of_a_partition_come_in_offset_order(bus: Bus, stream: str, place: Placement) -> None:
    keys = [f"k{i % 5}".encode() for i in range(60)]
    for round_ in range(4):
        bus.produce(stream, keyed(keys, prefix=f"r{round_}-"))
    consumer = bus.consumer(stream, group())
    got = drain(consumer, 240, max_records=7)
    consumer.close()
    assert got.num_rows == 240
    for p in range(3):
        rows = got.filter(pa.compute.equal(got.column("partition"), p))
        offsets = rows.column("offset").to_pylist()
        assert offsets == list(range(len(offsets)))
        produced_order = [f"r{r}-{i}".encode() for r in range(4) for i, k in enumerate(keys)
                          if place(pa.array([k]), 3)[0] == p]
        assert rows.column("value").to_pylist() == produced_order


def test_poll_returns_at_most_max_records(bus: Bus, stream: str) -> None:
    bus.produce(stream, values(50))
    consumer = bus.consumer(stream, group())
    sizes = []
    end = time.monotonic() + DEADLINE
    while sum(sizes) < 50 and time.monotonic() < end:
        sizes.append(consumer.poll(max_records=8, timeout=0.5).num_rows)
    consumer.close()
    assert sum(sizes) == 50 and max(sizes) <= 8


def test_poll_returns_an_empty_batch_after_the_timeout(bus: Bus, stream: str) -> None:
    consumer = bus.consumer(stream, group())
    batch = consumer.poll(timeout=0.2)
    consumer.close()
    assert batch.num_rows == 0 and batch.schema.equals(RECORD_SCHEMA)


def test_a_waiting_poll_returns_when_a_record_arrives(bus: Bus, stream: str) -> None:
    consumer = bus.consumer(stream, group())
    consumer.poll(timeout=0.2)  # joined and assigned before the produce
    result: list[pa.RecordBatch] = []
    polling = threading.Event()

    def wait_for_a_record() -> None:
        polling.set()
        result.append(consumer.poll(timeout=3600))  # only a record can end this poll within the test

    waiter = threading.Thread(target=wait_for_a_record, daemon=True)
    waiter.start()
    polling.wait()
    bus.produce(stream, values(1))
    waiter.join(DEADLINE)
    assert not waiter.is_alive(), "a poll waiting for records did not return when one was produced"
    consumer.close()
    assert result[0].num_rows == 1


# -- commit, seek ------------------------------------------------------------------------------


def test_a_committed_offset_is_where_the_group_resumes(bus: Bus, stream_name: str, reopen_bus: Callable[[], Bus]) -> None:
    bus.create_stream(StreamConfig(stream_name, partitions=1))
    bus.produce(stream_name, values(10))
    g = group()
    consumer = bus.consumer(stream_name, g)
    assert drain(consumer, 10).num_rows == 10
    consumer.commit({0: 4})
    consumer.close()
    again = bus.consumer(stream_name, g)
    assert drain(again, 6).column("offset").to_pylist() == list(range(4, 10))
    again.close()
    restarted = reopen_bus().consumer(stream_name, g)
    assert drain(restarted, 6).column("offset").to_pylist() == list(range(4, 10))
    restarted.close()


def test_nothing_is_committed_implicitly(bus: Bus, stream: str) -> None:
    bus.produce(stream, values(9))
    g = group()
    consumer = bus.consumer(stream, g)
    assert drain(consumer, 9).num_rows == 9
    consumer.close()
    again = bus.consumer(stream, g)
    assert drain(again, 9).num_rows == 9
    again.close()
    assert bus.describe(stream).committed.get(g, {}) == {}


def test_groups_read_independently(bus: Bus, stream: str) -> None:
    bus.produce(stream, values(12))
    a, b = bus.consumer(stream, group()), bus.consumer(stream, group())
    assert drain(a, 12).num_rows == 12 and drain(b, 12).num_rows == 12
    a.close()
    b.close()


def test_describe_reports_commits_and_lag(bus: Bus, stream_name: str, place: Placement) -> None:
    bus.create_stream(StreamConfig(stream_name, partitions=2))
    bus.produce(stream_name, keyed([b"a"] * 5 + [b"b"] * 3))
    g = group()
    consumer = bus.consumer(stream_name, g)
    got = drain(consumer, 8)
    pa_, pb = place(pa.array([b"a", b"b"]), 2).tolist()
    consumer.commit({pa_: 2} if pa_ == pb else {pa_: 2, pb: 3})
    consumer.close()
    info = bus.describe(stream_name)
    ends = {p.partition: p.end_offset for p in info.partitions}
    assert sum(ends.values()) == got.num_rows == 8
    assert info.committed[g][pa_] == 2
    lag = info.lag(g)
    assert lag[pa_] == ends[pa_] - 2
    assert info.lag("never-committed") == ends


def test_seek_moves_the_read_position(bus: Bus, stream_name: str) -> None:
    bus.create_stream(StreamConfig(stream_name, partitions=1))
    bus.produce(stream_name, values(10))
    consumer = bus.consumer(stream_name, group())
    assert drain(consumer, 10).num_rows == 10
    consumer.seek(0, 3)
    assert drain(consumer, 7).column("offset").to_pylist() == list(range(3, 10))
    consumer.seek(0, 8)
    assert drain(consumer, 2).column("value").to_pylist() == [b"v8", b"v9"]
    consumer.close()


def test_seek_time_goes_to_the_first_record_at_or_after_the_time(bus: Bus, stream_name: str) -> None:
    bus.create_stream(StreamConfig(stream_name, partitions=1))
    t0 = 1_700_000_000_000
    for i in range(5):  # several batches, so the answer is not just "the first batch"
        stamps = [t0 + 1000 * (2 * i), t0 + 1000 * (2 * i + 1)]
        bus.produce(stream_name, pa.record_batch({
            "value": pa.array([f"v{2 * i}".encode(), f"v{2 * i + 1}".encode()], pa.binary()),
            "timestamp": pa.array(stamps, pa.int64()).cast(TIMESTAMP_TYPE),
        }))
    consumer = bus.consumer(stream_name, group())
    assert drain(consumer, 10).num_rows == 10
    consumer.seek_time(t0 + 5000)
    assert drain(consumer, 5).column("offset").to_pylist() == [5, 6, 7, 8, 9]
    consumer.seek_time(t0 + 4500)
    assert drain(consumer, 5).column("offset").to_pylist()[0] == 5
    consumer.seek_time(t0)
    assert drain(consumer, 10).column("offset").to_pylist()[0] == 0
    consumer.seek_time(t0 + 10**9)
    assert consumer.poll(timeout=0.3).num_rows == 0
    bus.produce(stream_name, values(1, prefix="late"))
    assert drain(consumer, 1).column("value").to_pylist() == [b"late0"]
    consumer.close()


# -- groups --------------------------------------------------------------------------------------


def test_members_of_a_group_split_the_partitions(bus: Bus, stream: str) -> None:
    g = group()
    a, b = bus.consumer(stream, g), bus.consumer(stream, g)
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        a.poll(timeout=0.1)
        b.poll(timeout=0.1)
        if a.assignment and b.assignment and not set(a.assignment) & set(b.assignment) \
                and sorted(a.assignment + b.assignment) == [0, 1, 2]:
            break
    assert not set(a.assignment) & set(b.assignment)
    assert sorted(a.assignment + b.assignment) == [0, 1, 2]
    bus.produce(stream, keyed([f"k{i}".encode() for i in range(60)]))
    got_a, got_b = drain_both(a, b, 60)
    assert set(got_a.column("partition").to_pylist()) <= set(a.assignment)
    assert set(got_b.column("partition").to_pylist()) <= set(b.assignment)
    assert sorted(got_a.column("value").to_pylist() + got_b.column("value").to_pylist()) == \
        sorted(f"v{i}".encode() for i in range(60))
    a.close()
    b.close()


def drain_both(a: Consumer, b: Consumer, n: int) -> tuple[pa.Table, pa.Table]:
    got: dict[int, list[pa.RecordBatch]] = {0: [], 1: []}
    end = time.monotonic() + DEADLINE
    while sum(x.num_rows for xs in got.values() for x in xs) < n and time.monotonic() < end:
        got[0].append(a.poll(timeout=0.2))
        got[1].append(b.poll(timeout=0.2))
    return (pa.Table.from_batches(got[0], schema=RECORD_SCHEMA), pa.Table.from_batches(got[1], schema=RECORD_SCHEMA))


def test_a_consumer_with_pinned_partitions_reads_only_those(bus: Bus, stream: str) -> None:
    produced = bus.produce(stream, keyed([f"k{i}".encode() for i in range(30)]))
    consumer = bus.consumer(stream, group(), partitions=[1])
    assert consumer.assignment == [1]
    expected = int((produced.partitions == 1).sum())
    got = drain(consumer, expected)
    consumer.close()
    assert got.num_rows == expected and set(got.column("partition").to_pylist()) == {1}


def test_a_pinned_consumer_commits_and_resumes(bus: Bus, stream: str, place: Placement) -> None:
    bus.produce(stream, keyed([b"x"] * 6))
    p = int(place(pa.array([b"x"]), 3)[0])
    g = group()
    consumer = bus.consumer(stream, g, partitions=[p])
    assert drain(consumer, 6).num_rows == 6
    consumer.commit({p: 6})
    consumer.close()
    assert bus.describe(stream).committed[g] == {p: 6}
    bus.produce(stream, keyed([b"x"]))
    again = bus.consumer(stream, g, partitions=[p])
    assert drain(again, 1).column("offset").to_pylist() == [6]  # resumed at the commit, not before it
    again.close()


def test_committing_or_seeking_an_unassigned_partition_conflicts(bus: Bus, stream: str) -> None:
    consumer = bus.consumer(stream, group(), partitions=[0])
    with pytest.raises(ConflictError):
        consumer.commit({1: 0})
    with pytest.raises(ConflictError):
        consumer.seek(2, 0)
    consumer.close()
