"""The embedded scheduler: cron firing on an injected clock, dependencies, retries, persistence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keel.errors import ConfigError, NotFoundError, SchemaError
from keel.jobs.base import Run, Scheduler, Task, find_cycle, validate_cron
from keel.jobs.embedded import EmbeddedScheduler

T0 = datetime(2024, 3, 1, 0, 0, tzinfo=UTC)


def at(hours: float = 0, minutes: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes)


class Recorder:
    """Task bodies that record (task, logical date) calls and can fail a given number of times."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, datetime]] = []

    def body(self, name: str, fail_times: int = 0, error: type[Exception] = RuntimeError) -> Callable[[datetime], None]:
        failures = {"left": fail_times}

        def run(logical_date: datetime) -> None:
            self.calls.append((name, logical_date))
            if failures["left"] != 0:
                failures["left"] -= 1
                raise error(f"{name} broke on {logical_date:%H:%M}")

        return run


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def sleeps() -> list[float]:
    return []


def open_scheduler(path: Path, tasks: list[Task], sleeps: list[float] | None = None) -> EmbeddedScheduler:
    return EmbeddedScheduler(
        path, tasks, clock=lambda: datetime.now(UTC), sleep=(sleeps if sleeps is not None else []).append
    )


def test_it_implements_the_protocol(tmp_path: Path) -> None:
    with EmbeddedScheduler(tmp_path / "s.db") as sched:
        assert isinstance(sched, Scheduler)


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("expr", ["0 3 * * *", "*/5 * * * *", "30 2 1 * mon-fri", "@daily", "@hourly", " 0 0 * * 0 "])
def test_validate_cron_accepts_five_fields_and_presets(expr: str) -> None:
    assert validate_cron(expr) is None


@pytest.mark.parametrize(
    ("expr", "says"),
    [
        ("* * * *", "has 4 fields"),
        ("0 3 * * * *", "has 6 fields"),
        ("61 * * * *", "61"),
        ("*/0 * * * *", "step"),
        ("@fortnightly", "unknown cron preset"),
        ("0 0 30 2 *", "never fires"),
        ("", "has 0 fields"),
    ],
)
def test_validate_cron_explains_bad_expressions(expr: str, says: str) -> None:
    problem = validate_cron(expr)
    assert problem is not None and says in problem and repr(expr) in problem


def test_bad_cron_is_a_config_error_naming_task_and_expression(tmp_path: Path, rec: Recorder) -> None:
    tasks = [Task("good", "0 * * * *", rec.body("good")), Task("nightly", "0 25 * * *", rec.body("nightly"))]
    with pytest.raises(ConfigError) as err:
        EmbeddedScheduler(tmp_path / "s.db", tasks)
    assert "'nightly'" in str(err.value) and "'0 25 * * *'" in str(err.value)


def test_find_cycle_returns_the_cycle_in_dependence_order() -> None:
    assert find_cycle({"a": ("b",), "b": ("c",), "c": ()}) is None
    assert find_cycle({"a": ("b",), "b": ("c",), "c": ("a",), "d": ("a",)}) == ["a", "b", "c", "a"]
    assert find_cycle({"self": ("self",)}) == ["self", "self"]
    assert find_cycle({"x": ("not_declared",)}) is None


def test_cycle_is_a_config_error_naming_the_cycle(tmp_path: Path, rec: Recorder) -> None:
    tasks = [
        Task("load", None, rec.body("load"), upstream=("report",)),
        Task("report", None, rec.body("report"), upstream=("load",)),
    ]
    with pytest.raises(ConfigError, match="load -> report -> load"):
        EmbeddedScheduler(tmp_path / "s.db", tasks)


def test_other_config_mistakes_are_refused_before_anything_changes(tmp_path: Path, rec: Recorder) -> None:
    sched = EmbeddedScheduler(tmp_path / "s.db", [Task("a", "0 * * * *", rec.body("a"))])
    with pytest.raises(ConfigError, match="'ghost', which is not a task"):
        sched.sync([Task("a", "0 * * * *", rec.body("a"), upstream=("ghost",))])
    with pytest.raises(ConfigError, match="two tasks are named 'a'"):
        sched.sync([Task("a", None, rec.body("a")), Task("a", None, rec.body("a"))])
    with pytest.raises(ConfigError, match="'a': retries and retry_delay must be >= 0"):
        sched.sync([Task("a", None, rec.body("a"), retries=-1)])
    sched.sync(
        [Task("hourly", "0 * * * *", rec.body("h")), Task("daily", "0 3 * * *", rec.body("d"), upstream=("hourly",))]
    )
    # After the refusals, the accepted set is the one in force.
    with pytest.raises(NotFoundError, match="known tasks: daily, hourly"):
        sched.trigger("a")


