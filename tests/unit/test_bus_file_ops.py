"""Operator functions of keel.bus.ops (status, tail, dead letters), run on the file:// bus."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from keel.bus import Bus, StreamConfig, dlq_name, open_bus, ops
from keel.bus.base import HEADERS_TYPE

BOUND = 60.0  # seconds a test waits for what must happen at once (never reached when the code works)


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[Bus]:
    b = open_bus(f"file://{tmp_path / 'bus'}")
    b.create_stream(StreamConfig("views", partitions=2))
    yield b
    b.close()


def events(n: int, start: int = 0) -> pa.RecordBatch:
    return pa.record_batch({
        "key": pa.array([f"u{i % 3}".encode() for i in range(start, start + n)], pa.binary()),
        "value": pa.array([json.dumps({"i": i}).encode() for i in range(start, start + n)], pa.binary()),
        "headers": pa.array([[("event_id", f"e{i}".encode())] for i in range(start, start + n)], HEADERS_TYPE),
    })


def dead_letters(n: int) -> pa.RecordBatch:
    return pa.record_batch({
        "key": pa.array([f"u{i}".encode() for i in range(n)], pa.binary()),
        "value": pa.array([json.dumps({"bad": i}).encode() for i in range(n)], pa.binary()),
        "headers": pa.array([[("event_id", f"d{i}".encode()), ("error", b"ValueError: boom"),
                              ("processor", b"views_5m"), ("source_offset", f"0:{i}".encode())] for i in range(n)],
                            HEADERS_TYPE),
    })


def test_list_streams_reports_size_lag_and_pending_dead_letters(bus: Bus) -> None:
    bus.produce("views", events(10))
    bus.produce(dlq_name("views"), dead_letters(2))
    consumer = bus.consumer("views", "proc")
    got = consumer.poll(100, timeout=0.2)
    first = {p: o + 1 for p, o in zip(got.column("partition").to_pylist(), got.column("offset").to_pylist()) if o == 0}
    consumer.commit(first)
    consumer.close()
    summary = {s.name: s for s in ops.list_streams(bus)}
    assert set(summary) == {"views", "views.dlq"}
    views = summary["views"]
    assert views.partitions == 2 and views.records == 10 and sum(views.end_offsets.values()) == 10
    assert views.lag == {"proc": 10 - len(first)}
    assert views.dead_letters_pending == 2
    assert summary["views.dlq"].dead_letters_pending is None


def test_tail_shows_the_last_records_of_each_partition_decoded(bus: Bus) -> None:
    keyless = events(12, start=12)
    keyless = keyless.set_column(0, "key", pa.nulls(12, pa.binary()))  # spread round-robin over both partitions
    produced = bus.produce("views", pa.concat_batches([events(12), keyless]))
    rows = list(ops.tail(bus, "views", last=2))
    for p in (0, 1):
        mine = [r for r in rows if r["partition"] == p]
        end = int((produced.partitions == p).sum())
        assert end >= 2 and [r["offset"] for r in mine] == [end - 2, end - 1]
    assert len(rows) == 4
    for row in rows:
        assert row["value"] == {"i": int(row["headers"]["event_id"][1:])}  # type: ignore[index]
        assert row["key"] is None  # the last records are the keyless ones
    assert bus.describe("views").committed == {}  # tailing commits nothing


def test_tail_follow_yields_new_records(bus: Bus) -> None:
    bus.produce("views", events(1))
    stream = ops.tail(bus, "views", last=5, follow=True, poll_timeout=0.05)
    assert next(stream)["value"] == {"i": 0}
    followed: list[object] = []
    waiting = threading.Event()

    def follow() -> None:
        waiting.set()
        followed.append(next(stream, None))  # without follow, tail would have ended: None

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    waiting.wait()
    bus.produce("views", events(1, start=1))
    follower.join(BOUND)
    assert not follower.is_alive(), "tail --follow did not yield a record produced while it waited"
    assert [r["value"] for r in followed] == [{"i": 1}]  # type: ignore[index]
    stream.close()


def test_dlq_show_lists_pending_dead_letters_without_consuming(bus: Bus) -> None:
    bus.produce(dlq_name("views"), dead_letters(3))
    first = ops.dlq_show(bus, "views")
    assert [r["value"] for r in first] == [{"bad": 0}, {"bad": 1}, {"bad": 2}]
    assert first[0]["headers"]["error"] == "ValueError: boom"
    assert ops.dlq_show(bus, "views") == first
    assert len(ops.dlq_show(bus, "views", limit=2)) == 2


def test_dlq_replay_puts_dead_letters_back_once(bus: Bus) -> None:
    bus.produce(dlq_name("views"), dead_letters(3))
    assert ops.dlq_replay(bus, "views") == 3
    assert ops.dlq_show(bus, "views") == []
    assert ops.dlq_replay(bus, "views") == 0  # replaying again replays nothing
    replayed = list(ops.tail(bus, "views", last=100))
    assert sorted(r["value"]["bad"] for r in replayed) == [0, 1, 2]  # type: ignore[index]
    for r in replayed:
        assert set(r["headers"]) == {"event_id"}  # the error context is dropped, the event's headers kept
    assert bus.describe(dlq_name("views")).partitions[0].end_offset == 3  # the dead letters stay on record


def test_dlq_purge_marks_dead_letters_done_without_replaying(bus: Bus) -> None:
    bus.produce(dlq_name("views"), dead_letters(4))
    assert ops.dlq_purge(bus, "views") == 4
    assert ops.dlq_show(bus, "views") == []
    assert sum(p.end_offset for p in bus.describe("views").partitions) == 0
    bus.produce(dlq_name("views"), dead_letters(1))
    assert [r["value"] for r in ops.dlq_show(bus, "views")] == [{"bad": 0}]


def test_decode_keeps_undecodable_bytes() -> None:
    batch = pa.record_batch({
        "partition": pa.array([0], pa.int32()), "offset": pa.array([5], pa.int64()),
        "timestamp": pa.array([1_700_000_000_000], pa.int64()).cast(pa.timestamp("ms", tz="UTC")),
        "key": pa.array([b"\xff"], pa.binary()), "value": pa.array([b"plain text"], pa.binary()),
        "headers": pa.array([None], HEADERS_TYPE),
    })
    row = ops.decode(batch)[0]
    assert row == {"partition": 0, "offset": 5, "timestamp": 1_700_000_000_000, "key": b"\xff",
                   "value": "plain text", "headers": {}}


def test_tail_of_an_empty_stream_ends(bus: Bus) -> None:
    got: list[list[dict[str, object]]] = []
    # give_up_after=inf: if tail ends, it ended because nothing existed, not because it gave up
    reader = threading.Thread(target=lambda: got.append(list(itertools.islice(
        ops.tail(bus, "views", give_up_after=float("inf")), 5))), daemon=True)
    reader.start()
    reader.join(BOUND)
    assert not reader.is_alive(), "tail of an empty stream waited for records instead of ending"
    assert got == [[]]
