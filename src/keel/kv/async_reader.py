"""The gateway's read path to fast storage: an async reader next to the sync `KeyValue`.

`AsyncReader.get_many(keys)` returns the stored values (``None`` for absent or expired keys) in
the order of ``keys``, as the exact bytes the sync engine would return. It is what the gateway's
view lookups await; writers and jobs keep the sync `KeyValue`.

Each engine of the one scheme table (`keel.kv.ENGINES`) names its reader next to its sync opener:
``redis://`` and ``rediss://`` have their own (`keel.kv.async_redis`: hiredis, one connection pool,
and request coalescing: the GETs of every request arriving in the same event-loop tick travel as one
MGET). The embedded engine is wrapped by `InlineReader`, which calls the sync engine on the event
loop: the embedded SQLite engine answers a point read in microseconds from a local file, less
than a hop to a worker thread would cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from keel.kv import ENGINES
from keel.kv.base import KeyValue
from keel.schemes import open_engine


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
    (called only by engines read inline, on first use). A scheme `keel.kv.ENGINES` does not have
    is refused here with the `UnknownSchemeError` that `keel.kv.open_kv` raises for it.

    Must be called inside the event loop that will use the reader (its connections belong to it).
    """
    readers = {scheme: engine.reader for scheme, engine in ENGINES.items()}
    reader: AsyncReader = open_engine("kv", url, readers, kv=kv, timeout=timeout)
    return reader


def open_inline_reader(url: str, *, kv: Callable[[], KeyValue], timeout: float) -> InlineReader:
    """The reader of a local engine (`keel.kv.ENGINES`): its reads wait on no network, so no `timeout`."""
    return InlineReader(kv)


__all__ = ["AsyncReader", "InlineReader", "open_async_reader", "open_inline_reader"]
