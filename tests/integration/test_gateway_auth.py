"""Every scope against every route of the shop's gateway (embedded engines, keyless access off):
a key is served exactly where one of its scopes grants the route's scope, refused with 403
elsewhere; no key, a wrong key and a revoked key get 401 everywhere."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from starlette.testclient import TestClient

from keel.project import copy_example
from keel.runtime import Runtime
from keel.serve.app import build_app, gateway_options
from keel.serve.keys import create_key, revoke_key, scope_allows

EVENT = {"page_views": {"user_id": "u1", "item_id": "i1"},
         "purchases": {"user_id": "u1", "item_id": "i1", "price": 3.5}}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("auth") / "shop"
    copy_example(root)
    rt = Runtime.open(root)
    rt.ensure()
    yield rt
    rt.close()


def routes(rt: Runtime) -> list[tuple[str, str, dict[str, Any], str]]:
    """(method, path, request kwargs, scope needed) for every protected route of the project."""
    out: list[tuple[str, str, dict[str, Any], str]] = []
    for s in rt.catalog.streams:
        if s in EVENT:
            out.append(("POST", f"/v1/streams/{s}/events", {"json": [EVENT[s]]}, f"ingest:{s}"))
    for v in rt.catalog.views:
        out.append(("GET", f"/v1/views/{v}/k1", {}, f"read:{v}"))
        out.append(("POST", f"/v1/views/{v}", {"json": {"keys": ["k1"]}}, f"read:{v}"))
    for ep in rt.catalog.endpoints.values():
        out.append((ep.method, ep.path.replace("{user_id}", "u1"), {}, f"call:{ep.name}"))
    out.append(("GET", "/metrics", {}, "admin"))
    return out


SCOPES = ["ingest:page_views", "ingest:purchases", "ingest:*", "read:trending", "read:recent_items",
          "read:similar_items", "read:*", "read:rec*", "call:recommend", "call:*", "admin", "*"]


def test_every_scope_against_every_route(shop: Runtime) -> None:
    keys = {scope: create_key(shop.state_dir, f"k-{i}", [scope])[1] for i, scope in enumerate(SCOPES)}
    table = routes(shop)
    assert len(table) == 2 + 2 * 3 + 1 + 1
    mismatches = []
    with TestClient(build_app(shop, replace(gateway_options(shop), anonymous_loopback=False))) as client:
        for scope, key in keys.items():
            for method, path, kwargs, needed in table:
                r = client.request(method, path, headers={"x-api-key": key}, **kwargs)
                allowed = scope_allows((scope,), needed)
                ok = r.status_code not in (401, 403) and r.status_code < 500 if allowed else r.status_code == 403
                if not ok:
                    mismatches.append((scope, method, path, r.status_code))
    assert mismatches == []


def test_no_key_wrong_key_and_revoked_key_get_401_everywhere(shop: Runtime) -> None:
    record, key = create_key(shop.state_dir, "to-revoke", ["*"])
    before = sum(p.end_offset for p in shop.bus.describe("page_views").partitions)
    app = build_app(shop, replace(gateway_options(shop), anonymous_loopback=False))
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
