"""The kafka:// bus on a real broker: what only Kafka can show (the engine-agnostic promises are in
tests/contract/test_bus.py, which runs on Kafka too)."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import confluent_kafka  # scripts/install-kafka.sh installs it
import confluent_kafka.admin
import pyarrow as pa
import pytest

from keel.bus import open_bus
from keel.bus.base import (
    HEADERS_TYPE,
    TIMESTAMP_TYPE,
    StreamConfig,
    dlq_name,
)
from keel.bus.kafka import KafkaBus, KafkaDurabilityWarning, kafka_partitions
from keel.errors import BackendError, ConflictError, NotFoundError, SchemaError
from tests.harness import kafka as harness
from tests.harness.kafka import KafkaBroker, KafkaUnavailable

pytestmark = pytest.mark.kafka


@pytest.fixture
def bus(kafka_bootstrap: str) -> Iterator[KafkaBus]:
    opened = open_bus(kafka_bootstrap, topic_prefix=f"it-{uuid.uuid4().hex[:8]}.", config={"heartbeat.interval.ms": 500})
    assert isinstance(opened, KafkaBus)
    yield opened
    opened.close()


def _raw_read(bootstrap: str, topic: str, partitions: int, expected: int) -> list[confluent_kafka.Message]:
    """Read `expected` messages with a plain Kafka client, as any other consumer would."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": "raw-" + uuid.uuid4().hex, "enable.auto.commit": False})
    consumer.assign([confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in range(partitions)])
    out: list[confluent_kafka.Message] = []
    for _ in range(50):
        out += [m for m in consumer.consume(100, 0.2) if m.error() is None]
        if len(out) >= expected:
            break
    consumer.close()
    return out


def test_each_record_is_a_plain_kafka_message(bus: KafkaBus, kafka_broker: KafkaBroker) -> None:
    bus.create_stream(StreamConfig("orders", partitions=3))
    keys = [b"user-1", b"user-2", b"user-3", b"user-1"]
    batch = pa.table({
        "key": pa.array(keys, pa.binary()),
        "value": pa.array([b'{"n": %d}' % i for i in range(4)], pa.binary()),
        "timestamp": pa.array([1_700_000_000_000 + i for i in range(4)], pa.int64()).cast(TIMESTAMP_TYPE),
        "headers": pa.array([[("event_id", b"e%d" % i), ("schema_version", b"1")] for i in range(4)], HEADERS_TYPE),
    })
    produced = bus.produce("orders", batch)
    assert produced.partitions.tolist() == kafka_partitions(pa.array(keys), 3).tolist()

    messages = _raw_read(kafka_broker.bootstrap, bus.topic("orders"), 3, 4)
    by_value = {m.value(): m for m in messages}
    assert len(by_value) == 4
    for i in range(4):
        m = by_value[b'{"n": %d}' % i]
        assert m.key() == keys[i]
        assert m.headers() == [("event_id", b"e%d" % i), ("schema_version", b"1")]
        assert m.timestamp() == (confluent_kafka.TIMESTAMP_CREATE_TIME, 1_700_000_000_000 + i)
        assert (m.partition(), m.offset()) == (produced.partitions[i], produced.offsets[i])


def test_streams_are_topics_with_their_dead_letter_topic_and_retention(bus: KafkaBus, kafka_broker: KafkaBroker) -> None:
    bus.create_stream(StreamConfig("clicks", partitions=4, retention_ms=3_600_000, retention_bytes=1 << 30))
    admin = confluent_kafka.admin.AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[bus.topic("clicks")].partitions) == 4
    assert len(topics[bus.topic(dlq_name("clicks"))].partitions) == 1
    info = bus.describe("clicks")
    assert (info.config.retention_ms, info.config.retention_bytes) == (3_600_000, 1 << 30)
    with pytest.raises(ConflictError, match="4 partitions"):
        bus.create_stream(StreamConfig("clicks", partitions=2))


def test_describe_shows_watermarks_and_each_groups_commits(bus: KafkaBus) -> None:
    bus.create_stream(StreamConfig("views", partitions=2))
    bus.produce("views", pa.table({"key": [b"a", b"b", b"c", b"d", b"e"], "value": [b"v"] * 5}))
    pinned = bus.consumer("views", "lake-sink", partitions=[0, 1])
    seen = 0
    while seen < 5:
        seen += pinned.poll(100, 2).num_rows
    ends = {p.partition: p.end_offset for p in bus.describe("views").partitions}
    assert sum(ends.values()) == 5
    pinned.commit({0: ends[0], 1: 1})
    info = bus.describe("views")
    assert info.committed["lake-sink"] == {0: ends[0], 1: 1}
    assert info.lag("lake-sink") == {0: 0, 1: ends[1] - 1}


