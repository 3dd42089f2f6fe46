"""Every scope against every route of the shop's gateway (embedded engines, keyless access off):
a key is served exactly where a hand-written matrix says, refused with 403 elsewhere; no key, a
wrong key and a revoked key get 401 everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from starlette.testclient import TestClient

from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from tests.harness.gateway import gateway_of, options_of
from keel.serve.keys import create_key, revoke_key

EVENT = {"page_views": {"user_id": "u1", "item_id": "i1"},
         "purchases": {"user_id": "u1", "item_id": "i1", "price": 3.5},
         "exposures": {"experiment": "recs_v2", "variant": "trending", "unit": "u1", "endpoint": "recommend"}}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("auth") / "shop"
    copy_example(root)
    rt = Runtime.open(root)
    rt.ensure()
    yield rt
    rt.close()


# Every protected route of the shop: column name -> (method, path, request kwargs, status when served).
ROUTES: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "pv": ("POST", "/v1/streams/page_views/events", {"json": [EVENT["page_views"]]}, 202),
    "pu": ("POST", "/v1/streams/purchases/events", {"json": [EVENT["purchases"]]}, 202),
    "ex": ("POST", "/v1/streams/exposures/events", {"json": [EVENT["exposures"]]}, 202),
    "gT": ("GET", "/v1/views/trending/k1", {}, 404),
    "gR": ("GET", "/v1/views/recent_items/k1", {}, 404),
    "gS": ("GET", "/v1/views/similar_items/k1", {}, 404),
    "pT": ("POST", "/v1/views/trending", {"json": {"keys": ["k1"]}}, 200),
    "pR": ("POST", "/v1/views/recent_items", {"json": {"keys": ["k1"]}}, 200),
    "pS": ("POST", "/v1/views/similar_items", {"json": {"keys": ["k1"]}}, 200),
    "rec": ("GET", "/recommend/u1", {}, 200),
    "met": ("GET", "/metrics", {}, 200),
}

# Written out by hand (not computed by keel's scope code): Y served, . refused with 403.
# The built-in `exposures` stream is written by keel; only a scope naming it exactly grants it.
MATRIX = """
scope               pv pu ex  gT gR gS  pT pR pS  rec met
ingest:page_views   Y  .  .   .  .  .   .  .  .   .   .
ingest:purchases    .  Y  .   .  .  .   .  .  .   .   .
ingest:*            Y  Y  .   .  .  .   .  .  .   .   .
ingest:p*           Y  Y  .   .  .  .   .  .  .   .   .
ingest:exposure?    .  .  .   .  .  .   .  .  .   .   .
ingest:exposures    .  .  Y   .  .  .   .  .  .   .   .
read:trending       .  .  .   Y  .  .   Y  .  .   .   .
read:recent_items   .  .  .   .  Y  .   .  Y  .   .   .
read:similar_items  .  .  .   .  .  Y   .  .  Y   .   .
read:*              .  .  .   Y  Y  Y   Y  Y  Y   .   .
read:rec*           .  .  .   .  Y  .   .  Y  .   .   .
call:recommend      .  .  .   .  .  .   .  .  .   Y   .
call:*              .  .  .   .  .  .   .  .  .   Y   .
admin               .  .  .   .  .  .   .  .  .   .   Y
*                   Y  Y  .   Y  Y  Y   Y  Y  Y   Y   Y
"""


def expected() -> dict[tuple[str, str], int]:
    header, *rows = [line.split() for line in MATRIX.strip().splitlines()]
    assert header[1:] == list(ROUTES)
    return {(row[0], route): ROUTES[route][3] if mark == "Y" else 403
            for row in rows for route, mark in zip(header[1:], row[1:], strict=True)}


def test_every_scope_against_every_route(shop: Runtime) -> None:
    want = expected()
    scopes = sorted({scope for scope, _ in want})
    keys = {scope: create_key(shop.state_dir, f"k-{i}", [scope])[1] for i, scope in enumerate(scopes)}
    declared = {f"/v1/streams/{s}/events" for s in shop.catalog.streams} | {
        f"/v1/views/{v}" for v in shop.catalog.views} | {"/recommend/u1", "/metrics"}
    covered = {path.rsplit("/k1", 1)[0] for _, path, _, _ in ROUTES.values()}
    assert declared <= covered  # the table misses no route of the project
    got = {}
    with TestClient(gateway_of(shop, replace(options_of(shop), anonymous_loopback=False))) as client:
        for scope, key in keys.items():
            for route, (method, path, kwargs, _) in ROUTES.items():
                got[(scope, route)] = client.request(method, path, headers={"x-api-key": key}, **kwargs).status_code
    assert {k: v for k, v in got.items() if v != want[k]} == {}


def routes(rt: Runtime) -> list[tuple[str, str, dict[str, Any], str]]:
    return [(method, path, kwargs, name) for name, (method, path, kwargs, _) in ROUTES.items()]


def test_no_key_wrong_key_and_revoked_key_get_401_everywhere(shop: Runtime) -> None:
    record, key = create_key(shop.state_dir, "to-revoke", ["*"])
    before = sum(p.end_offset for p in shop.bus.describe("page_views").partitions)
    app = gateway_of(shop, replace(options_of(shop), anonymous_loopback=False))
    app.keyring.reload_every = 0.0
    with TestClient(app) as client:
        assert client.get("/v1/views/trending/k1", headers={"x-api-key": key}).status_code == 404  # served
        revoke_key(shop.state_dir, record.id)
        for method, path, kwargs, _ in routes(shop):
            for headers in ({}, {"x-api-key": key}, {"authorization": "Bearer " + key[:-2] + "xx"},
                            {"authorization": "Basic dXNlcjpwYXNz"}):
                r = client.request(method, path, headers=headers, **kwargs)
                assert r.status_code == 401, (method, path, headers, r.status_code)
        assert client.get("/healthz").status_code == 200
        assert client.get("/openapi.json").status_code == 200
    assert sum(p.end_offset for p in shop.bus.describe("page_views").partitions) == before  # nothing got in
