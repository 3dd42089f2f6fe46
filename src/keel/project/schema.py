"""Event schemas: typed msgspec Structs, validated fast at ingest and mapped to Arrow columns.

    class PageView(keel.Event):
        user_id: str
        item_id: str

Every event has an optional `ts` (event time, ISO 8601 or a datetime); when absent, the time the
bus acknowledged it is used. A ClassVar `schema_version` (default 1) travels in each record's headers.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from typing import Any, ClassVar

import msgspec
import pyarrow as pa


class Event(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, gc=False):
    """Base class of event schemas.

    Events are plain data decoded from JSON, so they cannot form reference cycles: ``gc=False``
    keeps the thousands of them a batch creates out of the cycle collector's work (profiled at
    ~8% of the gateway's ingest time)."""

    schema_version: ClassVar[int] = 1
    ts: dt.datetime | None = None


# Columns every landed event carries besides its own fields.
EVENT_ID = "event_id"
EVENT_TIME = "event_time"
EVENT_DATE = "event_date"

_ARROW_TYPES: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    dt.datetime: pa.timestamp("us", tz="UTC"),
    dt.date: pa.date32(),
    bytes: pa.binary(),
}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def arrow_type(tp: Any) -> pa.DataType:
    """The Arrow type of one field type; raises TypeError for a type keel cannot store."""
    inner, _ = _unwrap_optional(tp)
    if inner in _ARROW_TYPES:
        return _ARROW_TYPES[inner]
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner) or (Any,)
        return pa.list_(arrow_type(item))
    raise TypeError(f"type {tp!r} cannot be stored; use str, int, float, bool, datetime, date, bytes, list[...] or X | None")


def event_fields(schema: type[Event]) -> list[tuple[str, Any, bool]]:
    """(name, type, required) of each field, the event's own fields first and `ts` last."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in msgspec.structs.fields(schema):
        required = f.default is msgspec.NODEFAULT and f.default_factory is msgspec.NODEFAULT
        out.append((f.name, hints[f.name], required))
    return out


def field_problems(schema: type[Event]) -> list[str]:
    """What is wrong with a schema's field types (empty when every field maps to Arrow)."""
    problems = []
    for name, tp, _ in event_fields(schema):
        try:
            arrow_type(tp)
        except TypeError as exc:
            problems.append(f"field {name!r}: {exc}")
        if name in (EVENT_ID, EVENT_TIME, EVENT_DATE):
            problems.append(f"field {name!r} is reserved for keel; rename it")
    return problems


def value_schema(schema: type[Event]) -> pa.Schema:
    """The Arrow schema of the JSON values on the bus (the event's own fields, `ts` included)."""
    return pa.schema([pa.field(n, arrow_type(tp), nullable=not req) for n, tp, req in event_fields(schema)])


def table_schema(schema: type[Event]) -> pa.Schema:
    """The schema of the lake table an event stream lands in."""
    own = [f for f in value_schema(schema) if f.name != "ts"]
    return pa.schema(
        [
            pa.field(EVENT_ID, pa.string(), nullable=False),
            pa.field(EVENT_TIME, pa.timestamp("us", tz="UTC"), nullable=False),
            *own,
            pa.field(EVENT_DATE, pa.date32(), nullable=False),
        ]
    )


def describe_errors(schema: type[Event], raw: object, index: int) -> list[dict[str, object]]:
    """Every problem with one decoded JSON value, field by field (the slow path, for 400 answers)."""
    if not isinstance(raw, dict):
        return [{"index": index, "field": None, "error": f"expected a JSON object, got {type(raw).__name__}"}]
    errors: list[dict[str, object]] = []
    hints = typing.get_type_hints(schema, include_extras=True)  # with constraints (Annotated[int, Meta(...)])
    fields = {n: (hints[n], req) for n, _, req in event_fields(schema)}
    for name in raw:
        if name not in fields:
            errors.append({"index": index, "field": name, "error": "unknown field"})
    for name, (tp, required) in fields.items():
        if name not in raw:
            if required:
                errors.append({"index": index, "field": name, "error": "required field is missing"})
            continue
        try:
            msgspec.convert(raw[name], tp, strict=True)
        except msgspec.ValidationError as exc:
            errors.append({"index": index, "field": name, "error": str(exc).split(" - at ")[0]})
    return errors
