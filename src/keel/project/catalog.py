"""The catalog: every declaration of one project, by kind and name, and its validation.

Declarations register into the catalog that is being loaded (`collecting`); `keel check` calls
`Catalog.problems()`, which reports each mistake once, with the file and line of its declaration.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, assert_never

from keel.errors import Problem

if TYPE_CHECKING:  # declare registers into the catalog being loaded, so it imports this module
    from keel.project.declare import (AnyDeclaration, Aggregation, Check, Declaration, Endpoint, Experiment, Job,
                                      Kind, Metric, Processor, Stream, Table, View)

D = TypeVar("D", bound="Declaration")

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_loading: list[Catalog] = []


def register(decl: AnyDeclaration) -> None:
    """Add a declaration to the catalog being loaded, or to a module-level default one."""
    (_loading[-1] if _loading else DEFAULT).add(decl)


@contextlib.contextmanager
def collecting() -> Iterator[Catalog]:
    """Collect the declarations made inside the block into a fresh catalog."""
    catalog = Catalog()
    _loading.append(catalog)
    try:
        yield catalog
    finally:
        _loading.pop()


@dataclass
class Catalog:
    """The declarations of one project, each kind in its own typed bucket (name -> declaration).

    A name is unique within a kind: a second declaration of the same kind and name is kept in
    `duplicates` (for `keel check`), not in its bucket."""

    duplicates: list[Declaration] = field(default_factory=list)
    _streams: dict[str, Stream] = field(default_factory=dict, init=False)
    _tables: dict[str, Table] = field(default_factory=dict, init=False)
    _views: dict[str, View] = field(default_factory=dict, init=False)
    _processors: dict[str, Processor] = field(default_factory=dict, init=False)
    _aggregations: dict[str, Aggregation] = field(default_factory=dict, init=False)
    _jobs: dict[str, Job] = field(default_factory=dict, init=False)
    _endpoints: dict[str, Endpoint] = field(default_factory=dict, init=False)
    _experiments: dict[str, Experiment] = field(default_factory=dict, init=False)
    _metrics: dict[str, Metric] = field(default_factory=dict, init=False)
    _checks: dict[str, Check] = field(default_factory=dict, init=False)
    _kinds: list[Kind] = field(default_factory=list, init=False)  # in the order each kind was first added

    def add(self, decl: AnyDeclaration) -> None:
        if decl.kind not in self._kinds:
            self._kinds.append(decl.kind)
        if decl.kind == "stream":
            self._put(self._streams, decl)
        elif decl.kind == "table":
            self._put(self._tables, decl)
        elif decl.kind == "view":
            self._put(self._views, decl)
        elif decl.kind == "processor":
            self._put(self._processors, decl)
        elif decl.kind == "aggregation":
            self._put(self._aggregations, decl)
        elif decl.kind == "job":
            self._put(self._jobs, decl)
        elif decl.kind == "endpoint":
            self._put(self._endpoints, decl)
        elif decl.kind == "experiment":
            self._put(self._experiments, decl)
        elif decl.kind == "metric":
            self._put(self._metrics, decl)
        elif decl.kind == "check":
            self._put(self._checks, decl)
        else:
            assert_never(decl)  # a new kind of declaration needs its bucket here

    def _put(self, bucket: dict[str, D], decl: D) -> None:
        if decl.name in bucket:
            self.duplicates.append(decl)
        else:
            bucket[decl.name] = decl

    def of(self, kind: Kind) -> Mapping[str, Declaration]:
        """The declarations of one kind, by name."""
        buckets: dict[Kind, Mapping[str, Declaration]] = {
            "stream": self._streams, "table": self._tables, "view": self._views, "processor": self._processors,
            "aggregation": self._aggregations, "job": self._jobs, "endpoint": self._endpoints,
            "experiment": self._experiments, "metric": self._metrics, "check": self._checks,
        }
        return buckets[kind]

    @property
    def items(self) -> dict[Kind, Mapping[str, Declaration]]:
        """kind -> name -> declaration, for each kind declared at least once."""
        return {kind: self.of(kind) for kind in self._kinds}

    @property
    def streams(self) -> dict[str, Stream]:
        return self._streams

    @property
    def tables(self) -> dict[str, Table]:
        return self._tables

    @property
    def views(self) -> dict[str, View]:
        return self._views

    @property
    def processors(self) -> dict[str, Processor | Aggregation]:
        """Processors and aggregations (an aggregation wins over a processor of the same name)."""
        return {**self._processors, **self._aggregations}

    @property
    def jobs(self) -> dict[str, Job]:
        return self._jobs

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        return self._endpoints

    @property
    def experiments(self) -> dict[str, Experiment]:
        return self._experiments

    @property
    def metrics(self) -> dict[str, Metric]:
        return self._metrics

    @property
    def checks(self) -> dict[str, Check]:
        return self._checks

    def all(self) -> Iterator[Declaration]:
        for kind in self._kinds:
            yield from self.of(kind).values()

    def table_producers(self) -> dict[str, str]:
        """table name -> the processor or job that writes it."""
        out: dict[str, str] = {}
        for p in self.processors.values():
            for t in p.into:
                if t.kind == "table":
                    out[t.name] = p.name
        for j in self.jobs.values():
            if j.output is not None and j.output.kind == "table":
                out[j.output.name] = j.name
        return out

    def job_upstream(self) -> dict[str, tuple[str, ...]]:
        """job -> the jobs whose output tables it reads."""
        writer = {j.output.name: j.name for j in self.jobs.values() if j.output is not None}
        return {j.name: tuple(writer[i] for i in j.inputs if i in writer) for j in self.jobs.values()}

    def problems(self) -> list[Problem]:
        from keel.project.checks import all_problems

        return all_problems(self)


DEFAULT = Catalog()


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))
