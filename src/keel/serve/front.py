"""The gateway's front door: one ASGI callable that every request passes through.

In order, before any route runs (OWASP API1/API2/API4/API5: one place, default deny):

1. **Shed** (503 + Retry-After, at once): past ``max_concurrency`` requests in flight; a request
   that waited past ``max_queue_seconds`` since it arrived (its arrival is stamped by the HTTP
   protocol `StampedHttp`; under overload the event loop is the queue, and a request that sat in it
   too long is answered at once, so the time of the requests served stays bounded); a body whose
   Content-Length would take the body bytes in flight past ``max_inflight_bytes`` (memory stays
   bounded; a chunked body is counted as it arrives).
2. **Authenticate**: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Without a key only a
   loopback client of a non-production profile is served (as the local developer); otherwise 401.
3. **Authorize** the route's scope (``ingest:<stream>``, ``read:<view>``, ``call:<endpoint>``,
   ``admin`` for /metrics): 403 without it. /healthz, /readyz and /openapi.json are public.
4. **Rate limit** per key: 429 + Retry-After.
5. **Body limit** (413) and **time limit** around the route: 408 when the client had not sent its
   body by then, 504 when the handler or a backend was the slow one.

Then the view lookups, the hot path, are answered in raw ASGI by `keel.serve.views` (no router,
no Request object, stored JSON bytes sent as they are). Every other route goes to the Starlette
router built in `keel.serve.app`.
Metrics are counted here for every route, so no handler can forget them.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import ClientDisconnect

from keel.errors import BackendError, KeelError, NotFoundError
from keel.kv.async_reader import AsyncReader, open_async_reader
from keel.serve.keys import LOCAL_DEVELOPER, KeyRing, Principal
from keel.serve.limits import ByteBudget, GatewayOptions, RateLimiter, release_memory, retry_after
from keel.serve.metrics import Metrics
from keel.serve.protocol import ARRIVED
from keel.serve.resilience import Backend, CircuitOpenError
from keel.serve.views import error, view_many, view_one

log = logging.getLogger("keel.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC = frozenset({"/healthz", "/readyz", "/openapi.json"})
_JSON = (b"content-type", b"application/json")
_LOOPBACK = ("127.", "::1", "::ffff:127.")




class _TooLarge(Exception):
    pass


class _OverBudget(Exception):
    pass


class _Body:
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
            raise _TooLarge
        if self.received > self.reserved:  # chunked (or more than declared): count it as it arrives
            if not self.budget.reserve(self.received - self.reserved):
                raise _OverBudget
            self.reserved = self.received
        self.sending = bool(message.get("more_body", False))
        return message


@dataclass
class Services:
    """What routes share: the kv reader (opened in the serving loop, on first use), backends, threads."""

    kv_url: str
    sync_kv: Callable[[], Any]
    kv: Backend
    bus: Backend
    executor: ThreadPoolExecutor
    _reader: AsyncReader | None = field(default=None, repr=False)

    @property
    def reader(self) -> AsyncReader:
        if self._reader is None:
            self._reader = open_async_reader(self.kv_url, self.sync_kv, timeout=self.kv.timeout)
        return self._reader

    async def read(self, keys: list[str]) -> list[bytes | None]:
        """Read kv keys through the kv backend's breaker and retry budget (the reader times out)."""
        reader = self.reader
        return await self.kv.call(lambda: reader.get_many(keys), retry=True, timed=False)

    def breakers(self) -> dict[str, str]:
        return {b.name: b.breaker.state for b in (self.kv, self.bus)}

    async def aclose(self) -> None:
        if self._reader is not None:
            reader, self._reader = self._reader, None
            await reader.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)


