"""What `keel jobs` shows: each task's schedule, pause, last run and next fire; a task's run history.

Rows are plain dicts for `keel.cli.render.print_rows`, kept narrow enough for 80 columns. A
scheduler of None stands for a state folder whose history was never created: every task reads as
never run and not paused, and nothing is created by looking.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from croniter import croniter

from keel.jobs.base import Run, Task
from keel.jobs.embedded import EmbeddedScheduler

__all__ = ["history_rows", "jobs_rows", "next_fire"]


def next_fire(task: Task, now: datetime) -> datetime | None:
    """The first fire time of `task` after `now`, or None for a task without a schedule."""
    if task.schedule is None:
        return None
    fire: datetime = croniter(task.schedule, now).get_next(datetime)
    return fire


def jobs_rows(scheduler: EmbeddedScheduler | None, tasks: Sequence[Task], now: datetime) -> list[dict[str, object]]:
    """One row per task: job, schedule, paused, last run (state and logical date), next fire."""
    paused = scheduler.paused() if scheduler is not None else set()
    rows: list[dict[str, object]] = []
    for task in tasks:
        last = scheduler.runs(task.name, limit=1) if scheduler is not None else []
        fire = next_fire(task, now)
        rows.append({
            "job": task.name,
            "schedule": task.schedule or "manual",
            "paused": "yes" if task.name in paused else "no",
            "last run": f"{last[0].state} {_short(last[0].logical_date)}" if last else "never",
            "next fire": "paused" if task.name in paused else (_short(fire) if fire else "-"),
        })
    return rows


def history_rows(runs: Sequence[Run]) -> list[dict[str, object]]:
    """One row per run, newest first as given: run id, logical date, state, attempts, seconds, error."""
    return [{
        "run": r.id,
        "logical date": _minute(r.logical_date),
        "state": r.state,
        "attempts": r.attempts,
        "seconds": f"{(r.finished - r.started).total_seconds():.1f}" if r.started and r.finished else "-",
        "error": r.error or "",
    } for r in runs]


def _minute(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _short(moment: datetime) -> str:
    """Month, day and time (UTC): the jobs table is about the days around now, and 80 columns are few."""
    return moment.strftime("%m-%d %H:%M")
