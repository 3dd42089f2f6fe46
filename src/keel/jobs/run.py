"""Running a declared batch job once, for one logical date, on the embedded engines.

A job function gets a `JobContext` and returns SQL text (run over the lake's tables by name),
an Arrow table or a Polars frame. A table output is replaced by the result in one commit; a
view output gets one value per row, keyed by the job's `key` column and versioned by the
logical date, so re-running an older date never regresses a newer one.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
import pyarrow as pa

from keel.declare import Job, Table
from keel.errors import KeelError


@dataclass
class JobContext:
    runtime: Any
    logical_date: datetime

    def sql(self, query: str) -> pa.Table:
        """Run SQL over the lake's tables (each queryable by its name)."""
        result: pa.Table = self.runtime.sql_session().query(query)
        return result

    def read(self, table: str, columns: list[str] | None = None, filter: str | None = None) -> pa.Table:
        result: pa.Table = self.runtime.lake.read(table, columns=columns, filter=filter)
        return result


def run_job(runtime: Any, job: Job, logical_date: datetime) -> int:
    """Run `job` for `logical_date`; return how many rows it wrote."""
    ctx = JobContext(runtime, logical_date)
    result = job.run(ctx)
    if isinstance(result, str):
        result = ctx.sql(result)
    if isinstance(result, pl.DataFrame):
        result = result.to_arrow()
    if not isinstance(result, pa.Table):
        raise KeelError(f"job {job.name!r} returned {type(result).__name__}; return SQL text, an Arrow table "
                        "or a Polars DataFrame")
    out = job.output
    rows: int = result.num_rows
    if out is None:
        return rows
    version = int(logical_date.timestamp() * 1000)
    if isinstance(out, Table):
        runtime.lake.create_table(out.name, result.schema, list(out.partition_by) or None)
        runtime.lake.overwrite(out.name, result, writer=job.name, version=version)
        return rows
    key = job.key or ""
    if key not in result.column_names:
        raise KeelError(f"job {job.name!r} writes view {out.name!r} keyed by {key!r}, but its result has no such "
                        f"column (columns: {', '.join(result.column_names)})")
    records = result.to_pylist()
    runtime.views.upsert(out.name, [(str(r.pop(key)), version, r) for r in records])
    return len(records)


MAINTENANCE_TASK = "keel_lake_maintenance"
# Every 10 minutes, for the tables that need it (a cheap check): a stream sink appends a file per
# commit, and delta-rs's append cost grows with the file count (25 ms -> 394 ms over 1,000 files,
# benchmarks/RESULTS.md "Data lake"), so a daily compaction let busy sinks slow down for hours.
MAINTENANCE_SCHEDULE = "*/10 * * * *"


def maintain_lake(runtime: Any) -> list[str]:
    """Compact, vacuum and checkpoint every lake table that needs it; return their names."""
    from keel.lake.maintain import maintain, needs_maintenance

    lake = runtime.lake
    names = [t for t in lake.list_tables() if needs_maintenance(lake.describe(t))]
    for name in names:
        maintain(lake, name)
    return names


def scheduler_tasks(runtime: Any) -> list[Any]:
    """The catalog's jobs as scheduler tasks (upstream jobs from their inputs), plus the periodic
    maintenance of lake tables that need it (`MAINTENANCE_SCHEDULE`)."""
    from keel.jobs.base import Task

    upstream = runtime.catalog.job_upstream()
    tasks = [
        Task(name=j.name, schedule=j.schedule, run=functools.partial(run_job, runtime, j),
             upstream=upstream.get(j.name, ()), retries=j.retries)
        for j in runtime.catalog.jobs.values()
    ]

    def maintenance(logical_date: datetime) -> list[str]:
        return maintain_lake(runtime)

    tasks.append(Task(name=MAINTENANCE_TASK, schedule=MAINTENANCE_SCHEDULE, run=maintenance, retries=1))
    return tasks