# -- cron firing -----------------------------------------------------------------------------------


def test_tick_runs_a_task_at_its_fire_times_only(tmp_path: Path, rec: Recorder) -> None:
    sched = open_scheduler(tmp_path / "s.db", [Task("nightly", "0 3 * * *", rec.body("nightly"))])
    assert sched.tick(at(0)) == []  # first sight: the schedule starts here, nothing earlier runs
    assert sched.tick(at(2, 59)) == []
    runs = sched.tick(at(3, 0))  # the interval is (previous tick, now]: the fire time itself counts
    assert [(r.task, r.logical_date, r.state, r.attempts) for r in runs] == [("nightly", at(3), "success", 1)]
    assert rec.calls == [("nightly", at(3))]
    assert sched.tick(at(3, 0)) == [] and sched.tick(at(3, 30)) == []
    assert sched.tick(at(1)) == []  # a clock going backwards runs nothing
    assert [r.logical_date for r in sched.tick(at(27))] == [at(27)]
    assert len(rec.calls) == 2


def test_after_downtime_only_the_latest_missed_time_runs(tmp_path: Path, rec: Recorder) -> None:
    sched = open_scheduler(tmp_path / "s.db", [Task("hourly", "0 * * * *", rec.body("hourly"))])
    sched.tick(at(0, 30))
    runs = sched.tick(at(5, 10))  # 01:00 .. 05:00 were missed
    assert [r.logical_date for r in runs] == [at(5)]
    assert rec.calls == [("hourly", at(5))]


def test_tasks_without_schedule_never_tick(tmp_path: Path, rec: Recorder) -> None:
    sched = open_scheduler(tmp_path / "s.db", [Task("manual", None, rec.body("manual"))])
    sched.tick(at(0))
    assert sched.tick(at(48)) == [] and rec.calls == []


# -- dependencies ----------------------------------------------------------------------------------


def test_upstream_runs_first_for_the_same_logical_date(tmp_path: Path, rec: Recorder) -> None:
    tasks = [  # declared downstream-first, so the order must come from the dependencies
        Task("report", "0 3 * * *", rec.body("report"), upstream=("clean", "extract")),
        Task("clean", "0 3 * * *", rec.body("clean"), upstream=("extract",)),
        Task("extract", "0 * * * *", rec.body("extract")),
    ]
    sched = open_scheduler(tmp_path / "s.db", tasks)
    sched.tick(at(2, 30))
    runs = sched.tick(at(3, 5))
    assert [r.task for r in runs] == ["extract", "clean", "report"]
    assert rec.calls == [("extract", at(3)), ("clean", at(3)), ("report", at(3))]
    assert all(r.state == "success" for r in runs)


def test_failed_upstream_marks_downstream_upstream_failed(tmp_path: Path, rec: Recorder, sleeps: list[float]) -> None:
    tasks = [
        Task("extract", "0 3 * * *", rec.body("extract", fail_times=-1), retries=1, retry_delay=0.5),
        Task("clean", "0 3 * * *", rec.body("clean"), upstream=("extract",)),
        Task("report", "0 3 * * *", rec.body("report"), upstream=("clean",)),
        Task("other", "0 3 * * *", rec.body("other")),
    ]
    sched = open_scheduler(tmp_path / "s.db", tasks, sleeps)
    sched.tick(at(0))
    runs = {r.task: r for r in sched.tick(at(3))}
    assert runs["extract"].state == "failed" and runs["extract"].attempts == 2
    assert runs["clean"].state == "upstream_failed" and runs["clean"].attempts == 0
    assert runs["clean"].error is not None and "upstream 'extract' failed" in runs["clean"].error
    assert runs["report"].state == "upstream_failed" and "'clean' upstream_failed" in (runs["report"].error or "")
    assert runs["other"].state == "success"
    assert [name for name, _ in rec.calls] == ["extract", "extract", "other"]


