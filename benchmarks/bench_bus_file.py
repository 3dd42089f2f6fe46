"""Benchmark: the `file://` bus against a hand-written fsync'd append log, in the same run.

Claims measured:
 (1) append 1,000,000 records of 100 bytes in produce batches of 1,000, one fsync per batch
     (one partition) -- keel's produce versus /work/shared/peers/log_append.py's
     "batch1000_fsync_per_batch" (the physical reference). Target: >= 0.7x.
     The peer runs before and after keel's repetitions and the ratio uses the mean of its two
     medians: on a shared machine fsync latency drifts by 2x within a minute.
 (1b) the same without fsync (os.fsync stubbed out in keel; the peer's "batch1000_no_fsync"):
     framing + write cost only, much less sensitive to the disk's mood.
 (2) consume those 1,000,000 records into Arrow (poll of 100,000). Target: >= 2M records/s.
 (3) extra: 8 threads producing 1-record batches (group commit): records/s and fsyncs per produce.

Usage: python benchmarks/bench_bus_file.py [--records N] [--reps R] [--dir DIR]
Each keel case is repeated R times (median); each peer run makes its own 3 repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from keel.bus import StreamConfig, open_bus

PEER = Path(os.environ.get("KEEL_SHARED", "/work/shared")) / "peers" / "log_append.py"


def run_peer(directory: str) -> tuple[float, float]:
    """The peer's (fsync'd, unsynced) batch-of-1,000 medians in records/s."""
    out = json.loads(subprocess.run([sys.executable, str(PEER), directory], check=True, capture_output=True, text=True).stdout)
    return (float(out["batch1000_fsync_per_batch"]["median_records_per_s"]),
            float(out["batch1000_no_fsync"]["median_records_per_s"]))


def _skip_fsync(fd: Any) -> None:
    """Stands in for os.fsync to measure framing + write cost only."""


def make_batch(n: int) -> pa.RecordBatch:
    values = [os.urandom(92) + i.to_bytes(8, "little") for i in range(n)]  # 100 bytes, like the peer
    return pa.record_batch({"value": pa.array(values, pa.binary())})


def produce_rate(directory: str, records: int, batch_size: int, fsync: bool = True) -> float:
    path = Path(directory) / f"bus-{time.time_ns()}"
    bus = open_bus(f"file://{path}")
    bus.create_stream(StreamConfig("bench", 1))
    batch = make_batch(batch_size)
    real_fsync = os.fsync
    if not fsync:
        os.fsync = _skip_fsync
    try:
        t0 = time.perf_counter()
        for _ in range(records // batch_size):
            bus.produce("bench", batch)
        dt = time.perf_counter() - t0
    finally:
        os.fsync = real_fsync
    bus.close()
    shutil.rmtree(path)
    return records / dt


def consume_rate(directory: str, records: int, reps: int) -> float:
    path = Path(directory) / f"bus-{time.time_ns()}"
    bus = open_bus(f"file://{path}")
    bus.create_stream(StreamConfig("bench", 1))
    batch = make_batch(1000)
    for _ in range(records // 1000):
        bus.produce("bench", batch)
    rates = []
    for r in range(reps):
        consumer = bus.consumer("bench", f"g{r}")
        got = 0
        t0 = time.perf_counter()
        while got < records:
            got += consumer.poll(100_000, timeout=1.0).num_rows
        rates.append(records / (time.perf_counter() - t0))
        consumer.close()
    bus.close()
    shutil.rmtree(path)
    return statistics.median(rates)


def group_commit(directory: str, threads: int, per_thread: int) -> tuple[float, float]:
    path = Path(directory) / f"bus-{time.time_ns()}"
    bus = open_bus(f"file://{path}")
    bus.create_stream(StreamConfig("bench", 1))
    one = make_batch(1)
    calls = [0]
    real_fsync = os.fsync

    def counting_fsync(fd: Any) -> None:
        calls[0] += 1
        real_fsync(fd)

    os.fsync = counting_fsync
    try:
        workers = [threading.Thread(target=lambda: [bus.produce("bench", one) for _ in range(per_thread)]) for _ in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        dt = time.perf_counter() - t0
    finally:
        os.fsync = real_fsync
    bus.close()
    shutil.rmtree(path)
    total = threads * per_thread
    return total / dt, calls[0] / total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    directory = tempfile.mkdtemp(prefix="keel-bench-bus-", dir=args.dir)
    try:
        peer_before = run_peer(directory)
        keel_runs = [produce_rate(directory, args.records, 1000) for _ in range(args.reps)]
        keel_nosync = statistics.median(produce_rate(directory, args.records, 1000, fsync=False) for _ in range(args.reps))
        peer_after = run_peer(directory)
        consume = consume_rate(directory, args.records, args.reps)
        gc_rate, fsyncs_per_produce = group_commit(directory, 8, 250)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    keel = statistics.median(keel_runs)
    peer = (peer_before[0] + peer_after[0]) / 2
    peer_nosync = (peer_before[1] + peer_after[1]) / 2
    result = {
        "append_1000_per_fsync": {"keel_records_per_s": round(keel), "keel_runs": [round(r) for r in keel_runs],
                                  "peer_records_per_s": round(peer),
                                  "peer_before_after": [round(peer_before[0]), round(peer_after[0])],
                                  "ratio": round(keel / peer, 2), "target": 0.7},
        "append_1000_no_fsync": {"keel_records_per_s": round(keel_nosync), "peer_records_per_s": round(peer_nosync),
                                 "ratio": round(keel_nosync / peer_nosync, 2)},
        "consume_to_arrow": {"keel_records_per_s": round(consume), "target": 2_000_000},
        "group_commit_8_threads_1_record": {"records_per_s": round(gc_rate),
                                            "fsyncs_per_produce": round(fsyncs_per_produce, 3)},
    }
    print(json.dumps(result, indent=1))
    print(f"append ratio keel/peer = {keel / peer:.2f} (target >= 0.7); without fsync {keel_nosync / peer_nosync:.2f}; "
          f"consume = {consume / 1e6:.2f}M records/s (target >= 2M)")


if __name__ == "__main__":
    main()
