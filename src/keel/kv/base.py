"""Fast storage for serving: keys to bytes, with TTLs and versioned upserts.

Contract:
* ``put_many`` writes every pair (last write wins); ``ttl`` in seconds makes them expire.
* ``upsert_many`` writes (key, version, value) only where ``version`` is greater than or equal
  to the stored version of that key, so a replay never regresses a value; returns how many rows
  were written. Plain ``put_many`` clears a key's version.
* ``get``/``get_many`` never return an expired value.
* Keys are strings; views namespace theirs as ``"<view>/<key>"``.
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
