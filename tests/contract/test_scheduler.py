"""The Scheduler contract (keel.jobs.base), run against every engine.

Only the Protocol's methods are used here, so a new engine joins by adding a factory to ENGINES.
Engine-specific behaviour (SQLite persistence, interrupted runs, backoff timing) is in
tests/unit/test_scheduler.py.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keel.errors import ConfigError, NotFoundError
from keel.jobs.base import Scheduler, Task
from keel.jobs.embedded import EmbeddedScheduler

MakeScheduler = Callable[[Sequence[Task]], Scheduler]
T0 = datetime(2024, 6, 1, tzinfo=UTC)


def _embedded(tmp_path: Path) -> MakeScheduler:
    return lambda tasks: EmbeddedScheduler(tmp_path / "scheduler.db", list(tasks), sleep=lambda _: None)


ENGINES: dict[str, Callable[[Path], MakeScheduler]] = {"embedded": _embedded}


@pytest.fixture(params=sorted(ENGINES))
def make(request: pytest.FixtureRequest, tmp_path: Path) -> MakeScheduler:
    return ENGINES[request.param](tmp_path)


def h(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def recorder(calls: list[tuple[str, datetime]], name: str, fail: bool = False) -> Callable[[datetime], None]:
    def run(logical_date: datetime) -> None:
        calls.append((name, logical_date))
        if fail:
            raise ValueError(f"{name} cannot read its input")

    return run


def test_tick_runs_due_tasks_upstream_first_and_blocks_on_failed_upstream(make: MakeScheduler) -> None:
    calls: list[tuple[str, datetime]] = []
    sched = make(
        [
            Task("publish", "0 * * * *", recorder(calls, "publish"), upstream=("transform",)),
            Task("transform", "0 * * * *", recorder(calls, "transform"), upstream=("ingest",)),
            Task("ingest", "0 * * * *", recorder(calls, "ingest")),
            Task("audit", "0 * * * *", recorder(calls, "audit", fail=True), retries=0),
            Task("notify", "0 * * * *", recorder(calls, "notify"), upstream=("audit",)),
        ]
    )
    sched.tick(h(0))
    runs = {r.task: r for r in sched.tick(h(1))}
    assert [name for name, _ in calls if name != "audit"] == ["ingest", "transform", "publish"]
    assert all(date == h(1) for _, date in calls)
    assert {r.logical_date for r in runs.values()} == {h(1)}
    assert runs["publish"].state == "success"
    assert runs["audit"].state == "failed" and runs["audit"].error == "ValueError: audit cannot read its input"
    assert runs["notify"].state == "upstream_failed" and "audit" in (runs["notify"].error or "")
    assert ("notify", h(1)) not in calls


def test_trigger_retries_then_records_the_failure(make: MakeScheduler) -> None:
    calls: list[tuple[str, datetime]] = []
    sched = make([Task("fragile", None, recorder(calls, "fragile", fail=True), retries=2, retry_delay=0.0)])
    run = sched.trigger("fragile", h(5))
    assert (run.task, run.logical_date, run.state, run.attempts) == ("fragile", h(5), "failed", 3)
    assert calls == [("fragile", h(5))] * 3
    with pytest.raises(NotFoundError):
        sched.trigger("absent")


def test_backfill_runs_each_scheduled_time_in_order(make: MakeScheduler) -> None:
    calls: list[tuple[str, datetime]] = []
    sched = make([Task("daily", "0 2 * * *", recorder(calls, "daily"))])
    runs = sched.backfill("daily", h(0), h(72))
    expected = [h(2), h(26), h(50)]
    assert [r.logical_date for r in runs] == expected and [d for _, d in calls] == expected
    assert all(r.state == "success" for r in runs)


def test_history_is_newest_first_and_knows_the_last_success(make: MakeScheduler) -> None:
    calls: list[tuple[str, datetime]] = []
    sched = make(
        [Task("ok", None, recorder(calls, "ok")), Task("bad", None, recorder(calls, "bad", fail=True), retries=0)]
    )
    sched.trigger("ok", h(1))
    sched.trigger("bad", h(2))
    sched.trigger("ok", h(3))
    assert [(r.task, r.logical_date) for r in sched.runs()] == [("ok", h(3)), ("bad", h(2)), ("ok", h(1))]
    assert [r.logical_date for r in sched.runs("ok", limit=1)] == [h(3)]
    last = sched.last_success("ok")
    assert last is not None and last.logical_date == h(3) and last.state == "success"
    assert sched.last_success("bad") is None


def test_sync_refuses_bad_cron_and_cycles(make: MakeScheduler) -> None:
    calls: list[tuple[str, datetime]] = []
    with pytest.raises(ConfigError, match="'weekly'.*'0 0 \\* \\*'"):
        make([Task("weekly", "0 0 * *", recorder(calls, "weekly"))])
    with pytest.raises(ConfigError, match="a -> b -> a"):
        make(
            [
                Task("a", None, recorder(calls, "a"), upstream=("b",)),
                Task("b", None, recorder(calls, "b"), upstream=("a",)),
            ]
        )
