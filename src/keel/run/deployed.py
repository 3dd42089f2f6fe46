"""`keel check` against what is deployed: the declared schemas against the tables the lake holds and
the schema versions of the events on the bus, and the jobs' SQL against the profile's batch engine.

Apart from `keel.project.checks` (which reads the declarations only) because it opens the engines.
"""

from __future__ import annotations

import uuid

import polars as pl
import pyarrow as pa

from keel.bus import Bus, open_bus
from keel.batch import check_translatable
from keel.errors import Problem, ProjectError, QueryError, SchemaError
from keel.jobs.run import job_sql
from keel.lake import open_lake
from keel.lake._conform import canonical_schema, conform
from keel.project.catalog import Catalog
from keel.project.checks import problem_at
from keel.project.config import Config
from keel.project.declare import Aggregation, Processor
from keel.project.schema import field_problems, table_schema
from keel.schemes import file_path
from keel.streaming.stateful import WindowOperator


def deployed_problems(catalog: Catalog, lake_url: str, bus_url: str | None = None) -> list[Problem]:
    """Breaking changes of the declared schemas against the tables the lake holds and the schema
    versions of the events on the bus: one Problem per change, naming the field and the fix.

    Allowed: new optional fields, and dropping optional ones. Refused: a removed required field, a
    type the table's column cannot widen to, an optional field made required, a new required field,
    and a declared ``schema_version`` older than the events on the bus. A lake or bus that does not
    exist yet (a fresh project) is not created: it has nothing to break.
    """
    out: list[Problem] = []
    if _exists(lake_url):
        lake = open_lake(lake_url)
        tables = set(lake.list_tables())
        for writer, table, declared in _declared_tables(catalog):
            if table in tables:
                out += [problem_at(writer, msg, hint)
                        for msg, hint in _breaking(declared, lake.describe(table).schema, table)]
    if bus_url and _exists(bus_url):
        bus = open_bus(bus_url)
        try:
            out += _bus_versions(catalog, bus)
        finally:
            bus.close()
    return out


def _exists(url: str) -> bool:
    """False for a local folder that does not exist yet (never created here); True for any other engine."""
    return not (url.startswith("file://") and not file_path(url).exists())


def _declared_tables(catalog: Catalog) -> list[tuple[Processor | Aggregation, str, pa.Schema]]:
    """(writer, table, Arrow schema) of each table whose schema is known before any event: a landing's
    (the stream's fields), an aggregation's, and a stateless processor's (its function over an empty
    batch, as the processor itself finds it). Stateful and enriching processors show theirs only
    when they run, so their tables are checked at write time."""
    out: list[tuple[Processor | Aggregation, str, pa.Schema]] = []
    for p in catalog.processors.values():
        names = [t.name for t in p.into if t.kind == "table"]
        if not names or p.stream.name not in catalog.streams or field_problems(p.stream.schema):
            continue
        if isinstance(p, Aggregation):
            try:
                schema = WindowOperator(p)._empty_output().to_arrow().schema
            except Exception:  # noqa: BLE001 - a broken aggregation is reported by the checks above
                continue
        elif p.state_key is not None or p.lookups:
            continue
        elif p.transform is None:
            schema = table_schema(p.stream.schema)
        else:
            try:
                result = p.transform(pl.from_arrow(table_schema(p.stream.schema).empty_table()))
                if not isinstance(result, pl.DataFrame) or not result.width:
                    continue
                schema = result.to_arrow().schema
            except Exception:  # noqa: BLE001 - user code that needs data: its tables are checked at write time
                continue
        out += [(p, name, schema) for name in names]
    return out


