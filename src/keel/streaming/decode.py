"""From bus records to event columns, without a Python call per event.

The JSON values of a micro-batch are parsed in one go by Arrow's JSON reader against the
stream's schema; event id and time come from the record headers and timestamp.
"""

from __future__ import annotations

import io

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from keel.schema import EVENT_DATE, EVENT_ID, EVENT_TIME, Event, table_schema, value_schema


def header(batch: pa.RecordBatch, name: str) -> pa.Array:
    """One header's values (binary, null where absent) from a RECORD_SCHEMA batch."""
    headers = batch.column("headers")
    if headers.null_count == len(headers):
        return pa.nulls(len(batch), pa.binary())
    return pc.map_lookup(headers, pa.scalar(name, pa.string()), "first")


def parse_values(values: pa.Array, schema: type[Event]) -> pa.Table:
    """Parse a binary column of JSON objects into a table of the event's own fields."""
    vschema = value_schema(schema)
    if len(values) == 0:
        return vschema.empty_table()
    body = b"\n".join(values.to_pylist())  # one C-level join; the reader is columnar
    opts = pj.ParseOptions(explicit_schema=vschema, unexpected_field_behavior="ignore")
    parsed = pj.read_json(io.BytesIO(body), parse_options=opts)
    return parsed.select(vschema.names).cast(vschema)


def to_events(batch: pa.RecordBatch, schema: type[Event]) -> pl.DataFrame:
    """The lake rows of a batch of bus records: event id, event time, the fields, event date."""
    parsed = parse_values(batch.column("value"), schema)
    bus_time = batch.column("timestamp").cast(pa.timestamp("us", tz="UTC"))
    ts = parsed.column("ts").combine_chunks() if len(parsed) else pa.array([], pa.timestamp("us", tz="UTC"))
    event_time = pc.if_else(pc.is_null(ts), bus_time, ts) if len(parsed) else ts
    ids = header(batch, "event_id").cast(pa.string())
    ids = pc.if_else(pc.is_null(ids), pc.binary_join_element_wise(
        pc.cast(batch.column("partition"), pa.string()), pc.cast(batch.column("offset"), pa.string()), ":"), ids)
    target = table_schema(schema)
    cols = {EVENT_ID: ids, EVENT_TIME: event_time}
    for name in target.names:
        if name not in cols and name != EVENT_DATE:
            cols[name] = parsed.column(name)
    cols[EVENT_DATE] = pc.cast(event_time, pa.date32())
    table = pa.table(cols).cast(target)
    return pl.from_arrow(table)  # type: ignore[return-value]