def test_a_manual_success_for_the_date_satisfies_the_downstream(tmp_path: Path, rec: Recorder) -> None:
    tasks = [
        Task("extract", "0 3 * * *", rec.body("extract", fail_times=1), retries=0),
        Task("report", "0 3 * * *", rec.body("report"), upstream=("extract",)),
    ]
    sched = open_scheduler(tmp_path / "s.db", tasks)
    sched.tick(at(0))
    assert [r.state for r in sched.tick(at(3))] == ["failed", "upstream_failed"]
    assert sched.trigger("extract", at(3)).state == "success"  # the operator fixes and re-runs
    assert sched.trigger("report", at(3)).state == "success"
    assert sched.last_success("report") is not None


def test_a_staggered_downstream_waits_for_its_upstreams_latest_run(tmp_path: Path, rec: Recorder) -> None:
    fail = {"on": False}

    def co_views(logical_date: datetime) -> None:
        rec.calls.append(("co_views", logical_date))
        if fail["on"]:
            raise OSError("lake unreachable")

    tasks = [
        Task("co_views", "0 3 * * *", co_views, retries=0),
        Task("similar_items", "30 3 * * *", rec.body("similar_items"), upstream=("co_views",)),
    ]
    sched = open_scheduler(tmp_path / "s.db", tasks)
    sched.tick(at(2))
    assert [r.task for r in sched.tick(at(3))] == ["co_views"]
    [run] = sched.tick(at(3, 30))  # its upstream's logical date is 03:00 of the same day
    assert (run.task, run.logical_date, run.state) == ("similar_items", at(3, 30), "success")
    fail["on"] = True
    assert [r.state for r in sched.tick(at(27))] == ["failed"]
    [blocked] = sched.tick(at(27, 30))
    assert blocked.state == "upstream_failed"
    assert blocked.error == "upstream 'co_views' failed for 2024-03-02T03:00:00.000000+00:00"
    # Downtime across both fire times: the upstream's 03:00 runs first, then the 03:30 downstream.
    fail["on"] = False
    assert [(r.task, r.logical_date, r.state) for r in sched.tick(at(52))] == [
        ("co_views", at(51), "success"),
        ("similar_items", at(51, 30), "success"),
    ]


def test_a_downstream_first_seen_after_its_upstreams_time_reports_the_missing_run(
    tmp_path: Path, rec: Recorder
) -> None:
    tasks = [
        Task("co_views", "0 3 * * *", rec.body("co_views")),
        Task("similar_items", "30 3 * * *", rec.body("similar_items"), upstream=("co_views",)),
    ]
    sched = open_scheduler(tmp_path / "s.db", tasks)
    sched.tick(at(3, 10))  # started after 03:00: co_views has no run for today
    [run] = sched.tick(at(3, 30))
    assert run.state == "upstream_failed" and run.error is not None
    assert "'co_views' has no run for 2024-03-01T03:00" in run.error


def test_an_unscheduled_upstream_must_have_succeeded_last(tmp_path: Path, rec: Recorder) -> None:
    outcome = {"fail": False}

    def load(_: datetime) -> None:
        if outcome["fail"]:
            raise ValueError("bad file")

    tasks = [Task("load", None, load, retries=0), Task("report", "0 6 * * *", rec.body("report"), upstream=("load",))]
    sched = open_scheduler(tmp_path / "s.db", tasks)
    sched.tick(at(0))
    [first] = sched.tick(at(6))
    assert first.state == "upstream_failed" and "'load' has no run for a date at or before" in (first.error or "")
    sched.trigger("load", at(8))
    assert [r.state for r in sched.tick(at(30))] == ["success"]
    outcome["fail"] = True
    sched.trigger("load", at(40))
    [last] = sched.tick(at(54))
    assert (
        last.state == "upstream_failed" and last.error == "upstream 'load' failed for 2024-03-02T16:00:00.000000+00:00"
    )


# -- failures and retries --------------------------------------------------------------------------


def test_retries_back_off_doubling_and_success_ends_them(tmp_path: Path, rec: Recorder, sleeps: list[float]) -> None:
    sched = open_scheduler(
        tmp_path / "s.db", [Task("flaky", None, rec.body("flaky", fail_times=2), retries=3, retry_delay=1.5)], sleeps
    )
    run = sched.trigger("flaky", at(1))
    assert (run.state, run.attempts, run.error) == ("success", 3, None)
    assert sleeps == [1.5, 3.0]