@pytest.mark.parametrize("pinned", [None, [0, 1]])
def test_seek_right_after_joining_takes_effect(bus: KafkaBus, pinned: list[int] | None) -> None:
    """librdkafka refuses to seek a partition that is not fetching yet; keel's seek must still hold."""
    bus.create_stream(StreamConfig("replay", partitions=2))
    produced = bus.produce("replay", pa.table({"key": [b"k%d" % i for i in range(20)], "value": [b"v%d" % i for i in range(20)]}))
    ends = {p: int((produced.partitions == p).sum()) for p in (0, 1)}
    consumer = bus.consumer("replay", "replayer", partitions=pinned)
    consumer.seek(1, 2)
    seen: list[tuple[int, int]] = []
    for _ in range(60):
        batch = consumer.poll(100, 0.5)
        seen += zip(batch.column("partition").to_pylist(), batch.column("offset").to_pylist())
        if len(seen) >= ends[0] + ends[1] - 2:
            break
    consumer.close()
    assert sorted(o for p, o in seen if p == 1) == list(range(2, ends[1]))
    assert sorted(o for p, o in seen if p == 0) == list(range(ends[0]))


def test_production_profile_warns_about_a_single_replica_once(kafka_bootstrap: str, caplog: pytest.LogCaptureFixture) -> None:
    prod = open_bus(kafka_bootstrap, topic_prefix=f"it-{uuid.uuid4().hex[:8]}.", production=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prod.create_stream(StreamConfig("payments"))
    texts = [str(w.message) for w in caught if issubclass(w.category, KafkaDurabilityWarning)]
    assert any("replication factor 1" in t and "replication_factor=3" in t for t in texts), texts
    assert any("min.insync.replicas=1" in t and "min.insync.replicas=2" in t for t in texts), texts
    # One channel: a warning also logged is printed twice by `keel up` (warnings + log on stderr).
    logged = [r.getMessage() for r in caplog.records if r.name == "keel.bus.kafka" and "durability" in r.getMessage()]
    assert len(texts) == 2 and logged == []
    prod.close()


def test_produce_refuses_bad_batches_and_unknown_streams(bus: KafkaBus) -> None:
    with pytest.raises(NotFoundError, match="nowhere"):
        bus.produce("nowhere", pa.table({"value": [b"x"]}))
    bus.create_stream(StreamConfig("s"))
    with pytest.raises(SchemaError, match="value"):
        bus.produce("s", pa.table({"payload": [b"x"]}))
    with pytest.raises(SchemaError, match="null value"):
        bus.produce("s", pa.table({"value": pa.array([b"x", None], pa.binary())}))
    assert bus.describe("s").partitions[0].end_offset == 0


def test_timestamps_the_broker_would_refuse_are_refused_before_anything_is_written(bus: KafkaBus) -> None:
    bus.create_stream(StreamConfig("clock", partitions=2))
    now = time.time_ns() // 1_000_000
    stamps = pa.array([now, now + 2 * 3_600_000], pa.int64()).cast(TIMESTAMP_TYPE)  # one 2 h ahead
    with pytest.raises(SchemaError, match="timestamp"):
        bus.produce("clock", pa.table({"key": [b"a", b"b"], "value": [b"1", b"2"], "timestamp": stamps}))
    assert sum(p.end_offset for p in bus.describe("clock").partitions) == 0
    soon = pa.array([now + 60_000, None], pa.int64()).cast(TIMESTAMP_TYPE)
    assert len(bus.produce("clock", pa.table({"value": [b"1", b"2"], "timestamp": soon})).offsets) == 2


def test_cooperative_rebalance_splits_partitions_between_members(bus: KafkaBus) -> None:
    bus.create_stream(StreamConfig("jobs", partitions=4))
    first = bus.consumer("jobs", "workers")
    assert first.assignment == [0, 1, 2, 3]
    second = bus.consumer("jobs", "workers")
    for _ in range(100):  # both members must serve the rebalance
        first.poll(10, 0.1)
        second.poll(10, 0.1)
        if first.assignment and second.assignment:
            break
    assert sorted(first.assignment + second.assignment) == [0, 1, 2, 3]
    assert not set(first.assignment) & set(second.assignment)
    second.close()
    for _ in range(100):
        first.poll(10, 0.1)
        if first.assignment == [0, 1, 2, 3]:
            break
    assert first.assignment == [0, 1, 2, 3]


def test_concurrent_produce_calls_each_get_their_own_offsets(bus: KafkaBus) -> None:
    """Gateway threads produce at once; each call's offsets point at its own records."""
    bus.create_stream(StreamConfig("ingest", partitions=1))
    results: dict[int, list[tuple[bytes, int]]] = {}

    def worker(t: int) -> None:
        mine: list[tuple[bytes, int]] = []
        for call in range(10):
            payloads = [b"t%d-c%d-r%d" % (t, call, r) for r in range(1 + (t + call) % 7)]
            produced = bus.produce("ingest", pa.table({"value": pa.array(payloads, pa.binary())}))
            mine += list(zip(payloads, produced.offsets.tolist()))
        results[t] = mine

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    claimed = dict(pair for mine in results.values() for pair in mine)
    assert len(results) == 8
    consumer = bus.consumer("ingest", "audit", partitions=[0])
    stored: dict[int, bytes] = {}
    for _ in range(100):
        batch = consumer.poll(10_000, 0.5)
        stored.update(zip(batch.column("offset").to_pylist(), batch.column("value").to_pylist()))
        if len(stored) >= len(claimed):
            break
    assert len(stored) == len(claimed)
    assert all(stored[offset] == payload for payload, offset in claimed.items())


def test_produce_fails_and_acknowledges_nothing_while_the_broker_is_down(kafka_private_broker: KafkaBroker) -> None:
    # A short reconnect backoff: librdkafka's default (up to 10 s) could outlast the 3 s delivery timeout.
    bus = open_bus(kafka_private_broker.url, delivery_timeout_ms=3_000, config={"reconnect.backoff.max.ms": 200})
    assert isinstance(bus, KafkaBus)
    bus.create_stream(StreamConfig("events"))
    bus.produce("events", pa.table({"value": [b"before"]}))
    kafka_private_broker.stop()
    with pytest.raises(BackendError, match="not acknowledged"):
        bus.produce("events", pa.table({"value": [b"lost-1", b"lost-2"]}))
    kafka_private_broker.start()  # returns once leaders and the group coordinator serve
    wait_for_producer_connection(bus)
    after = bus.produce("events", pa.table({"value": [b"after"]}))
    consumer = bus.consumer("events", "check", partitions=[0])
    values: list[bytes] = []
    for _ in range(60):
        values += consumer.poll(100, 2).column("value").to_pylist()
        if len(values) >= 2:
            break
    assert values == [b"before", b"after"]
    assert after.offsets.tolist() == [1]
    bus.close()


def test_a_group_lookup_lost_in_a_broker_restart_is_asked_again(kafka_bootstrap: str) -> None:
    """After a restart a request can go unanswered (CI saw a raw TimeoutError from consumer()):
    the bus asks again with a fresh request instead of failing, within its admin timeout."""
    bus = open_bus(kafka_bootstrap, topic_prefix=f"it-{uuid.uuid4().hex[:8]}.")
    assert isinstance(bus, KafkaBus)
    bus.create_stream(StreamConfig("events"))
    real = bus._admin.describe_consumer_groups  # noqa: SLF001 - the fault is injected at the admin client
    asked: list[list[str]] = []

    def first_one_lost(groups: list[str], **options: object) -> dict[str, object]:
        asked.append(groups)
        if len(asked) == 1:  # a future no answer will ever complete, as for a request lost in a restart
            return {g: concurrent.futures.Future() for g in groups}
        return real(groups, **options)  # type: ignore[no-any-return]

    bus._admin.describe_consumer_groups = first_one_lost
    consumer = bus.consumer("events", "readers")
    assert len(asked) >= 2 and consumer.assignment == [0]
    bus.close()


def wait_for_producer_connection(bus: KafkaBus, bound: float = 120.0) -> None:
    """Wait, by condition, until the bus's own producer has a broker connection again (its metadata
    request is answered); the bound only ends a wait that would never succeed."""
    producer = bus._sender._current()  # noqa: SLF001 - the test needs the producer the bus will use
    deadline = time.monotonic() + bound
    while True:
        try:
            if producer.list_topics(timeout=2).brokers:
                return
        except confluent_kafka.KafkaException:
            if time.monotonic() > deadline:
                raise


@pytest.mark.slow
def test_every_call_while_the_broker_is_down_raises_a_backend_error(kafka_private_broker: KafkaBroker) -> None:
    """A broker outage is normal in production: callers get keel's BackendError, never a raw timeout."""
    bus = open_bus(kafka_private_broker.url + "?admin_timeout_ms=3000", delivery_timeout_ms=3_000)
    assert isinstance(bus, KafkaBus)
    bus.create_stream(StreamConfig("events", partitions=2))
    kafka_private_broker.stop()
    now = time.time_ns() // 1_000_000
    stamped = pa.table({"value": [b"x"], "timestamp": pa.array([now], pa.int64()).cast(TIMESTAMP_TYPE)})
    calls: dict[str, Callable[[], object]] = {
        "consumer": lambda: bus.consumer("events", "readers"),
        "pinned consumer": lambda: bus.consumer("events", "pinned", partitions=[0]),
        "create_stream": lambda: bus.create_stream(StreamConfig("other", partitions=1)),
        "describe": lambda: bus.describe("events"),
        "list_streams": lambda: bus.list_streams(),
        "check_durability": lambda: bus.check_durability("events"),
        "produce": lambda: bus.produce("events", stamped),
        "delete_stream": lambda: bus.delete_stream("events"),
    }
    escaped: dict[str, str] = {}
    for name, call in calls.items():
        try:
            call()
            escaped[name] = "no error"
        except BackendError as exc:
            if "broker" not in str(exc):
                escaped[name] = f"BackendError without a hint: {exc}"
        except Exception as exc:  # noqa: BLE001 - what escapes is what this test looks for
            escaped[name] = f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    bus.close()
    assert escaped == {}


def test_missing_jars_fail_naming_the_install_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(harness, "KAFKA_LIB", tmp_path)
    with pytest.raises(KafkaUnavailable, match="scripts/install-kafka.sh"):
        KafkaBroker(tmp_path / "data")
