"""The gateway's front door and resilience, on the shop with embedded engines (a failing or slow kv
is a wrapper around the real one)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from keel.errors import BackendError
from keel.experiments.assign import assign_one
from keel.run.host import free_port
from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from keel.serve.app import gateway_options
from tests.harness.gateway import gateway_of, options_of
from keel.serve.protocol import ARRIVED, StampedHttp
from keel.serve.keys import create_key

GOOD = {"user_id": "u1", "item_id": "i1"}


class Clock:
    """The gateway's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WrappedKV:
    """The real kv, made to fail or stall on chosen keys."""

    def __init__(self, inner: Any, fail: Callable[[Sequence[str]], bool] = lambda keys: False,
                 delay: float = 0.0) -> None:
        self.inner, self.fail, self.delay, self.calls = inner, fail, delay, 0
        self.gate: threading.Event | None = None  # when set: each read waits for it (at most 30 s)
        self.blocked = 0  # reads waiting at the gate now

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        if self.gate is not None:
            self.blocked += 1
            try:
                self.gate.wait(30)
            finally:
                self.blocked -= 1
        if self.fail(keys):
            raise BackendError("kv is down (test)")
        result: list[bytes | None] = self.inner.get_many(keys)
        return result

    def get(self, key: str) -> bytes | None:
        return self.get_many([key])[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    root = tmp_path / "shop"
    copy_example(root)
    runtime = Runtime.open(root)
    runtime.ensure()
    runtime.views.put("trending", [("_top", {"items": [{"item_id": "a"}, {"item_id": "b"}]})])
    yield runtime
    runtime.close()


def client(app: Any, host: str = "127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app, client=(host, 40000)), base_url="http://gw")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def bus_records(rt: Runtime, stream: str) -> int:
    return sum(p.end_offset for p in rt.bus.describe(stream).partitions)


def test_routes_keep_their_behaviour(rt: Runtime) -> None:
    async def go() -> None:
        async with client(gateway_of(rt)) as c:
            assert (await c.get("/v1/views/trending/_top")).json()["items"][0] == {"item_id": "a"}
            assert (await c.get("/v1/views/trending/nobody")).status_code == 404
            assert (await c.get("/v1/views/nope/x")).status_code == 404
            r = await c.post("/v1/views/trending", json={"keys": ["_top", "x"]})
            assert r.json()["values"]["x"] is None and r.json()["values"]["_top"]["items"]
            assert (await c.post("/v1/views/trending", json={"nokeys": 1})).status_code == 400
            r = await c.post("/v1/streams/page_views/events", json=[GOOD, GOOD])
            assert r.status_code == 202 and len(r.json()["event_ids"]) == 2
            r = await c.post("/v1/streams/page_views/events", json=[GOOD, {"user_id": 3}])
            assert r.status_code == 400 and {e["field"] for e in r.json()["errors"]} == {"user_id", "item_id"}
            assert (await c.post("/v1/streams/nope/events", json=[GOOD])).status_code == 404
            assert (await c.get("/recommend/u1")).json()["items"] == ["a", "b"]

    run(go())
    assert bus_records(rt, "page_views") == 2  # the 400 wrote nothing


def test_keyless_requests_only_from_loopback_outside_production(rt: Runtime) -> None:
    async def go() -> None:
        async with client(gateway_of(rt), host="10.1.2.3") as c:
            r = await c.get("/v1/views/trending/_top")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert (await c.get("/healthz")).status_code == 200  # public
        production = replace(options_of(rt), anonymous_loopback=False)
        async with client(gateway_of(rt, production)) as c:
            assert (await c.get("/v1/views/trending/_top")).status_code == 401
            assert (await c.post("/v1/streams/page_views/events", json=[GOOD])).status_code == 401
        async with client(gateway_of(rt), host="::1") as c:
            assert (await c.get("/v1/views/trending/_top")).status_code == 200

    run(go())
    assert bus_records(rt, "page_views") == 0


def test_scopes_decide_and_a_bad_key_is_401_even_on_loopback(rt: Runtime) -> None:
    _, reader = create_key(rt.state_dir, "reader", ["read:trending"])
    _, admin = create_key(rt.state_dir, "ops", ["admin"])

    async def go() -> None:
        async with client(gateway_of(rt)) as c:
            h = {"authorization": f"Bearer {reader}"}
            assert (await c.get("/v1/views/trending/_top", headers=h)).status_code == 200
            assert (await c.get("/v1/views/recent_items/u1", headers=h)).status_code == 403
            assert (await c.post("/v1/streams/page_views/events", json=[GOOD], headers=h)).status_code == 403
            assert (await c.get("/recommend/u1", headers=h)).status_code == 403
            assert (await c.get("/metrics", headers=h)).status_code == 403
            assert (await c.get("/metrics", headers={"x-api-key": admin})).status_code == 200
            assert (await c.get("/v1/views/trending/_top", headers={"x-api-key": "keel_bad"})).status_code == 401

    run(go())


def test_rate_limit_per_key_answers_429_with_retry_after(rt: Runtime) -> None:
    _, slow = create_key(rt.state_dir, "slow", ["read:*"], rate=2)
    _, other = create_key(rt.state_dir, "other", ["read:*"], rate=2)
    clock = Clock()  # time stands still unless the test moves it

    async def go() -> list[int]:
        async with client(gateway_of(rt, replace(options_of(rt), clock=clock))) as c:
            codes = [(await c.get("/v1/views/trending/_top", headers={"x-api-key": slow})).status_code
                     for _ in range(4)]
            r = await c.get("/v1/views/trending/_top", headers={"x-api-key": slow})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert (await c.get("/v1/views/trending/_top", headers={"x-api-key": other})).status_code == 200
            clock.now += 0.5  # one token back at 2/s
            codes += [(await c.get("/v1/views/trending/_top", headers={"x-api-key": slow})).status_code
                      for _ in range(2)]
            return codes

    assert run(go()) == [200, 200, 429, 429, 200, 429]


def test_body_limit_413_writes_nothing(rt: Runtime) -> None:
    options = replace(options_of(rt), max_body_bytes=200)
    body = b"[" + b",".join([b'{"user_id":"u","item_id":"i"}'] * 20) + b"]"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 64):
            yield body[i:i + 64]

    async def go() -> None:
        async with client(gateway_of(rt, options)) as c:
            assert (await c.post("/v1/streams/page_views/events", content=body)).status_code == 413
            r = await c.post("/v1/streams/page_views/events", content=chunks())  # chunked: no Content-Length
            assert r.status_code == 413
            r = await c.post("/v1/views/trending", content=b'{"keys":[' + b'"k",' * 100 + b'"k"]}')
            assert r.status_code == 413

    run(go())
    assert bus_records(rt, "page_views") == 0


def personal_user() -> str:
    return next(u for u in (f"user{i}" for i in range(100)) if assign_one("recs_v2", u, {"trending": 0.5,
                                                                                           "personal": 0.5}) == "personal")


def test_fallback_answers_when_the_personal_views_fail(rt: Runtime) -> None:
    rt.__dict__["kv"] = WrappedKV(rt.kv, fail=lambda keys: any(not k.startswith("trending/") for k in keys))
    rt.__dict__.pop("views", None)
    user = personal_user()

    async def go() -> None:
        async with client(gateway_of(rt)) as c:
            r = await c.get(f"/recommend/{user}")
            assert r.status_code == 200 and r.headers["x-keel-fallback"] == "1"
            assert r.json() == {"items": ["a", "b"], "source": "trending"}
            metrics = (await c.get("/metrics")).text
            assert 'keel_endpoint_fallbacks_total{endpoint="recommend"} 1.0' in metrics

    run(go())


def test_breaker_opens_fails_fast_and_readyz_says_so(rt: Runtime) -> None:
    kv = WrappedKV(rt.kv, fail=lambda keys: True)
    rt.__dict__["kv"] = kv
    rt.__dict__.pop("views", None)

    clock = Clock()

    async def go() -> None:
        app = gateway_of(rt)
        app.services.kv.breaker.clock = clock
        async with client(app) as c:
            codes = [(await c.get("/v1/views/trending/_top")) for _ in range(20)]
            assert all(r.status_code == 503 and "retry-after" in r.headers for r in codes)
            calls_when_open = kv.calls
            for _ in range(20):
                assert (await c.get("/v1/views/trending/_top")).status_code == 503
            assert kv.calls == calls_when_open  # open: no more calls to the dead backend
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["breakers"]["kv"] != "closed"
            kv.fail = lambda keys: False  # the backend heals: the half-open probe closes the breaker
            assert (await c.get("/v1/views/trending/_top")).status_code == 503  # still open: no probe yet
            assert kv.calls == calls_when_open
            clock.now += 1.01  # past the first open period (1 s)
            assert (await c.get("/v1/views/trending/_top")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200

    run(go())


def test_time_limit_answers_504(rt: Runtime) -> None:
    kv = WrappedKV(rt.kv)
    kv.gate = threading.Event()  # the kv answers only when the test lets it
    rt.__dict__["kv"] = kv
    rt.__dict__.pop("views", None)
    options = replace(options_of(rt), endpoint_timeout=0.1, request_timeout=0.3)

    async def go() -> None:
        async with client(gateway_of(rt, options)) as c:
            r = await c.get("/recommend/u1")
            assert r.status_code == 504  # the server was the slow one: not 408
            assert kv.blocked >= 1  # answered at the limit, while the kv call is still hanging

    try:
        run(go())
    finally:
        assert kv.gate is not None
        kv.gate.set()


def test_over_capacity_requests_are_shed_with_503(rt: Runtime) -> None:
    rt.__dict__["kv"] = WrappedKV(rt.kv, delay=0.3)
    rt.__dict__.pop("views", None)
    options = replace(options_of(rt), max_concurrency=2, endpoint_timeout=2, request_timeout=3)

    async def go() -> list[httpx.Response]:
        async with client(gateway_of(rt, options)) as c:
            return list(await asyncio.gather(*(c.get("/recommend/u1") for _ in range(8))))

    responses = run(go())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200] + [503] * 6
    assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 503)


