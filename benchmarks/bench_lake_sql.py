"""SQL over the lake: keel's SqlSession against DuckDB reading the same Parquet files directly.

10M shop events in a Delta table partitioned by event_date (written by keel). The query
``select item_id, count(*) from t group by item_id`` runs
* through ``keel.lake.sql.SqlSession`` (the table bound by name, its latest version), and
* through DuckDB's ``read_parquet`` over a glob of the table's Parquet files (no Delta log, so
  it would also read files a delete or compaction had retired: the peer, not a correct reader).
For the record it also runs the two other ways a session could bind a table: deltalake's
pyarrow dataset registered in DuckDB, and Polars' ``scan_delta``.

    python benchmarks/bench_lake_sql.py [--rows 10000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import polars as pl
from bench_lake_append import shop_events

from keel.lake import open_lake
from keel.lake.sql import SqlSession

QUERY = "select item_id, count(*) as n from {} group by item_id"


def interleaved(runs: int, contenders: dict[str, Callable[[], object]]) -> dict[str, tuple[float, float]]:
    """(best, median) seconds per contender, every contender once per round."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, work in contenders.items():
            started = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - started)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="keel-bench-sql-"))
    try:
        lake = open_lake(f"file://{work_dir}")
        data = shop_events(args.rows)
        lake.create_table("events", data.schema, partition_by=["event_date"])
        for i in range(0, data.num_rows, 1_000_000):
            lake.append("events", data.slice(i, 1_000_000))
        del data
        info = lake.describe("events")
        session = SqlSession(lake)
        peer = duckdb.connect()
        glob = f"read_parquet('{work_dir}/events/**/*.parquet', hive_partitioning = true)"

        def via_dataset() -> object:
            con = duckdb.connect()
            con.register("events", lake.dataset("events"))
            result = con.sql(QUERY.format("events")).to_arrow_table()
            con.close()
            return result

        def via_polars() -> object:
            frame = pl.scan_delta(f"{work_dir}/events")
            return frame.group_by("item_id").agg(pl.len().alias("n")).collect()

        expected = peer.sql(QUERY.format(glob) + " order by item_id").fetchall()
        assert session.query(QUERY.format("events") + " order by item_id").to_pylist() == [
            {"item_id": k, "n": n} for k, n in expected]
        results = interleaved(args.runs, {
            "keel": lambda: session.query(QUERY.format("events")),
            "duckdb": lambda: peer.sql(QUERY.format(glob)).to_arrow_table(),
            "dataset": via_dataset,
            "polars": via_polars,
        })
        session.close()
        peer.close()
        print(f"{QUERY.format('t')} over {info.rows:,} rows, {info.files} files, "
              f"{info.size_bytes / 2**20:.0f} MB; {args.runs} interleaved rounds (best / median)")
        labels = {"keel": "keel SqlSession (native Parquet view)", "duckdb": "DuckDB read_parquet on the files",
                  "dataset": "DuckDB over deltalake's pyarrow dataset", "polars": "Polars scan_delta"}
        for name, label in labels.items():
            best, median = results[name]
            print(f"    {label:42s} {best:6.3f} s / {median:6.3f} s")
        reference = results["duckdb"]
        print(f"    ratio keel / DuckDB on Parquet = {reference[0] / results['keel'][0]:.2f}x best, "
              f"{reference[1] / results['keel'][1]:.2f}x median")
        for name in ("dataset", "polars"):
            print(f"    ratio {name} / DuckDB on Parquet = {reference[0] / results[name][0]:.2f}x best")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
