"""The exposures stream: one event each time an endpoint serves a unit under an experiment.

A project that declares an experiment gets, built in, the stream `exposures`, the lake table
`exposures` and the processor that lands one in the other exactly once: declarations keel adds
when it loads a project (`keel.project.loading`), read by the gateway and `keel.experiments`.
"""

from __future__ import annotations

from keel.project.catalog import Catalog
from keel.project.declare import Processor, Stream, Table
from keel.project.schema import Event

EXPOSURES = "exposures"


class Exposure(Event):
    experiment: str
    variant: str
    unit: str
    endpoint: str


def add_exposures(catalog: Catalog) -> None:
    """Declare the built-in exposures stream, table and landing, unless the project did."""
    if not catalog.experiments or EXPOSURES in catalog.streams:
        return
    where, owner = "keel (built in)", "keel"
    stream = Stream(name=EXPOSURES, schema=Exposure, key="unit", description="experiment exposures", file=where,
                    owner=owner)
    table = Table(name=EXPOSURES, partition_by=("event_date",), description="experiment exposures", file=where,
                  owner=owner)
    catalog.add(stream)
    catalog.add(table)
    catalog.add(Processor(name=f"land_{EXPOSURES}", stream=stream, into=(table,), file=where, owner=owner))
