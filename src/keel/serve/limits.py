"""The gateway's limits and policies, and the per-key rate limiter.

Every limit answers before the work starts, with a status the client can act on:

* 401 no or bad key; 403 key without the scope;
* 413 body over ``max_body_bytes`` (checked on Content-Length, and counted while streaming);
* 429 key over its rate (token bucket per key; Retry-After says when a token is back);
* 503 over ``max_concurrency`` requests in flight (load shedding: refused at once, so the accepted
  requests stay fast), or a backend unavailable (breaker open, timeout); Retry-After on both;
* 504 a request past ``request_timeout``.

The limiter is per gateway process: N replicas allow N times the rate (documented, not hidden).
The local developer on loopback (no key, local profile only) is not rate limited.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from keel.serve.resilience import BackendPolicy


@dataclass(frozen=True)
class GatewayOptions:
    max_body_bytes: int = 8 * 1024 * 1024
    request_timeout: float = 5.0  # seconds for a whole request (504 past it)
    endpoint_timeout: float = 1.0  # a declared endpoint's handler; its fallback gets the rest
    max_concurrency: int = 256  # requests in flight; more are shed with 503
    default_rate: float = 1000.0  # requests/s of a key created without --rate
    anonymous_loopback: bool = True  # serve keyless loopback clients (never in a production profile)
    kv: BackendPolicy = field(default_factory=lambda: BackendPolicy(timeout=0.5))
    bus: BackendPolicy = field(default_factory=lambda: BackendPolicy(timeout=4.0, failures=3))
    workers: int = 32  # threads for bus produce and endpoint handlers


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(burst if burst is not None else rate, 1.0)
        self.tokens = self.burst
        self.stamp = time.monotonic()

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

    def __init__(self, default_rate: float) -> None:
        self.default_rate = default_rate
        self._buckets: dict[str, TokenBucket] = {}

    def wait(self, key_id: str, rate: float | None) -> float:
        """0.0 when the request may go ahead, else the Retry-After in seconds."""
        bucket = self._buckets.get(key_id)
        rate = rate or self.default_rate
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[key_id] = TokenBucket(rate)
        return bucket.take(time.monotonic())


def retry_after(seconds: float) -> bytes:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds))).encode()


__all__ = ["GatewayOptions", "RateLimiter", "TokenBucket", "retry_after"]
