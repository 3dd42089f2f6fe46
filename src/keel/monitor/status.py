"""`keel status` and `keel streams`: what a project's engines hold now, read without creating anything.

The embedded engines create their files when they are opened, so on a project that has never run
(`keel up` creates its streams, tables and views) these read functions do not open them: they say
"not created yet". A distributed engine is asked, and a stream it does not have is "not created yet".
"""

from __future__ import annotations

from typing import Any

from keel.engines import OnDemand
from keel.errors import NotFoundError
from keel.project.config import Config
from keel.schemes import file_path

NOT_CREATED = "not created yet"
HOW_TO_CREATE = "`keel up` creates it"


def created(config: Config, area: str) -> bool:
    """False when the profile's `area` engine (bus, lake, kv or state) is embedded and has no files
    yet; True otherwise (a distributed engine is there to be asked)."""
    url: str = getattr(config, area)
    return not url.startswith("file://") or file_path(url).exists()


def stream_exists(runtime: OnDemand, name: str) -> bool:
    """Whether `name` is on the bus, without creating the bus or the stream."""
    return created(runtime.config, "bus") and name in runtime.bus.list_streams()


def streams_overview(runtime: OnDemand) -> list[dict[str, Any]]:
    """One row per stream on the bus (records, lag per group, pending dead letters), then one per
    declared stream that is not on it yet."""
    from keel.bus.ops import list_streams

    rows: list[dict[str, Any]] = []
    on_bus: set[str] = set()
    if created(runtime.config, "bus"):
        for s in list_streams(runtime.bus):
            on_bus.add(s.name)
            rows.append({"stream": s.name, "partitions": s.partitions, "records": s.records,
                         "lag per group": ", ".join(f"{g}={n}" for g, n in s.lag.items()),
                         "dead letters": s.dead_letters_pending})
    for name, declared in runtime.catalog.streams.items():
        if name not in on_bus:
            rows.append({"stream": name, "partitions": declared.partitions, "records": NOT_CREATED,
                         "lag per group": "", "dead letters": ""})
    return rows


def _stream_rows(runtime: OnDemand) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    bus_created = created(runtime.config, "bus")
    for s in runtime.catalog.streams.values():
        try:
            if not bus_created:
                raise NotFoundError(s.name)
            info = runtime.bus.describe(s.name)
        except NotFoundError:
            rows.append({"stream": s.name, "events": NOT_CREATED, "lag": ""})
            continue
        readers = [p for p in runtime.catalog.processors.values() if p.stream.name == s.name]
        lag = {p.name: sum(info.lag(p.name).values()) for p in readers}
        rows.append({"stream": s.name, "events": sum(p.end_offset for p in info.partitions),
                     "lag": ", ".join(f"{k}={v}" for k, v in lag.items())})
    return rows


def project_status(runtime: OnDemand) -> dict[str, list[dict[str, Any]]]:
    from keel.jobs.embedded import EmbeddedScheduler
    from keel.monitor.checks import run_checks

    lake_created = created(runtime.config, "lake")
    lake_tables = set(runtime.lake.list_tables()) if lake_created else set()
    tables = [{"table": t, "rows": runtime.lake.describe(t).rows if t in lake_tables else NOT_CREATED}
              for t in runtime.catalog.tables]
    kv_created = created(runtime.config, "kv")
    views = [{"view": v, "keys": runtime.views.count(v) if kv_created else NOT_CREATED} for v in runtime.catalog.views]
    runs: list[dict[str, Any]] = []
    scheduler_db = file_path(runtime.config.state) / "scheduler.db"
    if scheduler_db.exists():
        with EmbeddedScheduler(scheduler_db) as scheduler:
            runs = [{"job": r.task, "logical date": r.logical_date, "state": r.state, "error": r.error}
                    for r in scheduler.runs(limit=10)]
    if lake_created:
        checks = run_checks(runtime.lake, runtime.catalog)
    else:
        checks = [{"check": c.name, "ok": False, "detail": f"table {c.table} {NOT_CREATED}"}
                  for c in runtime.catalog.checks.values()]
    return {"streams": _stream_rows(runtime), "tables": tables, "views": views, "job runs": runs, "checks": checks}