def test_exhausted_retries_record_the_last_error(tmp_path: Path, rec: Recorder, sleeps: list[float]) -> None:
    task = Task("broken", None, rec.body("broken", fail_times=-1, error=KeyError), retries=3, retry_delay=1.0)
    sched = open_scheduler(tmp_path / "s.db", [task], sleeps)
    run = sched.trigger("broken", at(4, 5))
    assert (run.state, run.attempts) == ("failed", 4)
    assert run.error == "KeyError: 'broken broke on 04:05'"
    assert sleeps == [1.0, 2.0, 4.0]
    assert run.started is not None and run.finished is not None and run.started <= run.finished


@pytest.mark.parametrize("error", [ConfigError, SchemaError])
def test_a_mistake_that_a_retry_cannot_fix_fails_at_once(tmp_path: Path, rec: Recorder, sleeps: list[float],
                                                         error: type[Exception]) -> None:
    task = Task("wrong", None, rec.body("wrong", fail_times=-1, error=error), retries=3, retry_delay=1.0)
    run = open_scheduler(tmp_path / "s.db", [task], sleeps).trigger("wrong", at(4, 5))
    assert (run.state, run.attempts, sleeps) == ("failed", 1, [])
    assert run.error == f"{error.__name__}: wrong broke on 04:05"


def test_interrupting_a_task_marks_its_run_and_propagates(tmp_path: Path) -> None:
    def stop(_: datetime) -> None:
        raise KeyboardInterrupt

    sched = open_scheduler(tmp_path / "s.db", [Task("stopped", None, stop)])
    with pytest.raises(KeyboardInterrupt):
        sched.trigger("stopped", at(0))
    assert [(r.state, r.error) for r in sched.runs("stopped")] == [("failed", "interrupted")]


# -- trigger, backfill, history --------------------------------------------------------------------


def test_trigger_defaults_to_now_and_unknown_task_is_not_found(tmp_path: Path, rec: Recorder) -> None:
    fixed = datetime(2024, 5, 5, 12, 0, 7, 123456, tzinfo=UTC)
    sched = EmbeddedScheduler(tmp_path / "s.db", [Task("t", None, rec.body("t"))], clock=lambda: fixed)
    run = sched.trigger("t")
    assert run.logical_date == fixed.replace(microsecond=0) and rec.calls == [("t", run.logical_date)]
    with pytest.raises(NotFoundError, match="no task named 'nope'"):
        sched.trigger("nope")


def test_backfill_runs_every_fire_time_in_the_closed_range_in_order(tmp_path: Path, rec: Recorder) -> None:
    sched = open_scheduler(
        tmp_path / "s.db", [Task("six_hourly", "0 */6 * * *", rec.body("six_hourly", fail_times=1), retries=0)]
    )
    runs = sched.backfill("six_hourly", at(6), at(24))
    expected = [at(6), at(12), at(18), at(24)]
    assert [r.logical_date for r in runs] == expected and [d for _, d in rec.calls] == expected
    assert [r.state for r in runs] == ["failed", "success", "success", "success"]  # a failure does not stop it
    assert sched.backfill("six_hourly", at(1), at(5)) == []


def test_backfill_refuses_unscheduled_tasks_and_reversed_ranges(tmp_path: Path, rec: Recorder) -> None:
    sched = open_scheduler(tmp_path / "s.db", [Task("manual", None, rec.body("m")), Task("d", "@daily", rec.body("d"))])
    with pytest.raises(ConfigError, match="'manual' has no schedule"):
        sched.backfill("manual", at(0), at(48))
    with pytest.raises(ConfigError, match="after end"):
        sched.backfill("d", at(48), at(0))


def test_runs_are_newest_first_filtered_and_limited(tmp_path: Path, rec: Recorder) -> None:
    sched = open_scheduler(
        tmp_path / "s.db", [Task("a", None, rec.body("a")), Task("b", None, rec.body("b", fail_times=-1), retries=0)]
    )
    for hour in range(3):
        sched.trigger("a", at(hour))
        sched.trigger("b", at(hour))
    assert [(r.task, r.logical_date) for r in sched.runs(limit=3)] == [("b", at(2)), ("a", at(2)), ("b", at(1))]
    assert [r.logical_date for r in sched.runs("a")] == [at(2), at(1), at(0)]
    last = sched.last_success("a")
    assert last is not None and last.logical_date == at(2)
    assert sched.last_success("b") is None and sched.runs("unknown") == []


