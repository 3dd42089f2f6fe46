"""The gateway's front door: one ASGI callable that every request passes through.

Each request is matched once against the route table (`keel.serve.routes`), then goes through the
layers of `keel.serve.layers` in order (shed, authenticate, authorize, rate limit, body limits; a
route of `RouteTable.public` skips them all: probes answer under overload), then its route runs
under the time limit: 408 when the client had not sent its body by then, 504 when the handler or a
backend was the slow one. A fast route (the view lookups) is answered in raw ASGI by
`keel.serve.views`; a Starlette route gets a Request; a request no route takes gets the table's
404/405. Requests and latency are counted here for every route, so no handler can forget them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from starlette.requests import ClientDisconnect

from keel.errors import BackendError, KeelError, NotFoundError
from keel.kv import KeyValue
from keel.kv.async_reader import AsyncReader, open_async_reader
from keel.serve.keys import KeyRing
from keel.serve.layers import (OVER_BUDGET, Authenticator, Body, BodyLimits, LoadShedder, OverBudget, RateLimits,
                               Refusal, TooLarge, authorize, credentials)
from keel.serve.limits import ByteBudget, GatewayOptions, RateLimiter, release_memory, retry_after
from keel.serve.metrics import Metrics
from keel.serve.protocol import Admission
from keel.serve.resilience import Backend, CircuitOpenError
from keel.serve.routes import Found, Message, Receive, RouteTable, Scope, Send
from keel.serve.views import error

log = logging.getLogger("keel.serve")


@dataclass
class Services:
    """What routes share: the kv reader (opened in the serving loop, on first use), backends, threads."""

    kv_url: str
    sync_kv: Callable[[], KeyValue]
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
    """The ASGI application `keel.serve.app.build_app` returns: the route table behind the layers."""

    def __init__(self, table: RouteTable, services: Services, options: GatewayOptions, keyring: KeyRing,
                 metrics: Metrics) -> None:
        self.table = table
        self.services = services
        self.options = options
        self.keyring = keyring
        self.metrics = metrics
        self.budget = ByteBudget(options.max_inflight_bytes, self._release_memory)
        self.shedder = LoadShedder(options.max_concurrency, options.max_queue_seconds, options.clock, metrics.queued)
        self.auth = Authenticator(keyring, options.anonymous_loopback)
        self.rate = RateLimits(RateLimiter(options.default_rate, options.clock))
        self.bodies = BodyLimits(options.max_body_bytes, self.budget)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(receive, send)
            return  # websockets are not served
        t0 = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        found = self.table.match(method, path)
        if path in self.table.public:
            status = await self._run(scope, receive, send, found)
            self.metrics.observe(path[1:], method, status, time.perf_counter() - t0)
            return
        body = self._admit(scope, found, receive)
        if isinstance(body, Refusal):
            await self._refuse(send, body)
            return
        self.shedder.inflight += 1
        try:
            if found is not None and found.direct is not None:  # no body to wait for; the kv read is timed itself
                status = await found.direct(found.params, body, send)
            else:
                status = await self._run(scope, body, send, found)
        finally:
            self.shedder.inflight -= 1
            self.budget.release(body.reserved)
        self.metrics.observe("other" if found is None else found.route.name, method, status,
                             time.perf_counter() - t0)

    def _admit(self, scope: Scope, found: Found | None, receive: Receive) -> Body | Refusal:
        """The layers, in order: the first refusal wins; past them all, the body the route reads."""
        refusal = self.shedder.check(scope)
        if refusal is not None:
            return refusal
        sent = credentials(scope)
        principal = self.auth.principal(scope, sent.token)
        if isinstance(principal, Refusal):
            return principal
        refusal = authorize(principal, None if found is None else found.needed) or self.rate.check(principal)
        if refusal is not None:
            return refusal
        return self.bodies.admit(sent, receive)

    async def _refuse(self, send: Send, refusal: Refusal) -> int:
        if refusal.reason is not None:
            self.metrics.refused.labels(refusal.reason).inc()
        return await error(send, refusal.status, refusal.message, refusal.headers)

    def admission(self) -> Admission:
        """What `StampedHttp.admitting` lets in: ``max_concurrency`` requests at once (health checks
        always), refusing the rest in the protocol, counted as shed."""
        return Admission(self.options.max_concurrency, self.table.public, self.metrics.refused.labels("shed").inc)

    def _release_memory(self) -> None:
        """Hand the trim to a worker thread: on a large heap it takes milliseconds of the event loop."""
        try:
            self.services.executor.submit(release_memory)
        except RuntimeError:  # shutting down: the process is about to give it all back anyway
            pass

    async def _run(self, scope: Scope, body: Body | Receive, send: Send, found: Found | None) -> int:
        """Run the route under the time limit; turn the limits and leftover errors into answers."""
        raw = None if found is None else found.route.raw
        status = 0

        async def watched_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        timeout = self.options.request_timeout
        try:
            async with asyncio.timeout(timeout):
                if found is None:
                    await self.table.miss(scope, body, watched_send)
                elif raw is not None:
                    answered = await raw(found.params, body, watched_send)
                    status = status or answered
                else:
                    assert found.app is not None
                    scope["path_params"] = found.params
                    await found.app(scope, body, watched_send)
        except TooLarge:
            self.metrics.refused.labels("too_large").inc()
            if not status:
                limit = self.options.max_body_bytes
                status = await error(send, 413, f"body exceeds the {limit}-byte limit; send smaller batches")
        except OverBudget:
            self.metrics.refused.labels("memory").inc()
            if not status:
                status = await error(send, 503, OVER_BUDGET.message, OVER_BUDGET.headers)
        except TimeoutError:
            if not status and isinstance(body, Body) and body.sending:
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
            if isinstance(body, Body) and body.disconnected:
                return status or 499
            log.exception("gateway route %s %s failed", scope["method"], scope["path"])
            if not status:
                status = await error(send, 500, "internal error; the gateway's log has the details")
        return status

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.services.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


__all__ = ["Gateway", "Services"]