def _breaking(declared: pa.Schema, current: pa.Schema, table: str) -> list[tuple[str, str]]:
    """(message, fix) of each breaking difference; the type rules are the lake's own (`conform`)."""
    declared = canonical_schema(declared)
    out: list[tuple[str, str]] = []
    for f in current:
        if f.name not in declared.names and not f.nullable:
            out.append((f"removes required field {f.name!r} of table {table!r}, which every row of the table has",
                        f"keep {f.name!r}; to stop sending it make it optional ({f.name}: ... | None = None)"))
    for f in declared:
        if f.name not in current.names:
            if not f.nullable:
                out.append((f"adds required field {f.name!r}, which the rows of table {table!r} and the events "
                            f"already on the bus lack", f"make it optional ({f.name}: ... | None = None)"))
            continue
        column = pa.schema([current.field(f.name)])
        try:
            conform(pa.schema([f]).empty_table(), column, table)
        except SchemaError:
            out.append((f"changes field {f.name!r} from {column.field(0).type} to {f.type}, which table {table!r} "
                        f"cannot hold", f"add a new optional field with the new type instead, and keep {f.name!r}"))
            continue
        if not f.nullable and current.field(f.name).nullable:
            out.append((f"makes field {f.name!r} required, but table {table!r} holds rows (and the bus events) "
                        f"without it", f"keep it optional ({f.name}: ... | None = None)"))
    if not out:
        try:  # anything else the lake would refuse at write time (e.g. what looks like a rename)
            conform(declared.empty_table(), current, table)
        except SchemaError as exc:
            out.append((str(exc), ""))
    return out


def _bus_versions(catalog: Catalog, bus: Bus) -> list[Problem]:
    """A stream declared at an older `schema_version` than the newest of its events on the bus."""
    out: list[Problem] = []
    existing = set(bus.list_streams())
    for s in catalog.streams.values():
        if s.name not in existing:
            continue
        info = bus.describe(s.name)
        last = {p.partition: p.end_offset - 1 for p in info.partitions if p.end_offset > p.start_offset}
        if not last:
            continue
        # pinned partitions and no commit: the throwaway group leaves nothing behind (as `keel tail`)
        consumer = bus.consumer(s.name, f"keel-check-{uuid.uuid4().hex[:8]}", partitions=sorted(last))
        versions: list[int] = []
        try:
            for p, o in last.items():
                consumer.seek(p, o)
            got: set[int] = set()
            for _ in range(40):
                batch = consumer.poll(len(last) * 16, 0.25)
                for p, headers in zip(batch.column("partition").to_pylist(), batch.column("headers").to_pylist()):
                    got.add(p)
                    raw = dict(headers or []).get("schema_version")
                    if raw is not None and raw.isdigit():
                        versions.append(int(raw))
                if got >= set(last):
                    break
        finally:
            consumer.close()
        declared = s.schema.schema_version
        if versions and max(versions) > declared:
            out.append(problem_at(s, f"declares {s.schema.__name__}.schema_version = {declared}, but the bus holds "
                                     f"its events of schema_version {max(versions)}, written by newer code",
                                  "deploy the newer declaration (or raise schema_version above it for a new one)"))
    return out


def batch_problems(catalog: Catalog, batch_url: str) -> list[Problem]:
    """On a Spark batch engine, each job whose SQL keel cannot translate, naming the constructs.

    A job's SQL is what its function returns; `keel.jobs.run.job_sql` gets it by calling the function
    with a context whose `sql` and `read` raise, for a fixed logical date, opening no engine. A function
    that needs data before it returns its SQL (or returns a frame) is skipped without a problem: its
    query is checked when it runs (`UntranslatableError`, naming the same constructs). On DuckDB
    every job's SQL runs as written: nothing to check.
    """
    if not batch_url.startswith("spark://"):
        return []
    out: list[Problem] = []
    for job in catalog.jobs.values():
        sql = job_sql(job)
        if sql is None:
            continue
        try:
            constructs = check_translatable(sql)
        except QueryError as exc:
            out.append(problem_at(job, f"returns SQL that keel cannot read: {exc}", "fix the query"))
            continue
        if constructs:
            out.append(problem_at(job, f"returns SQL that cannot run on the Spark batch engine ({batch_url}): "
                                       + "; ".join(constructs),
                                  "rewrite those parts in SQL both engines share, or return a frame"))
    return out


def check_deployed(config: Config, catalog: Catalog) -> None:
    """`keel check`'s second half: raise ``ProjectError`` listing `deployed_problems` against the
    profile's lake and bus, and `batch_problems` against its batch engine."""
    problems = deployed_problems(catalog, config.lake, config.bus) + batch_problems(catalog, config.batch)
    if problems:
        raise ProjectError(problems)
