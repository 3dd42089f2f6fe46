"""The embedded scheduler: cron, dependencies, retries and backfills in-process, history in SQLite.

``tick``, ``trigger`` and ``backfill`` return once their runs have finished. Runs execute on worker
threads, at most `slots` at once across everything the scheduler runs (a trigger waits for a free
slot like a scheduled run) and at most a task's ``max_active`` runs of that task; a run of a tick
starts once its upstream's runs in that tick have finished. With the default one slot, runs go one
after another in the order the contract gives, and a long task delays the next tick. The history lives in one SQLite
file in WAL mode, so it survives restarts and other processes (``keel status``) can read it while
a scheduler writes. Each run records which process owns it; on open, a run still ``queued`` or
``running`` whose process is gone is marked ``failed`` with error ``"interrupted"``.

A run whose outcome cannot be written (a full disk) keeps it in memory and the next tick writes it;
a run whose start cannot be written does not run and ends ``failed`` (``"interrupted: ..."``).

Two processes may tick the same file: the per-task tick marks are read and advanced in one write
transaction, so a fire time is claimed by one of them only.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from croniter import croniter, croniter_range

from keel.errors import BackendError, ConfigError, NotFoundError, SchemaError
from keel.jobs._isolated import IsolatedFailure, call_isolated
from keel.jobs._slots import Slots
from keel.jobs.retry import Jitter, backoff
from keel.jobs.runlog import capture, log_path
from keel.jobs.base import Attempt, Run, RunState, Task, find_cycle, latest_fire, validate_cron, validate_tasks

__all__ = ["EmbeddedScheduler", "find_cycle", "validate_cron"]

log = logging.getLogger("keel.jobs")

INTERRUPTED = "interrupted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    logical_date TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    started TEXT,
    finished TEXT,
    error TEXT,
    owner TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_task ON runs (task, id);
CREATE INDEX IF NOT EXISTS runs_by_date ON runs (task, logical_date);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state);
CREATE TABLE IF NOT EXISTS ticks (task TEXT PRIMARY KEY, last_tick TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS watches (task TEXT PRIMARY KEY, token TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sla (run_id INTEGER PRIMARY KEY, task TEXT NOT NULL, missed INTEGER NOT NULL,
                                checked TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS paused (task TEXT PRIMARY KEY, since TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    run_id INTEGER NOT NULL,
    number INTEGER NOT NULL,
    started TEXT NOT NULL,
    finished TEXT,
    error TEXT,
    PRIMARY KEY (run_id, number)
);
"""
_COLUMNS = "id, task, logical_date, state, attempts, started, finished, error"


