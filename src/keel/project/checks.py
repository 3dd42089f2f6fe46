"""What `keel check` finds wrong in a catalog: one Problem per mistake, at its declaration."""

from __future__ import annotations

from typing import Any

from keel.project.catalog import Catalog, valid_name
from keel.errors import Problem
from keel.project.schema import EVENT_DATE, EVENT_ID, EVENT_TIME, event_fields, field_problems


def _at(decl: Any, message: str, hint: str = "") -> Problem:
    return Problem(message=f"{decl.kind} {decl.name!r}: {message}", file=decl.file, line=decl.line, hint=hint)


def all_problems(catalog: Catalog) -> list[Problem]:
    problems: list[Problem] = []
    for dup in catalog.duplicates:
        problems.append(_at(dup, "declared twice", "give each declaration a unique name"))
    for decl in catalog.all():
        if not valid_name(decl.name):
            problems.append(_at(decl, "bad name", "use lower_snake_case: a-z, 0-9 and _, starting with a letter"))
    problems += _streams(catalog) + _processors(catalog) + _jobs(catalog)
    problems += _experiments(catalog) + _endpoints(catalog) + _checks(catalog)
    return problems


def _known_tables(catalog: Catalog) -> set[str]:
    return set(catalog.tables)


def _streams(catalog: Catalog) -> list[Problem]:
    out = []
    for s in catalog.streams.values():
        for msg in field_problems(s.schema):
            out.append(_at(s, f"schema {s.schema.__name__}: {msg}"))
        names = [n for n, _, _ in event_fields(s.schema)]
        if s.key is not None and s.key not in names:
            out.append(_at(s, f"key {s.key!r} is not a field of {s.schema.__name__}", f"fields: {', '.join(names)}"))
        if s.partitions < 1:
            out.append(_at(s, f"partitions must be at least 1, not {s.partitions}"))
    return out


def _processors(catalog: Catalog) -> list[Problem]:
    out = []
    for p in catalog.processors.values():
        if p.stream.name not in catalog.streams:
            out.append(_at(p, f"reads stream {p.stream.name!r}, which is not declared in this project"))
        for target in p.into:
            if target.name not in catalog.of(target.kind):
                out.append(_at(p, f"writes {target.kind} {target.name!r}, which is not declared in this project"))
        if p.kind == "aggregation":
            names = [n for n, _, _ in event_fields(p.stream.schema)] + [EVENT_ID, EVENT_TIME, EVENT_DATE]
            if p.by not in names:
                out.append(_at(p, f"groups by {p.by!r}, not a field of {p.stream.schema.__name__}",
                               f"fields: {', '.join(names)}"))
            for col, measure in p.measures.items():
                if measure.column is not None and measure.column not in names:
                    out.append(_at(p, f"measure {col!r} reads unknown field {measure.column!r}"))
            if p.window.size <= 0:
                out.append(_at(p, "window size must be positive"))
    writers: dict[str, str] = {}
    for p in catalog.processors.values():
        for t in p.into:
            if t.kind == "table" and t.name in writers:
                out.append(_at(p, f"table {t.name!r} is already written by {writers[t.name]!r}",
                               "a lake table has one writer; write to another table"))
            writers.setdefault(t.name, p.name)
    return out


def _jobs(catalog: Catalog) -> list[Problem]:
    from keel.jobs.base import find_cycle, validate_cron

    out = []
    readable = _known_tables(catalog)
    for j in catalog.jobs.values():
        if j.schedule is not None:
            err = validate_cron(j.schedule)
            if err:
                out.append(_at(j, f"bad schedule {j.schedule!r}: {err}", "use 5 cron fields, e.g. '0 3 * * *'"))
        for name in j.inputs:
            if name not in readable:
                out.append(_at(j, f"reads table {name!r}, which is not declared",
                               f"declared tables: {', '.join(sorted(readable)) or 'none'}"))
        if j.output is not None and j.output.name not in catalog.of(j.output.kind):
            out.append(_at(j, f"writes {j.output.kind} {j.output.name!r}, which is not declared"))
        if j.output is not None and j.output.kind == "view" and not j.key:
            out.append(_at(j, "writes a view but names no key column", "pass key='<column>' to @keel.job"))
    cycle = find_cycle(catalog.job_upstream())
    if cycle:
        first = catalog.jobs[cycle[0]]
        out.append(_at(first, "jobs depend on each other in a cycle: " + " -> ".join(cycle),
                       "break the cycle: one of these jobs must not read another's output"))
    return out


def _experiments(catalog: Catalog) -> list[Problem]:
    out = []
    for e in catalog.experiments.values():
        if len(e.variants) < 2:
            out.append(_at(e, "needs at least two variants"))
        if any(w <= 0 for w in e.variants.values()):
            out.append(_at(e, "every variant weight must be positive"))
        if e.control not in e.variants:
            out.append(_at(e, f"control {e.control!r} is not one of its variants"))
        for m in e.metrics:
            if m not in catalog.metrics:
                out.append(_at(e, f"metric {m!r} is not declared", f"declared metrics: {', '.join(sorted(catalog.metrics)) or 'none'}"))
    for m in catalog.metrics.values():
        if m.table not in _known_tables(catalog):
            out.append(_at(m, f"reads table {m.table!r}, which is not declared"))
        if m.aggregate not in ("conversion", "sum"):
            out.append(_at(m, f"aggregate {m.aggregate!r} is unknown", "use 'conversion' or 'sum'"))
        if m.aggregate == "sum" and not m.value:
            out.append(_at(m, "a 'sum' metric needs value='<column>'"))
    return out


