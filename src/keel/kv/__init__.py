"""Fast storage: one interface (`base.KeyValue`), an embedded single-file engine and Redis."""

from __future__ import annotations

from keel.schemes import open_engine
from keel.kv.base import KeyValue

# The one scheme table of fast storage: scheme -> the sync engine.
ENGINES = {
    "file": "keel.kv.file:open_file_kv",
    "redis": "keel.kv.redis:open_redis_kv",
    "rediss": "keel.kv.redis:open_redis_kv",  # Redis over TLS
}

# Engines whose reads cross a network have an async reader of their own for the gateway
# (keel.kv.async_reader), keyed by the engine, so a scheme is named once, above.
ASYNC_READERS = {
    "keel.kv.redis:open_redis_kv": "keel.kv.async_redis:open_async_redis",
}


def open_kv(url: str, **options: object) -> KeyValue:
    kv: KeyValue = open_engine("kv", url, ENGINES, **options)
    return kv


__all__ = ["KeyValue", "open_kv", "ENGINES", "ASYNC_READERS"]
