"""The gateway's HTTP/1.1 protocol under uvicorn: what happens to a request before the ASGI app sees it."""

from __future__ import annotations

import asyncio
import time

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from keel.serve.responses import error_body

ARRIVED = "keel.arrived"  # scope["extensions"][ARRIVED]["at"]: time.monotonic() when the request's first bytes were parsed


class StampedHttp(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools), stamping each request's arrival into its scope, and
    answering 408 (then closing) a connection whose request headers are not complete within
    ``header_timeout`` seconds of its opening or of the request's first byte (uvicorn alone waits
    forever: a slowloris client could hold every connection).

    Pass it to uvicorn (``uvicorn.Config(app, http=StampedHttp)``) so the gateway can shed what
    waited too long in the event loop's queue (``max_queue_seconds``); without the stamp it cannot.
    """

    header_timeout = 10.0
    _header_timer: asyncio.TimerHandle | None = None

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