def _endpoints(catalog: Catalog) -> list[Problem]:
    out = []
    seen: dict[tuple[str, str], str] = {}
    for ep in catalog.endpoints.values():
        if ep.method not in ("GET", "POST", "PUT", "DELETE") or not ep.path.startswith("/"):
            out.append(_at(ep, f"bad route {ep.method} {ep.path!r}", "write it like 'GET /recommend/{user_id}'"))
        if ep.path.startswith("/v1/") or ep.path in ("/metrics", "/healthz", "/readyz", "/openapi.json"):
            out.append(_at(ep, f"path {ep.path!r} is reserved for keel's own routes"))
        if (ep.method, ep.path) in seen:
            out.append(_at(ep, f"route {ep.method} {ep.path} is already served by {seen[(ep.method, ep.path)]!r}"))
        seen[(ep.method, ep.path)] = ep.name
        if ep.experiment is not None and ep.experiment.name not in catalog.experiments:
            out.append(_at(ep, f"runs experiment {ep.experiment.name!r}, which is not declared"))
        for v in ep.reads:
            if v not in catalog.views:
                out.append(_at(ep, f"reads view {v!r}, which is not declared"))
    return out


def _checks(catalog: Catalog) -> list[Problem]:
    out = []
    for c in catalog.checks.values():
        if c.table not in _known_tables(catalog):
            out.append(_at(c, f"checks table {c.table!r}, which is not declared"))
        if c.within <= 0:
            out.append(_at(c, "`within` must be a positive duration"))
    return out


# -- against what is deployed: the lake's tables and the bus's records ------------------------------


def deployed_problems(catalog: Catalog, lake_url: str, bus_url: str | None = None) -> list[Problem]:
    """Breaking changes of the declared schemas against the tables the lake holds and the schema
    versions of the events on the bus: one Problem per change, naming the field and the fix.

    Allowed: new optional fields, and dropping optional ones. Refused: a removed required field, a
    type the table's column cannot widen to, an optional field made required, a new required field,
    and a declared ``schema_version`` older than the events on the bus. A lake or bus that does not
    exist yet (a fresh project) is not created: it has nothing to break.
    """
    out: list[Problem] = []
    lake = _existing(lake_url, "lake")
    if lake is not None:
        tables = set(lake.list_tables())
        for writer, table, declared in _declared_tables(catalog):
            if table in tables:
                out += [_at(writer, msg, hint) for msg, hint in _breaking(declared, lake.describe(table).schema, table)]
    bus = _existing(bus_url, "bus") if bus_url else None
    if bus is not None:
        try:
            out += _bus_versions(catalog, bus)
        finally:
            bus.close()
    return out


def _existing(url: str, area: str) -> Any:
    """The engine at `url`, or None for a local folder that does not exist yet (never created here)."""
    from keel.schemes import file_path

    if url.startswith("file://") and not file_path(url).exists():
        return None
    if area == "lake":
        from keel.lake import open_lake

        return open_lake(url)
    from keel.bus import open_bus

    return open_bus(url)


def _declared_tables(catalog: Catalog) -> list[tuple[Any, str, Any]]:
    """(writer, table, Arrow schema) of each table whose schema is known before any event: a landing's
    (the stream's fields), an aggregation's, and a stateless processor's (its function over an empty
    batch, as the processor itself finds it). Stateful and enriching processors show theirs only
    when they run, so their tables are checked at write time."""
    import polars as pl

    from keel.project.declare import Aggregation
    from keel.project.schema import table_schema
    from keel.streaming.stateful import WindowOperator

    out: list[tuple[Any, str, Any]] = []
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


def _breaking(declared: Any, current: Any, table: str) -> list[tuple[str, str]]:
    """(message, fix) of each breaking difference; the type rules are the lake's own (`conform`)."""
    import pyarrow as pa

    from keel.errors import SchemaError
    from keel.lake._conform import canonical_schema, conform

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


def _bus_versions(catalog: Catalog, bus: Any) -> list[Problem]:
    """A stream declared at an older `schema_version` than the newest of its events on the bus."""
    import uuid

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
            out.append(_at(s, f"declares {s.schema.__name__}.schema_version = {declared}, but the bus holds its "
                              f"events of schema_version {max(versions)}, written by newer code",
                           "deploy the newer declaration (or raise schema_version above it for a new one)"))
    return out


def check_deployed(config: Any, catalog: Catalog) -> None:
    """`keel check`'s second half: raise ``ProjectError`` listing `deployed_problems` against the
    profile's lake and bus (`config` is the project's ``keel.project.config.Config``)."""
    from keel.errors import ProjectError

    problems = deployed_problems(catalog, config.lake, config.bus)
    if problems:
        raise ProjectError(problems)
