"""The production kv engine: Redis, through redis-py (with hiredis when installed).

Layout, readable by any Redis client (documented in docs/guide.md, "Storage layout")::

    <key>                  the value, exactly the bytes written (a view's value is its JSON text)
    keel:version:<key>     the version of an upserted value, in decimal; absent after a plain put

``GET trending/_top`` answers the view's JSON, and one ``MGET`` serves any keys. Each write of a
value and its version is one Lua script call per chunk, so the pair changes together: the upsert
script compares the stored version with the new one server-side (a newer or equal version wins,
compared as 64-bit integers digit by digit, not as Lua doubles) and sets both keys with the same
TTL (``PX``, Redis's own expiry: an expired key is gone for every command). A version whose value
key is gone (expired, or deleted by another client) no longer guards the key. ``*_many`` calls
are split into chunks sent in one pipeline, so a batch costs one round trip; a batch is not atomic
as a whole.

TLS: ``rediss://host:port/db?ssl_ca_certs=/path/ca.pem`` (redis-py's URL options, e.g.
``ssl_certfile``/``ssl_keyfile`` for client certificates).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

from keel.schemes import require
from keel.errors import BackendError, ConfigError

_T = TypeVar("_T")
_CHUNK = 1000  # keys per command: one MGET/script call never blocks the server long
_SCAN_COUNT = 1000
VERSION_PREFIX = "keel:version:"
_VERSION_PREFIX_B = VERSION_PREFIX.encode()
_MIN_VERSION, _MAX_VERSION = -(2**63), 2**63 - 1

# KEYS: value key, version key, value key, version key, ...; ARGV[1]: ttl in ms ("0" = none);
# then per row its version (canonical decimal) and its value.
_UPSERT_LUA = """
local px = tonumber(ARGV[1])
local function at_least(a, b)
  local a_neg, b_neg = a:byte(1) == 45, b:byte(1) == 45
  if a_neg ~= b_neg then return b_neg end
  if #a ~= #b then return (#a > #b) ~= a_neg end
  for k = 1, #a do
    local x, y = a:byte(k), b:byte(k)
    if x ~= y then return (x > y) ~= a_neg end
  end
  return true
