"""The gateway's limits and policies, and the per-key rate limiter.

Every limit answers before the work starts, with a status the client can act on:

* 401 no or bad key; 403 key without the scope;
* 413 body over ``max_body_bytes`` (checked on Content-Length, and counted while streaming);
* 429 key over its rate (token bucket per key; Retry-After says when a token is back);
* 408 a client that has not sent its whole body within ``request_timeout`` (the client is slow);
* 503 (load shedding, Retry-After on each; the accepted requests stay fast and memory stays bounded):
  over ``max_concurrency`` requests in flight; a request whose declared Content-Length would take the
  bodies in flight past ``max_inflight_bytes`` (refused before its body is read; a chunked body is
  counted as it arrives); a request that waited longer than ``max_queue_seconds`` between its
  arrival and the moment the gateway got to it; or a backend unavailable (breaker open, timeout);
* 504 a request whose handler or backend is past ``request_timeout`` (the server is slow).

The limiter is per gateway process: N replicas allow N times the rate (documented, not hidden).
The local developer on loopback (no key, local profile only) is not rate limited.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from keel.serve.resilience import BackendPolicy


@dataclass(frozen=True)
class GatewayOptions:
    max_body_bytes: int = 8 * 1024 * 1024
    request_timeout: float = 5.0  # seconds for a whole request (504 past it)
    endpoint_timeout: float = 1.0  # a declared endpoint's handler; its fallback gets the rest
    max_concurrency: int = 64  # requests in flight; more are shed with 503 (by the HTTP protocol under keel up)
    default_rate: float = 1000.0  # requests/s of a key created without --rate
    anonymous_loopback: bool = True  # serve keyless loopback clients (never in a production profile)
    kv: BackendPolicy = field(default_factory=lambda: BackendPolicy(timeout=0.5))
    bus: BackendPolicy = field(default_factory=lambda: BackendPolicy(timeout=4.0, failures=3))
    workers: int = 32  # threads for bus produce and endpoint handlers
    max_inflight_bytes: int = 64 * 1024 * 1024  # request bodies being received or served; more is shed (503)
    max_queue_seconds: float = 0.1  # a request that waited longer than this before being served is shed (503)
    clock: Callable[[], float] = time.monotonic  # the gateway's clock (rate limits, queue time); tests inject one


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(burst if burst is not None else rate, 1.0)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there will be."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per key id (keys are few: the table is bounded by the key file)."""

    def __init__(self, default_rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.default_rate = default_rate
        self.clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def wait(self, key_id: str, rate: float | None) -> float:
        """0.0 when the request may go ahead, else the Retry-After in seconds."""
        bucket = self._buckets.get(key_id)
        rate = rate or self.default_rate
        now = self.clock()
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[key_id] = TokenBucket(rate, now)
        return bucket.take(now)


class ByteBudget:
    """The request body bytes the gateway holds at once, at most ``limit`` (requests beyond it are shed).

    A request with a Content-Length reserves it whole before its body is read; a chunked body
    reserves each chunk as it arrives. Whatever a request reserved is given back when it ends.
    One event loop uses it, so no lock.
    """

    __slots__ = ("freed", "limit", "trim", "used")

    def __init__(self, limit: int, trim: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.used = 0
        self.freed = 0  # bytes given back since the last trim
        self.trim = trim

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes if they fit (always, for the first request: one body may be the budget)."""
        if self.used and self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size
        self.freed += size
        # after a burst of large bodies, once none is in flight: give the freed memory back to the system
        if not self.used and self.freed >= self.limit // 4 and self.trim is not None:
            self.freed = 0
            self.trim()


def release_memory() -> None:
    """Return freed heap to the OS: glibc keeps the arenas of large freed buffers (RSS stays up after
    a burst otherwise), and Arrow's pool keeps its own."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def retry_after(seconds: float) -> bytes:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds))).encode()


__all__ = ["ByteBudget", "GatewayOptions", "RateLimiter", "TokenBucket", "release_memory", "retry_after"]
