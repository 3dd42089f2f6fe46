"""The `keel` command: parse, call the library, print. No logic of its own.

Exit codes, as click and most Unix tools use them (docs/guide.md, Commands):

* 0: done (a read command on something not created yet says so, and is done);
* 1: keel could not do it. A KeelError is printed as one line naming the problem and the fix,
  never a traceback; anything else is a bug in keel: one line saying so, and the traceback only
  with `keel --debug ...` or KEEL_DEBUG=1;
* 2: the command line is wrong (unknown command or option, a bad value, a missing argument).

Read commands (status, streams, tail, dlq show, tables, sql, experiments report, keys list) never
create anything: see `keel.monitor.status`.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.text import Text

from keel.cli.render import print_rows
from keel.errors import KeelError, NotFoundError, ProjectError

if TYPE_CHECKING:
    from keel.jobs.base import Task
    from keel.jobs.embedded import EmbeddedScheduler
    from keel.run.runtime import Runtime

__all__ = ["app", "main"]

out = Console()
err = Console(stderr=True)
_debug = False
F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def project_options(command: F) -> F:
    """-p/--project and --profile, on every command that reads a project."""
    command = click.option("--profile", metavar="NAME",
                           help="The keel.toml profile (default: local, or KEEL_PROFILE).")(command)
    return click.option("--project", "-p", type=click.Path(path_type=Path), default=Path("."), metavar="DIR",
                        show_default=True, help="The project folder (holding keel.toml).")(command)


def _runtime(project: Path, profile: str | None) -> Runtime:
    from keel.run.runtime import Runtime

    return Runtime.open(project, profile)


def _iso_time(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> datetime | None:
    """An option's ISO 8601 time, in UTC; a usage error (exit 2) if it is not one."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-12-01 or 2026-12-01T10:00:00Z)",
                                 ctx, param) from None


def _minute(iso: str) -> str:
    """An ISO 8601 UTC time to the minute, in words that wrap ("2026-12-01 23:07 UTC")."""
    return datetime.fromisoformat(iso).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _not_created(what: str) -> None:
    out.print(f"{what} is not created yet (`keel up` creates it)", highlight=False)


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, envvar="KEEL_DEBUG",
              help="On an unexpected error, print the traceback (also KEEL_DEBUG=1).")
def app(debug: bool) -> None:
    """keel: the data platform of a data-driven product."""
    global _debug
    _debug = debug


@app.command()
@click.argument("directory", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--example", default="shop", show_default=True, metavar="NAME", help="The example to start from.")
def init(directory: Path, example: str) -> None:
    """Create a new keel project in DIR from an example."""
    from keel.project.loading import copy_example

    if directory.exists() and any(directory.iterdir()):
        raise KeelError(f"{directory} exists and is not empty; pick a new folder")
    copy_example(directory, example)
    out.print(f"created {directory}; next: [bold]keel check -p {directory}[/bold] and "
              f"[bold]keel up -p {directory}[/bold]")


@app.command()
@project_options
def check(project: Path, profile: str | None) -> None:
    """Validate a project's declarations, and their schemas against the profile's lake and bus.

    Each mistake is reported once, with its file and line."""
    from keel.run.deployed import check_deployed
    from keel.project.loading import load_project

    p = load_project(project, profile)
    check_deployed(p.config, p.catalog)  # breaking schema changes; creates nothing
    counts = {k: len(v) for k, v in p.catalog.items.items()}
    out.print("[green]ok[/green]: " + ", ".join(f"{n} {k}s" for k, n in sorted(counts.items())))


@app.command()
@project_options
@click.option("--port", type=int, metavar="N", help="Gateway port (default: from the profile, 8000).")
def up(project: Path, profile: str | None, port: int | None) -> None:
    """Run the gateway, processors and scheduler.

    Until Ctrl-C or SIGTERM, which stop them cleanly."""
    from keel.run.host import Platform

    platform = Platform(_runtime(project, profile), port=port)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    platform.start()
    out.print(f"keel is up: gateway on [bold]{platform.url}[/bold] (OpenAPI at {platform.url}/openapi.json)")
    print_rows(platform.status(), "components", out)
    while not done.wait(1.0):
        if platform.errors:
            break
    out.print("stopping: the gateway first, then each processor after its batch in flight")
    platform.stop()
    if platform.errors:
        raise KeelError("a component failed: " + "; ".join(platform.errors))
    out.print("stopped cleanly")


@app.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path), metavar="DIR",
              help="Where to create the shop (default: a temporary folder).")
@click.option("--users", type=click.IntRange(min=1), default=3000, show_default=True, metavar="N",
              help="Simulated users.")
