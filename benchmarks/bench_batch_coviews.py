"""The shop's co-views job on DuckDB and on Spark local[2], over the same Delta table of page views.

Page views: `--rows` views by `--rows / 10` users (10 views each) over 20,000 items, written by keel's lake.
The co-views SQL (src/keel/examples/shop/shop/pipelines.py, a self-join of the distinct (user, item) pairs)
runs through `keel.batch`: DuckDB in-process (`duckdb://`) and Spark local mode with 2 cores
(`spark://local[2]`, driver memory 1 GB, 2 shuffle partitions; the session start is timed apart). Each
engine's result is read back to Arrow, so both pay for handing the rows to Python.

    python benchmarks/bench_batch_coviews.py [--rows 10000000] [--runs 3]

Needs the spark extra and the Delta jars (scripts/install-spark.sh). Run it under
`flock /tmp/keel-heavy.lock` on a shared machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from keel.batch import open_batch
from keel.lake import open_lake

ROOT = Path(__file__).resolve().parents[1]
QUERY = """
    with seen as (select distinct user_id, item_id from page_views)
    select a.item_id, b.item_id as other_item, count(*) as users
    from seen a join seen b on a.user_id = b.user_id and a.item_id <> b.item_id
    group by 1, 2
"""


def page_views(rows: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    users = np.arange(rows) // 10
    items = rng.zipf(1.3, rows) % 20_000
    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    return pa.table({
        "user_id": pa.array([f"u{u}" for u in users]),
        "item_id": pa.array([f"i{i}" for i in items]),
        "ts": pa.array(start + rng.integers(0, 86_400_000_000, rows), pa.timestamp("us", tz="UTC")),
    })


def timed(runs: int, work: object) -> tuple[float, float, int]:
    times, n = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        n = work().num_rows  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="keel-bench-batch-"))
    try:
        lake = open_lake(f"file://{work_dir}")
        data = page_views(args.rows)
        lake.create_table("page_views", data.schema)
        for i in range(0, data.num_rows, 1_000_000):
            lake.append("page_views", data.slice(i, 1_000_000))
        del data
        duck = open_batch("duckdb://", lake)
        d_best, d_median, d_rows = timed(args.runs, lambda: duck.query(QUERY))
        duck.close()
        started = time.perf_counter()
        spark = open_batch("spark://local[2]", lake, jars=ROOT / ".cache" / "spark" / "jars",
                           conf={"spark.driver.memory": "1g", "spark.sql.shuffle.partitions": "2"})
        session_s = time.perf_counter() - started
        s_best, s_median, s_rows = timed(args.runs, lambda: spark.query(QUERY))
        assert s_rows == d_rows, (s_rows, d_rows)
        print(f"co-views over {args.rows:,} page views -> {d_rows:,} pairs, best/median of {args.runs}")
        print(f"  duckdb://          {d_best:8.2f} s  {d_median:8.2f} s")
        print(f"  spark://local[2]   {s_best:8.2f} s  {s_median:8.2f} s   (session start {session_s:.1f} s, not counted)")
        print(f"  DuckDB is {s_median / d_median:.1f}x faster (median)")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
