"""kill -9 a stream processor process 100 times under a steady input, on the `file://` bus and on
Kafka: afterwards the lake holds every acknowledged event exactly once, late events are in the
side table once, and every closed window in the lake and in the view equals a batch recomputation
from the landed events (minus the late ones)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from keel.bus import open_bus
from keel.bus.base import StreamConfig
from keel.kv import open_kv
from keel.lake import open_lake

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BASE = datetime(2024, 1, 1, tzinfo=UTC)
KILLS = int(os.environ.get("KEEL_STREAM_KILLS", "100"))


class Producer(threading.Thread):
    """Up to ~2,000 events/s, 5 ms of event time apart; 1% out of order (1 s) within the lateness,
    0.5% far too late. Records which ids were acknowledged."""

    def __init__(self, bus_url: str) -> None:
        super().__init__(daemon=True)
        self.bus = open_bus(bus_url)
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.errors: list[str] = []
        self.rng = random.Random(7)

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            ids, values, keys = [], [], []
            for _ in range(50):
                t = seq * 5.0  # ms: windows of 10 s close every 2,000 events
                r = self.rng.random()
                if r < 0.01:
                    t -= 1000.0
                elif r < 0.015:
                    t -= 30000.0
                ids.append(f"e{seq}")
                keys.append(f"u{seq % 97}".encode())
                values.append(json.dumps({"user_id": f"u{seq % 97}", "item_id": f"i{seq % 13}",
                                          "ts": (BASE + timedelta(milliseconds=t)).isoformat()}).encode())
                seq += 1
            batch = pa.table({"key": pa.array(keys, pa.binary()), "value": pa.array(values, pa.binary()),
                              "headers": pa.array([[("event_id", i.encode())] for i in ids],
                                                  pa.map_(pa.string(), pa.binary()))})
            try:
                self.bus.produce("clicks", batch)
                self.acked += ids
            except Exception as exc:  # noqa: BLE001 - not acknowledged: may or may not be on the bus
                self.errors.append(str(exc))
            time.sleep(0.025)


def start_worker(bus_url: str, root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.stream_worker", bus_url, str(root)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def crash_loop(bus_url: str, root: Path, producer_url: str | None = None) -> Producer:
    producer = Producer(producer_url or bus_url)
    producer.start()
    rng = random.Random(11)
    try:
        for _ in range(KILLS):
            proc = start_worker(bus_url, root)
            time.sleep(rng.uniform(0.3, 1.8))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    finally:
        producer.stop.set()
        producer.join()
    return producer


def finish(bus_url: str, root: Path, expected: int) -> None:
    """One last worker until everything is processed, then a clean stop (pending outputs committed)."""
    proc = start_worker(bus_url, root)
    lake = open_lake(f"file://{root}/lake")
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if "clicks" in lake.list_tables() and lake.describe("clicks").rows >= expected:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.5)
        time.sleep(3)  # the aggregation reads the same records; let it catch up too
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, proc.stderr.read().decode() if proc.stderr else ""


def check(root: Path, producer: Producer) -> None:
    lake = open_lake(f"file://{root}/lake")
    landed = pl.from_arrow(lake.read("clicks"))
    ids = landed.get_column("event_id")
    assert ids.n_unique() == landed.height, "an event landed twice"
    assert set(producer.acked) <= set(ids.to_list()), "an acknowledged event is missing from the lake"
    late = pl.from_arrow(lake.read("counts_late")) if "counts_late" in lake.list_tables() else landed.clear()
    assert late.height > 0, "the far-too-late events should be in the side table"
    assert late.get_column("event_id").n_unique() == late.height, "a late event was routed twice"
    on_time = landed.join(late.select("event_id"), on="event_id", how="anti")
    expected = (on_time.group_by(pl.col("event_time").dt.truncate("10s").alias("window_start"), "item_id")
                .agg(pl.len().alias("views")))
    closed = pl.from_arrow(lake.read("counts_10s")).select("window_start", "item_id", "views")
    assert closed.group_by("window_start", "item_id").len().get_column("len").max() == 1, "a window was emitted twice"
    joined = closed.join(expected, on=["window_start", "item_id"], how="left", suffix="_batch")
    assert joined.filter(pl.col("views") != pl.col("views_batch")).height == 0, "a closed window's count is wrong"
    newest = on_time.get_column("event_time").max()
    must_be_closed = expected.filter(pl.col("window_start") < newest - timedelta(seconds=25))  # type: ignore[operator]
    assert must_be_closed.join(closed, on=["window_start", "item_id"], how="anti").height == 0, "a window never closed"
    kv = open_kv(f"file://{root}/kv.db")
    try:
        # each item's view holds its newest window (closed or still open) with the recomputed count
        newest_windows = expected.sort("window_start").group_by("item_id").agg(pl.all().last())
        for item, start, views in newest_windows.select("item_id", "window_start", "views").iter_rows():
            value = json.loads(kv.get(f"counts/{item}") or b"{}")
            assert value.get("window_start") == start.isoformat(), f"view of {item} is not at its newest window"
            assert value["views"] == views, f"view of {item} differs from the recomputation"
    finally:
        kv.close()


def test_kill_9_file_bus(tmp_path: Path) -> None:
    bus_url = f"file://{tmp_path}/bus"
    bus = open_bus(bus_url)
    bus.create_stream(StreamConfig("clicks", 2))
    bus.close()
    producer = crash_loop(bus_url, tmp_path)
    assert not producer.errors
    finish(bus_url, tmp_path, len(producer.acked))
    check(tmp_path, producer)


@pytest.mark.kafka
def test_kill_9_kafka(tmp_path: Path, kafka_bootstrap: str) -> None:
    prefix = f"crash{uuid.uuid4().hex[:8]}."
    bus = open_bus(f"{kafka_bootstrap}?topic_prefix={prefix}")
    bus.create_stream(StreamConfig("clicks", 2))
    bus.close()
    # Static group membership: a restarted worker takes its killed predecessor's place at once
    # instead of waiting for the session timeout (Kafka's answer to fast restarts).
    bus_url = f"{kafka_bootstrap}?topic_prefix={prefix}&group.instance.id=crash-worker&session.timeout.ms=6000"
    producer = crash_loop(bus_url, tmp_path, producer_url=f"{kafka_bootstrap}?topic_prefix={prefix}")
    assert not producer.errors
    finish(bus_url, tmp_path, len(producer.acked))
    check(tmp_path, producer)
