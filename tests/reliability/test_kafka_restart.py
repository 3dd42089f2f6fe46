"""Kafka restarted mid-stream: producers retry through the outage, and every acknowledged record is
read back exactly once, where produce said it landed (the kafkatest ReplicationTest check, "every
acked message was consumed", on one node: SIGTERM and kill -9)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pytest

from keel.bus import open_bus
from keel.bus.base import StreamConfig
from keel.errors import BackendError
from tests.harness.kafka import KafkaBroker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

BATCH = 200
PARTITIONS = 3


@dataclass
class Ledger:
    """What the producer was told: id -> (partition, offset) for acked records, ids of failed calls."""

    acked: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    failed: set[bytes] = field(default_factory=set)
    calls: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each produce call
    errors: list[str] = field(default_factory=list)


def _produce_until(bus: object, stop: threading.Event, ledger: Ledger) -> None:
    n = 0
    while not stop.is_set():
        ids = [b"e%08d" % (n + i) for i in range(BATCH)]
        n += BATCH
        batch = pa.table({
            "key": pa.array([b"user-%d" % (int(i[1:]) % 17) for i in ids], pa.binary()),
            "value": pa.array([b'{"event_id": "%s"}' % i for i in ids], pa.binary()),
            "headers": pa.array([[("event_id", i)] for i in ids], pa.map_(pa.string(), pa.binary())),
        })
        started = time.monotonic()
        try:
            produced = bus.produce("events", batch)  # type: ignore[attr-defined]
        except BackendError as exc:
            ledger.failed.update(ids)
            ledger.errors.append(str(exc))
        else:
            for i, p, o in zip(ids, produced.partitions.tolist(), produced.offsets.tolist()):
                ledger.acked[i] = (p, o)
        ledger.calls.append((started, time.monotonic()))


@pytest.mark.parametrize("how", ["sigterm", "kill-9"])
def test_no_acknowledged_record_is_lost_or_duplicated_across_a_broker_restart(kafka_private_broker: KafkaBroker, how: str) -> None:
    broker = kafka_private_broker
    # The producer's retries must outlast the restart; produce only fails after two minutes.
    bus = open_bus(broker.url, delivery_timeout_ms=120_000)
    bus.create_stream(StreamConfig("events", partitions=PARTITIONS))
    ledger = Ledger()
    stop = threading.Event()
    producer = threading.Thread(target=_produce_until, args=(bus, stop, ledger), daemon=True)
    producer.start()
    try:
        while len(ledger.acked) < 20 * BATCH:
            time.sleep(0.05)
        acked_before = len(ledger.acked)
        broker.stop(kill=how == "kill-9")
        down = time.monotonic()  # the broker process is gone
        time.sleep(1.0)  # the producer keeps sending into the outage
        up = time.monotonic()
        broker.start()
        while len(ledger.acked) < acked_before + 20 * BATCH and producer.is_alive():
            time.sleep(0.05)
    finally:
        stop.set()
        producer.join(180)
    assert not producer.is_alive()
    assert not ledger.failed, ledger.errors[:3]
    # The call in progress when the broker died finished only after the restart: the producer retried.
    assert any(start < down and end > up for start, end in ledger.calls)

    info = bus.describe("events")
    total = sum(p.end_offset - p.start_offset for p in info.partitions)
    consumer = bus.consumer("events", "audit", partitions=list(range(PARTITIONS)))
    read: list[pa.RecordBatch] = []
    count, deadline = 0, time.monotonic() + 60
    while count < total and time.monotonic() < deadline:
        batch = consumer.poll(50_000, 1.0)
        read.append(batch)
        count += batch.num_rows
    consumer.close()
    bus.close()
    table = pa.Table.from_batches(read)
    ids = [dict(h)["event_id"] for h in table.column("headers").to_pylist()]
    where = list(zip(table.column("partition").to_pylist(), table.column("offset").to_pylist()))

    assert len(ids) == len(set(ids)), "a record was written twice"
    seen = dict(zip(ids, where))
    missing = [i for i in ledger.acked if i not in seen]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:3]}"
    moved = [i for i, at in ledger.acked.items() if seen[i] != at]
    assert not moved, f"{len(moved)} records are not where produce said, e.g. {moved[:3]}"
    assert set(seen) == set(ledger.acked), "records that no produce call acknowledged were read"
