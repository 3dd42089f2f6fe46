"""Running a declared batch job once, for one logical date.

A job function gets a `JobContext` and returns SQL text (run over the lake's tables by name, on the
profile's batch engine: DuckDB by default, Spark with `batch = "spark://..."`), an Arrow table or a
Polars frame. A SQL result has DuckDB's column types whichever engine computed it, so a table
written by one engine takes the next run's rows from the other. A view output gets one value per row,
keyed by the job's `key` column and versioned by the logical date, so re-running an older date never
regresses a newer one.

A table output is replaced by the result in one commit, versioned (`Lake.overwrite` with the job as
writer) by the logical date first and a run number second: every run of a date, the first, an
explicit re-run (`keel run JOB --date D`) or a retry, recomputes the date and replaces the table,
while a run for a date older than the one the table holds is refused (it would put older results
in place of newer ones). A retry is exactly-once without further bookkeeping because the commit
replaces the whole table: a retry after an attempt whose commit landed writes the same table again,
never extra rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, cast

import polars as pl
import pyarrow as pa

from keel.batch.base import BatchEngine
from keel.errors import ConflictError, KeelError, SchemaError
from keel.jobs.base import Task
from keel.kv.views import Views
from keel.lake import Lake
from keel.lake.maintain import needs_maintenance
from keel.project.catalog import Catalog
from keel.project.declare import Job, Table


class JobEngines(Protocol):
    """The engines jobs use: the lake (their inputs, table outputs), the batch engine (their SQL) and
    the views (view outputs). Each is looked up when a run needs it, so a job that writes a table never
    opens the kv, only a job that runs SQL opens the batch engine (a Spark session takes ~15 s), and
    building the tasks opens nothing. The runtime of `keel up` and `keel run` is one, whose engines, the
    profile's batch engine included, open on first use; `LocalJobEngines` is one over engines already
    opened, with SQL on DuckDB."""

    @property
    def lake(self) -> Lake: ...

    @property
    def batch(self) -> BatchEngine: ...

    @property
    def views(self) -> Views: ...


@dataclass(frozen=True)
class LocalJobEngines:
    """`JobEngines` over an opened lake and views, running SQL on the embedded engine (DuckDB over
    `lake`, opened on first use): for tests, benchmarks and scripts that open their engines themselves."""

    lake: Lake
    views: Views

    @functools.cached_property
    def batch(self) -> BatchEngine:
        from keel.batch import open_batch

        return open_batch("duckdb://", self.lake)


@dataclass
class JobContext:
    """What a job function gets: its logical date, the lake to read, and SQL on the batch engine, which
    `batch` opens when the first query runs."""

    lake: Lake
    logical_date: datetime
    batch: Callable[[], BatchEngine]

    def sql(self, query: str) -> pa.Table:
        """Run SQL (DuckDB's dialect) over the lake's tables, each queryable by its name, on the batch
        engine; the result has DuckDB's column types on every engine."""
        engine = self.batch()
        result = engine.query(query)
        return result if engine.name == "duckdb" else in_duckdb_types(self.lake, query, result)

    def read(self, table: str, columns: list[str] | None = None, filter: str | None = None) -> pa.Table:
        return self.lake.read(table, columns=columns, filter=filter)


def run_job(engines: JobEngines, job: Job, logical_date: datetime) -> int:
    """Run `job` for `logical_date`; return how many rows it wrote."""
    ctx = JobContext(engines.lake, logical_date, lambda: engines.batch)
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
        engines.lake.create_table(out.name, result.schema, list(out.partition_by) or None)
        _replace_table(engines.lake, job.name, out.name, result, logical_date)
        return rows
    key = job.key or ""
    if key not in result.column_names:
        raise KeelError(f"job {job.name!r} writes view {out.name!r} keyed by {key!r}, but its result has no such "
                        f"column (columns: {', '.join(result.column_names)})")
    records = result.to_pylist()
    engines.views.upsert(out.name, [(str(r.pop(key)), version, r) for r in records])
    return len(records)


def in_duckdb_types(lake: Lake, query: str, result: pa.Table) -> pa.Table:
    """`result` of `query` (computed by another engine) cast to the types DuckDB gives the query's columns.

    Engines type some results differently (Spark: a sum of decimals is decimal(20,2) where DuckDB says
    decimal(38,2), row_number() int32 where DuckDB says int64). A job's table is created from its
    first result and later results must fit it, so every engine's result takes DuckDB's types, which
    DuckDB finds by running the query with ``LIMIT 0``.
    """
    from keel.lake.sql import SqlSession

    with SqlSession(lake) as session:
        wanted = session.query(f"SELECT * FROM ({query.strip().rstrip(';')}) LIMIT 0").schema
    if wanted.names != result.column_names:
        return result
    try:
        return result.cast(pa.schema(wanted, metadata=result.schema.metadata))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SchemaError(f"the batch engine's result does not fit the types DuckDB gives the query ({exc}); "
                          "cast the columns in the query to the types wanted") from exc


# The logical date `job_sql` calls job functions with: fixed, so that `keel check` is repeatable.
PROBE_DATE = datetime(2000, 1, 1, tzinfo=UTC)


class _NeedsData(Exception):
    """Raised by the probe context's sql/read: the job function wants data before it returns."""


class _ProbeContext(JobContext):
    def sql(self, query: str) -> pa.Table:
        raise _NeedsData(query)

    def read(self, table: str, columns: list[str] | None = None, filter: str | None = None) -> pa.Table:
        raise _NeedsData(table)


def _no_batch() -> BatchEngine:
    raise _NeedsData("batch")


def job_sql(job: Job) -> str | None:
    """The SQL text `job` returns, found without running anything: its function is called with a context
    for `PROBE_DATE` whose `sql` and `read` raise (and whose lake is never touched). A function that
    returns SQL text at once gives it; one that reads or queries data first, returns a frame, or fails
    gives None: its SQL (if any) is known only when it runs. Safe for `keel check` because it opens no
    engine and writes nothing (a job function with other side effects would have them anyway at import)."""
    try:
        result = job.run(_ProbeContext(cast(Lake, _NoLake()), PROBE_DATE, _no_batch))
    except Exception:  # noqa: BLE001 - user code that needs data or a real date: checked when it runs
        return None
    return result if isinstance(result, str) else None


class _NoLake:
    """The probe context's lake: every use raises (`_NeedsData`), so a job function cannot reach data."""

    def __getattr__(self, name: str) -> object:
        raise _NeedsData(name)


# A table output's writer version is date_ms * _RUNS_PER_DATE + the run number of that date. Tables
# written by older keel versions hold date_ms alone (< 10**14 for any date before year 5138): that
# reads as run 0 of its date.
_RUNS_PER_DATE = 1_000_000
_RACE_ATTEMPTS = 8


def _date_and_run(version: int) -> tuple[int, int]:
    if version < 10**14:  # an old plain millisecond timestamp (year < 5138)
        return version, 0
    return divmod(version, _RUNS_PER_DATE)


def _replace_table(lake: Lake, job: str, table: str, result: pa.Table, logical_date: datetime) -> None:
    date_ms = int(logical_date.timestamp() * 1000)
    for _ in range(_RACE_ATTEMPTS):
        last = lake.writer_version(table, job)
        run = 0
        if last is not None:
            last_date, last_run = _date_and_run(last)
            if last_date > date_ms:
                newer = datetime.fromtimestamp(last_date / 1000, tz=logical_date.tzinfo).isoformat()
                raise ConflictError(
                    f"job {job!r} for {logical_date.isoformat()}: table {table!r} holds the job's result for "
                    f"{newer}, a later date, and an older date's result would replace it; run the job for "
                    f"{newer} or later instead (or have the job write a view, which keeps one value per date)")
            run = last_run + 1 if last_date == date_ms else 0
        if run >= _RUNS_PER_DATE:
            raise ConflictError(f"job {job!r} ran {run} times for {logical_date.isoformat()}; that is the limit")
        if lake.overwrite(table, result, writer=job, version=date_ms * _RUNS_PER_DATE + run,
                          metadata={"logical_date": logical_date.isoformat()}):
            return
        # another run of this job committed between our read and our commit: take the next number
    raise ConflictError(f"job {job!r}: other runs for the same table kept committing first; run it again later")


MAINTENANCE_TASK = "keel_lake_maintenance"
# Every 10 minutes, for the tables that need it (a cheap check): a stream sink appends a file per
# commit, and delta-rs's append cost grows with the file count (25 ms -> 394 ms over 1,000 files,
# benchmarks/RESULTS.md "Data lake"), so a daily compaction let busy sinks slow down for hours.
MAINTENANCE_SCHEDULE = "*/10 * * * *"


def maintain_lake(lake: Lake) -> list[str]:
    """Compact, vacuum and checkpoint every lake table that needs it; return their names."""
    names = [t for t in lake.list_tables() if needs_maintenance(lake.describe(t))]
    for name in names:
        lake.maintain(name)
    return names


def scheduler_tasks(catalog: Catalog, engines: JobEngines) -> list[Task]:
    """The catalog's jobs as scheduler tasks (upstream jobs from their inputs), plus the periodic
    maintenance of lake tables that need it (`MAINTENANCE_SCHEDULE`)."""
    upstream = catalog.job_upstream()
    tasks = [
        Task(name=j.name, schedule=j.schedule, run=functools.partial(run_job, engines, j),
             upstream=upstream.get(j.name, ()), retries=j.retries)
        for j in catalog.jobs.values()
    ]

    def maintenance(logical_date: datetime) -> list[str]:
        return maintain_lake(engines.lake)

    tasks.append(Task(name=MAINTENANCE_TASK, schedule=MAINTENANCE_SCHEDULE, run=maintenance, retries=1))
    return tasks
