"""The gateway's read path to fast storage: an async reader next to the sync `KeyValue`.

`AsyncReader.get_many(keys)` returns the stored values (``None`` for absent or expired keys) in
the order of ``keys``, as the exact bytes the sync engine would return. It is what the gateway's
view lookups await; writers and jobs keep the sync `KeyValue`.

Engines (`keel.kv.ASYNC_READERS`, keyed by the engine of `keel.kv.ENGINES`): ``redis://`` and
``rediss://`` have their own (`keel.kv.async_redis`: hiredis, one connection pool, and request
coalescing: the GETs of every request arriving in the same event-loop tick travel as one MGET).
Every other engine is wrapped by `InlineReader`, which calls the sync engine on the event
loop: the embedded SQLite engine answers a point read in microseconds from a local file, less
than a hop to a worker thread would cost.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from keel.schemes import scheme_of
from keel.kv import ASYNC_READERS, ENGINES
from keel.kv.base import KeyValue


@runtime_checkable
class AsyncReader(Protocol):
    """Contract: ``get_many`` never returns an expired value, raises only `keel.errors` exceptions
    (`BackendError` when the engine cannot answer), and is safe to call from many concurrent tasks of
    one event loop. ``aclose`` releases every connection the reader opened."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def aclose(self) -> None: ...


class InlineReader:
    """`AsyncReader` over a sync, local `KeyValue` (called directly: its reads do not wait on a network)."""

    def __init__(self, kv: Callable[[], KeyValue]) -> None:
        self.kv = kv

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.kv().get_many(keys)

    async def aclose(self) -> None:
        pass  # the sync engine belongs to the runtime, which closes it


def open_async_reader(url: str, kv: Callable[[], KeyValue], *, timeout: float = 0.5) -> AsyncReader:
    """The async reader for the kv engine at ``url``; ``kv()`` gives that engine, opened sync
    (called only by engines read inline, on first use).

    Must be called inside the event loop that will use the reader (its connections belong to it).
    """
    target = ASYNC_READERS.get(ENGINES.get(scheme_of(url), ""))
    if target is None:
        return InlineReader(kv)  # an unknown scheme fails on first use, in kv(), naming the known ones
    module_name, _, factory_name = target.partition(":")
    reader: AsyncReader = getattr(importlib.import_module(module_name), factory_name)(url, timeout=timeout)
    return reader


__all__ = ["AsyncReader", "InlineReader", "open_async_reader"]
