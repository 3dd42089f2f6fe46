"""Scheduling: run tasks on cron schedules, in dependency order, with retries and backfills.

A scheduler knows tasks (name, cron schedule, upstream tasks, retry policy) and keeps a history of
runs. The embedded engine (``keel.jobs.embedded``) runs tasks in-process and keeps the history in a
SQLite file; a production engine hands the same tasks to Airflow. Both honour this contract.

Contract:
* Times are UTC. Cron expressions are the 5-field kind (``"0 3 * * *"``) or a preset such as
  ``"@daily"``, read in UTC. A *logical date* is the scheduled time a run is for (tz-aware UTC);
  a task's ``run`` callable receives it, so re-running a date recomputes the same period. ``run``
  may be called several times for one date (retries, ``trigger``, ``backfill``), so it must replace
  what it wrote for that date rather than add to it (keel's job runner replaces the output table).
* A task succeeds when ``run`` returns; anything it raises is a failure recorded on the run as
  ``"<ExceptionType>: <message>"`` and never escapes the scheduler. After a failure it is retried
  ``retries`` more times, waiting ``retry_delay`` seconds, doubled after each attempt up to
  ``retry_max_delay`` (not after a
  ConfigError or SchemaError: a mistake in the project fails its run at once). A task with a
  ``timeout`` runs each attempt in its own process, killed at the timeout: that attempt fails with
  error ``"timed out after N s"`` (and is retried like any failure).
* Upstream: a task runs for logical date D only once each upstream task has succeeded for *its*
  logical date at D — the latest fire time of the upstream's schedule at or before D, which is D
  itself when both share a schedule (a ``"30 3 * * *"`` task waits for its ``"0 3 * * *"`` upstream's
  03:00 run of the same day). For an unscheduled upstream, its latest run for a date at or before
  D must have succeeded. Otherwise the run is recorded as ``upstream_failed`` with an error naming
  the upstream and the date, and ``run`` is not called. Only ``tick`` checks upstream: ``trigger``
  and ``backfill`` run exactly the task named (a manual run is an explicit override).
* ``runs`` lists newest first and reflects every run started by any process sharing the state.
"""

from __future__ import annotations

import graphlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol, runtime_checkable

from croniter import croniter

from keel.errors import ConfigError
from keel.project.schedule import find_cycle as find_cycle, validate_cron as validate_cron  # the declarations' rules

Catchup = Literal["latest", "all"]
RunState = Literal["queued", "running", "success", "failed", "upstream_failed"]
FINISHED_STATES: frozenset[str] = frozenset({"success", "failed", "upstream_failed"})


@dataclass(frozen=True)
class Task:
    """One schedulable unit of work.

    `schedule` is a cron expression (UTC) or None for a task that runs only when triggered.
    `run` is called with the logical date; its return value is ignored.
    """

    name: str
    schedule: str | None
    run: Callable[[datetime], object]
    upstream: tuple[str, ...] = ()
    retries: int = 2
    retry_delay: float = 1.0
    retry_max_delay: float | None = None
    """The longest wait between attempts, however many have failed (None: no cap)."""
    catchup: Catchup = "latest"
    """After fire times were missed (no tick ran): ``"latest"`` runs only the latest, ``"all"`` each."""
    watch: Callable[[], str] | None = None
    """A token of the task's inputs (see `keel.jobs.triggers`): each change between ticks runs it."""
    sla: float | None = None
    """Seconds after its logical date by which a run must have succeeded; one that has not (still
    running, failed, or done late) is an SLA miss, recorded once per run by the scheduler."""
    max_active: int | None = None
    """At most this many runs of the task at once (None: only the scheduler's `slots` bound them)."""
    timeout: float | None = None
    """Seconds an attempt may run; with a timeout, each attempt runs in its own process, killed at
    the timeout, and fails with error ``"timed out after N s"`` (so `run` must pickle)."""


@dataclass(frozen=True)
class Run:
    """One run of a task for one logical date, as recorded in the run history.

    `attempts` counts calls of the task's `run` (0 for a run that never started, such as an
    ``upstream_failed`` one). `started`/`finished` are wall-clock UTC times, None until reached.
    `error` is set for ``failed`` and ``upstream_failed`` runs.
    """

    id: int
    task: str
    logical_date: datetime
    state: RunState
    attempts: int
    started: datetime | None
    finished: datetime | None
    error: str | None


@dataclass(frozen=True)
class Attempt:
    """One call of a task's `run` within a run: when it started and ended, and its error (None: it
    succeeded, or has not ended)."""

    run_id: int
    number: int
    started: datetime
    finished: datetime | None
    error: str | None