def test_no_keyless_access_in_a_production_profile(rt: Runtime) -> None:
    class Prod:
        config = replace(rt.config, production=True)

    assert options_of(rt).anonymous_loopback is True
    assert gateway_options(Prod.config.serve, Prod.config.production).anonymous_loopback is False


# -- overload: queue time and the byte budget (the front door's own clock and counters) --------------


def http_scope(method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = (),
               arrived: float | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
                             "query_string": b"", "headers": list(headers), "client": ("127.0.0.1", 40000),
                             "server": ("127.0.0.1", 8000)}
    if arrived is not None:
        scope["extensions"] = {ARRIVED: {"at": arrived}}
    return scope


class Exchange:
    """One request sent straight to the ASGI app: the body is handed over chunk by chunk, on demand."""

    def __init__(self, chunks: Sequence[bytes] = (), stalls: bool = False) -> None:
        self.chunks = list(chunks)
        self.stalls = stalls
        self.asked = 0  # receive() calls: how much of the body the gateway read
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.stall = asyncio.Event()  # if it stalls: after the chunks nothing more comes until this is set

    async def receive(self) -> MutableMapping[str, Any]:
        self.asked += 1
        if self.chunks:
            chunk = self.chunks.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks) or self.stalls}
        await self.stall.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
        else:
            self.body += message.get("body", b"")


