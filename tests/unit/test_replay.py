"""`keel replay` reads to the end offsets taken at its start, or refuses having overwritten nothing.

A lagging bus double (empty polls before every delivery) wraps the real file:// bus consumer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

from keel.bus.base import RECORD_SCHEMA
from keel.errors import BackendError
from keel.streaming.replay import replay
from keel.streaming.runner import Runner
from keel.streaming.stateless import writer_of
from tests.unit.test_stream_runner import drain, produce
from tests.unit.test_stream_runner import shop as shop  # noqa: F401 - the fixture, reused


class Lagging:
    """A consumer that answers `empty` empty polls before each delivery of at most `chunk` records,
    and, past `stop_after` records, nothing at all (a bus that stalls)."""

    def __init__(self, inner: Any, empty: int, chunk: int, stop_after: int | None = None) -> None:
        self.inner, self.empty, self.chunk, self.stop_after = inner, empty, chunk, stop_after
        self.waited, self.delivered = 0, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def poll(self, max_records: int = 10_000, timeout: float = 1.0) -> pa.RecordBatch:
        stalled = self.stop_after is not None and self.delivered >= self.stop_after
        if stalled or self.waited < self.empty:
            self.waited += 1
            return pa.RecordBatch.from_pylist([], schema=RECORD_SCHEMA)
        self.waited = 0
        batch: pa.RecordBatch = self.inner.poll(min(max_records, self.chunk), 0.05)
        self.delivered += batch.num_rows
        return batch


class SlowBus:
    def __init__(self, bus: Any, **lag: Any) -> None:
        self.bus, self.lag = bus, lag

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bus, name)

    def consumer(self, stream: str, group: str, partitions: list[int] | None = None) -> Lagging:
        return Lagging(self.bus.consumer(stream, group, partitions), **self.lag)


class Ticks:
    """A clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def landed(shop: Any) -> Iterator[Any]:  # noqa: F811
    ids = produce(shop.rt, "clicks", [(f"u{i % 7}", "i", i) for i in range(120)])
    runner = Runner(shop.land, shop.rt, max_records=50)
    runner.start()
    drain(runner, 120)
    runner.consumer.close()
    shop.rt.lake.delete("clicks", "event_id < 'e5'")  # damage the table: the replay should repair it
    yield SimpleNamespace(shop=shop, ids=ids)


def event_ids(rt: Any) -> list[str]:
    return sorted(rt.lake.read("clicks", columns=["event_id"]).column("event_id").to_pylist())


def test_a_lagging_bus_is_read_to_the_end_offsets_before_the_table_is_replaced(landed: Any) -> None:
    rt = landed.shop.rt
    slow = replace(rt, bus=SlowBus(rt.bus, empty=5, chunk=10))
    result = replay(landed.shop.land, slow, from_offset=0, clock=Ticks(), stall_seconds=30)
    assert result.records == 120
    assert sum(result.end_offsets.values()) == 120
    assert event_ids(rt) == sorted(landed.ids)


def test_a_bus_that_stalls_before_the_end_is_refused_and_nothing_is_overwritten(landed: Any) -> None:
    rt = landed.shop.rt
    before = event_ids(rt)
    versions = {p: rt.lake.writer_commit("clicks", writer_of("land_clicks", p)) for p in (0, 1)}
    table_version = rt.lake.describe("clicks").version
    stalled = replace(rt, bus=SlowBus(rt.bus, empty=0, chunk=10, stop_after=30))
    with pytest.raises(BackendError, match=r"replay of land_clicks stopped.*partition \d at offset \d+ of \d+.*"
                                           r"nothing was overwritten"):
        replay(landed.shop.land, stalled, from_offset=0, clock=Ticks(), stall_seconds=30)
    assert event_ids(rt) == before == sorted(i for i in landed.ids if i >= "e5")  # still the damaged table
    assert rt.lake.describe("clicks").version == table_version
    assert {p: rt.lake.writer_commit("clicks", writer_of("land_clicks", p)) for p in (0, 1)} == versions


def test_a_replay_on_the_real_bus_stops_at_the_end_offsets_taken_at_its_start(landed: Any) -> None:
    rt = landed.shop.rt
    result = replay(landed.shop.land, rt, from_offset=0)
    described = {p.partition: p.end_offset for p in rt.bus.describe("clicks").partitions}
    assert result.end_offsets == described and result.records == 120
    assert event_ids(rt) == sorted(landed.ids)


def test_a_time_start_skips_partitions_with_nothing_after_it_and_reads_the_others_to_the_end(tmp_path: Any) -> None:
    import json
    from datetime import UTC, datetime, timedelta

    import keel
    from keel.bus.base import StreamConfig
    from keel.project.catalog import collecting
    from tests.unit.test_stream_runner import Click, engines

    with collecting():
        clicks = keel.stream("clicks", Click, key="user_id", partitions=2)

        @keel.processor(clicks, into=keel.view("last_item"))
        def last_item(batch):  # type: ignore[no-untyped-def]
            return batch.select("user_id", "item_id")
    rt = engines(tmp_path, ["last_item"])
    rt.bus.create_stream(StreamConfig("clicks", 2))
    # event time comes from the bus timestamp here, and processors refuse times far in the future
    new = datetime.now(UTC) - timedelta(minutes=1)
    old = new - timedelta(days=30)

    def send(users: list[str], item: str, when: datetime) -> Any:
        values = [json.dumps({"user_id": u, "item_id": item}).encode() for u in users]
        return rt.bus.produce("clicks", pa.table({
            "key": pa.array([u.encode() for u in users], pa.binary()), "value": pa.array(values, pa.binary()),
            "timestamp": pa.array([when] * len(users), pa.timestamp("ms", tz="UTC"))}))

    users = [f"u{i}" for i in range(20)]
    placed = send(users, "old", old).partitions.tolist()
    in_p0 = [u for u, p in zip(users, placed) if p == 0]
    assert in_p0 and len(in_p0) < len(users)  # partition 1 holds only old records
    send(in_p0, "new", new)
    slow = replace(rt, bus=SlowBus(rt.bus, empty=3, chunk=4))
    result = replay(last_item, slow, from_time=new - timedelta(days=1), clock=Ticks(), stall_seconds=30)
    assert result.records == len(in_p0)
    assert {u: rt.views.get("last_item", u)["item_id"] for u in in_p0} == {u: "new" for u in in_p0}
    rt.bus.close()
    rt.views.kv.close()
