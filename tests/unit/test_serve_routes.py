"""The gateway's route table and its front-door layers, each alone (no engines)."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from keel.serve.keys import LOCAL_DEVELOPER, KeyRing, Principal, create_key, keys_path
from keel.serve.layers import (BAD_KEY, BAD_LENGTH, NO_KEY, OVER_BUDGET, OVER_CAPACITY, Authenticator, Body,
                               BodyLimits, Credentials, LoadShedder, RateLimits, Refusal, authorize, credentials)
from keel.serve.limits import ByteBudget, RateLimiter
from keel.serve.protocol import ARRIVED
from keel.serve.routes import PUBLIC, Receive, Route, RouteTable, Send


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


async def raw(params: dict[str, str], receive: Receive, send: Send) -> int:
    return 200


def table() -> RouteTable:
    return RouteTable([
        Route("view", "GET", "/v1/views/{view}/{key}", "read:{view}", raw=raw, timed=False),
        Route("healthz", "GET", "/healthz", PUBLIC, handler=ok),
        Route("get_item", "GET", "/items/{id}", "call:get_item", handler=ok),
        Route("put_item", "POST", "/items/{id}", "call:put_item", handler=ok),
    ])


def test_a_route_is_found_by_method_and_path_with_its_scope_filled_in() -> None:
    routes = table()
    found = routes.match("GET", "/v1/views/trending/k1")
    assert found is not None and found.route.fast and found.params == {"view": "trending", "key": "k1"}
    assert found.needed == "read:trending" and found.app is None
    get, post = routes.match("GET", "/items/7"), routes.match("POST", "/items/7")
    assert get is not None and get.needed == "call:get_item" and get.app is not None
    assert post is not None and post.needed == "call:put_item"  # same path, its own method's scope
    assert routes.match("PUT", "/items/7") is None and routes.match("GET", "/items/7/x") is None
    assert routes.public == frozenset({"/healthz"})


def test_head_is_answered_by_starlette_get_routes_only() -> None:
    routes = table()
    head = routes.match("HEAD", "/items/7")
    assert head is not None and head.route.name == "get_item"
    assert routes.match("HEAD", "/v1/views/trending/k1") is None  # the raw view lookup is GET alone


def test_a_request_no_route_takes_is_answered_as_starlette_would() -> None:
    routes = table()

    async def answer(method: str, path: str) -> tuple[int, dict[bytes, bytes]]:
        start: dict[str, Any] = {}

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)

        scope = {"type": "http", "method": method, "path": path, "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"gw")], "scheme": "http", "server": ("gw", 80)}
        await routes.miss(scope, receive, send)
        return start["status"], dict(start["headers"])

    assert asyncio.run(answer("GET", "/nope"))[0] == 404
    status, headers = asyncio.run(answer("PUT", "/items/7"))
    assert status == 405 and set(headers[b"allow"].decode().split(", ")) == {"GET", "HEAD"}  # the first route's
    status, headers = asyncio.run(answer("GET", "/healthz/"))
    assert status == 307 and headers[b"location"].endswith(b"/healthz")


def test_a_route_has_exactly_one_handler() -> None:
    for kwargs in ({}, {"handler": ok, "raw": raw}):
        try:
            Route("x", "GET", "/x", PUBLIC, **kwargs)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"accepted {kwargs}")


def test_the_load_shedder_refuses_past_the_concurrency_and_queue_bounds() -> None:
    now = [100.0]
    queued = Histogram("q", "q", registry=CollectorRegistry())
    shedder = LoadShedder(2, 0.5, lambda: now[0], queued)
    assert shedder.check({}) is None  # not stamped: nothing to shed on
    assert shedder.check({"extensions": {ARRIVED: {"at": 99.6}}}) is None
    late = shedder.check({"extensions": {ARRIVED: {"at": 99.0}}})
    assert late is not None and (late.status, late.reason) == (503, "queue") and late.headers == ((b"retry-after", b"1"),)
    shedder.inflight = 2
    assert shedder.check({}) is OVER_CAPACITY


def test_credentials_are_read_in_one_pass() -> None:
    found = credentials({"headers": [(b"authorization", b"Bearer  k1 "), (b"content-length", b"12"),
                                     (b"transfer-encoding", b"chunked")]})
    assert found == Credentials(token="k1", length=b"12", chunked=True)
    assert credentials({"headers": [(b"authorization", b"Basic abc")]}).token == ""
    assert credentials({"headers": [(b"x-api-key", b" k2")]}).token == "k2"
    assert credentials({"headers": []}) == Credentials()


def test_authentication_authorization_and_rate(tmp_path: Path) -> None:
    record, key = create_key(tmp_path, "reader", ["read:trending"], rate=1)
    auth = Authenticator(KeyRing(keys_path(tmp_path)), anonymous_loopback=True)
    principal = auth.principal({}, key)
    assert isinstance(principal, Principal) and principal.key_id == record.id
    assert auth.principal({}, "keel_wrong") is BAD_KEY
    assert auth.principal({"client": ("127.0.0.1", 1)}, None) is LOCAL_DEVELOPER
    assert auth.principal({"client": ("10.0.0.1", 1)}, None) is NO_KEY
    assert authorize(principal, "read:trending") is None and authorize(principal, None) is None
    refused = authorize(principal, "read:other")
    assert refused is not None and (refused.status, refused.reason) == (403, "forbidden")
    rate = RateLimits(RateLimiter(1000, lambda: 5.0))
    assert rate.check(principal) is None
    over = rate.check(principal)
    assert over is not None and (over.status, over.reason, over.headers) == (429, "rate", ((b"retry-after", b"1"),))
    assert rate.check(LOCAL_DEVELOPER) is None  # the local developer is not limited


def test_body_limits_refuse_on_the_content_length_before_reading() -> None:
    budget = ByteBudget(100)
    limits = BodyLimits(80, budget)

    async def receive() -> MutableMapping[str, Any]:
        raise AssertionError("read")

    assert limits.admit(Credentials(length=b"lots"), receive) is BAD_LENGTH
    assert limits.admit(Credentials(length=b"-1"), receive) is BAD_LENGTH
    big = limits.admit(Credentials(length=b"81"), receive)
    assert isinstance(big, Refusal) and (big.status, big.reason) == (413, "too_large")
    held = limits.admit(Credentials(length=b"60"), receive)
    assert isinstance(held, Body) and held.reserved == 60 and held.sending and budget.used == 60
    assert limits.admit(Credentials(length=b"60"), receive) is OVER_BUDGET
    empty = limits.admit(Credentials(), receive)
    assert isinstance(empty, Body) and not empty.sending and empty.reserved == 0
