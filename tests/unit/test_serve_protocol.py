"""StampedHttp's admission: past `Admission.max_requests` in the app, the protocol itself answers 503 +
Retry-After before an ASGI task exists; health checks are never refused; the connection stays usable."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from keel.errors import ConfigError
from keel.project.config import load_config
from keel.run.host import free_port
from keel.serve.app import gateway_options
from keel.serve.protocol import Admission, StampedHttp
from keel.serve.routes import Receive, Scope, Send

LIMIT = 3


class HeldApp:
    """An ASGI app that holds each request until released; counts what entered it."""

    def __init__(self) -> None:
        self.entered = self.active = self.peak = 0
        self.release = threading.Event()
        self.server: uvicorn.Server | None = None  # the server running it (its tasks are what is admitted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != "/healthz":
            self.entered += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            while not self.release.is_set():
                await asyncio.sleep(0.005)
            self.active -= 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def answer(sock: socket.socket) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 response read off `sock`: status, headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = dict(tuple(part.strip() for part in line.split(b":", 1)) for line in lines[1:])
    while len(body) < int(headers[b"content-length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def get(sock: socket.socket, path: str) -> None:
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: gw\r\n\r\n".encode())


@pytest.fixture
def served() -> Iterator[tuple[HeldApp, int, list[int]]]:
    app, shed = HeldApp(), [0]

    def count() -> None:
        shed[0] += 1

    http = StampedHttp.admitting(Admission(LIMIT, frozenset({"/healthz"}), count))
    port = free_port()
    server = app.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=http,
                                                        log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)
    yield app, port, shed
    app.release.set()
    server.should_exit = True
    thread.join(10)


def test_past_the_limit_the_protocol_answers_503_with_retry_after_and_keeps_the_connection(
        served: tuple[HeldApp, int, list[int]]) -> None:
    app, port, shed = served
    held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(LIMIT)]
    extra = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        for n, sock in enumerate(held, 1):
            get(sock, f"/v1/views/v/{n}")
            while app.entered < n:  # admitted one by one: the app holds each
                time.sleep(0.005)
        get(extra, "/v1/views/v/over")
        status, headers, body = answer(extra)
        assert status == 503 and headers[b"retry-after"] == b"1" and b"over capacity" in body
        assert b"connection" not in headers  # kept alive: the client may retry on it
        get(extra, "/healthz")  # a health check is never refused, even at the limit
        assert answer(extra)[0] == 200
        assert app.entered == LIMIT and shed == [1]  # the refused one never reached the app
        app.release.set()
        assert [answer(sock)[0] for sock in held] == [200] * LIMIT
        assert app.server is not None
        while app.server.server_state.tasks:  # the answers are out; wait for their tasks to end too
            time.sleep(0.005)
        get(extra, "/v1/views/v/again")  # room again: the same connection is served
        assert answer(extra)[0] == 200
    finally:
        for sock in (*held, extra):
            sock.close()
    assert app.peak == LIMIT and shed == [1]


def test_a_refused_request_that_asked_to_close_is_answered_then_closed(
        served: tuple[HeldApp, int, list[int]]) -> None:
    app, port, shed = served
    held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(LIMIT)]
    try:
        for n, sock in enumerate(held, 1):
            get(sock, f"/v1/views/v/{n}")
            while app.entered < n:
                time.sleep(0.005)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as closing:
            closing.sendall(b"POST /v1/streams/s/events HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n"
                            b"content-length: 2\r\n\r\n[]")
            status, headers, _ = answer(closing)
            assert status == 503 and headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"
            assert closing.recv(65536) == b""  # closed after the answer
    finally:
        for sock in held:
            sock.close()
    assert app.entered == LIMIT and shed == [1]


def test_the_concurrency_limit_comes_from_the_profile_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "keel.toml").write_text('[project]\nmodule = "m"\n[profiles.local]\nmax_concurrency = 40\n')
    assert load_config(tmp_path, env={}).serve.max_concurrency == 40
    config = load_config(tmp_path, env={"KEEL_MAX_CONCURRENCY": "24"})
    assert config.serve.max_concurrency == 24
    assert gateway_options(config.serve, config.production).max_concurrency == 24
    for bad in ("lots", "0"):
        with pytest.raises(ConfigError, match="max_concurrency"):
            load_config(tmp_path, env={"KEEL_MAX_CONCURRENCY": bad})
