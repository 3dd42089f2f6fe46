"""Group produce: concurrent ingest requests share produce calls, each is answered only once its
events are durable, and a failed produce fails every request in it (nothing acknowledged)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from keel.bus import open_bus
from keel.bus.base import StreamConfig
from keel.errors import BackendError
from keel.serve.produce import GroupProducer
from keel.serve.resilience import Backend, BackendPolicy


async def until(condition: Callable[[], bool]) -> None:
    """Yield to the event loop until `condition` holds (no sleeps: the order is the test's, not a clock's)."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def queued(producer: GroupProducer, stream: str = "s") -> int:
    """Requests waiting behind the produce in flight."""
    queue = producer._queues.get(stream)
    return 0 if queue is None else len(queue.waiting)


def batch(tag: int, n: int = 10) -> pa.RecordBatch:
    return pa.record_batch({"key": pa.array([f"k{i}".encode() for i in range(n)]),
                            "value": pa.array([f'{{"tag":{tag},"i":{i}}}'.encode() for i in range(n)])})


def test_concurrent_requests_share_produce_calls_on_the_file_bus(tmp_path: Path) -> None:
    bus = open_bus(f"file://{tmp_path}/bus")
    bus.create_stream(StreamConfig("s", 2))
    gate, entered = threading.Event(), threading.Event()

    def produce(stream: str, table: pa.Table) -> Any:
        entered.set()
        gate.wait(30)  # the first call holds until every request has queued behind it
        return bus.produce(stream, table)

    async def main() -> GroupProducer:
        with ThreadPoolExecutor(4) as pool:
            producer = GroupProducer(produce, Backend("bus", BackendPolicy(timeout=60)), pool)
            requests = [asyncio.create_task(producer.produce("s", batch(0)))]
            await asyncio.to_thread(entered.wait, 30)  # its produce is in flight (held by the gate)
            requests += [asyncio.create_task(producer.produce("s", batch(t))) for t in range(1, 20)]
            await until(lambda: queued(producer) == 19)
            assert not any(r.done() for r in requests)  # none answered before its produce returned
            gate.set()
            await asyncio.gather(*requests)
            return producer

    producer = asyncio.run(main())
    assert producer.calls == 2  # the first request alone, then the 19 that waited, together
    consumer = bus.consumer("s", group="check", partitions=[0, 1])
    got = consumer.poll(1000, 2.0)
    values = sorted(got.column("value").to_pylist())
    assert values == sorted(f'{{"tag":{t},"i":{i}}}'.encode() for t in range(20) for i in range(10))
    bus.close()


def test_a_failed_produce_fails_every_request_in_it_and_the_next_group_goes_on() -> None:
    calls: list[int] = []
    gate, entered = threading.Event(), threading.Event()

    def produce(stream: str, table: pa.Table) -> None:
        calls.append(table.num_rows)
        if len(calls) == 1:
            entered.set()
            gate.wait(30)
        if len(calls) == 2:
            raise BackendError("disk on fire")

    async def main() -> list[BaseException | None]:
        with ThreadPoolExecutor(2) as pool:
            producer = GroupProducer(produce, Backend("bus", BackendPolicy(timeout=60, failures=100)), pool)
            first = asyncio.create_task(producer.produce("s", batch(0)))
            await asyncio.to_thread(entered.wait, 30)  # the first goes alone; the next three wait and fail together
            rest = [asyncio.create_task(producer.produce("s", batch(t))) for t in (1, 2, 3)]
            await until(lambda: queued(producer) == 3)
            gate.set()
            out = await asyncio.gather(first, *rest, return_exceptions=True)
            after = await asyncio.gather(producer.produce("s", batch(4)), return_exceptions=True)
            return list(out) + list(after)

    results = asyncio.run(main())
    assert results[0] is None
    assert all(isinstance(r, BackendError) and "disk on fire" in str(r) for r in results[1:4])
    assert results[4] is None
    assert calls == [10, 30, 10]


def test_groups_are_capped_by_records() -> None:
    sizes: list[int] = []
    gate, entered = threading.Event(), threading.Event()

    def produce(stream: str, table: pa.Table) -> None:
        entered.set()
        gate.wait(30)
        sizes.append(table.num_rows)

    async def main() -> None:
        with ThreadPoolExecutor(2) as pool:
            producer = GroupProducer(produce, Backend("bus", BackendPolicy(timeout=60)), pool, max_records=25)
            tasks = [asyncio.create_task(producer.produce("s", batch(t))) for t in range(6)]
            await asyncio.to_thread(entered.wait, 30)
            await until(lambda: queued(producer) == 4)  # two in the call held by the gate, four behind it
            gate.set()
            await asyncio.gather(*tasks)

    asyncio.run(main())
    assert sizes == [20, 20, 20]  # six requests of 10 queued before the first call: three calls of two


@pytest.mark.parametrize("n", [1, 3])
def test_open_breaker_answers_at_once(n: int) -> None:
    backend = Backend("bus", BackendPolicy(timeout=10, failures=1, open_for=30))

    def produce(stream: str, table: pa.Table) -> None:
        raise BackendError("down")

    async def main() -> list[BaseException | None]:
        with ThreadPoolExecutor(2) as pool:
            producer = GroupProducer(produce, backend, pool)
            await asyncio.gather(producer.produce("s", batch(0)), return_exceptions=True)  # opens the breaker
            return list(await asyncio.gather(*(producer.produce("s", batch(t)) for t in range(n)),
                                             return_exceptions=True))

    results = asyncio.run(main())
    assert all(type(r).__name__ == "CircuitOpenError" for r in results)
