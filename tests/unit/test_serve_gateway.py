"""The gateway's front door and resilience, on the shop with embedded engines (a failing or slow kv
is a wrapper around the real one)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from keel.errors import BackendError
from keel.experiments.assign import assign_one
from keel.project import copy_example
from keel.runtime import Runtime
from keel.serve.app import build_app, gateway_options
from keel.serve.keys import create_key

GOOD = {"user_id": "u1", "item_id": "i1"}


class WrappedKV:
    """The real kv, made to fail or stall on chosen keys."""

    def __init__(self, inner: Any, fail: Callable[[Sequence[str]], bool] = lambda keys: False,
                 delay: float = 0.0) -> None:
        self.inner, self.fail, self.delay, self.calls = inner, fail, delay, 0

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
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
        async with client(build_app(rt)) as c:
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
        async with client(build_app(rt), host="10.1.2.3") as c:
            r = await c.get("/v1/views/trending/_top")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert (await c.get("/healthz")).status_code == 200  # public
        production = replace(gateway_options(rt), anonymous_loopback=False)
        async with client(build_app(rt, production)) as c:
            assert (await c.get("/v1/views/trending/_top")).status_code == 401
            assert (await c.post("/v1/streams/page_views/events", json=[GOOD])).status_code == 401
        async with client(build_app(rt), host="::1") as c:
            assert (await c.get("/v1/views/trending/_top")).status_code == 200

    run(go())
    assert bus_records(rt, "page_views") == 0


def test_scopes_decide_and_a_bad_key_is_401_even_on_loopback(rt: Runtime) -> None:
    _, reader = create_key(rt.state_dir, "reader", ["read:trending"])
    _, admin = create_key(rt.state_dir, "ops", ["admin"])

    async def go() -> None:
        async with client(build_app(rt)) as c:
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

    async def go() -> list[int]:
        async with client(build_app(rt)) as c:
            codes = [(await c.get("/v1/views/trending/_top", headers={"x-api-key": slow})).status_code
                     for _ in range(4)]
            r = await c.get("/v1/views/trending/_top", headers={"x-api-key": slow})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert (await c.get("/v1/views/trending/_top", headers={"x-api-key": other})).status_code == 200
            return codes

    assert run(go()) == [200, 200, 429, 429]


def test_body_limit_413_writes_nothing(rt: Runtime) -> None:
    options = replace(gateway_options(rt), max_body_bytes=200)
    body = b"[" + b",".join([b'{"user_id":"u","item_id":"i"}'] * 20) + b"]"

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 64):
            yield body[i:i + 64]

    async def go() -> None:
        async with client(build_app(rt, options)) as c:
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
        async with client(build_app(rt)) as c:
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

    async def go() -> None:
        async with client(build_app(rt)) as c:
            codes = [(await c.get("/v1/views/trending/_top")) for _ in range(20)]
            assert all(r.status_code == 503 and "retry-after" in r.headers for r in codes)
            calls_when_open = kv.calls
            for _ in range(20):
                assert (await c.get("/v1/views/trending/_top")).status_code == 503
            assert kv.calls == calls_when_open  # open: no more calls to the dead backend
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["breakers"]["kv"] != "closed"
            kv.fail = lambda keys: False  # the backend heals: the half-open probe closes the breaker
            await asyncio.sleep(1.1)
            assert (await c.get("/v1/views/trending/_top")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200

    run(go())


def test_time_limit_answers_504(rt: Runtime) -> None:
    rt.__dict__["kv"] = WrappedKV(rt.kv, delay=1.0)
    rt.__dict__.pop("views", None)
    options = replace(gateway_options(rt), endpoint_timeout=0.1, request_timeout=0.3)

    async def go() -> None:
        async with client(build_app(rt, options)) as c:
            t0 = time.monotonic()
            r = await c.get("/recommend/u1")
            assert r.status_code == 504
            assert time.monotonic() - t0 < 0.9  # answered at the limit, not when the kv finally returns

    run(go())


def test_over_capacity_requests_are_shed_with_503(rt: Runtime) -> None:
    rt.__dict__["kv"] = WrappedKV(rt.kv, delay=0.3)
    rt.__dict__.pop("views", None)
    options = replace(gateway_options(rt), max_concurrency=2, endpoint_timeout=2, request_timeout=3)

    async def go() -> list[httpx.Response]:
        async with client(build_app(rt, options)) as c:
            return list(await asyncio.gather(*(c.get("/recommend/u1") for _ in range(8))))

    responses = run(go())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200] + [503] * 6
    assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 503)


def test_no_keyless_access_in_a_production_profile(rt: Runtime) -> None:
    class Prod:
        config = replace(rt.config, production=True)

    assert gateway_options(rt).anonymous_loopback is True
    assert gateway_options(Prod()).anonymous_loopback is False
