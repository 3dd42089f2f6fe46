"""Retries: exponential backoff with a cap, an injectable jitter, and every attempt in the history."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keel.errors import ConfigError
from keel.jobs.base import Task
from keel.jobs.embedded import EmbeddedScheduler
from keel.jobs.retry import backoff, seeded_jitter

DAY = datetime(2024, 3, 1, tzinfo=UTC)


class Clock:
    """A clock that moves only when the scheduler sleeps (and by a second per read, so times differ)."""

    def __init__(self) -> None:
        self.now = DAY

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def failing(times: int) -> Callable[[datetime], None]:
    left = iter(range(times))

    def run(_: datetime) -> None:
        if next(left, None) is not None:
            raise OSError("the input store is unreachable")

    return run


@pytest.fixture
def sleeps() -> list[float]:
    return []


def test_backoff_doubles_up_to_the_cap() -> None:
    task = Task("t", None, failing(0), retry_delay=2.0, retry_max_delay=10.0)
    assert [backoff(task, n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert [backoff(Task("u", None, failing(0), retry_delay=1.0), n) for n in (1, 11)] == [1.0, 1024.0]


def test_the_scheduler_waits_the_capped_delays(tmp_path: Path, sleeps: list[float]) -> None:
    task = Task("t", None, failing(4), retries=4, retry_delay=3.0, retry_max_delay=7.5)
    with EmbeddedScheduler(tmp_path / "s.db", [task], sleep=sleeps.append) as sched:
        assert sched.trigger("t", DAY).state == "success"
    assert sleeps == [3.0, 6.0, 7.5, 7.5]


def test_a_seeded_jitter_gives_the_same_waits_within_the_spread(tmp_path: Path) -> None:
    def waits(seed: int) -> list[float]:
        sleeps: list[float] = []
        task = Task("t", None, failing(3), retries=3, retry_delay=4.0)
        with EmbeddedScheduler(tmp_path / "s.db", [task], sleep=sleeps.append,
                               jitter=seeded_jitter(seed, spread=0.5)) as sched:
            sched.trigger("t", DAY)
        return sleeps

    first = waits(7)
    assert first == waits(7) and first != waits(8)
    assert all(full / 2 <= waited <= full for waited, full in zip(first, [4.0, 8.0, 16.0], strict=True))
    with pytest.raises(ValueError, match="spread"):
        seeded_jitter(1, spread=1.5)


def test_every_attempt_is_recorded_with_its_error_and_times(tmp_path: Path, clock: Clock) -> None:
    task = Task("t", None, failing(2), retries=3, retry_delay=60.0)
    with EmbeddedScheduler(tmp_path / "s.db", [task], clock=clock, sleep=clock.sleep) as sched:
        run = sched.trigger("t", DAY)
        attempts = sched.attempts(run.id)
    assert (run.state, run.attempts) == ("success", 3)
    assert [(a.run_id, a.number, a.error) for a in attempts] == [
        (run.id, 1, "OSError: the input store is unreachable"),
        (run.id, 2, "OSError: the input store is unreachable"),
        (run.id, 3, None),
    ]
    assert all(a.finished is not None and a.started <= a.finished for a in attempts)
    gaps = [(b.started - a.finished).total_seconds() for a, b in zip(attempts, attempts[1:]) if a.finished]
    assert len(gaps) == 2 and gaps[0] >= 60.0 and gaps[1] >= 120.0


def test_the_last_attempt_of_a_failed_run_holds_its_error(tmp_path: Path) -> None:
    task = Task("t", None, failing(5), retries=1, retry_delay=0.0)
    with EmbeddedScheduler(tmp_path / "s.db", [task], sleep=lambda _: None) as sched:
        run = sched.trigger("t", DAY)
        assert [(a.number, a.error) for a in sched.attempts(run.id)] == [
            (1, "OSError: the input store is unreachable"), (2, "OSError: the input store is unreachable")]
        assert run.error == "OSError: the input store is unreachable"


def test_a_negative_cap_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'t': retry_max_delay"):
        EmbeddedScheduler(tmp_path / "s.db", [Task("t", None, failing(0), retry_max_delay=-1)])
