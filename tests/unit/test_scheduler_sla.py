"""SLA misses: recorded once per run, reported to a hook and counted in keel_job_sla_misses_total."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from keel.jobs.base import Run, Task
from keel.jobs.embedded import EmbeddedScheduler
from keel.monitor.jobs import count_sla_miss
from keel.monitor.streams import stream_registry

T0 = datetime(2024, 3, 1, tzinfo=UTC)


def at(hours: float, minutes: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_runs_not_succeeded_by_their_sla_are_misses_once_each(tmp_path: Path) -> None:
    clock = Clock()
    reported: list[Run] = []

    def body(duration: timedelta, fail: bool = False) -> object:
        def run(_: datetime) -> None:
            clock.now += duration
            if fail:
                raise ValueError("broken input")
        return run

    tasks = [Task("quick", "0 * * * *", body(timedelta(minutes=5)), sla=600),
             Task("slow", "0 * * * *", body(timedelta(minutes=20)), sla=600),
             Task("broken", "0 * * * *", body(timedelta(minutes=1), fail=True), retries=0, sla=600),
             Task("free", "0 * * * *", body(timedelta(minutes=30)))]
    with EmbeddedScheduler(tmp_path / "s.db", tasks, clock=clock, slots=1, on_sla_miss=reported.append) as sched:
        sched.tick(at(0, 30))
        clock.now = at(1)  # each body moves the clock by its duration: the runs end at 01:05 .. 01:56
        sched.tick(at(1))
        assert reported == []  # nothing is past its deadline at 01:00
        sched.tick(at(1, 11))
        sched.tick(at(1, 12))
        assert sorted(r.task for r in reported) == ["broken", "slow"]
        assert [r.task for r in sched.sla_misses("slow")] == ["slow"] and len(sched.sla_misses()) == 2


def test_a_miss_is_counted_in_the_metrics() -> None:
    def count() -> float:
        return stream_registry().get_sample_value("keel_job_sla_misses_total", {"job": "nightly_report"}) or 0.0

    before = count()
    count_sla_miss(Run(1, "nightly_report", T0, "failed", 1, T0, T0, "ValueError: x"))
    assert count() == before + 1
