"""The production kv engine: Redis, through redis-py (with hiredis when installed).

Every stored value is packed so one ``MGET`` serves any key, versioned or not::

    b"\\x00" + value                         written by put_many (no version)
    b"\\x01" + 8-byte version + value        written by upsert_many

The version is big-endian ``version + 2**63``, so comparing those 8 bytes one by one compares
the signed versions; the upsert script does that server-side, which makes each key's
read-compare-write atomic, with no lost update between writers. TTLs are Redis's own (``PX``):
an expired key is gone for every command. ``*_many`` calls are split into chunks sent in one
pipeline, so a batch costs one round trip; a batch is not atomic as a whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from keel.engines import require
from keel.errors import BackendError

_T = TypeVar("_T")
_CHUNK = 1000  # keys per command: one MGET/MSET/DEL/script call never blocks the server long
_SCAN_COUNT = 1000
_PLAIN, _VERSIONED = b"\x00", b"\x01"
_BIAS, _MAX_VERSION = 2**63, 2**63 - 1

# KEYS: the keys; ARGV[1]: ttl in ms ("0" = none); ARGV[i + 1]: packed value for KEYS[i].
_UPSERT_LUA = """
local px = tonumber(ARGV[1])
local written = 0
for i, key in ipairs(KEYS) do
  local new = ARGV[i + 1]
  local old = redis.call('GET', key)
  local wins = true
  if old and string.byte(old, 1) == 1 then
    for j = 2, 9 do
      local a, b = string.byte(new, j), string.byte(old, j)
      if a ~= b then wins = a > b; break end
    end
  end
  if wins then
    if px > 0 then redis.call('SET', key, new, 'PX', px) else redis.call('SET', key, new) end
    written = written + 1
  end
