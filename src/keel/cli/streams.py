"""`keel streams`, `tail`, `dlq` and `replay`: what is on the bus and rebuilding from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.text import Text

from keel.cli.base import iso_time, not_created, open_runtime, out, project_options
from keel.cli.render import print_rows

if TYPE_CHECKING:
    pass


@click.command()
@project_options
def streams(project: Path, profile: str | None) -> None:
    """Streams on the bus, with records, lag and dead letters.

    The lag of each consumer group, and the dead letters still pending."""
    from keel.monitor.status import streams_overview

    print_rows(streams_overview(open_runtime(project, profile)), "streams", out)


@click.command()
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

    rt = open_runtime(project, profile)
    rt.stream(stream.removesuffix(".dlq"))
    if not stream_exists(rt, stream):
        return not_created(f"stream {stream}")
    printed = 0
    for record in tail_records(rt.bus, stream, last=last, follow=follow):
        out.print_json(json.dumps(record, default=str))
        printed += 1
    if not printed:
        out.print(f"no records in {stream} yet", highlight=False)


@click.command()
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

    rt = open_runtime(project, profile)
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


@click.command()
@click.argument("processor")
@click.option("--from", "start", required=True, metavar="OFFSET|TIME",
              help="An offset (every partition) or an ISO 8601 time.")
@project_options
def replay(processor: str, start: str, project: Path, profile: str | None) -> None:
    """Rebuild PROCESSOR's tables and views from the bus.

    Stop the processor first."""
    from keel.streaming.replay import find_processor
    from keel.streaming.replay import replay as run_replay

    ctx = click.get_current_context()
    when = None if start.isdigit() else iso_time(ctx, next(p for p in ctx.command.params if p.name == "start"), start)
    rt = open_runtime(project, profile)
    with out.status(f"replaying {processor} ...") as progress:
        result = run_replay(find_processor(rt.catalog, processor), rt.engines,
                            from_offset=int(start) if start.isdigit() else None, from_time=when,
                            progress=lambda n: progress.update(f"replaying {processor}: {n:,} records"))
    print_rows([{"processor": result.processor, "records": result.records,
                 "tables": ", ".join(f"{k}={v} rows" for k, v in result.tables.items()) or "-",
                 "resumes at": ", ".join(f"p{p}:{o}" for p, o in sorted(result.end_offsets.items()))}], "replay", out)
