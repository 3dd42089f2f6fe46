"""Fast storage: one interface (`base.KeyValue`), an embedded single-file engine and Redis."""

from __future__ import annotations

from typing import NamedTuple

from keel.schemes import open_engine
from keel.kv.base import KeyValue


class KvEngine(NamedTuple):
    """One engine of the scheme table: the "module:factory" of each way it is opened."""

    sync: str  # the `KeyValue` of writers, jobs and the CLI: factory(url, **options)
    reader: str  # the gateway's `keel.kv.async_reader.AsyncReader` of it: factory(url, kv=, timeout=)


_FILE = KvEngine("keel.kv.file:open_file_kv", "keel.kv.async_reader:open_inline_reader")
_REDIS = KvEngine("keel.kv.redis:open_redis_kv", "keel.kv.async_redis:open_reader")

# The one scheme table of fast storage. The sync engine and the async reader are both opened from it
# by keel.schemes.open_engine, so a scheme is supported by both or refused by both, with the same error.
ENGINES: dict[str, KvEngine] = {
    "file": _FILE,
    "redis": _REDIS,
    "rediss": _REDIS,  # Redis over TLS
}


def open_kv(url: str, **options: object) -> KeyValue:
    kv: KeyValue = open_engine("kv", url, {scheme: engine.sync for scheme, engine in ENGINES.items()}, **options)
    return kv


__all__ = ["ENGINES", "KeyValue", "KvEngine", "open_kv"]