end
return written
"""


def open_redis_kv(
    url: str,
    *,
    max_connections: int = 64,
    socket_timeout: float = 5.0,
    connect_timeout: float = 2.0,
    retries: int = 3,
) -> RedisKeyValue:
    """Connect to ``redis://host:port/db`` (``rediss://`` for TLS) and check the server answers.

    The connection pool (``max_connections``) is shared by every thread using this object;
    a dropped connection is retried ``retries`` times with exponential backoff before a
    ``BackendError`` names the URL.
    """
    redis = require("redis", "redis", "redis")
    backoff = require("redis.backoff", "redis", "redis")
    retry_mod = require("redis.retry", "redis", "redis")
    pool = redis.ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=retry_mod.Retry(backoff.ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )
    kv = RedisKeyValue(url, redis.Redis(connection_pool=pool), redis.exceptions)
    kv.ping()
    return kv


class RedisKeyValue:
    """`keel.kv.base.KeyValue` on a Redis database; thread-safe (redis-py pools connections)."""

    def __init__(self, url: str, client: Any, exceptions: Any) -> None:
        self.url = url
        self._client = client
        self._errors = exceptions
        self._upsert = client.register_script(_UPSERT_LUA)

    def ping(self) -> None:
        """Raise `BackendError` unless the server answers."""
        self._call(self._client.ping)

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        return _unpack(self._call(lambda: self._client.get(key)))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []

        def run() -> list[bytes | None]:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(keys), _CHUNK):
                pipe.mget(keys[start : start + _CHUNK])
            return [value for chunk in pipe.execute() for value in chunk]

        return [_unpack(raw) for raw in self._call(run)]

    def scan(self, prefix: str, limit: int | None = None) -> Iterator[tuple[str, bytes]]:
        """Live pairs whose key starts with ``prefix``, in Redis's hash order (not sorted).

        SCAN may report a key twice; each is yielded once. Keys written during the scan may or
        may not appear; keys present throughout always do.
        """
        remaining = math.inf if limit is None else limit
        if remaining <= 0:
            return
        seen: set[bytes] = set()
        for keys in self._key_pages(prefix):
            fresh = [k for k in keys if k not in seen]
            if not fresh:
                continue
            seen.update(fresh)
            values = self._call(partial(self._client.mget, fresh))
            for key, raw in zip(fresh, values):
                value = _unpack(raw)
                if value is None:
                    continue  # deleted or expired since SCAN listed it
                yield key.decode(), value
                remaining -= 1
                if remaining <= 0:
                    return

    def count(self, prefix: str = "") -> int:
        """Live keys starting with ``prefix``: a full SCAN, O(keys in the database)."""
        seen: set[bytes] = set()
        for keys in self._key_pages(prefix):
            seen.update(keys)
        return len(seen)

    # -- writes ------------------------------------------------------------------------------

    def put_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None = None) -> None:
        if not items:
            return
        px = _ttl_ms(ttl)

        def run() -> None:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(items), _CHUNK):
                chunk = items[start : start + _CHUNK]
                if px is None:
                    pipe.mset({key: _PLAIN + value for key, value in chunk})
                else:
                    for key, value in chunk:
                        pipe.set(key, _PLAIN + value, px=px)
            pipe.execute()

        self._call(run)

    def upsert_many(self, items: Sequence[tuple[str, int, bytes]], ttl: float | None = None) -> int:
        if not items:
            return 0
        px = str(_ttl_ms(ttl) or 0)
        packed = [(key, _VERSIONED + _pack_version(version) + value) for key, version, value in items]

        def run() -> int:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(packed), _CHUNK):
                chunk = packed[start : start + _CHUNK]
                self._upsert(keys=[k for k, _ in chunk], args=[px, *(v for _, v in chunk)], client=pipe)
            return sum(int(n) for n in pipe.execute())

        return self._call(run)

    def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0

        def run() -> int:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(keys), _CHUNK):
                pipe.delete(*keys[start : start + _CHUNK])
            return sum(int(n) for n in pipe.execute())

        return self._call(run)

    def close(self) -> None:
        """Close the pooled connections; the data stays in Redis."""
        try:
            self._client.close()
            self._client.connection_pool.disconnect()
        except self._errors.RedisError:
            pass  # closing is best effort: the server may already be gone

    # -- plumbing ----------------------------------------------------------------------------

    def _key_pages(self, prefix: str) -> Iterator[list[bytes]]:
        pattern = _glob_escape(prefix) + "*"
        cursor: int = 0
        while True:
            cursor, keys = self._call(partial(self._client.scan, cursor=cursor, match=pattern, count=_SCAN_COUNT))
            if keys:
                yield list(keys)
            if int(cursor) == 0:
                return

    def _call(self, work: Callable[[], _T]) -> _T:
        with self._translated():
            return work()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        errors = self._errors
        try:
            yield
        except (errors.ConnectionError, errors.TimeoutError) as exc:
            raise BackendError(
                f"cannot reach Redis at {self.url}: {exc}. Check that redis-server is running and reachable "
                "at that host and port (firewall, password in the URL, TLS needs rediss://), or fix the `kv` "
                "URL of the profile in keel.toml / KEEL_KV"
            ) from exc
        except errors.RedisError as exc:
            raise BackendError(
                f"Redis at {self.url} refused the command: {exc}. Check the server's logs, its maxmemory "
                "policy and that the database number in the URL is the one keel owns"
            ) from exc


def _unpack(raw: bytes | None) -> bytes | None:
    if raw is None:
        return None
    if raw[:1] == _PLAIN:
        return raw[1:]
    if raw[:1] == _VERSIONED:
        return raw[9:]
    raise BackendError(
        f"kv value of {len(raw)} bytes was not written by keel (unknown tag {raw[:1]!r}); "
        "keep other clients out of the Redis database keel's `kv` URL names"
    )


def _pack_version(version: int) -> bytes:
    if not -_BIAS <= version <= _MAX_VERSION:
        raise ValueError(f"kv versions are 64-bit signed integers; {version} is out of range")
    return (version + _BIAS).to_bytes(8, "big")


def _ttl_ms(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


def _glob_escape(text: str) -> str:
    """Escape Redis glob syntax (``* ? [ ] \\``) so ``text`` matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
