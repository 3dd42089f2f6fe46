"""Ingest: from an HTTP body to a durable bus batch, or a 400 naming each bad field.

Accepts one JSON object, a JSON array of objects, or NDJSON (one object per line). The whole
request is validated before anything is written: one bad event refuses the request, so nothing
of it reaches the bus. Besides its schema, each event must keep to its stream's bounds
(`check_bounds`): an event time within the stream's window around the ack time, and a size the
bus and the processors take; whatever passes here, the processors can process.
"""

from __future__ import annotations

import os
import time
import types
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from operator import attrgetter
from typing import Annotated, Any

import msgspec
import msgspec.inspect
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from keel.bus.base import HEADERS_TYPE, TIMESTAMP_TYPE
from keel.project.declare import EARLIEST_EVENT_TIME, LATEST_EVENT_TIME, Stream
from keel.errors import ValidationError
from keel.project.schema import Event, describe_errors

_encoder = msgspec.json.Encoder()
_NEWLINE = ord("\n")
_TOO_DEEP = ("JSON nested too deeply: events are objects of scalar fields and lists, not arrays or objects "
             "nested thousands of levels; flatten the event")


@dataclass(frozen=True)
class Decoders:
    one: msgspec.json.Decoder[Any]
    many: msgspec.json.Decoder[Any]


_decoders: dict[type[Event], Decoders] = {}


def _decoders_for(schema: type[Event]) -> Decoders:
    d = _decoders.get(schema)
    if d is None:
        storable = storable_schema(schema)
        d = _decoders[schema] = Decoders(msgspec.json.Decoder(storable), msgspec.json.Decoder(list[storable]))  # type: ignore[valid-type]
    return d


_INT64 = (-(2**63), 2**63 - 1)


def _storable(tp: Any) -> Any:
    """`tp` with each int bounded to int64, the integers Arrow and Delta store (JSON has no bound)."""
    if tp is int:
        return Annotated[int, msgspec.Meta(ge=_INT64[0], le=_INT64[1])]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated and args[0] is int:  # keep the user's own bounds, add the missing ones
        metas = args[1:]
        ge = None if any(_bound(m, "ge", "gt") for m in metas) else _INT64[0]
        le = None if any(_bound(m, "le", "lt") for m in metas) else _INT64[1]
        return tp if ge is None and le is None else Annotated[(int, *metas, msgspec.Meta(ge=ge, le=le))]
    if origin is list and args:
        return list[_storable(args[0])]  # type: ignore[misc]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_storable(a) for a in args)]
    return tp


def _bound(meta: object, *names: str) -> bool:
    return any(getattr(meta, n, None) is not None for n in names)


@cache
def storable_schema(schema: type[Event]) -> type[Event]:
    """A subclass of `schema` that also refuses what the lake cannot store: an int beyond 64 bits in
    any int field (the processors would dead-letter it). Decoded events are still `schema` instances,
    encoded the same way."""
    hints = typing.get_type_hints(schema, include_extras=True)
    fields: list[Any] = []
    for f in msgspec.structs.fields(schema):
        tp = _storable(hints[f.name])
        if tp == hints[f.name]:
            continue
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, tp, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, tp, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, tp))
    if not fields:
        return schema
    bounded = typing.cast(type[Event], msgspec.defstruct(schema.__name__, fields, bases=(schema,),
                                                         module=schema.__module__))
    bounded.__doc__ = schema.__doc__  # the OpenAPI document describes the schema by it
    return bounded


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
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):  # msgspec bounds nesting depth
        pass
    raise ValidationError(_all_errors(schema, body, ndjson))


def _decode(text: bytes, index: int | None, what: str) -> tuple[object, dict[str, object] | None]:
    try:
        return msgspec.json.decode(text), None
    except msgspec.DecodeError as exc:
        return None, {"index": index, "field": None, "error": f"{what} is not valid JSON: {exc}"}
    except RecursionError:
        return None, {"index": index, "field": None, "error": _TOO_DEEP}


def _all_errors(schema: type[Event], body: bytes, ndjson: bool) -> list[dict[str, object]]:
    """The slow path: find every bad field of every event, for the 400 answer."""
    errors: list[dict[str, object]] = []
    if ndjson:
        raws = []
        for i, line in enumerate(_split_ndjson(body)):
            raw, error = _decode(line, i, f"NDJSON event {i}")
            if error is not None:
                errors.append(error)
            raws.append(raw)
        if errors:
            return errors
    else:
        raw, error = _decode(body, None, "body")
        if error is not None:
            return [error]
        raws = raw if isinstance(raw, list) else [raw]
    for i, raw in enumerate(raws):
        errors += describe_errors(storable_schema(schema), raw, i)
    return errors or [{"index": None, "field": None, "error": "no events in the body"}]


