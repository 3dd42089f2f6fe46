"""`keel status`: what a project's engines hold now, read from the engines."""

from __future__ import annotations

from typing import Any

from keel.monitor.checks import run_checks


def project_status(runtime: Any) -> dict[str, list[dict[str, Any]]]:
    from keel.jobs.embedded import EmbeddedScheduler

    streams = []
    for s in runtime.catalog.streams.values():
        info = runtime.bus.describe(s.name)
        readers = [p for p in runtime.catalog.processors.values() if p.stream.name == s.name]
        lag = {p.name: sum(info.lag(p.name).values()) for p in readers}
        streams.append({"stream": s.name, "events": sum(p.end_offset for p in info.partitions),
                        "lag": ", ".join(f"{k}={v}" for k, v in lag.items())})
    lake_tables = set(runtime.lake.list_tables())
    tables = [{"table": t, "rows": runtime.lake.describe(t).rows if t in lake_tables else "not created yet"}
              for t in runtime.catalog.tables]
    views = [{"view": v, "keys": runtime.views.count(v)} for v in runtime.catalog.views]
    with EmbeddedScheduler(runtime.state_dir / "scheduler.db") as scheduler:
        runs = [{"job": r.task, "logical date": r.logical_date, "state": r.state, "error": r.error}
                for r in scheduler.runs(limit=10)]
    return {"streams": streams, "tables": tables, "views": views, "job runs": runs, "checks": run_checks(runtime)}