end
local version_keys = {}
for i = 2, #KEYS, 2 do version_keys[#version_keys + 1] = KEYS[i] end
local stored = redis.call('MGET', unpack(version_keys))
local written, latest, plain = 0, {}, {}
for i = 1, #KEYS, 2 do
  local key, version_key, version = KEYS[i], KEYS[i + 1], ARGV[i + 1]
  local old = latest[version_key]
  if old == nil then
    old = stored[(i + 1) / 2]
    if old and redis.call('EXISTS', key) == 0 then old = false end
  end
  if not old or at_least(version, old) then
    if px > 0 then
      redis.call('SET', key, ARGV[i + 2], 'PX', px)
      redis.call('SET', version_key, version, 'PX', px)
    else
      plain[#plain + 1] = key; plain[#plain + 1] = ARGV[i + 2]
      plain[#plain + 1] = version_key; plain[#plain + 1] = version
    end
    latest[version_key] = version
    written = written + 1
  end
end
if #plain > 0 then redis.call('MSET', unpack(plain)) end
return written
"""

# KEYS: value key, version key, ...; ARGV[1]: ttl in ms ("0" = none); ARGV[k + 1]: value of KEYS[2k - 1].
_PUT_LUA = """
local px = tonumber(ARGV[1])
local values, version_keys = {}, {}
for i = 1, #KEYS, 2 do
  if px > 0 then redis.call('SET', KEYS[i], ARGV[(i + 1) / 2 + 1], 'PX', px)
  else values[#values + 1] = KEYS[i]; values[#values + 1] = ARGV[(i + 1) / 2 + 1] end
  version_keys[#version_keys + 1] = KEYS[i + 1]
end
if #values > 0 then redis.call('MSET', unpack(values)) end
redis.call('DEL', unpack(version_keys))
return 0
"""

# KEYS: value key, version key, ...; returns how many value keys existed.
_DELETE_LUA = """
local existed = 0
for i = 1, #KEYS, 2 do
  existed = existed + redis.call('DEL', KEYS[i])
  redis.call('DEL', KEYS[i + 1])
end
return existed
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
    ``BackendError`` names the URL. A database holding keel's older tagged layout is refused.
    """
    redis = require("redis", "redis", "redis")
    backoff = require("redis.backoff", "redis", "redis")
    retry_mod = require("redis.retry", "redis", "redis")
    check_tls_files(url)
    try:
        pool = redis.ConnectionPool.from_url(
            url,
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=retry_mod.Retry(backoff.ExponentialBackoff(cap=1.0, base=0.05), retries),
            retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"kv URL {safe_url(url)}: {exc}; use redis://host:port/db or "
                          "rediss://host:port/db?ssl_ca_certs=/path/ca.pem") from exc
    kv = RedisKeyValue(url, redis.Redis(connection_pool=pool), redis.exceptions)
    kv.ping()
    kv.check_layout()
    return kv


class RedisKeyValue:
    """`keel.kv.base.KeyValue` on a Redis database; thread-safe (redis-py pools connections)."""

    def __init__(self, url: str, client: Any, exceptions: Any) -> None:
        self.url = safe_url(url)
        self._client = client
        self._errors = exceptions
        self._upsert = client.register_script(_UPSERT_LUA)
        self._put = client.register_script(_PUT_LUA)
        self._delete = client.register_script(_DELETE_LUA)

    def ping(self) -> None:
        """Raise `BackendError` unless the server answers."""
        self._call(self._client.ping)

    def check_layout(self) -> None:
        """Refuse a database whose values are in keel's older layout (a tag byte, then a version, then JSON).

        A sample: the first SCAN page. Old data has no version keys and every value starts with the
        tag byte 0 or 1 (JSON text never does); a new database, or one with any version key, passes.
        """
        _, keys = self._call(partial(self._client.scan, cursor=0, count=100))
        if any(k.startswith(_VERSION_PREFIX_B) for k in keys):
            return
        values = [v for v in self._call(partial(self._client.mget, keys[:20])) if v is not None] if keys else []
        if values and all(v[:1] == b"\x00" or (v[:1] == b"\x01" and len(v) >= 9) for v in values):
            raise BackendError(
                f"Redis at {self.url} holds values in keel's older layout (a tag byte and a version before "
                "the JSON); this keel stores plain JSON with the version in keel:version:<key>. Empty that "
                "database (redis-cli -n DB FLUSHDB) and rebuild the views with `keel replay PROCESSOR --from 0` "
                "for each processor that writes one (and re-run the jobs that do), or point the `kv` URL at an "
                "empty database"
            )

    # -- reads -------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        value: bytes | None = self._call(lambda: self._client.get(key))
        return value

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []

        def run() -> list[bytes | None]:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(keys), _CHUNK):
                pipe.mget(keys[start : start + _CHUNK])
            return [value for chunk in pipe.execute() for value in chunk]

        return self._call(run)

    def scan(self, prefix: str, limit: int | None = None) -> Iterator[tuple[str, bytes]]:
        """Live pairs whose key starts with ``prefix``, in Redis's hash order (not sorted).

        SCAN may report a key twice; each is yielded once. Keys written during the scan may or
        may not appear; keys present throughout always do. Version keys are never yielded.
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
            for key, value in zip(fresh, values):
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
        px = str(_ttl_ms(ttl) or 0)

        def run() -> None:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(items), _CHUNK):
                chunk = items[start : start + _CHUNK]
                keys = [name for key, _ in chunk for name in (key, VERSION_PREFIX + key)]
                self._put(keys=keys, args=[px, *(value for _, value in chunk)], client=pipe)
            pipe.execute()

        self._call(run)

    def upsert_many(self, items: Sequence[tuple[str, int, bytes]], ttl: float | None = None) -> int:
        if not items:
            return 0
        px = str(_ttl_ms(ttl) or 0)
        rows = [(key, _checked_version(version), value) for key, version, value in items]

        def run() -> int:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                keys = [name for key, _, _ in chunk for name in (key, VERSION_PREFIX + key)]
                args: list[str | bytes] = [px]
                for _, version, value in chunk:
                    args += (version, value)
                self._upsert(keys=keys, args=args, client=pipe)
            return sum(int(n) for n in pipe.execute())

        return self._call(run)

    def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0

        def run() -> int:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(keys), _CHUNK):
                names = [name for key in keys[start : start + _CHUNK] for name in (key, VERSION_PREFIX + key)]
                self._delete(keys=names, args=[], client=pipe)
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
            keys = [k for k in keys if not k.startswith(_VERSION_PREFIX_B)]
            if keys:
                yield keys
            if int(cursor) == 0:
                return

    def _call(self, work: Callable[[], _T]) -> _T:
        with self._translated():
            return work()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except self._errors.RedisError as exc:
            raise translate(exc, self._errors, self.url) from exc


def translate(exc: BaseException, errors: Any, url: str) -> BackendError:
    """The `BackendError` for a redis-py error (shared by the sync engine and the async reader)."""
    text = str(exc).rstrip(".")
    if "SSL" in text or "certificate" in text:
        return BackendError(
            f"cannot open a TLS connection to Redis at {url}: {text}. Give the CA that signed the server's "
            "certificate as ?ssl_ca_certs=/path/ca.pem in the `kv` URL (rediss://host:port/db?ssl_ca_certs=...), "
            "and check that the certificate names the host of the URL"
        )
    if isinstance(exc, (errors.ConnectionError, errors.TimeoutError)):
        return BackendError(
            f"cannot reach Redis at {url}: {text}. Check that redis-server is running and reachable "
            "at that host and port (firewall, password in the URL, a TLS port needs rediss://), or fix the "
            "`kv` URL of the profile in keel.toml / KEEL_KV"
        )
    return BackendError(
        f"Redis at {url} refused the command: {text}. Check the server's logs, its maxmemory "
        "policy and that the database number in the URL is the one keel owns"
    )


def check_tls_files(url: str) -> None:
    """Refuse a URL naming a TLS file that is not there (redis-py would only say "No such file" on connect)."""
    for option, values in parse_qs(urlsplit(url).query).items():
        if option in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path"):
            for value in values:
                if not Path(value).exists():
                    raise ConfigError(f"kv URL {safe_url(url)}: {option}={value} does not exist; give the path of "
                                      "the PEM file on this machine (e.g. ?ssl_ca_certs=/etc/keel/redis-ca.pem)")


def safe_url(url: str) -> str:
    """``url`` without its password (error messages and logs must not carry it)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _checked_version(version: int) -> str:
    if not _MIN_VERSION <= version <= _MAX_VERSION:
        raise ValueError(f"kv versions are 64-bit signed integers; {version} is out of range")
    return str(version)


def _ttl_ms(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    if not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


def _glob_escape(text: str) -> str:
    """Escape Redis glob syntax (``* ? [ ] \\``) so ``text`` matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