class EmbeddedScheduler:
    """The in-process ``Scheduler``; `state_path` is the SQLite history file (created if absent).

    `clock` gives the wall-clock time (for run timestamps, the default logical date of
    ``trigger`` and ``run_forever``); `sleep` waits between retries. Both exist for tests.
    `on_sla_miss` is called once for each run found past its task's ``sla`` (at a tick).
    `jitter` maps each backoff delay to the one waited (`keel.jobs.retry.seeded_jitter`; default none).
    `slots` bounds how many runs execute at once (each task's ``max_active`` bounds its own).
    """

    def __init__(
        self,
        state_path: Path,
        tasks: Sequence[Task] | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        slots: int = 1,
        jitter: Jitter | None = None,
        on_sla_miss: Callable[[Run], None] | None = None,
    ) -> None:
        self._on_sla_miss = on_sla_miss
        self._jitter = jitter
        if slots < 1:
            raise ConfigError(f"the scheduler needs at least one run slot, not {slots}")
        self._slots = Slots(slots)
        self.state_path = Path(state_path)
        self.logs_dir = self.state_path.parent / "logs"
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sleep = sleep
        self._owner = _process_token(os.getpid())
        self._lock = threading.Lock()
        self._tasks: dict[str, Task] = {}
        self._order: dict[str, int] = {}
        self._unrecorded: dict[int, tuple[RunState, str | None, int, str]] = {}  # run id -> outcome to write
        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.state_path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise BackendError(
                f"cannot open the scheduler state {self.state_path}: {exc}; "
                "check the `state` directory of the profile is writable"
            ) from exc
        try:
            self._recover_interrupted()
            if tasks:
                self.sync(tasks)
        except BaseException:
            self._db.close()
            raise

    # -- Scheduler -----------------------------------------------------------------------------

    def sync(self, tasks: Sequence[Task]) -> None:
        order = validate_tasks(tasks)
        with self._lock:
            self._tasks = {task.name: task for task in tasks}
            self._order = {name: i for i, name in enumerate(order)}

    def tick(self, now: datetime) -> list[Run]:
        now = _utc(now)
        self._record_unrecorded()
        self._check_slas(now)
        due: list[tuple[datetime, Task]] = []
        tokens = self._watch_tokens()
        with self._lock, self._transaction() as db:
            marks = {name: _parse(text) for name, text in db.execute("SELECT task, last_tick FROM ticks")}
            paused = {name for (name,) in db.execute("SELECT task FROM paused")}
            for task in self._tasks.values():
                if task.schedule is None or task.name in paused:  # a paused task's mark waits: see `pause`
                    continue
                last = marks.get(task.name)
                if last is None or now > last:
                    db.execute(
                        "INSERT INTO ticks (task, last_tick) VALUES (?, ?) "
                        "ON CONFLICT (task) DO UPDATE SET last_tick = excluded.last_tick",
                        (task.name, _iso(now)),
                    )
                if last is None or now <= last:
                    continue
                fire = latest_fire(task.schedule, now)
                if fire <= last:
                    continue
                first = croniter(task.schedule, last).get_next(datetime)
                if task.catchup == "all":
                    due.extend((_utc(d), task) for d in croniter_range(first, fire, task.schedule, ret_type=datetime))
                    continue
                if first < fire:
                    log.warning("task %s: skipped fire times %s to %s (missed while not ticking); "
                                "running %s only", task.name, first, fire - timedelta(microseconds=1), fire)
                due.append((fire, task))
            due.extend(self._changed_inputs(db, tokens, paused, {task.name for _, task in due}, now))
            due.sort(key=lambda item: (item[0], self._order[item[1].name]))
            run_ids = [self._insert(db, task.name, date) for date, task in due]
        return self._run_batch([(task, date, run_id) for (date, task), run_id in zip(due, run_ids, strict=True)],
                               check_upstream=True)

    def trigger(self, name: str, logical_date: datetime | None = None) -> Run:
        task = self._task(name)
        date = _utc(logical_date) if logical_date is not None else self._clock().replace(microsecond=0)
        with self._lock, self._transaction() as db:
            run_id = self._insert(db, name, date)
        self._slots.take(task.name, task.max_active)
        try:
            return self._execute(task, date, run_id)
        finally:
            self._slots.give_back(task.name)

    def backfill(self, name: str, start: datetime, end: datetime) -> list[Run]:
        task = self._task(name)
        if task.schedule is None:
            raise ConfigError(
                f"task {name!r} has no schedule, so it has no dates to backfill: "
                "trigger it once per date instead"
            )
        start, end = _utc(start), _utc(end)
        if start > end:
            raise ConfigError(f"backfill of {name!r}: start {start} is after end {end}")
        dates = [_utc(d) for d in croniter_range(start, end, task.schedule, ret_type=datetime)]
        with self._lock, self._transaction() as db:
            run_ids = [self._insert(db, name, date) for date in dates]
        return self._run_batch([(task, date, run_id) for date, run_id in zip(dates, run_ids, strict=True)],
                               check_upstream=False)

    def runs(self, task: str | None = None, limit: int = 50) -> list[Run]:
        if task is None:
            rows = self._query(f"SELECT {_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._query(f"SELECT {_COLUMNS} FROM runs WHERE task = ? ORDER BY id DESC LIMIT ?", (task, limit))
        return [_to_run(row) for row in rows]

    def pause(self, name: str) -> None:
        """Stop task `name` firing on its schedule, for every process sharing the state, until ``unpause``.

        ``trigger`` and ``backfill`` still run it (a manual run is an explicit override). Its tick
        mark does not move while paused, so on unpause the fire times missed meanwhile follow the
        task's ``catchup`` policy, as after downtime. Raises ``NotFoundError`` for an unknown task.
        """
        self._task(name)
        with self._lock, self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO paused (task, since) VALUES (?, ?)", (name, _iso(self._clock())))

    def unpause(self, name: str) -> None:
        """Let task `name` fire on its schedule again (a no-op for a task not paused)."""
        self._task(name)
        with self._lock, self._transaction() as db:
            db.execute("DELETE FROM paused WHERE task = ?", (name,))

    def paused(self) -> set[str]:
        """The names of the paused tasks (known to this scheduler or not)."""
        return {name for (name,) in self._query("SELECT task FROM paused", ())}

    def log_path(self, run_id: int) -> Path:
        """Where run `run_id`'s log is (absent for a run that never started); see `keel.jobs.runlog`."""
        return log_path(self.logs_dir, run_id)

    def attempts(self, run_id: int) -> list[Attempt]:
        """The attempts of run `run_id`, first first (none for a run that never started)."""
        rows = self._query("SELECT run_id, number, started, finished, error FROM attempts WHERE run_id = ? "
                           "ORDER BY number", (run_id,))
        return [Attempt(run_id=r[0], number=r[1], started=_parse(r[2]), finished=_parse(r[3]) if r[3] else None,
                        error=r[4]) for r in rows]

    def find_run(self, run_id: int) -> Run | None:
        """Run `run_id` as recorded, or None for an id the history does not hold."""
        rows = self._query(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return _to_run(rows[0]) if rows else None

    def last_success(self, task: str) -> Run | None:
        rows = self._query(
            f"SELECT {_COLUMNS} FROM runs WHERE task = ? AND state = 'success' "
            "ORDER BY finished DESC, id DESC LIMIT 1",
            (task,),
        )
        return _to_run(rows[0]) if rows else None

    # -- lifecycle -----------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, poll_seconds: float = 1.0) -> None:
        """Tick with the wall clock every `poll_seconds` until `stop` is set.

        A failing tick (e.g. the state file is briefly locked by another process) is logged and
        retried at the next poll; task failures are recorded on their runs, never raised here.
        """
        failing = False
        while not stop.is_set():
            try:
                self.tick(self._clock())
            except BackendError as exc:  # its message says what to do: one line, no traceback
                log.warning("scheduler tick failed; retrying every %.1fs: %s", poll_seconds, exc)
                failing = True
            else:
                if failing:
                    log.warning("scheduler ticks again")
                failing = False
            stop.wait(poll_seconds)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> EmbeddedScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _task(self, name: str) -> Task:
        task = self._tasks.get(name)
        if task is None:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise NotFoundError(f"no task named {name!r}; known tasks: {known}")
        return task

    def sla_misses(self, task: str | None = None) -> list[Run]:
        """The runs (of `task`, or all) that had not succeeded by their SLA, newest first."""
        where = "WHERE sla.missed = 1" + (" AND sla.task = ?" if task is not None else "")
        columns = ", ".join(f"runs.{c.strip()}" for c in _COLUMNS.split(","))
        rows = self._query(f"SELECT {columns} FROM sla JOIN runs ON runs.id = sla.run_id {where} ORDER BY runs.id DESC",
                           (task,) if task is not None else ())
        return [_to_run(row) for row in rows]

    def _check_slas(self, now: datetime) -> None:
        """Judge, once each, the runs whose SLA deadline has passed; report the misses."""
        if not any(task.sla is not None for task in self._tasks.values()):
            return  # no write transaction per tick for nothing
        missed: list[Run] = []
        with self._lock, self._transaction() as db:
            for task in self._tasks.values():
                if task.sla is None:
                    continue
                cutoff = _iso(now - timedelta(seconds=task.sla))
                rows = db.execute(f"SELECT {_COLUMNS} FROM runs WHERE task = ? AND logical_date <= ? AND id NOT IN "
                                  "(SELECT run_id FROM sla WHERE task = ?)", (task.name, cutoff, task.name)).fetchall()
                for run in map(_to_run, rows):
                    deadline = run.logical_date + timedelta(seconds=task.sla)
                    on_time = run.state == "success" and run.finished is not None and run.finished <= deadline
                    db.execute("INSERT INTO sla (run_id, task, missed, checked) VALUES (?, ?, ?, ?)",
                               (run.id, task.name, not on_time, _iso(now)))
                    if not on_time:
                        missed.append(run)
        for run in missed:
            log.warning("task %s missed its SLA for %s: %s by %s", run.task, run.logical_date, run.state,
                        run.logical_date + timedelta(seconds=self._tasks[run.task].sla or 0))
            if self._on_sla_miss is not None:
                self._on_sla_miss(run)

    def _watch_tokens(self) -> dict[str, str]:
        """Each watched task's current input token; a watch that fails skips its task this tick."""
        tokens = {}
        for task in list(self._tasks.values()):
            if task.watch is None:
                continue
            try:
                tokens[task.name] = task.watch()
            except Exception as exc:  # e.g. the lake briefly unreachable: the next tick looks again
                log.warning("task %s: cannot read the state of its inputs, not checked this tick: %s", task.name, exc)
        return tokens

    def _changed_inputs(self, db: sqlite3.Connection, tokens: dict[str, str], paused: set[str], already: set[str],
                        now: datetime) -> list[tuple[datetime, Task]]:
        """The tasks whose input token changed since the last tick saw it (claimed in `db`'s transaction)."""
        seen = dict(db.execute("SELECT task, token FROM watches").fetchall())
        due = []
        for name, token in tokens.items():
            if name in paused or seen.get(name) == token:
                continue
            db.execute("INSERT INTO watches (task, token) VALUES (?, ?) "
                       "ON CONFLICT (task) DO UPDATE SET token = excluded.token", (name, token))
            if name in seen and name not in already and name in self._tasks:
                due.append((now.replace(microsecond=0), self._tasks[name]))
        return due

    def _run_batch(self, batch: Sequence[tuple[Task, datetime, int]], *, check_upstream: bool) -> list[Run]:
        """Run `batch` (task, date, run id; in start order) on worker threads within the slots.

        A run starts once every earlier run in the batch of one of its upstream tasks has finished,
        so its upstream check (`check_upstream`, for ticks) sees their outcome. Returns the runs in
        batch order. Anything a run raises past its own recording (an interrupt) stops further starts
        and is raised here once the started runs have ended.
        """
        results: list[Run | None] = [None] * len(batch)
        waiting = list(range(len(batch)))
        running: set[int] = set()
        raised: list[BaseException] = []
        slots = self._slots

        def work(i: int) -> None:
            task, date, run_id = batch[i]
            try:
                blocked = self._upstream_problem(task, date) if check_upstream else None
                if blocked:
                    results[i] = self._finish(run_id, "upstream_failed", blocked, attempts=0)
                else:
                    results[i] = self._execute(task, date, run_id)
            except BaseException as exc:  # handed to the thread that waits for the batch
                raised.append(exc)
            finally:
                with slots.changed:
                    running.discard(i)
                    slots.give_back(task.name)

        def ready(i: int) -> bool:
            upstream = batch[i][0].upstream
            return not any(batch[j][0].name in upstream for j in (*waiting, *running) if j < i)

        with slots.changed:
            while running or (waiting and not raised):
                if not raised:
                    for i in [i for i in waiting if ready(i)]:
                        task = batch[i][0]
                        if slots.try_take(task.name, task.max_active):
                            waiting.remove(i)
                            running.add(i)
                            threading.Thread(target=work, args=(i,), name=f"keel-run-{batch[i][2]}",
                                             daemon=True).start()
                slots.changed.wait()
        if raised:
            raise raised[0]
        return [run for run in results if run is not None]

    def _execute(self, task: Task, date: datetime, run_id: int) -> Run:
        attempts = 0
        while True:
            attempts += 1
            try:
                self._update(run_id, state="running", attempts=attempts, started=attempts == 1)
            except BackendError as exc:  # without a record of the start it does not run: failed, not stuck queued
                return self._finish(run_id, "failed", f"{INTERRUPTED}: its start could not be recorded ({exc})",
                                    attempts=attempts - 1)
            with capture(self.log_path(run_id), f"-- run {run_id}: task {task.name} for {_iso(date)}, "
                                                f"attempt {attempts}"):
                try:
                    if task.timeout is None:
                        task.run(date)
                    else:
                        call_isolated(task.name, task.run, date, task.timeout, self.log_path(run_id))
                except Exception as exc:  # a task's failure is data for its run, never the scheduler's
                    error = str(exc) if isinstance(exc, IsolatedFailure) else f"{type(exc).__name__}: {exc}"
                    if attempts > task.retries or isinstance(exc, (ConfigError, SchemaError)):  # a retry cannot fix those
                        log.error("task %s for %s failed after %d attempts: %s", task.name, date, attempts, error)
                        return self._finish(run_id, "failed", error, attempts=attempts)
                    delay = backoff(task, attempts)
                    if self._jitter is not None:
                        delay = self._jitter(delay)
                    log.warning("task %s for %s failed (attempt %d), retrying in %.1fs: %s",
                                task.name, date, attempts, delay, error)
                except BaseException:
                    self._finish(run_id, "failed", INTERRUPTED, attempts=attempts)
                    raise
                else:
                    return self._finish(run_id, "success", None, attempts=attempts)
            self._end_attempt(run_id, attempts, error)
            try:
                self._sleep(delay)
            except BaseException:  # e.g. Ctrl-C while waiting to retry
                self._finish(run_id, "failed", INTERRUPTED, attempts=attempts)
                raise

    def _upstream_problem(self, task: Task, date: datetime) -> str | None:
        """Why `task` may not run for `date` yet (see the upstream rule in keel.jobs.base), or None."""
        for name in task.upstream:
            schedule = self._tasks[name].schedule
            if schedule is not None:
                wanted = _iso(latest_fire(schedule, date))
                rows = self._query(
                    "SELECT state, logical_date FROM runs WHERE task = ? AND logical_date = ? "
                    "ORDER BY state = 'success' DESC, id DESC LIMIT 1",
                    (name, wanted),
                )
            else:
                wanted = f"a date at or before {_iso(date)}"
                rows = self._query(
                    "SELECT state, logical_date FROM runs WHERE task = ? AND logical_date <= ? "
                    "ORDER BY logical_date DESC, state = 'success' DESC, id DESC LIMIT 1",
                    (name, _iso(date)),
                )
            if not rows:
                return f"upstream {name!r} has no run for {wanted}"
            state, upstream_date = rows[0]
            if state != "success":
                return f"upstream {name!r} {state} for {upstream_date}"
        return None

    def _insert(self, db: sqlite3.Connection, task: str, date: datetime) -> int:
        cursor = db.execute(
            "INSERT INTO runs (task, logical_date, state, owner) VALUES (?, ?, 'queued', ?)",
            (task, _iso(date), self._owner),
        )
        return cast(int, cursor.lastrowid)

    def _update(self, run_id: int, *, state: RunState, attempts: int, started: bool) -> None:
        now = _iso(self._clock())
        with self._lock, self._transaction() as db:
            db.execute(
                "UPDATE runs SET state = ?, attempts = ?, started = CASE WHEN ? THEN ? ELSE started END WHERE id = ?",
                (state, attempts, started, now, run_id),
            )
            db.execute("INSERT OR REPLACE INTO attempts (run_id, number, started) VALUES (?, ?, ?)",
                       (run_id, attempts, now))

    def _end_attempt(self, run_id: int, number: int, error: str) -> None:
        """Record a failed attempt that is retried (the last one is recorded with the run's outcome)."""
        try:
            with self._lock, self._transaction() as db:
                db.execute("UPDATE attempts SET finished = ?, error = ? WHERE run_id = ? AND number = ?",
                           (_iso(self._clock()), error, run_id, number))
        except BackendError as exc:  # the run goes on; only this attempt's end is missing from the history
            log.warning("run %d: attempt %d's end could not be recorded: %s", run_id, number, exc)

    def _finish(self, run_id: int, state: RunState, error: str | None, *, attempts: int) -> Run:
        outcome = (state, error, attempts, _iso(self._clock()))
        try:
            return self._record(run_id, *outcome)
        except BackendError as exc:
            # e.g. a full disk: the outcome waits in memory and the next tick writes it, so a run is
            # never left `running` once the history can be written again
            with self._lock:
                self._unrecorded[run_id] = outcome
            log.warning("run %d ended %s; its outcome is recorded once the scheduler state can be written: %s",
                        run_id, state, exc)
            row = self._query(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,))[0]
            return replace(_to_run(row), state=state, error=error, attempts=attempts, finished=_parse(outcome[3]))

    def _record(self, run_id: int, state: RunState, error: str | None, attempts: int, finished: str) -> Run:
        with self._lock, self._transaction() as db:
            db.execute(
                "UPDATE runs SET state = ?, attempts = ?, finished = ?, error = ? WHERE id = ?",
                (state, attempts, finished, error, run_id),
            )
            db.execute("UPDATE attempts SET finished = ?, error = ? WHERE run_id = ? AND number = ? "
                       "AND finished IS NULL", (finished, error, run_id, attempts))
            row = db.execute(f"SELECT {_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _to_run(row)

    def _record_unrecorded(self) -> None:
        with self._lock:
            pending = list(self._unrecorded.items())
        for run_id, outcome in pending:
            self._record(run_id, *outcome)
            with self._lock:
                self._unrecorded.pop(run_id, None)

    def _recover_interrupted(self) -> None:
        with self._lock, self._transaction() as db:
            open_runs = db.execute("SELECT id, owner FROM runs WHERE state IN ('queued', 'running')").fetchall()
            dead = [(run_id,) for run_id, owner in open_runs if not _owner_alive(owner)]
            db.executemany(
                "UPDATE runs SET state = 'failed', error = ?, finished = ? WHERE id = ?",
                [(INTERRUPTED, _iso(self._clock()), run_id) for (run_id,) in dead],
            )
        if dead:
            log.warning("marked %d run(s) of a stopped process as failed (interrupted)", len(dead))

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise BackendError(f"reading the scheduler state {self.state_path} failed: {exc}") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (taken up front, so concurrent tickers serialise); caller holds _lock."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # a failed COMMIT (e.g. SQLITE_FULL) may leave the transaction open: end it, or every
                # later BEGIN fails even once the disk has room again
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            hint = ("free disk space; the scheduler retries by itself" if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL
                    else "if another process holds it for long, stop that process")
            raise BackendError(f"writing the scheduler state {self.state_path} failed: {exc}; {hint}") from exc


# -- helpers ---------------------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    """Naive datetimes are taken as UTC (keel's schedules are UTC); aware ones are converted."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="microseconds")


def _parse(text: str | None) -> datetime:
    return datetime.fromisoformat(cast(str, text))


def _to_run(row: tuple[Any, ...]) -> Run:
    run_id, task, logical_date, state, attempts, started, finished, error = row
    return Run(
        id=run_id,
        task=task,
        logical_date=_parse(logical_date),
        state=state,
        attempts=attempts,
        started=_parse(started) if started else None,
        finished=_parse(finished) if finished else None,
        error=error,
    )


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux), which tells a live process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return None if fields[0] == "Z" else fields[19]  # a zombie has exited


def _process_token(pid: int) -> str:
    return f"{pid}:{_start_time(pid) or '?'}"


def _owner_alive(owner: str) -> bool:
    pid_text, _, started = owner.partition(":")
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if started == "?" or not Path("/proc").is_dir():
        return True
    return _start_time(pid) == started
