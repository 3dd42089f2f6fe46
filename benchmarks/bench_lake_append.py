"""Lake appends: keel's Delta lake against plain Parquet files written by pyarrow, in the same run.

(a) 2M shop events (user_id, item_id, ts, event_date) appended in batches of 50k into a table
    partitioned by event_date; the peer writes the same batches as hive-partitioned Parquet
    files with pyarrow (no log, no commit, no schema check): the cost of a Delta commit.
(b) Many small appends (100 rows): keel's exactly-once append (writer + version, checked and
    recorded in the commit) against keel's plain append and against deltalake's own
    ``write_deltalake`` on a cached handle: the cost of the check.

    python benchmarks/bench_lake_append.py [--rows 2000000] [--batch 50000] [--small 200]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from keel.lake import open_lake


def shop_events(n: int, seed: int = 0, days: int = 30) -> pa.Table:
    rng = np.random.default_rng(seed)
    users = pa.array([f"u{i:06d}" for i in range(100_000)])
    items = pa.array([f"i{i:05d}" for i in range(10_000)])
    start = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    ts = np.sort(rng.integers(start, start + days * 86_400_000_000, n))
    return pa.table({
        "user_id": users.take(pa.array(rng.integers(0, 100_000, n))),
        "item_id": items.take(pa.array(rng.integers(0, 10_000, n))),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "event_date": pa.array((ts // 86_400_000_000).astype("int32"), pa.date32()),
    })


def interleaved(runs: int, contenders: dict[str, tuple[Callable[[], object], Callable[[object], None]]]
                ) -> dict[str, tuple[float, float]]:
    """(best, median) seconds per contender; each round runs every contender once, so that the
    load of a shared machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, (setup, work) in contenders.items():
            state = setup()
            started = time.perf_counter()
            work(state)
            times[name].append(time.perf_counter() - started)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--small", type=int, default=200, help="number of small appends in (b)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    data = shop_events(args.rows)
    batches = [data.slice(i, args.batch) for i in range(0, data.num_rows, args.batch)]
    work_dir = Path(tempfile.mkdtemp(prefix="keel-bench-lake-"))
    try:
        def fresh(name: str) -> Path:
            path = work_dir / name
            shutil.rmtree(path, ignore_errors=True)
            return path

        def keel_setup() -> object:
            lake = open_lake(f"file://{fresh('lake')}")
            lake.create_table("events", data.schema, partition_by=["event_date"])
            return lake

        def keel_append(lake: object) -> None:
            for batch in batches:
                lake.append("events", batch)  # type: ignore[attr-defined]

        def parquet_write(path: object) -> None:
            for i, batch in enumerate(batches):
                pads.write_dataset(batch, str(path), format="parquet", partitioning=["event_date"],
                                   partitioning_flavor="hive", basename_template=f"part-{i}-{{i}}.parquet",
                                   existing_data_behavior="overwrite_or_ignore")

        big = interleaved(args.runs, {"keel": (keel_setup, keel_append),
                                      "parquet": (lambda: fresh("parquet"), parquet_write)})
        print(f"(a) {args.rows:,} events in batches of {args.batch:,}, partitioned by event_date, "
              f"{args.runs} interleaved rounds (best / median)")
        for name, label in (("keel", "keel lake append     "), ("parquet", "pyarrow Parquet files")):
            best, median = big[name]
            print(f"    {label}  {best:6.2f} s / {median:6.2f} s   {args.rows / best:12,.0f} rows/s (best)")
        print(f"    ratio keel / Parquet (throughput) = {big['parquet'][0] / big['keel'][0]:.2f}x best, "
              f"{big['parquet'][1] / big['keel'][1]:.2f}x median")

        small = [data.slice(i * 100, 100) for i in range(args.small)]

        def small_setup() -> object:
            lake = open_lake(f"file://{fresh('small')}")
            lake.create_table("events", data.schema)
            return lake

        def exactly_once(lake: object) -> None:
            for v, batch in enumerate(small, start=1):
                lake.append("events", batch, writer="sink", version=v,  # type: ignore[attr-defined]
                            metadata={"offsets": f'{{"0": {v * 100}}}'})

        def plain(lake: object) -> None:
            for batch in small:
                lake.append("events", batch)  # type: ignore[attr-defined]

        def raw_setup() -> object:
            from deltalake import DeltaTable, write_deltalake

            path = fresh("raw")
            write_deltalake(str(path), data.slice(0, 0), mode="append")
            return DeltaTable(str(path))

        def raw(table: object) -> None:
            from deltalake import write_deltalake

            for batch in small:
                write_deltalake(table, batch, mode="append")  # type: ignore[arg-type]

        small_runs = interleaved(args.runs, {"once": (small_setup, exactly_once), "plain": (small_setup, plain),
                                             "raw": (raw_setup, raw)})
        once_s, plain_s, raw_s = (small_runs[k][0] for k in ("once", "plain", "raw"))
        print(f"(b) {args.small} appends of 100 rows, unpartitioned, best of {args.runs} interleaved rounds")
        print(f"    keel exactly-once append     {once_s / args.small * 1000:6.2f} ms/append")
        print(f"    keel plain append            {plain_s / args.small * 1000:6.2f} ms/append")
        print(f"    deltalake write_deltalake    {raw_s / args.small * 1000:6.2f} ms/append")
        print(f"    cost of the exactly-once check: {(once_s - plain_s) / args.small * 1000:+.2f} ms/append; "
              f"ratio keel exactly-once / raw deltalake (throughput) = {raw_s / once_s:.2f}x")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
