"""Three processes of one landing processor share a 6-partition Kafka stream through the consumer
group; one is killed (-9) mid-stream, its partitions move to the others, and the lake still holds
every acknowledged event exactly once (per-partition writers, fenced on reassignment)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import polars as pl
import pytest

from keel.bus import open_bus
from keel.bus.base import StreamConfig
from keel.lake import open_lake
from keel.streaming.stateless import decode
from tests.reliability.test_stream_crash import Producer

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_three_processes_share_partitions_and_one_dies(tmp_path: Path, kafka_bootstrap: str) -> None:
    prefix = f"scale{uuid.uuid4().hex[:8]}."
    # a dead member's partitions move after the session timeout: keep it short for the test
    url = f"{kafka_bootstrap}?topic_prefix={prefix}&session.timeout.ms=6000&heartbeat.interval.ms=500"
    bus = open_bus(f"{kafka_bootstrap}?topic_prefix={prefix}")
    bus.create_stream(StreamConfig("clicks", 6))
    bus.close()
    env = {**os.environ, "KEEL_TEST_PARTITIONS": "6"}
    producer = Producer(f"{kafka_bootstrap}?topic_prefix={prefix}")
    producer.start()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.reliability.stream_worker", url, str(tmp_path), "land"],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(3)]
    lake = open_lake(f"file://{tmp_path}/lake")
    try:
        time.sleep(12)
        procs[0].send_signal(signal.SIGKILL)  # mid-stream, holding partitions and maybe a batch in flight
        procs[0].wait()
        time.sleep(12)
        producer.stop.set()
        producer.join()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "clicks" in lake.list_tables() and lake.describe("clicks").rows >= len(producer.acked):
                break
            for p in procs[1:]:
                assert p.poll() is None, p.stderr.read().decode() if p.stderr else ""
            time.sleep(0.5)
    finally:
        producer.stop.set()
        for p in procs[1:]:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=60) for p in procs[1:]]
    assert codes == [0, 0]
    ids = pl.from_arrow(lake.read("clicks", columns=["event_id"])).get_column("event_id")
    assert ids.n_unique() == ids.len(), "an event landed twice"
    assert set(producer.acked) <= set(ids.to_list()), "an acknowledged event is missing"
    # every partition was written, and the dead member's partitions were fenced by a new owner
    epochs: dict[str, int] = {}
    for commit in lake.history("clicks"):
        if "writer" in commit:
            epochs[commit["writer"]] = max(epochs.get(commit["writer"], 0), decode(commit["writer_version"])[0])
    assert sorted(epochs) == [f"land_clicks/p{p}" for p in range(6)]
    assert max(epochs.values()) >= 2, "no partition changed owner"
