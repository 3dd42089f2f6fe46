"""Fast storage for serving: keys to bytes, with TTLs and versioned upserts.

Contract:
* ``put_many`` writes every pair (last write wins); ``ttl`` in seconds makes them expire, and
  ``ttl=None`` makes them permanent (a write replaces the key's previous TTL).
* ``upsert_many`` writes (key, version, value) only where ``version`` is greater than or equal
  to the stored version of that key, so a replay never regresses a value; returns how many rows
  were written. Each key's compare-and-write is atomic across threads and processes (no lost
  update); pairs of one batch apply in order. A losing row changes nothing, not even the TTL.
  Plain ``put_many`` clears a key's version; an expired or deleted key has no version.
  Versions are 64-bit signed integers.
* ``get``/``get_many``/``scan``/``count`` never return or count an expired value;
  ``get_many`` answers in request order, ``None`` for a miss.
* ``delete`` returns how many of the keys existed (live); ``scan`` yields each live key with
  the prefix once, in no promised order, at most ``limit``; ``count`` may cost a full scan.
* A batch is not atomic as a whole: after an error, some of it may be written.
* ``ttl`` must be > 0 and versions in range, else ``ValueError`` (a caller's bug); engine
  failures raise ``keel.errors.BackendError``. Every engine is safe to share between threads.
* Keys are strings; views namespace theirs as ``"<view>/<key>"``. Keys starting with ``keel:`` are
  reserved for the engines' bookkeeping (Redis keeps versions under ``keel:version:<key>``).
* Values are stored as the exact bytes given, where other tools can read them (a view's value is
  its JSON text: ``GET <view>/<key>`` in Redis, ``SELECT value FROM kv WHERE key = ...`` in SQLite).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class KeyValue(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    def put_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None = None) -> None: ...

    def upsert_many(self, items: Sequence[tuple[str, int, bytes]], ttl: float | None = None) -> int: ...

    def delete(self, keys: Sequence[str]) -> int: ...

    def scan(self, prefix: str, limit: int | None = None) -> Iterator[tuple[str, bytes]]: ...

    def count(self, prefix: str = "") -> int: ...

    def close(self) -> None: ...