@click.option("--seed", type=int, default=7, show_default=True, metavar="N", help="Random seed of the simulation.")
@click.option("--aa", is_flag=True, help="An A/A run: the treatment changes nothing.")
def demo(directory: Path | None, users: int, seed: int, aa: bool) -> None:
    """Run the shop example with simulated users.

    On embedded engines, in a temporary folder (or --dir); the summary is read back from the
    engines."""
    from keel.cli.demo import run_demo

    summary = run_demo(directory, users=users, seed=seed, aa=aa, console=out)
    if not summary.ok:
        raise KeelError("the demo finished with problems: " + "; ".join(summary.problems))


@app.command()
@project_options
def status(project: Path, profile: str | None) -> None:
    """Streams, tables, views, job runs and checks.

    Each stream with the lag of each processor that reads it."""
    from keel.monitor.status import project_status

    for title, rows in project_status(_runtime(project, profile)).items():
        print_rows(rows, title, out)


@app.command()
@click.argument("query")
@project_options
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True, help="How to print the result.")
@click.option("--limit", type=click.IntRange(min=0), default=1000, show_default=True, metavar="N",
              help="Rows shown in the table format (0: all); csv, json and parquet have every row.")
@click.option("--output", type=click.Path(path_type=Path), metavar="FILE", help="The file for --format parquet.")
def sql(query: str, project: Path, profile: str | None, fmt: str, limit: int, output: Path | None) -> None:
    """Run SQL QUERY over the lake's tables, by name (DuckDB)."""
    from keel.monitor.status import created

    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE")
    rt = _runtime(project, profile)
    if not created(rt.config, "lake"):
        raise NotFoundError(f"the lake at {rt.config.lake} is not created yet, so it has no tables to query: "
                            "`keel up` creates it and lands the streams' events")
    result = rt.sql_session().query(query)
    if fmt == "table":
        shown = result if limit == 0 else result.slice(0, limit)
        print_rows(shown.to_pylist(), "result", out, empty="no rows")
        if shown.num_rows < result.num_rows:
            out.print(f"{shown.num_rows:,} of {result.num_rows:,} rows shown: --limit 0 shows them all, "
                      "--format csv or json prints every row", highlight=False)
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(result, sys.stdout.buffer)
    elif fmt == "json":
        sys.stdout.write(json.dumps(result.to_pylist(), default=str) + "\n")
    else:
        import pyarrow.parquet as pq

        pq.write_table(result, output)


@app.command()
@project_options
def tables(project: Path, profile: str | None) -> None:
    """The lake's tables: rows, size, files, last commit."""
    from keel.lake.sql import tables_summary
    from keel.monitor.status import created

    rt = _runtime(project, profile)
    if not created(rt.config, "lake"):
        return _not_created(f"the lake at {rt.config.lake}")
    rows = [{"table": r["table"], "rows": r["rows"], "size": r["size"], "files": r["files"], "version": r["version"],
             # the time to the minute and its age (the table's freshness), in words that wrap at 80 columns
             "last commit": f"{_minute(r['last_commit'])} ({r['freshness']})" if r["last_commit"] else "never"}
            for r in tables_summary(rt.lake)]
    print_rows(rows, "tables", out, empty="no tables yet: `keel up` lands the streams' events into them")


@app.command()
@click.argument("job")
@project_options
@click.option("--date", callback=_iso_time, metavar="ISO", help="Logical date, ISO 8601 (default: now).")
def run(job: str, project: Path, profile: str | None, date: datetime | None) -> None:
    """Run JOB now, through the scheduler.

    The run is recorded in the scheduler's run history."""
    from keel.jobs.embedded import EmbeddedScheduler
    from keel.jobs.run import scheduler_tasks

    rt = _runtime(project, profile)
    with EmbeddedScheduler(rt.state_dir / "scheduler.db", scheduler_tasks(rt.catalog, rt)) as scheduler:
        result = scheduler.trigger(job, date)
    print_rows([{"job": result.task, "state": result.state, "attempts": result.attempts, "error": result.error}],
               console=out)
    if result.state != "success":
        sys.exit(1)


@app.group(context_settings=CONTEXT, invoke_without_command=True)
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

    rt = _runtime(project, profile)
    tasks = scheduler_tasks(rt.catalog, rt)
    path = file_path(rt.config.state) / "scheduler.db"
    if not (create or path.exists()):
        yield None, tasks
        return
    with EmbeddedScheduler(path, tasks) as scheduler:
        yield scheduler, tasks


@app.command()
@project_options
def streams(project: Path, profile: str | None) -> None:
    """Streams on the bus, with records, lag and dead letters.

    The lag of each consumer group, and the dead letters still pending."""
    from keel.monitor.status import streams_overview

    print_rows(streams_overview(_runtime(project, profile)), "streams", out)


@app.command()
@click.argument("stream")
@project_options
@click.option("--last", type=click.IntRange(min=0), default=10, show_default=True, metavar="N",
              help="Records to show per partition.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records.")
