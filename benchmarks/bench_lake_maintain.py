"""Small files and maintenance: a query after 1,000 small appends, before and after ``maintain``.

A stream sink appends often and little: 1,000 appends of 1,000 shop events (exactly-once, with
offsets in the commit) into a table partitioned by event_date. Then
``select item_id, count(*) from t group by item_id`` runs through keel's SqlSession, before and
after ``Lake.maintain`` (compaction + vacuum at the 7-day floor + checkpoint), and
so does opening the table (a fresh lake handle's ``describe``), which reads the log.

    python benchmarks/bench_lake_maintain.py [--appends 1000] [--rows 1000] [--runs 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench_lake_append import shop_events

from keel.lake import open_lake
from keel.lake.maintain import needs_maintenance
from keel.lake.sql import SqlSession

QUERY = "select item_id, count(*) as n from events group by item_id"


def timed(runs: int, work: Callable[[], object]) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work_dir = Path(tempfile.mkdtemp(prefix="keel-bench-maintain-"))
    try:
        url = f"file://{work_dir}"
        lake = open_lake(url)
        data = shop_events(args.appends * args.rows)
        lake.create_table("events", data.schema, partition_by=["event_date"])
        def append(v: int) -> float:
            started = time.perf_counter()
            lake.append("events", data.slice((v % args.appends) * args.rows, args.rows), writer="sink",
                        version=v + 1, metadata={"offsets": f'{{"0": {(v + 1) * args.rows}}}'})
            return time.perf_counter() - started

        per_append = [append(v) for v in range(args.appends)]
        append_s, tail = sum(per_append), min(50, args.appends)
        before = lake.describe("events")

        def query() -> object:
            with SqlSession(lake) as session:
                return session.query(QUERY)

        query_before = timed(args.runs, query)
        open_before = timed(args.runs, lambda: open_lake(url).describe("events"))
        report = lake.maintain("events")
        after = lake.describe("events")
        query_after = timed(args.runs, query)
        appends_after = [append(args.appends + v) for v in range(tail)]
        open_after = timed(args.runs, lambda: open_lake(url).describe("events"))

        print(f"{args.appends:,} exactly-once appends of {args.rows:,} rows: {append_s:.1f} s "
              f"({append_s / args.appends * 1000:.1f} ms/append)")
        print(f"    first {tail} appends {statistics.mean(per_append[:tail]) * 1000:.1f} ms each, last {tail} "
              f"{statistics.mean(per_append[-tail:]) * 1000:.1f} ms, {tail} after maintain "
              f"{statistics.mean(appends_after) * 1000:.1f} ms (delta-rs commits cost O(files in the table))")
        print(f"before maintain: {before.files:,} files, {before.size_bytes / 2**20:.1f} MB, "
              f"needs_maintenance={needs_maintenance(before)}")
        print(f"maintain: {report['seconds']:.2f} s, {report['files_compacted']} files -> {report['files_written']}, "
              f"checkpoint at version {report['checkpoint_version']}")
        print(f"after maintain:  {after.files:,} files, {after.size_bytes / 2**20:.1f} MB, "
              f"needs_maintenance={needs_maintenance(after)}")
        print(f"query (new session each run), best / median of {args.runs}:")
        print(f"    before {query_before[0]:.3f} s / {query_before[1]:.3f} s")
        print(f"    after  {query_after[0]:.3f} s / {query_after[1]:.3f} s")
        print(f"    speed-up after maintain = {query_before[0] / query_after[0]:.1f}x best, "
              f"{query_before[1] / query_after[1]:.1f}x median")
        print(f"open + describe: before {open_before[0]:.3f} s, after {open_after[0]:.3f} s "
              f"({open_before[0] / open_after[0]:.1f}x)")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
