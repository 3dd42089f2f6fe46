"""Stream processing latency: event acknowledged by the bus -> visible in the view, at a steady rate.

The workload of bench_stream_window.py (count per item per 60 s tumbling window, view + lake
table + checkpoints), produced at a steady `--rate` events/s (default 50,000) to a `file://` bus
in batches every 20 ms, event time = wall clock. The processor runs in its own process. One event
per produced batch carries a probe item (`probe<k>`, its own view key); a poller reads the pending
probes from the view every few ms. Latency = time the probe is first seen in the view minus the
time its produce call returned (acknowledged). Prints p50 / p99 / max.

    python benchmarks/bench_stream_latency.py [--rate 50000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).parent))
import bench_stream_window as w


def serve(root: Path) -> None:
    rt = w.engines(root)
    stop = threading.Event()
    import signal

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    w.Runner(w.declare(), rt, max_records=100_000).run(stop)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--serve", type=Path, default=None)
    a = ap.parse_args()
    if a.serve is not None:
        serve(a.serve)
        return
    root = Path(tempfile.mkdtemp(prefix="keel-bench-latency-"))
    rt = w.engines(root)
    rt.bus.create_stream(w.StreamConfig("clicks", 1))
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(root)])
    tick = 0.02
    per_batch = int(a.rate * tick)
    rng = np.random.default_rng(1)
    acked: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set() or len(seen) < len(acked):
            pending = [k for k in list(acked) if k not in seen]
            if pending:
                got = rt.views.get_raw("item_counts", pending)
                now = time.perf_counter()
                for k, v in zip(pending, got):
                    if v is not None:
                        seen[k] = now
            time.sleep(0.002)
            if done.is_set() and time.perf_counter() - stop_at > 30:
                break

    time.sleep(3)  # let the processor start
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    start = time.perf_counter()
    k = 0
    stop_at = float("inf")
    while time.perf_counter() - start < a.seconds:
        now_ms = int(time.time() * 1000)
        values = w.json_values(rng.integers(0, 100_000, per_batch), rng.integers(0, 10_000, per_batch),
                               np.full(per_batch, now_ms, dtype=np.int64)).to_pylist()
        values[0] = json.dumps({"user_id": 1, "item_id": 10_000_000 + k, "ts": time.strftime(
            "%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms / 1000)) + "Z"}).encode()
        rt.bus.produce("clicks", pa.table({"value": pa.array(values, pa.binary())}))
        acked[str(10_000_000 + k)] = time.perf_counter()
        k += 1
        next_at = start + k * tick
        time.sleep(max(0.0, next_at - time.perf_counter()))
    produced_rate = k * per_batch / (time.perf_counter() - start)
    stop_at = time.perf_counter()
    done.set()
    poller.join(timeout=60)
    proc.terminate()
    proc.wait(timeout=60)
    lat = np.array([seen[p] - acked[p] for p in acked if p in seen]) * 1000
    print(json.dumps({"rate_offered": a.rate, "rate_achieved": round(produced_rate), "probes": len(acked),
                      "probes_seen": len(lat), "p50_ms": round(float(np.percentile(lat, 50)), 1),
                      "p99_ms": round(float(np.percentile(lat, 99)), 1), "max_ms": round(float(lat.max()), 1)}))
    rt.bus.close()
    rt.views.kv.close()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
