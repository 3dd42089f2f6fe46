"""Whatever the gateway accepts, every processor of the stream takes: events at the edges of what the
gateway lets through (an event time just inside the bound ahead of the ack time, the earliest event time
keel stores, an event just under the size limit) land in the lake, and none is dead-lettered or stops a
processor. (Records that bypass the gateway are the processors' own tests: test_stream_poison.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from starlette.testclient import TestClient

from keel.bus import dlq_name
from keel.project.declare import DEFAULT_MAX_EVENT_BYTES
from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from tests.harness.gateway import gateway_of
from keel.serve.keys import create_key
from keel.streaming.runner import Runner

NOW = datetime.now(UTC)  # the gateway runs on the real clock here, as the processors do


@pytest.fixture
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("edges") / "shop"
    copy_example(root)
    rt = Runtime.open(root)
    rt.ensure()
    yield rt
    rt.close()


def test_events_at_the_gateways_bounds_pass_every_processor_of_their_stream(shop: Runtime) -> None:
    big = "x" * (DEFAULT_MAX_EVENT_BYTES - 100)  # with its field names, just under the limit
    events = [{"user_id": "u1", "item_id": "i1", "ts": (NOW + timedelta(hours=23, minutes=50)).isoformat()},
              {"user_id": "u2", "item_id": "i2", "ts": "1900-01-01T00:00:00Z"},
              {"user_id": "u3", "item_id": big},
              {"user_id": "u4", "item_id": "i4"}]
    _, key = create_key(shop.state_dir, "edges", ["*"])
    with TestClient(gateway_of(shop), headers={"x-api-key": key}) as client:
        r = client.post("/v1/streams/page_views/events", json=events)
    assert r.status_code == 202, r.text
    ids = set(r.json()["event_ids"])
    consumers = [d for d in shop.catalog.processors.values() if d.stream.name == "page_views"]
    assert len(consumers) >= 3  # the landing, the trending aggregation and the recent-items processor
    for decl in consumers:
        runner = Runner(decl, shop.engines)
        runner.start()
        for _ in range(400):
            if runner.stats.events >= len(events):
                break
            runner.step(timeout=0.05)
        runner.flush()
        assert runner.stats.events == len(events), decl.name
    assert shop.bus.describe(dlq_name("page_views")).partitions[0].end_offset == 0  # nothing dead-lettered
    landed = shop.lake.read("page_views", columns=["event_id", "item_id"]).to_pylist()
    assert {row["event_id"] for row in landed} == ids
    assert max(len(row["item_id"]) for row in landed) == len(big)
