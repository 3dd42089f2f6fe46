"""Poison records on a real Kafka broker, written by a plain Kafka producer (confluent-kafka, not the
gateway): a landing, a keel.processor and an aggregation go on past each of them, every good record
lands exactly once, every bad one is in the `.dlq` topic with its source partition, offset,
unchanged bytes and reason, a restart resumes after them, and `keel dlq` replays each once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import confluent_kafka  # scripts/install-kafka.sh installs it
import confluent_kafka.admin
import pytest

from keel.bus import dlq_name, open_bus, ops
from keel.bus.base import StreamConfig
from keel.engines import Engines
from keel.kv import open_kv
from keel.kv.views import Views
from keel.lake import open_lake
from keel.streaming.runner import Runner
from tests.harness.kafka import KafkaBroker
from tests.unit.test_stream_poison import BASE_MS, Record, good, poison, shop  # noqa: F401 - the fixture's declarations

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
BIG = str(16 << 20)  # the topics and clients take the 10 MB records


def raw_produce(broker: KafkaBroker, topic: str, records: list[Record], first_id: int = 0) -> list[tuple[int, int]]:
    """Produce as any Kafka client would; returns each record's (partition, offset)."""
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": BIG,
                                         "linger.ms": 50})
    where: dict[int, tuple[int, int]] = {}
    for i, r in enumerate(records):
        def done(err: Any, msg: Any, i: int = i) -> None:
            assert err is None, err
            where[i] = (msg.partition(), msg.offset())
        producer.produce(topic, value=r.value, key=f"k{(first_id + i) % 5}".encode(),
                         timestamp=r.timestamp_ms if r.timestamp_ms is not None else BASE_MS + 60_000,
                         headers=[("event_id", f"e{first_id + i}".encode())], on_delivery=done)
    assert producer.flush(60) == 0
    return [where[i] for i in range(len(records))]


def drain(runner: Runner, records: int, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while runner.stats.events < records and time.monotonic() < deadline:
        runner.step(timeout=0.2)
    for _ in range(3):
        runner.step(timeout=0.1)
    runner.flush()


def raw_dead_letters(broker: KafkaBroker, topic: str, expected: int) -> list[Any]:
    return raw_messages(broker, topic, 1, expected)


def raw_messages(broker: KafkaBroker, topic: str, partitions: int, expected: int) -> list[Any]:
    consumer = confluent_kafka.Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "raw-" + uuid.uuid4().hex,
                                         "enable.auto.commit": False, "fetch.max.bytes": BIG})
    consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING)
                     for p in range(partitions)])
    out: list[Any] = []
    deadline = time.monotonic() + 30
    while len(out) < expected and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None and m.error() is None:
            out.append(m)
    consumer.close()
    return out


