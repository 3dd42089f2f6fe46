"""Pause and unpause (persisted, shared by processes), per-run logs, and the `keel jobs` commands."""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from keel.cli.commands import app
from keel.errors import NotFoundError
from keel.jobs.base import Task
from keel.jobs.embedded import EmbeddedScheduler
from keel.jobs.overview import history_rows, jobs_rows

T0 = datetime(2024, 3, 1, tzinfo=UTC)
job_log = logging.getLogger("shop.jobs")


def at(hours: float, minutes: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, minutes=minutes)


def test_a_paused_task_does_not_fire_and_unpause_applies_its_catchup(tmp_path: Path) -> None:
    calls: list[datetime] = []
    tasks = [Task("hourly", "0 * * * *", calls.append), Task("all", "0 * * * *", calls.append, catchup="all")]
    with EmbeddedScheduler(tmp_path / "s.db", tasks) as sched:
        sched.tick(at(0))
        sched.pause("hourly")
        sched.pause("all")
        assert sched.tick(at(1)) == [] and sched.tick(at(2)) == [] and calls == []
        assert sched.trigger("hourly", at(2)).state == "success"  # a manual run is an override
    with EmbeddedScheduler(tmp_path / "s.db", tasks) as reopened:  # the pause is in the file
        assert reopened.paused() == {"hourly", "all"} and reopened.tick(at(3)) == []
        reopened.unpause("hourly")
        reopened.unpause("all")
        runs = reopened.tick(at(3, 30))
    assert sorted((r.task, r.logical_date.hour) for r in runs) == [("all", 1), ("all", 2), ("all", 3), ("hourly", 3)]


def test_pausing_an_unknown_task_is_not_found(tmp_path: Path) -> None:
    with EmbeddedScheduler(tmp_path / "s.db", [Task("t", None, print)]) as sched, pytest.raises(NotFoundError):
        sched.pause("absent")


def noisy(logical_date: datetime) -> None:
    job_log.warning("reading input for %s", logical_date.date())
    print("raw output of the job")
    raise ValueError("input is empty")


def test_each_run_logs_to_its_own_file_attempt_by_attempt(tmp_path: Path) -> None:
    other: list[str] = []
    tasks = [Task("noisy", None, noisy, retries=1, retry_delay=0), Task("quiet", None, other.append)]
    with EmbeddedScheduler(tmp_path / "state" / "s.db", tasks, sleep=lambda _: None) as sched:
        run = sched.trigger("noisy", T0)
        quiet = sched.trigger("quiet", T0)
        text = sched.log_path(run.id).read_text()
        assert sched.log_path(run.id).parent == tmp_path / "state" / "logs"
        assert sched.log_path(quiet.id).read_text().count("\n") == 1  # its header only
    assert text.count("reading input for 2024-03-01") == 2
    assert "attempt 1" in text and "attempt 2" in text and "retrying in" in text
    assert "failed after 2 attempts: ValueError: input is empty" in text


def test_a_run_in_its_own_process_logs_its_output_too(tmp_path: Path) -> None:
    task = Task("noisy", None, functools.partial(noisy), retries=0, timeout=120)
    with EmbeddedScheduler(tmp_path / "s.db", [task]) as sched:
        run = sched.trigger("noisy", T0)
        text = sched.log_path(run.id).read_text()
    assert "raw output of the job" in text and "reading input for 2024-03-01" in text


def test_the_jobs_rows_say_schedule_pause_last_run_and_next_fire(tmp_path: Path) -> None:
    tasks = [Task("nightly", "0 3 * * *", print), Task("manual", None, print)]
    assert jobs_rows(None, tasks, at(1))[0] == {"job": "nightly", "schedule": "0 3 * * *", "paused": "no",
                                                "last run": "never", "next fire": "03-01 03:00"}
    with EmbeddedScheduler(tmp_path / "s.db", tasks, clock=lambda: at(2)) as sched:
        sched.trigger("manual", at(2))
        sched.pause("nightly")
        rows = jobs_rows(sched, tasks, at(1))
        history = history_rows(sched.runs("manual"))
    assert [(r["job"], r["paused"], r["last run"], r["next fire"]) for r in rows] == [
        ("nightly", "yes", "never", "paused"), ("manual", "no", "success 03-01 02:00", "-")]
    assert history == [{"run": 1, "logical date": "2024-03-01 02:00", "state": "success", "attempts": 1,
                        "seconds": "0.0", "error": ""}]


def test_the_jobs_commands(tmp_path: Path) -> None:
    cli = CliRunner()
    shop = tmp_path / "shop"
    assert cli.invoke(app, ["init", str(shop)]).exit_code == 0
    p = ["-p", str(shop)]
    listed = cli.invoke(app, ["jobs", *p], env={"COLUMNS": "80"})
    assert listed.exit_code == 0, listed.output
    assert "compute_co_views" in listed.output and "never" in listed.output
    assert all(len(line) <= 80 for line in listed.output.splitlines())
    assert not (shop / ".keel" / "state" / "scheduler.db").exists()  # looking creates nothing
    assert cli.invoke(app, ["jobs", "pause", "compute_co_views", *p]).output.strip() == "compute_co_views is paused"
    assert (shop / ".keel" / "state" / "scheduler.db").exists()
    assert "yes" in cli.invoke(app, ["jobs", *p], env={"COLUMNS": "80"}).output
    assert cli.invoke(app, ["jobs", "unpause", "compute_co_views", *p]).exit_code == 0
    history = cli.invoke(app, ["jobs", "history", "compute_co_views", *p])
    assert history.exit_code == 0 and "has not run yet" in history.output
    missing = cli.invoke(app, ["jobs", "logs", "99", *p])
    assert isinstance(missing.exception, NotFoundError) and "no run 99" in str(missing.exception)
    for sub in ([], ["history"], ["logs"], ["pause"], ["unpause"]):
        shown = cli.invoke(app, ["jobs", *sub, "--help"])
        assert shown.exit_code == 0 and "Usage" in shown.output, sub
