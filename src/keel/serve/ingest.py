"""Ingest: from an HTTP body to a durable bus batch, or a 400 naming each bad field.

Accepts one JSON object, a JSON array of objects, or NDJSON (one object per line). The whole
request is validated before anything is written: one bad event refuses the request, so nothing
of it reaches the bus.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
import pyarrow as pa

from keel.bus.base import HEADERS_TYPE, TIMESTAMP_TYPE
from keel.errors import ValidationError
from keel.schema import Event, describe_errors

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Decoders:
    one: msgspec.json.Decoder[Any]
    many: msgspec.json.Decoder[Any]


_decoders: dict[type[Event], Decoders] = {}


def _decoders_for(schema: type[Event]) -> Decoders:
    d = _decoders.get(schema)
    if d is None:
        d = _decoders[schema] = Decoders(msgspec.json.Decoder(schema), msgspec.json.Decoder(list[schema]))  # type: ignore[valid-type]
    return d


def _split_ndjson(body: bytes) -> list[bytes]:
    return [line for line in body.split(b"\n") if line.strip()]


def parse_events(schema: type[Event], body: bytes, ndjson: bool) -> list[Event]:
    """Decode and validate every event of a request body; raise ValidationError listing each problem."""
    d = _decoders_for(schema)
    try:
        if ndjson:
            return [d.one.decode(line) for line in _split_ndjson(body)]
        stripped = body.lstrip()
        if stripped.startswith(b"["):
            events: list[Event] = d.many.decode(body)
            return events
        return [d.one.decode(body)]
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    raise ValidationError(_all_errors(schema, body, ndjson))


def _all_errors(schema: type[Event], body: bytes, ndjson: bool) -> list[dict[str, object]]:
    """The slow path: find every bad field of every event, for the 400 answer."""
    try:
        if ndjson:
            raws = [msgspec.json.decode(line) for line in _split_ndjson(body)]
        else:
            raw = msgspec.json.decode(body)
            raws = raw if isinstance(raw, list) else [raw]
    except msgspec.DecodeError as exc:
        return [{"index": None, "field": None, "error": f"body is not valid JSON: {exc}"}]
    errors: list[dict[str, object]] = []
    for i, raw in enumerate(raws):
        errors += describe_errors(schema, raw, i)
    return errors or [{"index": None, "field": None, "error": "no events in the body"}]


def to_batch(events: list[Event], key_field: str | None, schema_version: int) -> tuple[pa.RecordBatch, list[str]]:
    """The bus batch of validated events: JSON values, keys, event times and headers."""
    n = len(events)
    now_ms = int(time.time() * 1000)
    values = [_encode(e) for e in events]
    keys = None if key_field is None else [str(getattr(e, key_field)).encode() for e in events]
    stamps = [now_ms if e.ts is None else int(e.ts.timestamp() * 1000) for e in events]
    ids = [uuid.uuid4().hex for _ in range(n)]
    version = str(schema_version).encode()
    header_keys = pa.array(["event_id", "schema_version"] * n, pa.string())
    header_values = pa.array([v for eid in ids for v in (eid.encode(), version)], pa.binary())
    headers = pa.MapArray.from_arrays(pa.array(range(0, 2 * n + 1, 2), pa.int32()), header_keys, header_values)
    batch = pa.record_batch(
        {
            "key": pa.array(keys, pa.binary()) if keys is not None else pa.nulls(n, pa.binary()),
            "value": pa.array(values, pa.binary()),
            "timestamp": pa.array(stamps, TIMESTAMP_TYPE),
            "headers": headers.cast(HEADERS_TYPE),
        }
    )
    return batch, ids
