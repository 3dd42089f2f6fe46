"""The embedded scheduler's run slots: runs at once in all and per task, upstream still first.

No test here waits on time to pass or fail: bodies meet at events, with a generous timeout only so
a broken scheduler fails the test instead of hanging it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keel.errors import ConfigError
from keel.jobs.base import Task
from keel.jobs.embedded import EmbeddedScheduler

T0 = datetime(2024, 3, 1, tzinfo=UTC)
SAFETY = 10.0  # seconds; reached only when the scheduler is broken


class Gauge:
    """Counts bodies running at once; each body waits until `meet` of them are in (or all are done)."""

    def __init__(self, meet: int) -> None:
        self.meet = meet
        self.lock = threading.Condition()
        self.active = 0
        self.peak = 0
        self.order: list[str] = []

    def body(self, name: str) -> Callable[[datetime], None]:
        def run(_: datetime) -> None:
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
                self.order.append(f"+{name}")
                self.lock.notify_all()
                self.lock.wait_for(lambda: self.peak >= self.meet, timeout=SAFETY)
                self.active -= 1
                self.order.append(f"-{name}")

        return run


def test_a_tick_runs_at_most_slots_runs_at_once(tmp_path: Path) -> None:
    gauge = Gauge(meet=2)
    tasks = [Task(n, "0 * * * *", gauge.body(n)) for n in ("a", "b", "c")]
    with EmbeddedScheduler(tmp_path / "s.db", tasks, slots=2) as sched:
        sched.tick(T0)
        runs = sched.tick(T0 + timedelta(hours=1))
    assert sorted(r.task for r in runs) == ["a", "b", "c"] and {r.state for r in runs} == {"success"}
    assert gauge.peak == 2


def test_one_slot_runs_one_after_another_in_contract_order(tmp_path: Path) -> None:
    gauge = Gauge(meet=1)
    tasks = [Task("late", "0 * * * *", gauge.body("late"), upstream=("early",)),
             Task("early", "0 * * * *", gauge.body("early"))]
    with EmbeddedScheduler(tmp_path / "s.db", tasks) as sched:
        sched.tick(T0)
        sched.tick(T0 + timedelta(hours=1))
    assert gauge.order == ["+early", "-early", "+late", "-late"]


def test_a_downstream_waits_for_its_upstream_even_with_free_slots(tmp_path: Path) -> None:
    gauge = Gauge(meet=1)
    tasks = [Task("down", "0 * * * *", gauge.body("down"), upstream=("up",)),
             Task("up", "0 * * * *", gauge.body("up"))]
    with EmbeddedScheduler(tmp_path / "s.db", tasks, slots=4) as sched:
        sched.tick(T0)
        runs = {r.task: r for r in sched.tick(T0 + timedelta(hours=1))}
    assert gauge.order == ["+up", "-up", "+down", "-down"]
    assert runs["down"].state == "success"


@pytest.mark.parametrize(("max_active", "peak"), [(1, 1), (2, 2)])
def test_max_active_bounds_a_tasks_own_runs(tmp_path: Path, max_active: int, peak: int) -> None:
    gauge = Gauge(meet=peak)
    task = Task("daily", "0 2 * * *", gauge.body("daily"), max_active=max_active)
    with EmbeddedScheduler(tmp_path / "s.db", [task], slots=4) as sched:
        runs = sched.backfill("daily", T0, T0 + timedelta(days=3))
    assert [r.logical_date.day for r in runs] == [1, 2, 3] and {r.state for r in runs} == {"success"}
    assert gauge.peak == peak


def test_an_interrupt_on_a_worker_still_reaches_the_caller(tmp_path: Path) -> None:
    def stop(_: datetime) -> None:
        raise KeyboardInterrupt

    with EmbeddedScheduler(tmp_path / "s.db", [Task("stopped", "0 * * * *", stop)], slots=2) as sched:
        sched.tick(T0)
        with pytest.raises(KeyboardInterrupt):
            sched.tick(T0 + timedelta(hours=1))
        assert [(r.state, r.error) for r in sched.runs("stopped")] == [("failed", "interrupted")]


def test_slot_limits_below_one_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one run slot"):
        EmbeddedScheduler(tmp_path / "s.db", slots=0)
    with pytest.raises(ConfigError, match="max_active"):
        EmbeddedScheduler(tmp_path / "t.db", [Task("t", None, lambda _: None, max_active=0)])
