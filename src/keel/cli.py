"""The `keel` command: parse, call the library, print. No logic of its own.

A user mistake (KeelError) is printed as one clear message with exit code 1, never a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table as RichTable

from keel.errors import KeelError, ProjectError

app = typer.Typer(help="keel: the data platform of a data-driven product.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
experiments_app = typer.Typer(help="A/B experiments.", no_args_is_help=True)
app.add_typer(experiments_app, name="experiments")
lake_app = typer.Typer(help="Lake table maintenance.", no_args_is_help=True)
app.add_typer(lake_app, name="lake")
keys_app = typer.Typer(help="API keys of the gateway (stored hashed in the project's state folder).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
out = Console()
err = Console(stderr=True)

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="the project folder (holding keel.toml)")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", help="the keel.toml profile (default: local or KEEL_PROFILE)")]


def _runtime(project: Path, profile: str | None) -> Any:
    from keel.runtime import Runtime

    return Runtime.open(project, profile)


def print_rows(rows: list[dict[str, Any]], title: str | None = None, console: Console | None = None) -> None:
    console = console or out
    if not rows:
        console.print(f"[dim]no {title or 'rows'}[/dim]")
        return
    table = RichTable(title=title)
    for col in rows[0]:
        table.add_column(str(col))
    for r in rows:
        table.add_row(*["" if v is None else str(v) for v in r.values()])
    console.print(table)


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="folder to create")],
         example: Annotated[str, typer.Option(help="the example to start from")] = "shop") -> None:
    """Create a new keel project from an example."""
    from keel.project import copy_example

    if directory.exists() and any(directory.iterdir()):
        raise KeelError(f"{directory} exists and is not empty; pick a new folder")
    copy_example(directory, example)
    out.print(f"created {directory}; next: [bold]keel check -p {directory}[/bold] and [bold]keel up -p {directory}[/bold]")


@app.command()
def check(project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """Validate a project's declarations: each mistake once, with file and line."""
    from keel.project import load_project

    p = load_project(project, profile)
    counts = {k: len(v) for k, v in p.catalog.items.items()}
    out.print("[green]ok[/green]: " + ", ".join(f"{n} {k}s" for k, n in sorted(counts.items())))


@app.command()
def up(project: ProjectOpt = Path("."), profile: ProfileOpt = None,
       port: Annotated[int | None, typer.Option(help="gateway port (default: from the profile, 8000)")] = None) -> None:
    """Run the project's gateway, processors and scheduler until Ctrl-C or SIGTERM."""
    from keel.platform import Platform

    platform = Platform(_runtime(project, profile), port=port)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    platform.start()
    out.print(f"keel is up: gateway on [bold]{platform.url}[/bold] (OpenAPI at {platform.url}/openapi.json)")
    print_rows(platform.status(), "components")
    while not done.wait(1.0):
        if platform.errors:
            break
    out.print("stopping: the gateway first, then each processor after its batch in flight")
    platform.stop()
    if platform.errors:
        raise KeelError("a component failed: " + "; ".join(platform.errors))
    out.print("stopped cleanly")


@app.command()
def demo(directory: Annotated[Path | None, typer.Option("--dir", help="where to create the shop (default: a temp folder)")] = None,
         users: Annotated[int, typer.Option(help="simulated users")] = 3000,
         seed: Annotated[int, typer.Option(help="random seed of the simulation")] = 7,
         aa: Annotated[bool, typer.Option("--aa", help="an A/A run: the treatment changes nothing")] = False) -> None:
    """Create the shop, run it on embedded engines, simulate its users and print what the engines hold."""
    from keel.demo import run_demo

    summary = run_demo(directory, users=users, seed=seed, aa=aa, console=out)
    if not summary.ok:
        raise KeelError("the demo finished with problems: " + "; ".join(summary.problems))