def test_a_request_that_waited_past_the_queue_bound_is_shed_with_503(rt: Runtime) -> None:
    clock = Clock()
    app = gateway_of(rt, replace(options_of(rt), max_queue_seconds=0.5, clock=clock))

    async def go() -> None:
        late = Exchange()
        await app(http_scope("GET", "/v1/views/trending/_top", arrived=clock.now - 0.6), late.receive, late.send)
        assert late.status == 503 and late.headers[b"retry-after"] == b"1" and b"queue" in late.body
        fresh = Exchange()
        await app(http_scope("GET", "/v1/views/trending/_top", arrived=clock.now - 0.4), fresh.receive, fresh.send)
        assert fresh.status == 200
        unstamped = Exchange()  # a server that stamps nothing: nothing to shed on
        await app(http_scope("GET", "/v1/views/trending/_top"), unstamped.receive, unstamped.send)
        assert unstamped.status == 200

    run(go())
    assert app.metrics.refused.labels("queue")._value.get() == 1
    waits = {s.labels.get("le"): s.value for m in app.metrics.queued.collect() for s in m.samples
             if s.name.endswith("_bucket")}
    assert waits["0.25"] == 0 and waits["0.5"] == waits["+Inf"] == 1  # the one served stamped request: 0.4 s


def test_a_body_past_the_byte_budget_is_shed_before_it_is_read(rt: Runtime) -> None:
    app = gateway_of(rt, replace(options_of(rt), max_body_bytes=1000, max_inflight_bytes=1500,
                                request_timeout=30))
    event = b'{"user_id":"u","item_id":"i"}'

    async def go() -> None:
        ingest = "/v1/streams/page_views/events"
        holder = Exchange([event[:10]], stalls=True)  # declares 1000 bytes, sends 10 and stalls: 1000 of 1500 held
        task = asyncio.create_task(app(http_scope("POST", ingest, [(b"content-length", b"1000")]),
                                       holder.receive, holder.send))
        while holder.asked == 0:
            await asyncio.sleep(0)
        over = Exchange([event])
        await app(http_scope("POST", ingest, [(b"content-length", b"600")]), over.receive, over.send)
        assert over.status == 503 and over.headers[b"retry-after"] == b"1" and b"memory budget" in over.body
        assert over.asked == 0  # refused on its Content-Length: not one byte of its body was read
        fits = Exchange([event])
        await app(http_scope("POST", ingest, [(b"content-length", str(len(event)).encode())]), fits.receive,
                  fits.send)
        assert fits.status == 202
        chunked = Exchange([b"[" + event] + [b"," + event] * 30)  # no Content-Length: counted as it arrives
        await app(http_scope("POST", ingest, [(b"transfer-encoding", b"chunked")]), chunked.receive, chunked.send)
        assert chunked.status == 503 and b"memory budget" in chunked.body
        assert chunked.chunks  # refused mid-body, the rest never read
        holder.stall.set()
        await task
        assert holder.status == 400  # its truncated body is invalid JSON; what matters: it was served
        after = Exchange([event])  # everything given back: the budget is whole again
        await app(http_scope("POST", ingest, [(b"content-length", str(len(event)).encode())]), after.receive,
                  after.send)
        assert after.status == 202 and app.budget.used == 0

    run(go())
    assert bus_records(rt, "page_views") == 2


