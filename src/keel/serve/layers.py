"""The front door's layers, each a small check that lets a request through (None) or refuses it.

`keel.serve.front.Gateway` runs them in this order, before the route (OWASP API1/API2/API4/API5:
one place, default deny):

1. `LoadShedder`: 503 + Retry-After at once past ``max_concurrency`` requests in flight, or for a
   request that waited past ``max_queue_seconds`` since it arrived (its arrival is stamped by the
   HTTP protocol `keel.serve.protocol.StampedHttp`; under overload the event loop is the queue, and
   a request that sat in it too long is answered at once, so the time of those served stays bounded).
2. `Authenticator`: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Without a key only a
   loopback client of a non-production profile is served (as the local developer); otherwise 401.
3. `authorize`: the route's scope (``ingest:<stream>``, ``read:<view>``, ``call:<endpoint>``,
   ``admin`` for /metrics), 403 without it.
4. `RateLimits`: per key, 429 + Retry-After.
5. `BodyLimits`: a Content-Length that is not a number (400) or over ``max_body_bytes`` (413), or
   that would take the body bytes in flight past ``max_inflight_bytes`` (503: memory stays bounded;
   a chunked body is counted as it arrives, by the `Body` it gives the route as ``receive``).

A refusal names its ``keel_http_refused`` reason; the gateway counts it and answers it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from prometheus_client import Histogram

from keel.serve.keys import LOCAL_DEVELOPER, KeyRing, Principal
from keel.serve.limits import ByteBudget, RateLimiter, retry_after
from keel.serve.protocol import ARRIVED
from keel.serve.routes import Message, Receive, Scope

_LOOPBACK = ("127.", "::1", "::ffff:127.")
_RETRY_1 = ((b"retry-after", b"1"),)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer given instead of the route: status, message, extra headers, and the
    ``keel_http_refused`` reason it is counted under (None: not counted)."""

    status: int
    message: str
    reason: str | None
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _shed(reason: str, why: str) -> Refusal:
    return Refusal(503, f"{why}; retry after the Retry-After delay", reason, _RETRY_1)


OVER_CAPACITY = _shed("shed", "the gateway is over capacity")
OVER_BUDGET = _shed("memory", "the gateway holds as many request bodies as its memory budget allows")
NO_KEY = Refusal(401, "send an API key: `Authorization: Bearer <key>` or `X-API-Key: <key>` (create one with "
                      "`keel keys create`)", "unauthenticated", ((b"www-authenticate", b'Bearer realm="keel"'),))
BAD_KEY = Refusal(401, "the API key is not valid (malformed, unknown or revoked)", "unauthenticated", NO_KEY.headers)
BAD_LENGTH = Refusal(400, "Content-Length is not a number of bytes", None)


class LoadShedder:
    """Concurrency and queue-time shedding; ``inflight`` is kept by the gateway around each route."""

    __slots__ = ("clock", "inflight", "max_concurrency", "max_queue_seconds", "queued")

    def __init__(self, max_concurrency: int, max_queue_seconds: float, clock: Callable[[], float],
                 queued: Histogram) -> None:
        self.max_concurrency, self.max_queue_seconds, self.clock = max_concurrency, max_queue_seconds, clock
        self.queued = queued  # the waits of the requests let through
        self.inflight = 0

    def check(self, scope: Scope) -> Refusal | None:
        if self.inflight >= self.max_concurrency:
            return OVER_CAPACITY
        stamp = scope.get("extensions", {}).get(ARRIVED)
        if stamp is not None:
            waited = self.clock() - stamp["at"]
            if waited > self.max_queue_seconds:
                return _shed("queue", f"the request waited {waited:.2f}s in the gateway's queue "
                                      f"(bound {self.max_queue_seconds}s): it is over capacity")
            self.queued.observe(waited)
        return None


class Credentials(NamedTuple):
    """What the front door reads from the request headers, in one pass."""

    token: str | None = None  # None: no key sent; "": an Authorization header that is not Bearer
    length: bytes | None = None  # the Content-Length as sent
    chunked: bool = False


def credentials(scope: Scope) -> Credentials:
    token: str | None = None
    length: bytes | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"authorization":
            token = value[7:].strip().decode("latin-1") if value[:7].lower() == b"bearer " else ""
        elif name == b"x-api-key":
            token = value.strip().decode("latin-1")
        elif name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = True
    return Credentials(token, length, chunked)


