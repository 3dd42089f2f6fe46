"""What `keel check` finds wrong in a catalog: one Problem per mistake, at its declaration.

These checks read the declarations only; comparing them with what is deployed (the lake's tables,
the bus's events) needs the engines and lives in `keel.run.deployed`.
"""

from __future__ import annotations

from keel.errors import Problem
from keel.project.catalog import Catalog, valid_name
from keel.project.declare import HTTP_METHODS, METRIC_AGGREGATES, Declaration
from keel.project.schedule import find_cycle, validate_cron
from keel.project.schema import EVENT_DATE, EVENT_ID, EVENT_TIME, event_fields, field_problems


def problem_at(decl: Declaration, message: str, hint: str = "") -> Problem:
    """A Problem of `decl`, at its file and line: ``<kind> '<name>': <message>``."""
    return Problem(message=f"{decl.kind} {decl.name!r}: {message}", file=decl.file, line=decl.line, hint=hint)


def all_problems(catalog: Catalog) -> list[Problem]:
    problems: list[Problem] = []
    for dup in catalog.duplicates:
        problems.append(problem_at(dup, "declared twice", "give each declaration a unique name"))
    for decl in catalog.all():
        if not valid_name(decl.name):
            problems.append(problem_at(decl, "bad name",
                                       "use lower_snake_case: a-z, 0-9 and _, starting with a letter"))
    problems += _streams(catalog) + _processors(catalog) + _jobs(catalog)
    problems += _experiments(catalog) + _endpoints(catalog) + _checks(catalog)
    return problems


def _known_tables(catalog: Catalog) -> set[str]:
    return set(catalog.tables)


def _streams(catalog: Catalog) -> list[Problem]:
    out = []
    for s in catalog.streams.values():
        for msg in field_problems(s.schema):
            out.append(problem_at(s, f"schema {s.schema.__name__}: {msg}"))
        names = [n for n, _, _ in event_fields(s.schema)]
        if s.key is not None and s.key not in names:
            out.append(problem_at(s, f"key {s.key!r} is not a field of {s.schema.__name__}",
                                  f"fields: {', '.join(names)}"))
        if s.partitions < 1:
            out.append(problem_at(s, f"partitions must be at least 1, not {s.partitions}"))
    return out


def _processors(catalog: Catalog) -> list[Problem]:
    out = []
    for p in catalog.processors.values():
        if p.stream.name not in catalog.streams:
            out.append(problem_at(p, f"reads stream {p.stream.name!r}, which is not declared in this project"))
        for target in p.into:
            if target.name not in catalog.of(target.kind):
                out.append(problem_at(p, f"writes {target.kind} {target.name!r}, which is not declared in this "
                                         "project"))
        if p.kind == "aggregation":
            names = [n for n, _, _ in event_fields(p.stream.schema)] + [EVENT_ID, EVENT_TIME, EVENT_DATE]
            if p.by not in names:
                out.append(problem_at(p, f"groups by {p.by!r}, not a field of {p.stream.schema.__name__}",
                                       f"fields: {', '.join(names)}"))
            for col, measure in p.measures.items():
                if measure.column is not None and measure.column not in names:
                    out.append(problem_at(p, f"measure {col!r} reads unknown field {measure.column!r}"))
            if p.window.size <= 0:
                out.append(problem_at(p, "window size must be positive"))
    writers: dict[str, str] = {}
    for p in catalog.processors.values():
        for t in p.into:
            if t.kind == "table" and t.name in writers:
                out.append(problem_at(p, f"table {t.name!r} is already written by {writers[t.name]!r}",
                                       "a lake table has one writer; write to another table"))
            writers.setdefault(t.name, p.name)
    return out


def _jobs(catalog: Catalog) -> list[Problem]:
    out = []
    readable = _known_tables(catalog)
    for j in catalog.jobs.values():
        if j.schedule is not None:
            err = validate_cron(j.schedule)
            if err:
                out.append(problem_at(j, f"bad schedule {j.schedule!r}: {err}", "use 5 cron fields, e.g. '0 3 * * *'"))
        for name in j.inputs:
            if name not in readable:
                out.append(problem_at(j, f"reads table {name!r}, which is not declared",
                                       f"declared tables: {', '.join(sorted(readable)) or 'none'}"))
        if j.output is not None and j.output.name not in catalog.of(j.output.kind):
            out.append(problem_at(j, f"writes {j.output.kind} {j.output.name!r}, which is not declared"))
        if j.output is not None and j.output.kind == "view" and not j.key:
            out.append(problem_at(j, "writes a view but names no key column", "pass key='<column>' to @keel.job"))
    cycle = find_cycle(catalog.job_upstream())
    if cycle:
        first = catalog.jobs[cycle[0]]
        out.append(problem_at(first, "jobs depend on each other in a cycle: " + " -> ".join(cycle),
                               "break the cycle: one of these jobs must not read another's output"))
    return out


def _experiments(catalog: Catalog) -> list[Problem]:
    out = []
    for e in catalog.experiments.values():
        if len(e.variants) < 2:
            out.append(problem_at(e, "needs at least two variants"))
        if any(w <= 0 for w in e.variants.values()):
            out.append(problem_at(e, "every variant weight must be positive"))
        if e.control not in e.variants:
            out.append(problem_at(e, f"control {e.control!r} is not one of its variants"))
        for name in e.metrics:
            if name not in catalog.metrics:
                out.append(problem_at(e, f"metric {name!r} is not declared",
                                      f"declared metrics: {', '.join(sorted(catalog.metrics)) or 'none'}"))
    for m in catalog.metrics.values():
        if m.table not in _known_tables(catalog):
            out.append(problem_at(m, f"reads table {m.table!r}, which is not declared"))
        if m.aggregate not in METRIC_AGGREGATES:
            out.append(problem_at(m, f"aggregate {m.aggregate!r} is unknown", "use 'conversion' or 'sum'"))
        if m.aggregate == "sum" and not m.value:
            out.append(problem_at(m, "a 'sum' metric needs value='<column>'"))
    return out


def _endpoints(catalog: Catalog) -> list[Problem]:
    out = []
    seen: dict[tuple[str, str], str] = {}
    for ep in catalog.endpoints.values():
        if ep.method not in HTTP_METHODS or not ep.path.startswith("/"):
            out.append(problem_at(ep, f"bad route {ep.method} {ep.path!r}", "write it like 'GET /recommend/{user_id}'"))
        if ep.path.startswith("/v1/") or ep.path in ("/metrics", "/healthz", "/readyz", "/openapi.json"):
            out.append(problem_at(ep, f"path {ep.path!r} is reserved for keel's own routes"))
        if (ep.method, ep.path) in seen:
            out.append(problem_at(ep, f"route {ep.method} {ep.path} is already served by "
                                      f"{seen[(ep.method, ep.path)]!r}"))
        seen[(ep.method, ep.path)] = ep.name
        if ep.experiment is not None and ep.experiment.name not in catalog.experiments:
            out.append(problem_at(ep, f"runs experiment {ep.experiment.name!r}, which is not declared"))
        for v in ep.reads:
            if v not in catalog.views:
                out.append(problem_at(ep, f"reads view {v!r}, which is not declared"))
    return out


def _checks(catalog: Catalog) -> list[Problem]:
    out = []
    for c in catalog.checks.values():
        if c.table not in _known_tables(catalog):
            out.append(problem_at(c, f"checks table {c.table!r}, which is not declared"))
        if c.within <= 0:
            out.append(problem_at(c, "`within` must be a positive duration"))
    return out