def test_a_client_that_stalls_its_body_gets_408_and_the_server_stays_up(rt: Runtime) -> None:
    options = replace(options_of(rt), request_timeout=0.3)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(gateway_of(rt, options), host="127.0.0.1", port=port, http=StampedHttp,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)

    def stalled(path: str, partial: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                         f"content-length: 1000\r\n\r\n".encode() + partial)
            answer = b""
            while b"\r\n\r\n" not in answer:  # then stall: send nothing more, wait for the answer
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
            return answer

    try:
        ingest = stalled("/v1/streams/page_views/events", b'[{"user_id":"u1",')
        lookup = stalled("/v1/views/trending", b'{"keys":["_to')
        healthy = httpx.get(f"http://127.0.0.1:{port}/v1/views/trending/_top", timeout=30)
    finally:
        server.should_exit = True
        thread.join(10)
    for answer in (ingest, lookup):
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"request body was not received" in answer
    assert healthy.status_code == 200
    assert bus_records(rt, "page_views") == 0


def test_the_overload_limits_come_from_the_profile_or_the_environment(tmp_path: Path) -> None:
    from keel.project.config import load_config
    from keel.errors import ConfigError

    (tmp_path / "keel.toml").write_text('[project]\nmodule = "m"\n[profiles.local]\nmax_inflight_bytes = 1000\n')
    config = load_config(tmp_path, env={})
    assert (config.serve.max_inflight_bytes, config.serve.max_queue_seconds) == (1000, 0.1)
    config = load_config(tmp_path, env={"KEEL_MAX_QUEUE_SECONDS": "0.05", "KEEL_MAX_INFLIGHT_BYTES": "2000"})
    assert (config.serve.max_inflight_bytes, config.serve.max_queue_seconds) == (2000, 0.05)

    options = gateway_options(config.serve, config.production)
    assert (options.max_inflight_bytes, options.max_queue_seconds) == (2000, 0.05)
    for bad in ("lots", "0"):
        with pytest.raises(ConfigError, match="max_inflight_bytes"):
            load_config(tmp_path, env={"KEEL_MAX_INFLIGHT_BYTES": bad})


