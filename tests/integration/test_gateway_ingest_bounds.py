"""What the gateway refuses before anything reaches the bus, so no accepted event can stop a processor:
event times outside the stream's window around the ack time, events too large for the bus, and JSON
nested too deeply to decode. Each gets a 400 naming the event, the field and the bound, and the gateway
goes on serving (the shop on its embedded engines, with an injected clock)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient

from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from tests.harness.gateway import gateway_of
from keel.serve.keys import create_key

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)  # the gateway's clock in these tests
EVENTS = "/v1/streams/page_views/events"


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("bounds") / "shop"
    copy_example(root)
    rt = Runtime.open(root)
    rt.ensure()
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def client(shop: Runtime) -> Iterator[TestClient]:
    _, key = create_key(shop.state_dir, "bounds", ["*"])
    with TestClient(gateway_of(shop, clock=NOW.timestamp), headers={"x-api-key": key}) as c:
        yield c


def written(rt: Runtime) -> int:
    return sum(p.end_offset for p in rt.bus.describe("page_views").partitions)


def view(ts: str | None = None, **extra: object) -> dict[str, object]:
    return {"user_id": "u1", "item_id": "i1", **({} if ts is None else {"ts": ts}), **extra}


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def refused(client: TestClient, body: object, **kwargs: object) -> list[dict[str, object]]:
    r = client.post(EVENTS, json=body, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 400, r.text
    errors: list[dict[str, object]] = r.json()["errors"]
    return errors


def test_event_times_within_a_day_ahead_are_accepted_and_beyond_refused(client: TestClient, shop: Runtime) -> None:
    before = written(shop)
    accepted = [view(iso(NOW + timedelta(hours=23, minutes=59))), view(iso(NOW - timedelta(days=3650))), view()]
    assert client.post(EVENTS, json=accepted).status_code == 202
    assert written(shop) == before + 3
    errors = refused(client, [view(), view(iso(NOW + timedelta(days=1, minutes=1)))])
    assert [(e["index"], e["field"]) for e in errors] == [(1, "ts")]
    assert "ahead of the ack time 2030-06-01T12:00:00Z" in str(errors[0]["error"])
    assert "max_future" in str(errors[0]["error"]) and "86400 s" in str(errors[0]["error"])
    assert written(shop) == before + 3  # the request was refused whole


@pytest.mark.parametrize("ts", ["9999-12-31T23:59:59Z", "9999-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z",
                                "1899-12-31T23:59:59Z"])
def test_event_times_keel_cannot_store_are_refused(client: TestClient, shop: Runtime, ts: str) -> None:
    before = written(shop)
    (error,) = refused(client, view(ts))
    assert error["index"] == 0 and error["field"] == "ts"
    assert "outside the event times keel stores (1900-01-01 to 2200-01-01)" in str(error["error"])
    assert written(shop) == before


def test_an_event_over_the_size_limit_is_refused_naming_its_field(client: TestClient, shop: Runtime) -> None:
    before = written(shop)
    (error,) = refused(client, [view(), view(item_id="x" * 3_000_000)])
    assert error["index"] == 1 and error["field"] == "item_id"
    assert "900000-byte limit" in str(error["error"]) and "max_event_bytes" in str(error["error"])
    assert client.post(EVENTS, json=view(item_id="x" * 899_000)).status_code == 202  # under the limit
    assert written(shop) == before + 1


@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deep_nesting_gets_400_and_the_gateway_stays_up(client: TestClient, shop: Runtime, depth: int) -> None:
    before = written(shop)
    good = b'{"user_id":"u1","item_id":"i1"}'
    bodies = [(b"[" * depth + b"]" * depth, "application/json"),
              (b'{"a":' * depth + b"1" + b"}" * depth, "application/json"),
              (b'{"user_id":"u1","item_id":' + b"[" * depth + b"]" * depth + b"}", "application/json"),
              (good + b"\n" + b"[" * depth + b"]" * depth + b"\n", "application/x-ndjson"),
              (good + b"\n" + b'{"a":' * depth + b"1" + b"}" * depth + b"\n", "application/x-ndjson")]
    for body, kind in bodies:
        r = client.post(EVENTS, content=body, headers={"content-type": kind})
        assert r.status_code == 400, (kind, body[:40], r.status_code)
        assert "nested too deeply" in r.text
    r = client.post("/v1/views/trending", content=b'{"keys":' + b"[" * depth + b"]" * depth + b"}")
    assert r.status_code == 400
    assert written(shop) == before
    assert client.post(EVENTS, json=view()).status_code == 202
