"""Catch-up after missed fire times: the latest only (the default) or every one, on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keel.errors import ConfigError
from keel.jobs.base import Task
from keel.jobs.embedded import EmbeddedScheduler

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def at(hours: float, minutes: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes)


def test_catchup_all_runs_every_missed_fire_time_oldest_first(tmp_path: Path) -> None:
    calls: list[tuple[str, datetime]] = []
    tasks = [Task("hourly", "0 * * * *", lambda d: calls.append(("hourly", d)), catchup="all"),
             Task("after", "0 * * * *", lambda d: calls.append(("after", d)), upstream=("hourly",), catchup="all"),
             Task("latest", "0 * * * *", lambda d: calls.append(("latest", d)))]
    with EmbeddedScheduler(tmp_path / "s.db", tasks) as sched:
        sched.tick(at(0, 30))
        runs = sched.tick(at(3, 10))  # 01:00, 02:00 and 03:00 were missed
        assert sched.tick(at(3, 20)) == []
    assert [(r.task, r.logical_date.hour) for r in runs if r.task != "latest"] == [
        ("hourly", 1), ("after", 1), ("hourly", 2), ("after", 2), ("hourly", 3), ("after", 3)]
    assert [r.logical_date for r in runs] == sorted(r.logical_date for r in runs)
    assert {r.state for r in runs} == {"success"}
    assert [c for c in calls if c[0] == "latest"] == [("latest", at(3))]


def test_catchup_all_still_starts_a_new_task_at_its_first_tick(tmp_path: Path) -> None:
    calls: list[datetime] = []
    with EmbeddedScheduler(tmp_path / "s.db", [Task("t", "0 * * * *", calls.append, catchup="all")]) as sched:
        assert sched.tick(at(5, 30)) == [] and calls == []


def test_an_unknown_catchup_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'t': catchup is 'some'"):
        EmbeddedScheduler(tmp_path / "s.db", [Task("t", "0 * * * *", print, catchup="some")])  # type: ignore[arg-type]