def tail(stream: str, project: Path, profile: str | None, last: int, follow: bool) -> None:
    """Print STREAM's latest records, decoded.

    With --follow, the new ones as they come."""
    from keel.bus.ops import tail as tail_records
    from keel.monitor.status import stream_exists

    rt = _runtime(project, profile)
    rt.stream(stream.removesuffix(".dlq"))
    if not stream_exists(rt, stream):
        return _not_created(f"stream {stream}")
    printed = 0
    for record in tail_records(rt.bus, stream, last=last, follow=follow):
        out.print_json(json.dumps(record, default=str))
        printed += 1
    if not printed:
        out.print(f"no records in {stream} yet", highlight=False)


@app.command()
@click.argument("stream")
@click.argument("action", type=click.Choice(["show", "replay", "purge"]), default="show", metavar="[ACTION]")
@project_options
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, metavar="N",
              help="At most this many dead letters.")
def dlq(stream: str, action: str, project: Path, profile: str | None, limit: int) -> None:
    """Dead letters of STREAM. ACTION is show (the default: each with where it came from and why),
    replay (into STREAM, after the schema or the data is fixed) or purge."""
    from keel.bus.base import dlq_name
    from keel.bus.ops import dlq_purge, dlq_replay, dlq_show
    from keel.monitor.status import stream_exists

    rt = _runtime(project, profile)
    rt.stream(stream)
    dead = dlq_name(stream)
    if not stream_exists(rt, dead):
        out.print(f"no dead letters in {dead}: it is not created yet (`keel up` creates it)", highlight=False)
    elif action == "show":
        records = dlq_show(rt.bus, stream, limit=limit)
        for record in records:
            _print_dead_letter(dead, record)
        if not records:
            out.print(f"no dead letters in {dead}", highlight=False)
    elif action == "replay":
        out.print(f"replayed {dlq_replay(rt.bus, stream, limit=limit)} dead letter(s) into {stream}")
    else:
        out.print(f"purged {dlq_purge(rt.bus, stream)} dead letter(s) of {stream}")


def _print_dead_letter(dead: str, record: dict[str, Any]) -> None:
    """One dead letter as `dlq_show` gives it: where its record was, who failed on it and why, and the
    record's value (as JSON when it parsed)."""
    def known(value: Any) -> str:
        return "unknown" if value is None else str(value)

    failed = " in ".join(str(x) for x in (record.get("stage"), record.get("processor")) if x)
    out.print(f"{record.get('stream')} partition {known(record.get('partition'))} offset "
              f"{known(record.get('offset'))}" + (f", failed {failed}" if failed else "")
              + f" ({dead} offset {known(record.get('dlq_offset'))})", style="bold", highlight=False)
    out.print(Text(f"  reason: {record.get('reason') or 'not recorded'}"))
    value = record.get("value")
    if isinstance(value, (dict, list)):
        out.print_json(json.dumps(value, default=str))
    else:
        out.print(Text(f"  value: {value!r}"))


@app.group(context_settings=CONTEXT)
def lake() -> None:
    """Lake table maintenance."""


@lake.command("maintain")
@click.argument("names", nargs=-1, metavar="[TABLE]...")
@project_options
@click.option("--all", "all_tables", is_flag=True, help="Every table, needed or not.")
def lake_maintain(names: tuple[str, ...], project: Path, profile: str | None, all_tables: bool) -> None:
    """Compact, vacuum and checkpoint lake tables.

    Compacts small files, vacuums unreferenced ones (7-day retention guard) and writes a
    checkpoint. Without TABLE, the tables that need it."""
    from keel.lake.maintain import needs_maintenance

    lake_ = _runtime(project, profile).lake
    chosen = list(names) or [t for t in lake_.list_tables() if all_tables or needs_maintenance(lake_.describe(t))]
    if not chosen:
        out.print("no table needs maintenance (use --all to force)")
        return
    shown = ("table", "files_before", "files_after", "files_vacuumed", "checkpoint_version", "seconds")
    rows: list[dict[str, object]] = [dict(lake_.maintain(name)) for name in chosen]
    print_rows([{k: r[k] for k in shown} for r in rows], "maintenance", out)


@app.command()
@click.argument("processor")
@click.option("--from", "start", required=True, metavar="OFFSET|TIME",
              help="An offset (every partition) or an ISO 8601 time.")