class Authenticator:
    """The principal of a request: its key's, or the local developer's (keyless loopback, if allowed)."""

    __slots__ = ("anonymous_loopback", "keyring")

    def __init__(self, keyring: KeyRing, anonymous_loopback: bool) -> None:
        self.keyring, self.anonymous_loopback = keyring, anonymous_loopback

    def principal(self, scope: Scope, token: str | None) -> Principal | Refusal:
        if token is not None:
            return self.keyring.authenticate(token) or BAD_KEY
        client = scope.get("client")
        if self.anonymous_loopback and client and str(client[0]).startswith(_LOOPBACK):
            return LOCAL_DEVELOPER
        return NO_KEY


def authorize(principal: Principal, needed: str | None) -> Refusal | None:
    """403 unless the principal holds ``needed`` (None: the route needs no scope beyond a valid key)."""
    if needed is not None and not principal.allows(needed):
        return Refusal(403, f"this key has no scope {needed!r}; create a key with `--scope {needed}`", "forbidden")
    return None


class RateLimits:
    """A token bucket per key (`keel.serve.limits.RateLimiter`); the local developer is not limited."""

    __slots__ = ("limiter",)

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter

    def check(self, principal: Principal) -> Refusal | None:
        if principal.key_id is None:
            return None
        wait = self.limiter.wait(principal.key_id, principal.rate)
        if wait > 0:
            return Refusal(429, "this key is over its rate limit; slow down", "rate",
                           ((b"retry-after", retry_after(wait)),))
        return None


class TooLarge(Exception):
    """The body grew past ``max_body_bytes`` while it was read (413)."""


class OverBudget(Exception):
    """A chunked body grew past what the byte budget had left (503)."""


class Body:
    """The route's ``receive``: counts the body against its limit and the byte budget, and knows
    whether the request is waiting on the client (a timeout then is the client's: 408)."""

    __slots__ = ("budget", "disconnected", "limit", "receive", "received", "reserved", "sending")

    def __init__(self, receive: Receive, limit: int, budget: ByteBudget, reserved: int, has_body: bool) -> None:
        self.receive, self.limit, self.budget = receive, limit, budget
        self.reserved = reserved  # bytes taken from the budget (the Content-Length, or the chunks so far)
        self.received = 0
        self.sending = has_body  # the client has not sent its whole body yet
        self.disconnected = False

    async def __call__(self) -> Message:
        if not self.sending:
            return await self.receive()  # after the body: only a disconnect can come
        message = await self.receive()
        if message["type"] != "http.request":
            self.disconnected = True
            return message
        size = len(message.get("body", b""))
        self.received += size
        if self.received > self.limit:
            raise TooLarge
        if self.received > self.reserved:  # chunked (or more than declared): count it as it arrives
            if not self.budget.reserve(self.received - self.reserved):
                raise OverBudget
            self.reserved = self.received
        self.sending = bool(message.get("more_body", False))
        return message


class BodyLimits:
    """The body limit and the byte budget, checked on the Content-Length before a byte is read."""

    __slots__ = ("budget", "max_body_bytes")

    def __init__(self, max_body_bytes: int, budget: ByteBudget) -> None:
        self.max_body_bytes, self.budget = max_body_bytes, budget

    def admit(self, found: Credentials, receive: Receive) -> Body | Refusal:
        """The `Body` to read the request through (its declared length reserved), or the refusal."""
        declared = 0
        if found.length is not None:
            limit = self.max_body_bytes
            try:
                declared = int(found.length)
            except ValueError:
                declared = -1
            if declared < 0:
                return BAD_LENGTH
            if declared > limit:
                return Refusal(413, f"body of {declared} bytes exceeds the {limit}-byte limit; send smaller batches",
                               "too_large")
            if not self.budget.reserve(declared):
                return OVER_BUDGET
        return Body(receive, self.max_body_bytes, self.budget, declared, bool(declared) or found.chunked)


__all__ = ["Authenticator", "Body", "BodyLimits", "Credentials", "LoadShedder", "OverBudget", "RateLimits",
           "Refusal", "TooLarge", "authorize", "credentials"]