def _event_ids(n: int) -> bytes:
    """``n`` random UUID4s as 32 hex digits each, back to back, from one urandom call (uuid4() makes one
    syscall per id, which was a third of the gateway's ingest time for batches of 1,000)."""
    raw = np.frombuffer(os.urandom(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.tobytes().hex().encode()


def _pairs(n: int, first: bytes, width: int, second: bytes, type_: pa.DataType) -> pa.Array:
    """2n values of `type_`: the ``width``-byte slices of ``first`` interleaved with ``second``, built
    from buffers in one step rather than one Python object per value."""
    w = width + len(second)
    data = np.empty((n, w), dtype=np.uint8)
    data[:, :width] = np.frombuffer(first, dtype=np.uint8).reshape(n, width)
    data[:, width:] = np.frombuffer(second, dtype=np.uint8)
    offsets = np.empty(2 * n + 1, dtype=np.int32)
    starts = np.arange(n, dtype=np.int32) * w
    offsets[0 : 2 * n : 2] = starts
    offsets[1 : 2 * n : 2] = starts + width
    offsets[2 * n] = n * w
    return pa.Array.from_buffers(type_, 2 * n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _headers(n: int, ids: bytes, version: bytes) -> pa.Array:
    """The ``event_id`` and ``schema_version`` headers of n events, as a HEADERS_TYPE map column."""
    keys = _pairs(n, b"event_id" * n, 8, b"schema_version", pa.string())
    values = _pairs(n, ids, 32, version, pa.binary())
    offsets = pa.py_buffer(np.arange(0, 2 * n + 1, 2, dtype=np.int32))
    return pa.MapArray.from_buffers(HEADERS_TYPE, n, [None, offsets], children=[pa.StructArray.from_arrays(
        [keys, values], fields=[HEADERS_TYPE.key_field, HEADERS_TYPE.item_field])])


def _values(events: list[Event]) -> pa.Array:
    """Each event's JSON, as a binary column: one ``encode_lines`` call for the whole batch, cut at
    its newlines (msgspec escapes newlines inside strings, so each line is one event), instead of
    one encode call per event."""
    n = len(events)
    lines = np.frombuffer(_encoder.encode_lines(events), dtype=np.uint8)
    ends = np.flatnonzero(lines == _NEWLINE)
    assert len(ends) == n, "encode_lines gives one line per event"
    offsets = np.empty(n + 1, dtype=np.int32)
    offsets[0] = 0
    offsets[1:] = ends - np.arange(n, dtype=np.int32)  # the end of each value once the newlines are gone
    data = np.delete(lines, ends)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


@cache
def _key_type(schema: type[Event], key_field: str) -> pa.DataType | None:
    """The Arrow type a key field's values convert from without Python (str or int; else None)."""
    info = msgspec.inspect.type_info(schema)
    assert isinstance(info, msgspec.inspect.StructType)
    for f in info.fields:
        if f.name == key_field:
            kinds = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
            kinds = tuple(k for k in kinds if not isinstance(k, msgspec.inspect.NoneType))
            if len(kinds) == 1 and isinstance(kinds[0], msgspec.inspect.StrType):
                return pa.string()
            if len(kinds) == 1 and isinstance(kinds[0], msgspec.inspect.IntType):
                return pa.int64()
    return None


def _keys(events: list[Event], key_field: str) -> pa.Array:
    """The bus keys: the key field's text (a str as it is, an int in decimal, anything else by
    ``str``); a missing (None) key is a null key, which the bus spreads round-robin."""
    raw = list(map(attrgetter(key_field), events))
    type_ = _key_type(type(events[0]), key_field) if events else None
    if type_ is not None:
        try:
            column = pa.array(raw, type_)
        except (pa.ArrowInvalid, OverflowError):  # an int beyond 64 bits: the general path below
            column = None
        if column is not None:
            return (column if type_ == pa.string() else column.cast(pa.string())).view(pa.binary())
    return pa.array([None if k is None else str(k).encode() for k in raw], pa.binary())


def _timestamps(events: list[Event], now_ms: int) -> pa.Array:
    """Event times in ms: the event's own ``ts``, or now for events without one (the common case)."""
    stamps = list(map(attrgetter("ts"), events))
    if stamps.count(None) == len(stamps):
        return pa.array(np.full(len(stamps), now_ms, dtype=np.int64)).view(TIMESTAMP_TYPE)
    return pa.array([now_ms if t is None else _ms(t) for t in stamps], TIMESTAMP_TYPE)


def _ms(t: datetime) -> int:
    """Epoch ms of an event time; one without an offset is UTC, as the processors read it (not local time)."""
    return int((t if t.tzinfo is not None else t.replace(tzinfo=UTC)).timestamp() * 1000)


@dataclass(frozen=True)
class EventIds:
    """The event ids given to a batch: ``raw`` holds n ids of 32 hex digits back to back."""

    raw: bytes

    def __len__(self) -> int:
        return len(self.raw) // 32

    def as_list(self) -> list[str]:
        text = self.raw.decode()
        return [text[i : i + 32] for i in range(0, len(text), 32)]

    def json_array(self) -> bytes:
        """``["id","id",...]`` built in one numpy step (no Python string per id)."""
        n = len(self)
        if n == 0:
            return b"[]"
        out = np.empty((n, 35), dtype=np.uint8)
        out[:, 0] = out[:, 33] = ord('"')
        out[:, 1:33] = np.frombuffer(self.raw, dtype=np.uint8).reshape(n, 32)
        out[:, 34] = ord(",")
        return b"[" + out.tobytes()[:-1] + b"]"


def accepted_body(ids: EventIds) -> bytes:
    """The 202 answer of an ingest: how many events were accepted and their ids, in order."""
    return b'{"accepted":%d,"event_ids":%s}' % (len(ids), ids.json_array())


def to_batch(events: list[Event], key_field: str | None, schema_version: int,
             now_ms: int | None = None) -> tuple[pa.RecordBatch, EventIds]:
    """The bus batch of validated events (JSON values, keys, event times, headers) and their new ids;
    an event without ``ts`` gets ``now_ms`` (default: the clock now).

    Built column by column: a Python step per event cost more than the rest of a request (profile:
    ~2 ms per 1,000 events before, see benchmarks/RESULTS.md)."""
    n = len(events)
    raw_ids = _event_ids(n)
    batch = pa.record_batch(
        {
            "key": _keys(events, key_field) if key_field is not None else pa.nulls(n, pa.binary()),
            "value": _values(events),
            "timestamp": _timestamps(events, int(time.time() * 1000) if now_ms is None else now_ms),
            "headers": _headers(n, raw_ids, str(schema_version).encode()),
        }
    )
    return batch, EventIds(raw_ids)


def check_bounds(stream: Stream, events: list[Event], batch: pa.RecordBatch, now_ms: int) -> None:
    """Refuse (ValidationError naming each event) a batch with an event time outside the stream's
    bounds at ``now_ms`` (`Stream.event_time_bounds`) or an event over ``stream.max_event_bytes``.

    One vectorized pass over the batch's timestamp and value columns; Python runs only for the bad."""
    lo, hi = stream.event_time_bounds(now_ms)
    stamps = batch.column("timestamp").view(pa.int64()).to_numpy()
    keys = pc.fill_null(pc.binary_length(batch.column("key")), 0)
    sizes = pc.add(pc.binary_length(batch.column("value")), keys).to_numpy()
    late, big = np.flatnonzero((stamps < lo) | (stamps > hi)), np.flatnonzero(sizes > stream.max_event_bytes)
    if len(late) == 0 and len(big) == 0:
        return
    errors = [_time_error(stream, i, events[i], int(stamps[i]), now_ms) for i in late.tolist()]
    errors += [_size_error(stream, int(i), events[i], int(sizes[i])) for i in big.tolist()]
    raise ValidationError(sorted(errors, key=lambda e: int(str(e["index"]))))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _time_error(stream: Stream, index: int, event: Event, stamp_ms: int, now_ms: int) -> dict[str, object]:
    ts = event.ts.isoformat() if event.ts is not None else "?"
    first, last = EARLIEST_EVENT_TIME.date(), LATEST_EVENT_TIME.date()
    if not EARLIEST_EVENT_TIME.timestamp() * 1000 <= stamp_ms < LATEST_EVENT_TIME.timestamp() * 1000:
        why = f"ts {ts} is outside the event times keel stores ({first} to {last})"
    elif stamp_ms > now_ms:
        why = (f"ts {ts} is more than {stream.max_future:g} s ahead of the ack time {_iso(now_ms)} (the max_future "
               f"of stream {stream.name!r}): send the event's real time, or declare keel.stream(..., max_future=...)")
    else:
        why = (f"ts {ts} is more than {stream.max_past:g} s behind the ack time {_iso(now_ms)} (the max_past of "
               f"stream {stream.name!r}): declare keel.stream(..., max_past=...) to accept older events")
    return {"index": index, "field": "ts", "error": why}


def _size_error(stream: Stream, index: int, event: Event, size: int) -> dict[str, object]:
    fields = msgspec.structs.asdict(event)
    biggest = max(fields, key=lambda f: len(_encoder.encode(fields[f])))
    return {"index": index, "field": biggest,
            "error": f"the event is {size} bytes on the bus (its JSON and its key), over the "
                     f"{stream.max_event_bytes}-byte limit of stream "
                     f"{stream.name!r} (max_event_bytes), mostly this field: store large values elsewhere and send "
                     "a reference"}