def test_poison_records_from_a_plain_kafka_producer(shop: Any, tmp_path: Path, kafka_broker: KafkaBroker) -> None:
    prefix = f"poison{uuid.uuid4().hex[:8]}."
    bus = open_bus(f"{kafka_broker.url}?topic_prefix={prefix}&message.max.bytes={BIG}&heartbeat.interval.ms=500")
    kv = open_kv(f"file://{tmp_path}/kafka-kv.db")
    state = tmp_path / "kafka-state"
    state.mkdir()
    rt = Engines(bus=bus, lake=open_lake(f"file://{tmp_path}/kafka-lake"), views=Views(kv, {"counts": None}),
                 state_dir=state)
    bus.create_stream(StreamConfig("clicks", 2))
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    # a topic an operator opened to big records and to any producer clock; its .dlq topic keeps
    # Kafka's default timestamp bound (now + 1 h), so dead letters of such records must still go there
    def setting(name: str, value: str) -> Any:
        return confluent_kafka.admin.ConfigEntry(name, value,
                                                 incremental_operation=confluent_kafka.admin.AlterConfigOpType.SET)

    source = [setting("max.message.bytes", BIG), setting("message.timestamp.after.max.ms", str(2**63 - 1))]
    configs = [confluent_kafka.admin.ConfigResource("topic", prefix + "clicks", incremental_configs=source),
               confluent_kafka.admin.ConfigResource("topic", prefix + "clicks.dlq",
                                                    incremental_configs=[setting("max.message.bytes", BIG)])]
    for f in admin.incremental_alter_configs(configs).values():
        f.result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the broker serves the new configs
        described = admin.describe_configs([confluent_kafka.admin.ConfigResource("topic", prefix + "clicks")])
        if next(iter(described.values())).result(timeout=30)["max.message.bytes"].value == BIG:
            break

    records = poison()
    where = raw_produce(kafka_broker, prefix + "clicks", records)
    runners = [Runner(decl, rt, max_records=100) for decl in (shop.land, shop.items, shop.counts)]
    try:
        for r in runners:
            r.start()
            drain(r, len(records))
            assert r.stats.events == len(records)
        ids = {f"e{i}" for i, r in enumerate(records) if r.reason is None}
        assert sorted(rt.lake.read("clicks", columns=["event_id"]).column("event_id").to_pylist()) == sorted(ids)
        assert sorted(rt.lake.read("items", columns=["event_id"]).column("event_id").to_pylist()) == sorted(ids)

        bad = {where[i]: r for i, r in enumerate(records) if r.reason is not None}
        shown = ops.dlq_show(bus, "clicks")
        assert {(d["partition"], d["offset"]) for d in shown} == set(bad)
        assert len(shown) == len(bad)
        for d in shown:
            assert bad[(d["partition"], d["offset"])].reason in d["reason"]
        stored = raw_dead_letters(kafka_broker, prefix + "clicks.dlq", 3 * len(bad))
        assert len(stored) == 3 * len(bad)  # each by each of the three processors
        for m in stored:
            h = {k: v.decode() for k, v in m.headers()}
            i = int(h["event_id"][1:])
            assert m.value() == records[i].value and m.key() == f"k{i % 5}".encode()
            assert where[i] == (int(h["source_partition"]), int(h["source_offset"]))
    finally:
        for r in runners:
            if r.consumer is not None:
                r.consumer.close()

    more = [Record(good("u1", "a", 40)), Record(b"garbage"), Record(None), Record(good("u2", "a", 41))]  # a tombstone
    raw_produce(kafka_broker, prefix + "clicks", more, first_id=len(records))
    for decl in (shop.land, shop.counts):
        again = Runner(decl, rt, max_records=100)
        again.start()
        try:
            drain(again, len(more))
            assert again.stats.events == len(more)  # resumed after the dead letters, not at them
        finally:
            again.consumer.close()
    landed = rt.lake.read("clicks", columns=["event_id"]).column("event_id").to_pylist()
    assert sorted(landed) == sorted(ids | {f"e{len(records)}", f"e{len(records) + 3}"})
    tombstone = [d for d in ops.dlq_show(bus, "clicks") if d["headers"]["event_id"] == f"e{len(records) + 2}"]
    assert len(tombstone) == 1 and "no value" in tombstone[0]["reason"]

    ends = sum(p.end_offset for p in bus.describe("clicks").partitions)
    assert ops.dlq_replay(bus, "clicks") == len(bad) + 2  # each failed record once, the garbage and tombstone too
    assert sum(p.end_offset for p in bus.describe("clicks").partitions) == ends + len(bad) + 2
    assert ops.dlq_show(bus, "clicks") == []
    assert bus.describe(dlq_name("clicks")).partitions[0].end_offset == len(stored) + 4
    # a record the .dlq topic took at another time (its own timestamp was beyond now + 1 h) is replayed
    # with the timestamp it was written with
    odd = next(i for i, r in enumerate(records) if r.timestamp_ms == 10**15)
    copies = [m for m in raw_messages(kafka_broker, prefix + "clicks", 2, ends + len(bad) + 2)
              if dict(m.headers() or []).get("event_id") == f"e{odd}".encode()]
    assert [m.timestamp()[1] for m in copies] == [10**15, 10**15]
    bus.close()
    kv.close()
