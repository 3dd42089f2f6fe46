"""Freshness and volume checks over lake tables, as declared with `keel.freshness` / `keel.volume`."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from keel.errors import KeelError
from keel.lake import Lake
from keel.lake.sql import SqlSession
from keel.project.catalog import Catalog
from keel.project.declare import Check
from keel.project.schema import EVENT_TIME


def run_check(lake: Lake, check: Check, session: SqlSession | None = None) -> dict[str, Any]:
    """{"check", "ok", "detail"} for one check, read from the lake."""
    now = datetime.now(timezone.utc)
    try:
        info = lake.describe(check.table)
    except KeelError as exc:
        return {"check": check.name, "ok": False, "detail": str(exc)}
    has_time = EVENT_TIME in info.schema.names
    session = session or SqlSession(lake)
    if check.check == "freshness":
        if has_time:
            newest = session.query(f"select max({EVENT_TIME}) as t from {check.table}").column("t")[0].as_py()
        else:
            newest = info.last_commit
        if newest is None:
            return {"check": check.name, "ok": False, "detail": f"{check.table} is empty"}
        age = (now - newest).total_seconds()
        return {"check": check.name, "ok": age <= check.within,
                "detail": f"newest row {age:.0f} s old (limit {check.within:.0f} s)"}
    if not has_time:
        return {"check": check.name, "ok": False, "detail": f"{check.table} has no {EVENT_TIME} column"}
    since = datetime.fromtimestamp(now.timestamp() - check.within, timezone.utc)
    rows = session.query(f"select count(*) as n from {check.table} where {EVENT_TIME} >= "
                         f"'{since.isoformat()}'::timestamptz").column("n")[0].as_py()
    return {"check": check.name, "ok": rows >= check.min_rows,
            "detail": f"{rows} rows in the last {check.within:.0f} s (minimum {check.min_rows})"}


def run_checks(lake: Lake, catalog: Catalog) -> list[dict[str, Any]]:
    session = SqlSession(lake)
    return [run_check(lake, c, session) for c in catalog.checks.values()]
