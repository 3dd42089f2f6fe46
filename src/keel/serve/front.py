"""The gateway's front door: one ASGI callable that every request passes through.

In order, before any route runs (OWASP API1/API2/API4/API5: one place, default deny):

1. **Shed** past ``max_concurrency`` requests in flight: 503 + Retry-After, at once.
2. **Authenticate**: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Without a key only a
   loopback client of a non-production profile is served (as the local developer); otherwise 401.
3. **Authorize** the route's scope (``ingest:<stream>``, ``read:<view>``, ``call:<endpoint>``,
   ``admin`` for /metrics): 403 without it. /healthz, /readyz and /openapi.json are public.
4. **Rate limit** per key: 429 + Retry-After.
5. **Body limit** (413) and **time limit** (504) around the route.

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

from keel.errors import BackendError, KeelError, NotFoundError
from keel.kv.async_reader import AsyncReader, open_async_reader
from keel.serve.keys import LOCAL_DEVELOPER, KeyRing, Principal
from keel.serve.limits import GatewayOptions, RateLimiter, retry_after
from keel.serve.metrics import Metrics
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
        self.rate = RateLimiter(options.default_rate)
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
            status = await self._routed(scope, receive, send, None)
            self.metrics.observe(path[1:], method, status, time.perf_counter() - t0)
            return
        if self.inflight >= self.options.max_concurrency:
            self.metrics.refused.labels("shed").inc()
            await error(send, 503, "the gateway is over capacity; retry after the Retry-After delay",
                          ((b"retry-after", b"1"),))
            return
        token: str | None = None
        length: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                token = value[7:].strip().decode("latin-1") if value[:7].lower() == b"bearer " else ""
            elif name == b"x-api-key":
                token = value.strip().decode("latin-1")
            elif name == b"content-length":
                length = value
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
        self.inflight += 1
        try:
            if hot is not None:
                if hot[1] is None:
                    status = await view_many(self.services.read, self.views, hot[0], receive, send,
                                             self.options.max_body_bytes)
                else:
                    status = await view_one(self.services.read, self.views, hot[0], hot[1], send)
            else:
                status = await self._routed(scope, receive, send, length)
        finally:
            self.inflight -= 1
        self.metrics.observe(route, method, status, time.perf_counter() - t0)

    # -- everything else -----------------------------------------------------------------------

    async def _routed(self, scope: Scope, receive: Receive, send: Send, length: bytes | None) -> int:
        """Run the router under the body and time limits; turn leftover errors into answers."""
        limit = self.options.max_body_bytes
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await error(send, 400, "Content-Length is not a number")
            if declared > limit:
                self.metrics.refused.labels("too_large").inc()
                return await error(send, 413, f"body of {declared} bytes exceeds the {limit}-byte limit; send "
                                                "smaller batches")
        received = 0
        status = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            async with asyncio.timeout(self.options.request_timeout):
                await self.router(scope, counted_receive, watched_send)
        except _TooLarge:
            self.metrics.refused.labels("too_large").inc()
            if not status:
                status = await error(send, 413, f"body exceeds the {limit}-byte limit; send smaller batches")
        except TimeoutError:
            if not status:
                status = await error(send, 504, f"the request did not complete within "
                                                  f"{self.options.request_timeout}s; retry later")
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
        except Exception:
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
