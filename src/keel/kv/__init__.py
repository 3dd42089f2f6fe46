"""Fast storage: one interface (`base.KeyValue`), an embedded single-file engine and Redis."""

from __future__ import annotations

from keel.engines import open_engine
from keel.kv.base import KeyValue

ENGINES = {
    "file": "keel.kv.file:open_file_kv",
    "redis": "keel.kv.redis:open_redis_kv",
}


def open_kv(url: str, **options: object) -> KeyValue:
    kv: KeyValue = open_engine("kv", url, ENGINES, **options)
    return kv


__all__ = ["KeyValue", "open_kv", "ENGINES"]
