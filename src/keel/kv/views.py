"""Online views over the key-value store: JSON values under "<view>/<key>", with the view's TTL."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from keel.errors import NotFoundError
from keel.kv.base import KeyValue

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


class Views:
    def __init__(self, kv: KeyValue, ttls: dict[str, float | None]) -> None:
        self.kv = kv
        self.ttls = ttls

    def _check(self, view: str) -> None:
        if view not in self.ttls:
            raise NotFoundError(f"no view {view!r}; declared views: {', '.join(sorted(self.ttls)) or 'none'}")

    def get(self, view: str, key: str) -> Any | None:
        self._check(view)
        raw = self.kv.get(f"{view}/{key}")
        return None if raw is None else _decode(raw)

    def get_raw(self, view: str, keys: Sequence[str]) -> list[bytes | None]:
        self._check(view)
        return self.kv.get_many([f"{view}/{k}" for k in keys])

    def upsert(self, view: str, rows: Iterable[tuple[str, int, Any]]) -> int:
        """Versioned writes: a row older than what is stored is ignored (replays never regress)."""
        self._check(view)
        items = [(f"{view}/{k}", v, _encode(obj)) for k, v, obj in rows]
        return self.kv.upsert_many(items, ttl=self.ttls[view]) if items else 0

    def put(self, view: str, rows: Iterable[tuple[str, Any]]) -> None:
        self._check(view)
        items = [(f"{view}/{k}", _encode(obj)) for k, obj in rows]
        if items:
            self.kv.put_many(items, ttl=self.ttls[view])

    def count(self, view: str) -> int:
        self._check(view)
        return self.kv.count(f"{view}/")
