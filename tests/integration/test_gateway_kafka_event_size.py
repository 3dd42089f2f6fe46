"""The per-event size limit holds on Kafka: an event at the stream's default `max_event_bytes` is
acknowledged by a broker on its default settings, and a bigger one gets 400 naming the limit (not a 503
from a produce the broker refuses: librdkafka's default message.max.bytes is 1,000,000)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from keel.project.declare import DEFAULT_MAX_EVENT_BYTES
from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from tests.harness.gateway import gateway_of
from keel.serve.keys import create_key
from tests.harness.kafka import KafkaBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture
def shop_on_kafka(tmp_path_factory: pytest.TempPathFactory, kafka_broker: KafkaBroker,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    root = tmp_path_factory.mktemp("kafka-size") / "shop"
    copy_example(root)
    monkeypatch.setenv("KEEL_BUS", f"{kafka_broker.url}?topic_prefix=size{uuid.uuid4().hex[:8]}.")
    rt = Runtime.open(root)
    rt.ensure()
    yield rt
    rt.close()


def test_an_event_at_the_size_limit_is_acknowledged_by_kafka_and_a_bigger_one_refused(shop_on_kafka: Runtime) -> None:
    rt = shop_on_kafka
    assert rt.config.bus.startswith("kafka://")
    key = "u1"
    envelope = len('{"user_id":"u1","item_id":"","ts":null}')  # the event's JSON on the bus, but the big field
    at_limit = {"user_id": key, "item_id": "x" * (DEFAULT_MAX_EVENT_BYTES - envelope - len(key))}
    over = {"user_id": key, "item_id": "x" * (DEFAULT_MAX_EVENT_BYTES - envelope - len(key) + 1)}
    _, api_key = create_key(rt.state_dir, "size", ["*"])
    with TestClient(gateway_of(rt), headers={"x-api-key": api_key}) as client:
        r = client.post("/v1/streams/page_views/events", json=at_limit)
        assert r.status_code == 202, r.text[:500]
        r = client.post("/v1/streams/page_views/events", json=over)
        assert r.status_code == 400, r.text[:500]
        assert "max_event_bytes" in r.text
    assert sum(p.end_offset for p in rt.bus.describe("page_views").partitions) == 1
