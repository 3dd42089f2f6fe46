"""keel: the data platform of a data-driven product, in one Python package.

Declare a product's data pieces with the functions below; run them with the `keel` command.
"""

from __future__ import annotations

from typing import Any

from keel.project.declare import (
    aggregate,
    endpoint,
    experiment,
    freshness,
    hopping,
    job,
    land,
    lookup,
    metric,
    processor,
    session,
    stateful,
    stream,
    table,
    tumbling,
    view,
    volume,
)
from keel.errors import KeelError
from keel.project.schema import Event

__version__ = "0.1.0"


def connect(project: str = ".", profile: str | None = None) -> Any:
    """A SQL session over the project's lake tables (DuckDB), for notebooks: ``keel.connect().sql("...")``."""
    from keel.run.runtime import Runtime

    return Runtime.open(project, profile=profile).sql_session()


__all__ = [
    "Event",
    "KeelError",
    "aggregate",
    "connect",
    "endpoint",
    "experiment",
    "freshness",
    "hopping",
    "job",
    "land",
    "lookup",
    "metric",
    "processor",
    "session",
    "stateful",
    "stream",
    "table",
    "tumbling",
    "view",
    "volume",
]
