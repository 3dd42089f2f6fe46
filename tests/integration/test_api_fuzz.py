"""Schemathesis from the gateway's own OpenAPI document, against the real gateway (the shop on its
embedded engines, served over ASGI, keyless access off as in a production profile).

Checks (schemathesis' defaults): no 5xx, status codes and content types as documented, response
schemas conform, invalid payloads rejected (`negative_data_rejection`), valid ones accepted
(`positive_data_acceptance`), and `ignored_auth`: every protected operation refuses a request
without a key or with a wrong one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from tests.harness.gateway import gateway_of, options_of
from keel.serve.keys import create_key

KEY: dict[str, str] = {}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp("fuzz") / "shop"
    copy_example(root)
    rt = Runtime.open(root)
    rt.ensure()
    rt.views.put("trending", [("_top", {"items": [{"item_id": "a"}]})])
    _, KEY["value"] = create_key(rt.state_dir, "fuzzer", ["*", "ingest:exposures"])  # all routes
    yield gateway_of(rt, replace(options_of(rt), anonymous_loopback=False))
    rt.close()


@pytest.fixture(scope="module")
def api_schema(gateway: Any) -> Any:
    return schemathesis.openapi.from_asgi("/openapi.json", gateway)


def operations(api_schema: Any) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


def within_event_time_window(body: Any) -> None:
    """Move each generated event's ``ts`` into the window the gateway accepts (the document says it in
    words: JSON Schema cannot bound a date-time by the ack time). The window has its own tests in
    test_gateway_ingest_bounds.py."""
    for event in body if isinstance(body, list) else [body]:
        if isinstance(event, dict) and isinstance(event.get("ts"), str):
            event["ts"] = datetime.now(UTC).isoformat()


def test_gateway_conforms_to_its_openapi_document(api_schema: Any) -> None:
    # one hypothesis run per operation (schemathesis' pytest plugin does not support pytest 9 yet)
    ops = operations(api_schema)
    assert {op.path for op in ops} >= {"/v1/streams/page_views/events", "/v1/views/trending/{key}",
                                       "/v1/views/trending", "/recommend/{user_id}"}
    seen: dict[str, set[int]] = {}
    for op, mode in [(op, mode) for op in ops for mode in GenerationMode]:
        if mode is GenerationMode.NEGATIVE and op.path in ("/healthz", "/readyz"):
            continue  # nothing to make invalid
        label = op.label

        @given(case=op.as_strategy(mode))
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            if mode is GenerationMode.POSITIVE:  # noqa: B023 - run() is called right away
                within_event_time_window(case.body)
            response = case.call_and_validate(headers={"Authorization": f"Bearer {KEY['value']}"})
            seen.setdefault(label, set()).add(response.status_code)  # noqa: B023 - run() is called right away

        run()
    assert all(code < 500 for codes in seen.values() for code in codes), seen
    assert 202 in seen["POST /v1/streams/page_views/events"] and 400 in seen["POST /v1/streams/page_views/events"]


def test_protected_operations_refuse_requests_without_a_valid_key(api_schema: Any) -> None:
    from starlette.testclient import TestClient

    gateway = api_schema.app
    with TestClient(gateway) as client:
        paths = api_schema.raw_schema["paths"]
        protected = [(m, p) for p, ops in paths.items() for m, op in ops.items() if op.get("security") != []]
        assert len(protected) >= 8
        for method, path in protected:
            url = path.replace("{key}", "k").replace("{user_id}", "u1")
            for headers in ({}, {"authorization": "Bearer keel_00000000_" + "A" * 43}, {"x-api-key": "nope"}):
                r = client.request(method.upper(), url, headers=headers, json={"keys": []})
                assert r.status_code == 401, (method, path, headers, r.status_code)