def test_a_client_that_goes_away_mid_body_is_not_an_error(rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    app = gateway_of(rt)

    class Gone(Exchange):
        async def receive(self) -> MutableMapping[str, Any]:
            self.asked += 1
            if self.asked == 1:
                return {"type": "http.request", "body": b'[{"user_id":', "more_body": True}
            return {"type": "http.disconnect"}

    async def go() -> None:
        gone = Gone()
        await app(http_scope("POST", "/v1/streams/page_views/events", [(b"content-length", b"500")]), gone.receive,
                  gone.send)
        assert gone.status == 0  # nobody to answer
        ok = Exchange()
        await app(http_scope("GET", "/v1/views/trending/_top"), ok.receive, ok.send)
        assert ok.status == 200 and app.budget.used == 0

    with caplog.at_level("ERROR", logger="keel.serve"):
        run(go())
    assert not caplog.records  # no traceback logged for an ordinary disconnect
    assert bus_records(rt, "page_views") == 0


class QuickHeaders(StampedHttp):
    header_timeout = 0.2  # the test's own timeout, small: nothing waits for seconds


def test_a_client_that_stalls_its_headers_gets_408_and_the_connection_is_freed(rt: Runtime) -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(gateway_of(rt), host="127.0.0.1", port=port, http=QuickHeaders,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.01)

    def stalled(partial: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(partial)
            answer = b""
            while True:  # until the server closes the connection
                data = sock.recv(65536)
                if not data:
                    return answer
                answer += data

    try:
        half = stalled(b"POST /v1/streams/page_views/events HTTP/1.1\r\nhost: gw\r\ncontent-len")
        silent = stalled(b"")  # connects, sends nothing
        healthy = httpx.get(f"http://127.0.0.1:{port}/v1/views/trending/_top", timeout=30)
    finally:
        server.should_exit = True
        thread.join(10)
    for answer in (half, silent):
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"request headers were not received" in answer
    assert healthy.status_code == 200


@pytest.mark.parametrize("length", [b"-5", b"lots"])
def test_a_malformed_content_length_is_400_and_holds_no_budget(rt: Runtime, length: bytes) -> None:
    app = gateway_of(rt)

    async def go() -> None:
        bad = Exchange([b"[]"])
        await app(http_scope("POST", "/v1/streams/page_views/events", [(b"content-length", length)]), bad.receive,
                  bad.send)
        assert bad.status == 400 and b"Content-Length" in bad.body and bad.asked == 0
        assert app.budget.used == 0

    run(go())