# -- persistence and processes ---------------------------------------------------------------------


def test_history_and_tick_marks_survive_a_reopen(tmp_path: Path, rec: Recorder) -> None:
    tasks = [Task("hourly", "0 * * * *", rec.body("hourly"))]
    first = open_scheduler(tmp_path / "s.db", tasks)
    first.tick(at(0, 30))
    first.tick(at(1, 0))
    first.close()
    second = open_scheduler(tmp_path / "s.db", tasks)
    assert [(r.task, r.logical_date, r.state) for r in second.runs()] == [("hourly", at(1), "success")]
    # The tick mark persisted: the task is not "first seen" again, so the 02:00 fire is due.
    assert [r.logical_date for r in second.tick(at(2, 15))] == [at(2)]


def test_a_second_process_view_reads_while_another_writes(tmp_path: Path, rec: Recorder) -> None:
    writer = open_scheduler(tmp_path / "s.db", [Task("t", None, rec.body("t"))])
    reader = EmbeddedScheduler(tmp_path / "s.db")  # what `keel status` opens: no tasks
    writer.trigger("t", at(1))
    assert [r.logical_date for r in reader.runs("t")] == [at(1)]
    assert (tmp_path / "s.db-wal").exists()


def test_two_tickers_claim_each_fire_time_once(tmp_path: Path, rec: Recorder) -> None:
    tasks = [Task("hourly", "0 * * * *", rec.body("hourly"))]
    one, two = open_scheduler(tmp_path / "s.db", tasks), open_scheduler(tmp_path / "s.db", tasks)
    one.tick(at(0, 30))
    ran = one.tick(at(1, 0)) + two.tick(at(1, 0)) + two.tick(at(1, 1))
    assert [r.logical_date for r in ran] == [at(1)] and len(rec.calls) == 1


_CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, UTC
    from pathlib import Path
    from keel.jobs.base import Task
    from keel.jobs.embedded import EmbeddedScheduler

    state, marker = Path(sys.argv[1]), Path(sys.argv[2])
    def body(_):
        marker.write_text("started")
        time.sleep(120)
    EmbeddedScheduler(state, [Task("slow", None, body)]).trigger("slow", datetime(2024, 3, 1, tzinfo=UTC))
    """
)


def test_a_run_whose_process_died_is_marked_interrupted_on_open(tmp_path: Path) -> None:
    state, marker = tmp_path / "s.db", tmp_path / "started"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(state), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, "the child scheduler exited before starting its task"
            assert time.monotonic() < deadline, "the child scheduler did not start its task within 60s"
            time.sleep(0.05)
        # While its process lives, another opener must leave the run alone.
        with EmbeddedScheduler(state) as live:
            assert [(r.state, r.error) for r in live.runs("slow")] == [("running", None)]
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    with EmbeddedScheduler(state) as reopened:
        [run] = reopened.runs("slow")
    assert (run.state, run.error, run.attempts) == ("failed", "interrupted", 1)
    assert run.finished is not None


def test_run_forever_ticks_with_the_clock_until_stopped(tmp_path: Path, rec: Recorder) -> None:
    times = iter(T0 + timedelta(seconds=20 * i) for i in range(10_000))
    lock = threading.Lock()

    def clock() -> datetime:
        with lock:
            return next(times)

    done = threading.Event()

    def body(logical_date: datetime) -> None:
        rec.calls.append(("minutely", logical_date))
        if len(rec.calls) == 3:
            done.set()

    sched = EmbeddedScheduler(tmp_path / "s.db", [Task("minutely", "* * * * *", body)], clock=clock)
    stop = threading.Event()
    loop = threading.Thread(target=sched.run_forever, args=(stop, 0.001))
    loop.start()
    try:
        assert done.wait(30), "run_forever did not run the task three times"
    finally:
        stop.set()
        loop.join(10)
    assert not loop.is_alive()
    dates = [d for _, d in rec.calls[:3]]
    assert dates == sorted(set(dates)) and all(d.second == 0 and d > T0 for d in dates)
    assert all(isinstance(r, Run) and r.state == "success" for r in sched.runs())
