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
import signal
import sys
import threading
import traceback
from pathlib import Path

import click
from rich.text import Text

from keel.cli import jobs as jobs_commands
from keel.cli import streams as stream_commands
from keel.cli.base import CONTEXT, err, minute, not_created, open_runtime, out, project_options
from keel.cli.render import print_rows
from keel.errors import KeelError, NotFoundError, ProjectError

__all__ = ["app", "main"]

_debug = False


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
    from keel.project.loading import load_project
    from keel.run.deployed import check_deployed

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

    platform = Platform(open_runtime(project, profile), port=port)
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

    for title, rows in project_status(open_runtime(project, profile)).items():
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
    rt = open_runtime(project, profile)
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

    rt = open_runtime(project, profile)
    if not created(rt.config, "lake"):
        return not_created(f"the lake at {rt.config.lake}")
    rows = [{"table": r["table"], "rows": r["rows"], "size": r["size"], "files": r["files"], "version": r["version"],
             # the time to the minute and its age (the table's freshness), in words that wrap at 80 columns
             "last commit": f"{minute(r['last_commit'])} ({r['freshness']})" if r["last_commit"] else "never"}
            for r in tables_summary(rt.lake)]
    print_rows(rows, "tables", out, empty="no tables yet: `keel up` lands the streams' events into them")


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

    lake_ = open_runtime(project, profile).lake
    chosen = list(names) or [t for t in lake_.list_tables() if all_tables or needs_maintenance(lake_.describe(t))]
    if not chosen:
        out.print("no table needs maintenance (use --all to force)")
        return
    shown = ("table", "files_before", "files_after", "files_vacuumed", "checkpoint_version", "seconds")
    rows: list[dict[str, object]] = [dict(lake_.maintain(name)) for name in chosen]
    print_rows([{k: r[k] for k in shown} for r in rows], "maintenance", out)


@app.group(context_settings=CONTEXT)
def experiments() -> None:
    """A/B experiments."""


@experiments.command("report")
@click.argument("name")
@project_options
def experiments_report(name: str, project: Path, profile: str | None) -> None:
    """Analyse experiment NAME from the lake.

    Lift, confidence interval, p-value and sample-ratio check."""
    from keel.experiments.report import experiment_report
    from keel.monitor.status import created
    from keel.project.exposures import EXPOSURES

    rt = open_runtime(project, profile)
    if name in rt.catalog.experiments and not (created(rt.config, "lake") and EXPOSURES in rt.lake.list_tables()):
        out.print(f"no exposures of {name} yet: the {EXPOSURES} table is not created yet "
                  "(`keel up` serves the experiment's endpoints and lands each exposure)", highlight=False)
        return
    for metric, result in experiment_report(rt.sql_session(), rt.catalog, name).items():
        out.print(f"[bold]{name} / {metric}[/bold]")
        for line in result.summary_lines():
            out.print("  " + line)


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
                 "created": minute(r.created), "revoked": minute(r.revoked) if r.revoked else ""}
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


for _command in (jobs_commands.run, jobs_commands.jobs, jobs_commands.deploy, stream_commands.streams,
                 stream_commands.tail, stream_commands.dlq, stream_commands.replay):
    app.add_command(_command)


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