@runtime_checkable
class Scheduler(Protocol):
    def sync(self, tasks: Sequence[Task]) -> None:
        """Replace the set of known tasks with `tasks`, after validating all of them.

        Raises ``ConfigError`` — and changes nothing — for a duplicate name, a bad cron
        expression, an unknown upstream task or a dependency cycle (the message names the cycle).
        """
        ...

    def tick(self, now: datetime) -> list[Run]:
        """Run every task whose schedule fired in (previous tick, `now`]; return those runs.

        Runs execute before this returns; they start oldest logical date first, and a run starts
        only once the runs of its upstream tasks in the same tick have finished (an engine may run
        independent runs at once, up to its concurrency limits). A task whose upstream has not
        succeeded (see the module contract) is recorded ``upstream_failed``.
        A task first seen by ``tick`` starts its schedule there: it does not run for earlier times.
        After downtime (several fire times missed since the previous tick) only the latest missed
        time is run and the others are skipped, not queued (use ``backfill`` for them), unless the
        task's ``catchup`` is ``"all"``: then every missed time is run, oldest first.
        """
        ...

    def trigger(self, name: str, logical_date: datetime | None = None) -> Run:
        """Run task `name` now, synchronously, with its retries; return the finished run.

        The logical date defaults to the current time. Upstream is neither checked nor run.
        Raises ``NotFoundError`` for an unknown task.
        """
        ...

    def backfill(self, name: str, start: datetime, end: datetime) -> list[Run]:
        """Run task `name` once for every fire time of its schedule in [start, end], oldest first.

        Each run gets its retries; a failed date does not stop the later ones. Upstream is
        neither checked nor run. Raises ``NotFoundError`` for an unknown task and ``ConfigError``
        for a task without a schedule.
        """
        ...

    def runs(self, task: str | None = None, limit: int = 50) -> list[Run]:
        """The most recent runs (of `task`, or of all tasks), newest first, at most `limit`."""
        ...

    def last_success(self, task: str) -> Run | None:
        """The most recently finished successful run of `task`, or None."""
        ...


# -- validation shared by every engine's `sync` (and by `keel check`) ------------------------------


def latest_fire(schedule: str, moment: datetime) -> datetime:
    """The latest fire time of `schedule` at or before `moment` (UTC); also an upstream's logical date."""
    # croniter's get_prev is strictly before its base; nudging the base makes `moment` itself count.
    fire: datetime = croniter(schedule, moment.astimezone(UTC) + timedelta(microseconds=1)).get_prev(datetime)
    return fire.astimezone(UTC)


def validate_tasks(tasks: Sequence[Task]) -> list[str]:
    """Check `tasks` as ``Scheduler.sync`` promises; return their names, upstream first.

    Raises ``ConfigError`` naming the task for: a duplicate name, a bad cron expression, an
    unknown upstream, negative retries or a dependency cycle (naming it).
    """
    by_name: dict[str, Task] = {}
    for task in tasks:
        if task.name in by_name:
            raise ConfigError(f"two tasks are named {task.name!r}: give each task a unique name")
        by_name[task.name] = task
    for task in tasks:
        _check_task(task, by_name)
    edges = {t.name: t.upstream for t in tasks}
    cycle = find_cycle(edges)
    if cycle:
        raise ConfigError(
            "tasks depend on each other in a cycle: " + " -> ".join(cycle)
            + " (a -> b means a waits for b); remove one of these upstream links"
        )
    return list(graphlib.TopologicalSorter(edges).static_order())


def _check_task(task: Task, by_name: Mapping[str, Task]) -> None:
    if task.schedule is not None:
        problem = validate_cron(task.schedule)
        if problem:
            raise ConfigError(f"task {task.name!r}: {problem}")
    for upstream in task.upstream:
        if upstream not in by_name:
            raise ConfigError(
                f"task {task.name!r} has upstream {upstream!r}, which is not a task: "
                f"known tasks are {', '.join(sorted(by_name))}"
            )
    if task.retries < 0 or task.retry_delay < 0:
        raise ConfigError(f"task {task.name!r}: retries and retry_delay must be >= 0")
    if task.retry_max_delay is not None and task.retry_max_delay < 0:
        raise ConfigError(f"task {task.name!r}: retry_max_delay must be >= 0 (or None for no cap)")
    if task.timeout is not None and task.timeout <= 0:
        raise ConfigError(f"task {task.name!r}: timeout must be > 0 seconds (or None for no timeout)")
    if task.catchup not in ("latest", "all"):
        raise ConfigError(f"task {task.name!r}: catchup is {task.catchup!r}; use \"latest\" (run only the "
                          "latest missed fire time) or \"all\" (run each)")
    if task.sla is not None and task.sla <= 0:
        raise ConfigError(f"task {task.name!r}: sla must be > 0 seconds after the logical date (or None)")
    if task.max_active is not None and task.max_active < 1:
        raise ConfigError(f"task {task.name!r}: max_active must be >= 1 (or None for no limit of its own)")
