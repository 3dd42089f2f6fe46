"""Stream processing benchmark: keel's windowed aggregation end to end versus Bytewax, in one run.

Workload (the peers' one, /work/shared/peers): 2,000,000 events, user_id among 100k, item_id among
10k, event times 1 ms apart; count per item per 60-second tumbling window.

(a) keel end to end: the events are first produced to a `file://` bus (not timed, as the peers
    generate their events before the clock starts); then a keel `Runner` reads them back, decodes
    the JSON values, aggregates, commits closed windows to a Delta table exactly once, upserts the
    windows into a kv view and checkpoints its state after every micro-batch. Timed until the
    runner has consumed every event. Peer: `BW_BATCH=1000 python -m bytewax.run bytewax_window:flow`.
(b) keel's aggregation step alone (`WindowState.update` on pre-decoded batches of 100k) versus a bare
    Polars group-by over the same batches (`window_columnar.py --method polars`).
Latency (c) is measured by `bench_stream_latency.py`.

    python benchmarks/bench_stream_window.py [--events 2000000] [--skip-peer]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

import keel
from keel.bus import open_bus
from keel.bus.base import StreamConfig
from keel.project.catalog import collecting
from keel.engines import Engines
from keel.kv import open_kv
from keel.kv.views import Views
from keel.lake import open_lake
from keel.streaming.runner import Runner

PEERS = Path(os.environ.get("KEEL_PEERS", "/work/shared/peers"))
BASE_MS = 1_704_067_200_000


class Click(keel.Event):
    user_id: int
    item_id: int


def declare() -> keel.project.declare.Aggregation:
    with collecting():
        clicks = keel.stream("clicks", Click, key=None)

        @keel.aggregate(clicks, by="item_id", window=keel.tumbling("60s"),
                        into=[keel.view("item_counts"), keel.table("item_counts_60s")])
        def item_counts(w):  # type: ignore[no-untyped-def]
            return {"views": w.count()}
    return item_counts


def columns(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(42)
    return (rng.integers(0, 100_000, n, dtype=np.int64), rng.integers(0, 10_000, n, dtype=np.int64),
            BASE_MS + np.arange(n, dtype=np.int64))


def json_values(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> pa.Array:
    """The JSON values the gateway would have put on the bus, built columnar."""
    frame = pl.DataFrame({"user_id": user, "item_id": item, "ts": ts}).select(
        pl.concat_str([pl.lit('{"user_id":'), pl.col("user_id"), pl.lit(',"item_id":'), pl.col("item_id"),
                       pl.lit(',"ts":"'), pl.from_epoch("ts", "ms").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
                       pl.lit('"}')]).alias("v"))
    return frame.get_column("v").to_arrow().cast(pa.binary())


def engines(root: Path) -> Engines:
    root.mkdir(parents=True, exist_ok=True)
    bus = open_bus(f"file://{root}/bus")
    lake = open_lake(f"file://{root}/lake")
    kv = open_kv(f"file://{root}/kv.db")
    state = root / "state"
    state.mkdir(exist_ok=True)
    return Engines(bus=bus, lake=lake, views=Views(kv, {"item_counts": None}), state_dir=state)


def fill(rt: Engines, n: int, chunk: int = 200_000) -> None:
    rt.bus.create_stream(StreamConfig("clicks", 1))
    user, item, ts = columns(n)
    for s in range(0, n, chunk):
        values = json_values(user[s:s + chunk], item[s:s + chunk], ts[s:s + chunk])
        ids = pa.array([f"e{i}" for i in range(s, s + len(values))]).cast(pa.binary())
        headers = pa.MapArray.from_arrays(np.arange(0, len(values) + 1, dtype=np.int32),
                                          pa.array(["event_id"] * len(values)), ids)
        rt.bus.produce("clicks", pa.table({"value": values, "headers": headers}))


def keel_end_to_end(n: int, max_records: int, profile: bool = False) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="keel-bench-stream-"))
    try:
        rt = engines(root)
        fill(rt, n)
        runner = Runner(declare(), rt, max_records=max_records)
        t0 = time.perf_counter()
        runner.start()
        while runner.stats.events < n:
            runner.step(timeout=1.0)
        runner.flush()
        dt = time.perf_counter() - t0
        runner.consumer.close()
        rows = rt.lake.describe("item_counts_60s").rows
        counted = int(rt.lake.read("item_counts_60s", columns=["views"]).column("views").to_numpy().sum())
        out = {"seconds": round(dt, 3), "events_per_s": round(n / dt), "closed_window_rows": rows,
               "events_in_closed_windows": counted, "batches": runner.stats.batches,
               "view_keys": rt.views.count("item_counts")}
        rt.bus.close()
        rt.views.kv.close()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def aggregation_step(n: int, batch: int) -> dict[str, float]:
    """keel's WindowState.update versus a bare Polars group-by, on the same pre-built batches."""
    from keel.streaming.windows import WindowState

    user, item, ts = columns(n)
    frames = [pl.DataFrame({"event_id": pl.Series(np.arange(s, min(s + batch, n))).cast(pl.String),
                            "event_time": pl.from_epoch(pl.Series(ts[s:s + batch]), "ms").dt.replace_time_zone("UTC")
                            .dt.cast_time_unit("us"),
                            "user_id": user[s:s + batch], "item_id": item[s:s + batch]})
              for s in range(0, n, batch)]
    best_keel = best_polars = float("inf")
    for _ in range(3):
        state = WindowState(declare())
        t0 = time.perf_counter()
        for f in frames:
            state.update(f)
        best_keel = min(best_keel, time.perf_counter() - t0)
        t0 = time.perf_counter()
        bare_polars(user, item, ts, batch)
        best_polars = min(best_polars, time.perf_counter() - t0)
    return {"keel_events_per_s": round(n / best_keel), "polars_events_per_s": round(n / best_polars),
            "ratio": round(best_polars / best_keel, 2)}