@project_options
def replay(processor: str, start: str, project: Path, profile: str | None) -> None:
    """Rebuild PROCESSOR's tables and views from the bus.

    Stop the processor first."""
    from keel.streaming.replay import find_processor, replay as run_replay

    ctx = click.get_current_context()
    when = None if start.isdigit() else _iso_time(ctx, next(p for p in ctx.command.params if p.name == "start"), start)
    rt = _runtime(project, profile)
    with out.status(f"replaying {processor} ...") as progress:
        result = run_replay(find_processor(rt.catalog, processor), rt.engines,
                            from_offset=int(start) if start.isdigit() else None, from_time=when,
                            progress=lambda n: progress.update(f"replaying {processor}: {n:,} records"))
    print_rows([{"processor": result.processor, "records": result.records,
                 "tables": ", ".join(f"{k}={v} rows" for k, v in result.tables.items()) or "-",
                 "resumes at": ", ".join(f"p{p}:{o}" for p, o in sorted(result.end_offsets.items()))}], "replay", out)


@app.group(context_settings=CONTEXT)
def experiments() -> None:
    """A/B experiments."""


@experiments.command("report")
@click.argument("name")
@project_options
def experiments_report(name: str, project: Path, profile: str | None) -> None:
    """Analyse experiment NAME from the lake.

    Lift, confidence interval, p-value and sample-ratio check."""
    from keel.project.exposures import EXPOSURES
    from keel.experiments.report import experiment_report
    from keel.monitor.status import created

    rt = _runtime(project, profile)
    if name in rt.catalog.experiments and not (created(rt.config, "lake") and EXPOSURES in rt.lake.list_tables()):
        out.print(f"no exposures of {name} yet: the {EXPOSURES} table is not created yet "
                  "(`keel up` serves the experiment's endpoints and lands each exposure)", highlight=False)
        return
    for metric, result in experiment_report(rt.sql_session(), rt.catalog, name).items():
        out.print(f"[bold]{name} / {metric}[/bold]")
        for line in result.summary_lines():
            out.print("  " + line)


@app.group(context_settings=CONTEXT)
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


@app.group(context_settings=CONTEXT)
def keys() -> None:
    """API keys of the gateway.

    Only their hashes are stored, in the project's state folder."""


def _state_dir(project: Path, profile: str | None) -> Path:
    from keel.project.config import load_config
    from keel.schemes import file_path

    return file_path(load_config(project, profile).state)


@keys.command("create")
@click.argument("name")
@click.option("--scope", "-s", "scopes", multiple=True, required=True, metavar="SCOPE",
              help="ingest:<stream>, read:<view>, call:<endpoint>, admin or *; wildcards allowed (read:*); "
                   "repeat for several.")
@click.option("--rate", type=float, metavar="N", help="Requests per second (default: the gateway's, 1000).")
@project_options
def keys_create(name: str, scopes: tuple[str, ...], rate: float | None, project: Path, profile: str | None) -> None:
    """Create an API key for NAME.

    It is printed once; only its hash is stored."""
    from keel.serve.keys import create_key

    record, key = create_key(_state_dir(project, profile), name, list(scopes), rate)
    err.print(f"created key {record.id} ({record.name}) with scopes {', '.join(record.scopes)}; "
              "store it now, it is not shown again:", highlight=False)
    print(key)


@keys.command("list")
@project_options
def keys_list(project: Path, profile: str | None) -> None:
    """The keys: id, name, scopes, rate, created, revoked.

    Never the keys themselves."""
    from keel.serve.keys import list_keys

    print_rows([{"id": r.id, "name": r.name, "scopes": " ".join(r.scopes), "rate": r.rate or "default",
                 "created": _minute(r.created), "revoked": _minute(r.revoked) if r.revoked else ""}
                for r in list_keys(_state_dir(project, profile))],
               "keys", out, empty="no keys yet: create one with `keel keys create NAME --scope SCOPE`")


@keys.command("revoke")
@click.argument("key")
@project_options
def keys_revoke(key: str, project: Path, profile: str | None) -> None:
    """Revoke KEY, by its id or name.

    A running gateway refuses it within a second."""
    from keel.serve.keys import revoke_key

    record = revoke_key(_state_dir(project, profile), key)
    out.print(f"revoked key {record.id} ({record.name})")


def main(argv: list[str] | None = None) -> None:
    """The `keel` entry point: runs `app` and turns what it raises into a message and an exit code."""
    try:
        app.main(args=argv, prog_name="keel")
    except ProjectError as exc:
        err.print(f"[red]the project has {len(exc.problems)} problem(s):[/red]")
        for p in exc.problems:
            err.print(Text(f"  {p}"), soft_wrap=True)
        sys.exit(1)
    except KeelError as exc:
        err.print(Text.assemble(("error: ", "red"), str(exc)), soft_wrap=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last resort: a bug, said as one
        if _debug:
            traceback.print_exc()
        err.print(Text.assemble(("error: ", "red"), f"{type(exc).__name__}: {exc}"), soft_wrap=True)
        err.print("this is a bug in keel, please report it"
                  + ("" if _debug else " with the traceback that `keel --debug ...` (or KEEL_DEBUG=1) prints"),
                  highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
