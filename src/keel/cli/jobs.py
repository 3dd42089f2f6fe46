"""`keel run`, `keel jobs` and `keel deploy`: batch jobs, their schedule and history, and their DAGs."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.text import Text

from keel.cli.base import CONTEXT, iso_time, open_runtime, out, project_options
from keel.cli.render import print_rows
from keel.errors import NotFoundError

if TYPE_CHECKING:
    from keel.jobs.base import Task
    from keel.jobs.embedded import EmbeddedScheduler


@click.command()
@click.argument("job")
@project_options
@click.option("--date", callback=iso_time, metavar="ISO", help="Logical date, ISO 8601 (default: now).")
def run(job: str, project: Path, profile: str | None, date: datetime | None) -> None:
    """Run JOB now, through the scheduler.

    The run is recorded in the scheduler's run history."""
    from keel.jobs.embedded import EmbeddedScheduler
    from keel.jobs.run import scheduler_tasks

    rt = open_runtime(project, profile)
    with EmbeddedScheduler(rt.state_dir / "scheduler.db", scheduler_tasks(rt.catalog, rt)) as scheduler:
        result = scheduler.trigger(job, date)
    print_rows([{"job": result.task, "state": result.state, "attempts": result.attempts, "error": result.error}],
               console=out)
    if result.state != "success":
        sys.exit(1)


@click.group(context_settings=CONTEXT, invoke_without_command=True)
@project_options
@click.pass_context
def jobs(ctx: click.Context, project: Path, profile: str | None) -> None:
    """The scheduled jobs: a table, their history and logs, pause.

    Without a subcommand: each job's schedule, whether it is paused, its last run and the next time
    it fires."""
    if ctx.invoked_subcommand is not None:
        return
    from keel.jobs.overview import jobs_rows

    with _job_history(project, profile, create=False) as (scheduler, tasks):
        rows = jobs_rows(scheduler, tasks, datetime.now(timezone.utc))
    print_rows(rows, "jobs", out)


@jobs.command("history")
@click.argument("job")
@project_options
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs.")
def jobs_history(job: str, project: Path, profile: str | None, limit: int) -> None:
    """The runs of JOB, newest first.

    Each run's id (for `keel jobs logs RUN`), logical date, state, attempts, duration and error."""
    from keel.jobs.overview import history_rows

    with _job_history(project, profile, create=False) as (scheduler, tasks):
        if job not in {t.name for t in tasks}:
            raise NotFoundError(f"no job named {job!r}; known jobs: {', '.join(t.name for t in tasks)}")
        runs = scheduler.runs(job, limit=limit) if scheduler is not None else []
    print_rows(history_rows(runs), f"runs of {job}", out, empty=f"{job} has not run yet")


@jobs.command("logs")
@click.argument("run_id", metavar="RUN", type=int)
@project_options
def jobs_logs(run_id: int, project: Path, profile: str | None) -> None:
    """Print the log of run RUN (an id from `keel jobs history JOB`).

    What the run logged, attempt by attempt; a run with a timeout also has its process's output."""
    with _job_history(project, profile, create=False) as (scheduler, _):
        found = scheduler.find_run(run_id) if scheduler is not None else None
        if found is None:
            raise NotFoundError(f"no run {run_id} in the history; `keel jobs history JOB` lists a job's runs")
        path = scheduler.log_path(run_id) if scheduler is not None else None
    if path is None or not path.exists():
        out.print(Text(f"run {run_id} ({found.task}, {found.state}) has no log: it never started", style="dim"))
        return
    out.print(Text(path.read_text(encoding="utf-8", errors="replace").rstrip("\n")))


@jobs.command("pause")
@click.argument("job")
@project_options
def jobs_pause(job: str, project: Path, profile: str | None) -> None:
    """Stop JOB firing on its schedule until `keel jobs unpause JOB`.

    Kept in the scheduler's state, so a running `keel up` sees it at its next tick; `keel run JOB`
    still runs it."""
    with _job_history(project, profile, create=True) as (scheduler, _):
        assert scheduler is not None
        scheduler.pause(job)
    out.print(f"{job} is paused")


@jobs.command("unpause")
@click.argument("job")
@project_options
def jobs_unpause(job: str, project: Path, profile: str | None) -> None:
    """Let JOB fire on its schedule again.

    Fire times missed while paused follow the job's catch-up policy (by default only the latest runs)."""
    with _job_history(project, profile, create=True) as (scheduler, _):
        assert scheduler is not None
        scheduler.unpause(job)
    out.print(f"{job} is unpaused")


@contextmanager
def _job_history(project: Path, profile: str | None, *,
                 create: bool) -> Iterator[tuple[EmbeddedScheduler | None, list[Task]]]:
    """The scheduler's history with the project's tasks; None when it does not exist and not `create`."""
    from keel.jobs.embedded import EmbeddedScheduler
    from keel.jobs.run import scheduler_tasks
    from keel.schemes import file_path

    rt = open_runtime(project, profile)
    tasks = scheduler_tasks(rt.catalog, rt)
    path = file_path(rt.config.state) / "scheduler.db"
    if not (create or path.exists()):
        yield None, tasks
        return
    with EmbeddedScheduler(path, tasks) as scheduler:
        yield scheduler, tasks


@click.group(context_settings=CONTEXT)
def deploy() -> None:
    """Deploy the project's declarations to another system."""


@deploy.command("airflow")
@project_options
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, metavar="DIR",
              help="The folder for the DAG files (Airflow's dags folder); created if missing.")
def deploy_airflow(project: Path, profile: str | None, out_dir: Path) -> None:
    """Write one Airflow DAG file per job graph into DIR.

    Each task runs `keel run JOB`: in a Kubernetes pod on a production profile, as a shell command otherwise."""
    from keel.deploy.airflow import write_dags
    from keel.project.loading import load_project

    p = load_project(project, profile)
    command = shlex.join(["keel", "deploy", "airflow", "--out", str(out_dir), "--project", str(project),
                          "--profile", p.config.profile])
    for path in write_dags(p.catalog, p.config, out_dir, command):
        out.print(f"wrote {path}", highlight=False)