@app.command()
def status(project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """Streams and their lag per processor, tables, views, job runs and checks."""
    from keel.monitor.status import project_status

    for title, rows in project_status(_runtime(project, profile)).items():
        print_rows(rows, title)


@app.command()
def sql(query: Annotated[str, typer.Argument(help="SQL over the lake's tables, by name")],
        project: ProjectOpt = Path("."), profile: ProfileOpt = None,
        format: Annotated[str, typer.Option(help="table, csv, json or parquet")] = "table",
        output: Annotated[Path | None, typer.Option(help="file for --format parquet")] = None) -> None:
    """Run SQL over the lake (DuckDB)."""
    result = _runtime(project, profile).sql_session().query(query)
    if format == "table":
        print_rows(result.to_pylist()[:1000], "result")
    elif format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(result, sys.stdout.buffer)
    elif format == "json":
        sys.stdout.write(json.dumps(result.to_pylist(), default=str) + "\n")
    elif format == "parquet":
        if output is None:
            raise KeelError("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        pq.write_table(result, output)
    else:
        raise KeelError(f"unknown format {format!r}: use table, csv, json or parquet")


@app.command()
def tables(project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """The lake's tables: rows, size, files, last commit."""
    from keel.lake.sql import tables_summary

    print_rows(tables_summary(_runtime(project, profile).lake), "tables")


@app.command()
def run(job: Annotated[str, typer.Argument(help="the job to run")], project: ProjectOpt = Path("."),
        profile: ProfileOpt = None,
        date: Annotated[str | None, typer.Option(help="logical date, ISO 8601 (default: now)")] = None) -> None:
    """Run one job now, through the scheduler (recorded in its run history)."""
    from keel.jobs.embedded import EmbeddedScheduler
    from keel.jobs.run import scheduler_tasks

    rt = _runtime(project, profile)
    when = datetime.fromisoformat(date).astimezone(timezone.utc) if date else None
    with EmbeddedScheduler(rt.state_dir / "scheduler.db", scheduler_tasks(rt)) as scheduler:
        result = scheduler.trigger(job, when)
    print_rows([{"job": result.task, "state": result.state, "attempts": result.attempts, "error": result.error}])
    if result.state != "success":
        raise typer.Exit(1)


@app.command()
def streams(project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """Streams on the bus: records, lag of each consumer group, pending dead letters."""
    from keel.bus.ops import list_streams

    rt = _runtime(project, profile)
    rt.ensure()
    print_rows([{"stream": s.name, "partitions": s.partitions, "records": s.records,
                 "lag per group": ", ".join(f"{g}={n}" for g, n in s.lag.items()),
                 "dead letters": s.dead_letters_pending} for s in list_streams(rt.bus)], "streams")


@app.command()
def tail(stream: Annotated[str, typer.Argument(help="the stream")], project: ProjectOpt = Path("."),
         profile: ProfileOpt = None,
         last: Annotated[int, typer.Option(help="records to show per partition")] = 10,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new records")] = False) -> None:
    """Print a stream's latest records (decoded), and with --follow the new ones as they come."""
    from keel.bus.ops import tail as tail_records

    rt = _runtime(project, profile)
    rt.stream(stream) if not stream.endswith(".dlq") else rt.stream(stream[:-4])
    for record in tail_records(rt.bus, stream, last=last, follow=follow):
        out.print_json(json.dumps(record, default=str))


@app.command()
def dlq(stream: Annotated[str, typer.Argument(help="the stream whose dead letters to handle")],
        action: Annotated[str, typer.Argument(help="show, replay or purge")] = "show",
        project: ProjectOpt = Path("."), profile: ProfileOpt = None,
        limit: Annotated[int, typer.Option(help="at most this many records")] = 100) -> None:
    """Dead letters of a stream: show them, replay them into the stream, or purge them."""
    from keel.bus.ops import dlq_purge, dlq_replay, dlq_show

    rt = _runtime(project, profile)
    rt.stream(stream)
    if action == "show":
        for record in dlq_show(rt.bus, stream, limit=limit):
            out.print_json(json.dumps(record, default=str))
    elif action == "replay":
        out.print(f"replayed {dlq_replay(rt.bus, stream, limit=limit)} dead letter(s) into {stream}")
    elif action == "purge":
        out.print(f"purged {dlq_purge(rt.bus, stream)} dead letter(s) of {stream}")
    else:
        raise KeelError(f"unknown action {action!r}: use show, replay or purge")


@lake_app.command("maintain")
def lake_maintain(tables: Annotated[list[str] | None, typer.Argument(help="tables (default: those that need it)")] = None,
                  project: ProjectOpt = Path("."), profile: ProfileOpt = None,
                  all_tables: Annotated[bool, typer.Option("--all", help="every table, needed or not")] = False) -> None:
    """Compact small files, vacuum unreferenced ones (7-day retention guard) and checkpoint."""
    from keel.lake.maintain import maintain, needs_maintenance

    lake = _runtime(project, profile).lake
    names = tables or [t for t in lake.list_tables() if all_tables or needs_maintenance(lake.describe(t))]
    if not names:
        out.print("no table needs maintenance (use --all to force)")
    shown = ("table", "files_before", "files_after", "files_vacuumed", "checkpoint_version", "seconds")
    rows = [maintain(lake, name) for name in names]
    print_rows([{k: r[k] for k in shown} for r in rows], "maintenance")


@app.command()
def replay(processor: Annotated[str, typer.Argument(help="the processor or aggregation to rebuild")],
           start: Annotated[str, typer.Option("--from", help="an offset (every partition) or an ISO 8601 time")],
           project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """Rebuild a processor's tables and views from the bus history (stop the processor first)."""
    from keel.streaming.replay import replay as run_replay

    rt = _runtime(project, profile)
    when = None if start.isdigit() else datetime.fromisoformat(start.replace("Z", "+00:00"))
    with out.status(f"replaying {processor} ...") as status:
        result = run_replay(rt, processor, from_offset=int(start) if start.isdigit() else None, from_time=when,
                            progress=lambda n: status.update(f"replaying {processor}: {n:,} records"))
    print_rows([{"processor": result.processor, "records": result.records,
                 "tables": ", ".join(f"{k}={v} rows" for k, v in result.tables.items()) or "-",
                 "resumes at": ", ".join(f"p{p}:{o}" for p, o in sorted(result.end_offsets.items()))}], "replay")


@experiments_app.command("report")
def experiments_report(name: Annotated[str, typer.Argument(help="the experiment")], project: ProjectOpt = Path("."),
                       profile: ProfileOpt = None) -> None:
    """Analyse an experiment from the lake: lift, confidence interval, p-value, sample-ratio check."""
    from keel.experiments.report import experiment_report

    for metric, result in experiment_report(_runtime(project, profile), name).items():
        out.print(f"[bold]{name} / {metric}[/bold]")
        for line in result.summary_lines():
            out.print("  " + line)


def _state_dir(project: Path, profile: str | None) -> Path:
    from keel.config import file_path, load_config

    path = file_path(load_config(project, profile).state)
    path.mkdir(parents=True, exist_ok=True)
    return path


@keys_app.command("create")
def keys_create(name: Annotated[str, typer.Argument(help="who or what the key is for")],
                scope: Annotated[list[str], typer.Option("--scope", "-s", help="ingest:<stream>, read:<view>, "
                                 "call:<endpoint>, admin or *; wildcards allowed (read:*); repeat for several")],
                rate: Annotated[float | None, typer.Option(help="requests per second (default: the gateway's, 1000)")] = None,
                project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    from keel.serve.keys import create_key

    record, key = create_key(_state_dir(project, profile), name, scope, rate)
    err.print(f"created key {record.id} ({record.name}) with scopes {', '.join(record.scopes)}; "
              "store it now, it is not shown again:")
    print(key)


@keys_app.command("list")
def keys_list(project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """The keys: id, name, scopes, rate, created, revoked (never the keys themselves)."""
    from keel.serve.keys import list_keys

    print_rows([{"id": r.id, "name": r.name, "scopes": " ".join(r.scopes), "rate": r.rate or "default",
                 "created": r.created, "revoked": r.revoked or ""} for r in list_keys(_state_dir(project, profile))],
               "keys")


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="the key's id or name")],
                project: ProjectOpt = Path("."), profile: ProfileOpt = None) -> None:
    """Revoke a key; a running gateway refuses it within a second."""
    from keel.serve.keys import revoke_key

    record = revoke_key(_state_dir(project, profile), key)
    out.print(f"revoked key {record.id} ({record.name})")


def main() -> None:
    try:
        app()
    except ProjectError as exc:
        err.print(f"[red]the project has {len(exc.problems)} problem(s):[/red]")
        for p in exc.problems:
            err.print(f"  {p}", markup=False, highlight=False)
        sys.exit(1)
    except KeelError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
