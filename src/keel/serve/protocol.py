"""The gateway's HTTP/1.1 protocol under uvicorn: what happens to a request before the ASGI app sees it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn._types import ASGI3Application

from keel.serve.responses import error_body

ARRIVED = "keel.arrived"  # scope["extensions"][ARRIVED]["at"]: time.monotonic() when the request's first bytes were parsed


def _uncounted() -> None:
    pass


@dataclass(frozen=True)
class Admission:
    """How many requests the server runs at once; the next one is answered 503 + Retry-After by the
    protocol itself, before an ASGI task exists for it (a refusal costs a fraction of a request).

    Under overload the requests wait where no server can see them (socket buffers, the event loop's
    queue of ready connections), for about the time the loop takes to go once round every ready
    connection. Admitting only ``max_requests`` at once keeps that round short, so the requests
    served wait little and the rest are refused cheaply, instead of all of them waiting long.
    """

    max_requests: int = 64  # requests in the app at once (this server's ASGI tasks); beyond: 503
    exempt: frozenset[str] = frozenset()  # paths never refused here (health checks)
    shed: Callable[[], None] = field(default=_uncounted)  # called once per request refused here


class StampedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), stamping each request's arrival into its scope, and
    answering 408 (then closing) a connection whose request headers are not complete within
    ``header_timeout`` seconds of its opening or of the request's first byte (uvicorn alone waits
    forever: a slowloris client could hold every connection). With an ``admission`` (`admitting`)
    it also refuses what is past `Admission.max_requests` before the app runs.

    Pass it to uvicorn (``uvicorn.Config(app, http=StampedHttp.admitting(app.admission()))``) so the
    gateway can shed what waited too long in the event loop's queue (``max_queue_seconds``); without
    the stamp it cannot.
    """

    header_timeout = 10.0
    admission: Admission | None = None
    _header_timer: asyncio.TimerHandle | None = None

    @classmethod
    def admitting(cls, admission: Admission) -> type[StampedHttp]:
        """This protocol, refusing what `admission` does not admit (uvicorn takes a class, not an instance)."""
        return type("AdmittingStampedHttp", (cls,), {"admission": admission})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {ARRIVED: {"at": time.monotonic()}}
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # uvicorn calls this for each request once its headers are parsed (in order, after a pipelined one)
        admission = self.admission
        if (admission is None or len(self.tasks) < admission.max_requests
                or cycle.scope["path"] in admission.exempt):
            super()._start_asgi_task(cycle, app)
            return
        admission.shed()
        cycle.response_complete = True  # its body, if any, is read and dropped
        self.transport.write(_OVERLOADED if cycle.keep_alive else _OVERLOADED_CLOSE)
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()

    def _arm_header_timer(self) -> None:
        self._disarm_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being served: its own limits apply
        if self.transport.is_closing():
            return
        body = error_body(f"the request headers were not received within {self.header_timeout}s")
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def _overloaded(close: bool) -> bytes:
    body = error_body("the gateway is over capacity; retry after the Retry-After delay")
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"retry-after: 1\r\n%s\r\n%s" % (len(body), b"connection: close\r\n" if close else b"", body))


_OVERLOADED, _OVERLOADED_CLOSE = _overloaded(False), _overloaded(True)