class Gateway:
    """The ASGI application `keel.serve.app.build_app` returns."""

    def __init__(self, router: ASGIApp, services: Services, options: GatewayOptions, keyring: KeyRing,
                 metrics: Metrics, views: set[str], endpoints: list[tuple[str, re.Pattern[str], str]]) -> None:
        self.router = router
        self.services = services
        self.options = options
        self.keyring = keyring
        self.metrics = metrics
        self.views = views
        self.endpoints = endpoints  # (name, path regex, scope)
        self.clock = options.clock
        self.rate = RateLimiter(options.default_rate, options.clock)
        self.budget = ByteBudget(options.max_inflight_bytes, self._release_memory)
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(receive, send)
            return  # websockets are not served
        path: str = scope["path"]
        method: str = scope["method"]
        t0 = time.perf_counter()
        if path in PUBLIC:
            status = await self._routed(scope, receive, send)
            self.metrics.observe(path[1:], method, status, time.perf_counter() - t0)
            return
        if self.inflight >= self.options.max_concurrency:
            return await self._shed(send, "shed", "the gateway is over capacity")
        stamp = scope.get("extensions", {}).get(ARRIVED)
        if stamp is not None:
            waited = self.clock() - stamp["at"]
            if waited > self.options.max_queue_seconds:
                return await self._shed(send, "queue", f"the request waited {waited:.2f}s in the gateway's queue "
                                                        f"(bound {self.options.max_queue_seconds}s): it is over capacity")
            self.metrics.queued.observe(waited)
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
        principal = self._authenticate(scope, token)
        if principal is None:
            self.metrics.refused.labels("unauthenticated").inc()
            message = ("send an API key: `Authorization: Bearer <key>` or `X-API-Key: <key>` (create one with "
                       "`keel keys create`)") if token is None else "the API key is not valid (malformed, unknown or revoked)"
            await error(send, 401, message, ((b"www-authenticate", b'Bearer realm="keel"'),))
            return
        route, needed, hot = self._route(method, path)
        if needed is not None and not principal.allows(needed):
            self.metrics.refused.labels("forbidden").inc()
            await error(send, 403, f"this key has no scope {needed!r}; create a key with `--scope {needed}`")
            return
        if principal.key_id is not None:
            wait = self.rate.wait(principal.key_id, principal.rate)
            if wait > 0:
                self.metrics.refused.labels("rate").inc()
                await error(send, 429, "this key is over its rate limit; slow down",
                              ((b"retry-after", retry_after(wait)),))
                return
        declared = 0
        if length is not None:
            limit = self.options.max_body_bytes
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await error(send, 400, "Content-Length is not a number of bytes")
                return
            if declared > limit:
                self.metrics.refused.labels("too_large").inc()
                await error(send, 413, f"body of {declared} bytes exceeds the {limit}-byte limit; send smaller batches")
                return
            if not self.budget.reserve(declared):
                return await self._shed(send, "memory", "the gateway holds as many request bodies as its memory "
                                                         "budget allows")
        body = _Body(receive, self.options.max_body_bytes, self.budget, declared, bool(declared) or chunked)
        self.inflight += 1
        try:
            if hot is not None and hot[1] is not None:
                status = await view_one(self.services.read, self.views, hot[0], hot[1], send)
            else:
                status = await self._routed(scope, body, send, hot)
        finally:
            self.inflight -= 1
            self.budget.release(body.reserved)
        self.metrics.observe(route, method, status, time.perf_counter() - t0)

    def _release_memory(self) -> None:
        """Hand the trim to a worker thread: on a large heap it takes milliseconds of the event loop."""
        try:
            self.services.executor.submit(release_memory)
        except RuntimeError:  # shutting down: the process is about to give it all back anyway
            pass

    async def _shed(self, send: Send, reason: str, why: str) -> None:
        self.metrics.refused.labels(reason).inc()
        await error(send, 503, f"{why}; retry after the Retry-After delay", ((b"retry-after", b"1"),))

    # -- everything else -----------------------------------------------------------------------

    async def _routed(self, scope: Scope, body: _Body | Receive, send: Send,
                      hot: tuple[str, str | None] | None = None) -> int:
        """Run the route under the time limit; turn the limits and leftover errors into answers."""
        status = 0

        async def watched_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        timeout = self.options.request_timeout
        try:
            async with asyncio.timeout(timeout):
                if hot is not None:
                    answered = await view_many(self.services.read, self.views, hot[0], body, watched_send,
                                               self.options.max_body_bytes)
                    status = status or answered
                else:
                    await self.router(scope, body, watched_send)
        except _TooLarge:
            self.metrics.refused.labels("too_large").inc()
            if not status:
                limit = self.options.max_body_bytes
                status = await error(send, 413, f"body exceeds the {limit}-byte limit; send smaller batches")
        except _OverBudget:
            self.metrics.refused.labels("memory").inc()
            if not status:
                status = await error(send, 503, "the gateway holds as many request bodies as its memory budget "
                                                "allows; retry after the Retry-After delay", ((b"retry-after", b"1"),))
        except TimeoutError:
            if not status and isinstance(body, _Body) and body.sending:
                self.metrics.refused.labels("slow_client").inc()
                status = await error(send, 408, f"the request body was not received within {timeout}s; send it "
                                                  "without pauses (or in smaller requests)", ((b"connection", b"close"),))
            elif not status:
                status = await error(send, 504, f"the request did not complete within {timeout}s; retry later")
        except NotFoundError as exc:
            if not status:
                status = await error(send, 404, str(exc))
        except BackendError as exc:
            if not status:
                after = exc.retry_after if isinstance(exc, CircuitOpenError) else 1.0
                status = await error(send, 503, str(exc), ((b"retry-after", retry_after(after)),))
        except KeelError as exc:
            if not status:
                status = await error(send, 400, str(exc))
        except ClientDisconnect:
            return status or 499  # the client went away: nobody to answer
        except Exception:
            if isinstance(body, _Body) and body.disconnected:
                return status or 499
            log.exception("gateway route %s %s failed", scope["method"], scope["path"])
            if not status:
                status = await error(send, 500, "internal error; the gateway's log has the details")
        return status

    def _authenticate(self, scope: Scope, token: str | None) -> Principal | None:
        if token is not None:
            return self.keyring.authenticate(token)
        client = scope.get("client")
        if self.options.anonymous_loopback and client and str(client[0]).startswith(_LOOPBACK):
            return LOCAL_DEVELOPER
        return None

    def _route(self, method: str, path: str) -> tuple[str, str | None, tuple[str, str | None] | None]:
        """(metrics route name, scope needed, (view, key or None for the batch form) of a view route)."""
        if path.startswith("/v1/views/"):
            parts = path[10:].split("/")
            if len(parts) == 2 and method == "GET" and parts[0] and parts[1]:
                return "view", f"read:{parts[0]}", (parts[0], parts[1])
            if len(parts) == 1 and method == "POST" and parts[0]:
                return "views", f"read:{parts[0]}", (parts[0], None)
            return "other", None, None
        if path.startswith("/v1/streams/"):
            parts = path[12:].split("/")
            if len(parts) == 2 and parts[1] == "events" and parts[0]:
                return "ingest", f"ingest:{parts[0]}", None
            return "other", None, None
        if path == "/metrics":
            return "metrics", "admin", None
        for name, pattern, needed in self.endpoints:
            if pattern.match(path):
                return name, needed, None
        return "other", None, None

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.services.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


__all__ = ["PUBLIC", "Gateway", "Services"]
