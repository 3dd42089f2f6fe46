"""Async reads from Redis for the gateway: redis.asyncio + hiredis, with request coalescing.

Why coalescing: one ``await redis.get()`` per HTTP request costs more Python than the HTTP request
itself (pool checkout, command packing, a reply future, pool check-in), which cut the gateway's
throughput 3-4x. Here every ``get_many`` arriving in the same event-loop tick joins one pending
batch; the batch goes out as ONE ``MGET`` on its own pooled connection, and each caller gets its
slice of the reply. Under load batches grow by themselves: while ``max_inflight`` batches are on the
wire, new keys wait for the next free slot instead of opening more connections, so the number of
connections to Redis is bounded (``max_inflight``) whatever the request rate.

Each batch has one deadline (``timeout``); past it every caller in the batch gets `BackendError`
and the connection is dropped (redis-py disconnects a connection whose command was cancelled), so
a stalled server never leaks a connection or a caller. Values are the stored bytes, as the sync
engine (`keel.kv.redis`) returns them: nothing is decoded. ``rediss://`` connects with TLS (the CA as
``?ssl_ca_certs=/path/ca.pem``, as for the sync engine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from keel.schemes import require
from keel.errors import BackendError, ConfigError
from keel.kv.base import KeyValue
from keel.kv.redis import check_tls_files, safe_url, translate

_MAX_KEYS = 4096  # keys per MGET: a batch never blocks the server long


def open_async_redis(url: str, *, timeout: float = 0.5, connect_timeout: float = 0.5,
                     max_inflight: int = 4) -> AsyncRedisReader:
    """A coalescing reader of ``redis://host:port/db`` (or ``rediss://``). No retries inside: the caller owns them."""
    aioredis = require("redis.asyncio", "redis", "redis")
    retry_mod = require("redis.asyncio.retry", "redis", "redis")
    backoff = require("redis.backoff", "redis", "redis")
    check_tls_files(url)
    try:
        pool = aioredis.ConnectionPool.from_url(
            url, max_connections=max_inflight, socket_timeout=timeout, socket_connect_timeout=connect_timeout,
            retry=retry_mod.Retry(backoff.NoBackoff(), 0),
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"kv URL {safe_url(url)}: {exc}; use redis://host:port/db or "
                          "rediss://host:port/db?ssl_ca_certs=/path/ca.pem") from exc
    client = aioredis.Redis(connection_pool=pool)
    return AsyncRedisReader(url, client, require("redis", "redis", "redis").exceptions, timeout, max_inflight)


def open_reader(url: str, *, kv: Callable[[], KeyValue], timeout: float) -> AsyncRedisReader:
    """The gateway's reader of a Redis kv (`keel.kv.ENGINES`): its own connections, never the sync `kv`."""
    return open_async_redis(url, timeout=timeout)


class AsyncRedisReader:
    """`keel.kv.async_reader.AsyncReader` on Redis; belongs to the event loop that first uses it."""

    def __init__(self, url: str, client: Any, errors: Any, timeout: float, max_inflight: int) -> None:
        self.url = safe_url(url)
        self._client = client
        self._errors = errors
        self.timeout = timeout
        self.max_inflight = max_inflight
        self._keys: list[str] = []
        self._waiters: list[tuple[asyncio.Future[list[bytes | None]], int, int]] = []
        self._scheduled = False
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # MGETs sent (for tests and the benchmark's report)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[bytes | None]] = loop.create_future()
        start = len(self._keys)
        self._keys.extend(keys)
        self._waiters.append((future, start, len(self._keys)))
        if not self._scheduled and self._inflight < self.max_inflight:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        if not self._waiters or self._inflight >= self.max_inflight:
            return  # a batch in flight flushes again when it completes
        keys, waiters = self._keys, self._waiters
        if len(keys) > _MAX_KEYS:  # split at a caller boundary; the rest goes in the next batch
            cut = next(i for i, (_, _, end) in enumerate(waiters) if end >= _MAX_KEYS) + 1
            waiters, self._waiters = waiters[:cut], waiters[cut:]
            offset = waiters[-1][2]
            keys, self._keys = keys[:offset], keys[offset:]
            self._waiters = [(f, s - offset, e - offset) for f, s, e in self._waiters]
        else:
            self._keys, self._waiters = [], []
        self._inflight += 1
        task = asyncio.get_running_loop().create_task(self._send(keys, waiters))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, keys: list[str], waiters: list[tuple[asyncio.Future[list[bytes | None]], int, int]]) -> None:
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    raws = await self._client.mget(keys)
            except TimeoutError as exc:
                raise BackendError(f"Redis at {self.url} did not answer within {self.timeout}s; check the server's "
                                   "load and latency (SLOWLOG), or raise the gateway's kv timeout") from exc
            except self._errors.RedisError as exc:
                raise translate(exc, self._errors, self.url) from exc
            self.batches += 1
            for future, start, end in waiters:
                if not future.done():
                    future.set_result(raws[start:end])
        except BackendError as exc:
            for future, _, _ in waiters:
                if not future.done():
                    future.set_exception(exc)
        except BaseException as exc:  # cancelled at shutdown: nobody is left waiting
            for future, _, _ in waiters:
                if not future.done():
                    future.set_exception(BackendError(f"the Redis read was interrupted: {exc!r}"))
            raise
        finally:
            self._inflight -= 1
            if self._waiters and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)

    async def aclose(self) -> None:
        """Wait for the batches in flight, then close every pooled connection."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()
        await self._client.connection_pool.disconnect()


__all__ = ["AsyncRedisReader", "open_async_redis", "open_reader"]
