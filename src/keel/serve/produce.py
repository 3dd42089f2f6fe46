"""Group produce: the ingest requests waiting on one stream share one bus produce call.

While a produce to a stream is in flight, the batches of the requests that arrive meanwhile wait
in that stream's queue; when it returns, they all go together in the next call, as one batch. So
under load one partitioning pass, one write and one fsync serve many requests, and one worker
thread is busy per stream instead of one per request: profiling showed the threads of concurrent
produce calls contending for the GIL with the event loop costing more than the work itself (see
benchmarks/RESULTS.md, "Serving"). A lone request goes at once, as before.

Each request is still answered only when the produce holding its events has returned, so 202 means
durable. A produce that fails fails every request in it: each answers 503 and none of their events
was acknowledged (they may or may not have been written; their event ids make a retry detectable).
The bus backend's breaker and timeout count produce calls, not requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import pyarrow as pa

from keel.serve.resilience import Backend


@dataclass
class _Queue:
    waiting: list[tuple[pa.RecordBatch, asyncio.Future[None]]] = field(default_factory=list)
    busy: bool = False


class GroupProducer:
    """Produces request batches to the bus, grouped per stream (see the module docstring)."""

    def __init__(self, produce: Callable[[str, pa.Table], object], backend: Backend, executor: Executor,
                 max_records: int = 100_000) -> None:
        self._produce = produce
        self.backend = backend
        self.executor = executor
        self.max_records = max_records
        self._queues: dict[str, _Queue] = {}
        self._drains: set[asyncio.Task[None]] = set()
        self.calls = 0  # produce calls made (for tests and metrics)

    async def produce(self, stream: str, batch: pa.RecordBatch) -> None:
        """Return once `batch` is durable on the bus; raise the produce's error otherwise."""
        queue = self._queues.setdefault(stream, _Queue())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.waiting.append((batch, done))
        if not queue.busy:
            queue.busy = True
            task = asyncio.create_task(self._drain(stream, queue))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        await done

    async def _drain(self, stream: str, queue: _Queue) -> None:
        loop = asyncio.get_running_loop()
        try:
            while queue.waiting:
                group: list[tuple[pa.RecordBatch, asyncio.Future[None]]] = []
                records = 0
                while queue.waiting and (not group or records + queue.waiting[0][0].num_rows <= self.max_records):
                    item = queue.waiting.pop(0)
                    group.append(item)
                    records += item[0].num_rows
                table = pa.Table.from_batches([batch for batch, _ in group])
                self.calls += 1
                try:
                    await self.backend.call(
                        lambda: loop.run_in_executor(self.executor, self._produce, stream, table))
                except BaseException as exc:  # noqa: BLE001 - every waiting request gets the produce's error
                    for _, done in group:
                        if not done.done():
                            done.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for _, done in group:
                        if not done.done():
                            done.set_result(None)
        finally:
            queue.busy = False
            for _, done in queue.waiting:  # only left behind if this task itself was cancelled
                if not done.done():
                    done.cancel()
            queue.waiting.clear()


__all__ = ["GroupProducer"]