def bare_polars(user: np.ndarray, item: np.ndarray, ts: np.ndarray, batch: int) -> None:
    """window_columnar.py's run_polars, inlined (columns input)."""
    state = None
    for s in range(0, len(ts), batch):
        df = pl.DataFrame({"user_id": user[s:s + batch], "item_id": item[s:s + batch], "ts": ts[s:s + batch]})
        agg = df.group_by((pl.col("ts") // 60_000).alias("w"), "item_id").agg(pl.len().cast(pl.Int64).alias("c"))
        if state is not None:
            agg = pl.concat([state, agg]).group_by("w", "item_id").agg(pl.col("c").sum())
        wm = df["ts"].max() // 60_000
        state = agg.filter(pl.col("w") >= wm)


def bytewax(n: int) -> dict[str, float]:
    env = {**os.environ, "BW_BATCH": "1000", "BW_N": str(n), "PYTHONPATH": str(PEERS)}
    done = subprocess.run([sys.executable, "-m", "bytewax.run", "bytewax_window:flow"], env=env, cwd=PEERS,
                          capture_output=True, text=True, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--max-records", type=int, default=100_000)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--only", choices=["e2e", "step"], default=None)
    a = ap.parse_args()
    if a.only in (None, "e2e"):
        k = keel_end_to_end(a.events, a.max_records)
        print(json.dumps({"keel_end_to_end": k}), flush=True)
        if not a.skip_peer:
            b = bytewax(a.events)
            print(json.dumps({"bytewax": b}), flush=True)
            print(json.dumps({"ratio_keel_over_bytewax": round(k["events_per_s"] / b["events_per_s"], 1)}), flush=True)
    if a.only in (None, "step"):
        print(json.dumps({"aggregation_step": aggregation_step(a.events, a.max_records)}), flush=True)


if __name__ == "__main__":
    main()
