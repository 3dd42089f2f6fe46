"""The catalog: every declaration of one project, by kind and name, and its validation.

Declarations register into the catalog that is being loaded (`collecting`); `keel check` calls
`Catalog.problems()`, which reports each mistake once, with the file and line of its declaration.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keel.errors import Problem

if TYPE_CHECKING:
    from keel.project.declare import Declaration

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_loading: list[Catalog] = []


def register(decl: Declaration) -> None:
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
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> name -> declaration
    duplicates: list[Declaration] = field(default_factory=list)

    def add(self, decl: Declaration) -> None:
        bucket = self.items.setdefault(decl.kind, {})
        if decl.name in bucket:
            self.duplicates.append(decl)
        else:
            bucket[decl.name] = decl

    def of(self, kind: str) -> dict[str, Any]:
        return self.items.get(kind, {})

    @property
    def streams(self) -> dict[str, Any]:
        return self.of("stream")

    @property
    def tables(self) -> dict[str, Any]:
        return self.of("table")

    @property
    def views(self) -> dict[str, Any]:
        return self.of("view")

    @property
    def processors(self) -> dict[str, Any]:
        return {**self.of("processor"), **self.of("aggregation")}

    @property
    def jobs(self) -> dict[str, Any]:
        return self.of("job")

    @property
    def endpoints(self) -> dict[str, Any]:
        return self.of("endpoint")

    @property
    def experiments(self) -> dict[str, Any]:
        return self.of("experiment")

    @property
    def metrics(self) -> dict[str, Any]:
        return self.of("metric")

    @property
    def checks(self) -> dict[str, Any]:
        return self.of("check")

    def all(self) -> Iterator[Any]:
        for bucket in self.items.values():
            yield from bucket.values()

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
