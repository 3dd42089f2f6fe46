"""From bus records to event columns, without a Python call per event.

The JSON values of a micro-batch are parsed in one go by Arrow's JSON reader against the
stream's schema; event id and time come from the record headers and timestamp. The newline-joined
input of the reader and the header lookup are built with Arrow/numpy kernels over the batch's
buffers (profiling showed `to_pylist` joins and `map_lookup` dominating the decode step).

Poison records. Any producer may write to a stream, so a value may not be a JSON object of the
schema (not JSON, not UTF-8, empty, an array, a field missing or of the wrong type), or its event
time may be outside the stream's bounds (`TimeBounds`: the same the gateway applies at ingest; an
event far ahead of its record's bus timestamp would drag the watermark into the future). `decode_records` never
raises for such records: the fast path parses the whole batch in one call, as above; only when
that fails is the batch screened value by value with msgspec (which refuses only what Arrow
refuses too) and the rest parsed by Arrow again, bisected if need be, so that a record is good
exactly when the fast path would take it. The failing records come back with the reason, for the
processor to dead-letter (cf. Kafka Streams' LogAndContinue deserialization handler).
"""

from __future__ import annotations

import functools
import re
import typing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from keel.project import declare
from keel.project.declare import seconds
from keel.project.schema import (
    EVENT_DATE,
    EVENT_ID,
    EVENT_TIME,
    Event,
    describe_errors,
    event_fields,
    table_schema,
    value_schema,
)

# Event times every reader of the lake can hold (Python datetime, Spark, Delta): years 1 to 9999.
EARLIEST_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
LATEST_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z
# The bounds a stream declares (`keel.stream(max_future=, max_past=)`, which the gateway applies at
# ingest) are applied to every record here too, because other producers exist; these are the
# defaults for a stream object that declares none.
MAX_FUTURE_SECONDS = 86_400.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BLOCK = 1 << 20
_SMALL = 8  # a failing segment this short is checked record by record instead of halved again


def header(batch: pa.RecordBatch, name: str) -> pa.Array:
    """One header's values (binary, null where absent; the first one if repeated) from a RECORD_SCHEMA batch."""
    headers = batch.column("headers")
    n = len(headers)
    if headers.null_count == n or n == 0:
        return pa.nulls(n, pa.binary())
    keys, items = headers.keys, headers.items
    offsets = headers.offsets.to_numpy()
    # `keys`/`items` are the whole child arrays (a slice does not cut them); `offsets` index into them
    if len(keys) == n and offsets[0] == 0 and bool(np.all(np.diff(offsets) == 1)) and headers.null_count == 0:
        # one header per record (the common case): no search needed
        found = pc.equal(keys, pa.scalar(name, keys.type))
        return pc.if_else(found, items, pa.nulls(n, items.type)).cast(pa.binary())
    hits = np.flatnonzero(pc.fill_null(pc.equal(keys, pa.scalar(name, keys.type)), False).to_numpy(zero_copy_only=False))
    hits = hits[(hits >= offsets[0]) & (hits < offsets[-1])]
    rows = np.searchsorted(offsets, hits, side="right") - 1
    rows, first = np.unique(rows, return_index=True)
    pick = np.zeros(n, dtype=np.int64)
    missing = np.ones(n, dtype=bool)
    pick[rows], missing[rows] = hits[first], False
    if not len(items):
        return pa.nulls(n, pa.binary())
    return items.take(pa.array(pick, mask=missing)).cast(pa.binary())


def _ndjson(values: pa.Array) -> pa.Buffer:
    """The values joined by newlines, as one buffer (one kernel call, no Python object per value)."""
    text = values.cast(pa.string()) if pa.types.is_binary(values.type) else values
    joined = pc.binary_join_element_wise(text, pa.scalar("", pa.string()), "\n")
    offsets = joined.buffers()[1]
    start, end = np.frombuffer(offsets, dtype=np.int32, count=2, offset=joined.offset * 4)[0], \
        np.frombuffer(offsets, dtype=np.int32, count=1, offset=(joined.offset + len(joined)) * 4)[0]
    return joined.buffers()[2].slice(int(start), int(end - start))


@dataclass(frozen=True)
class TimeBounds:
    """The event times a stream takes: within [earliest_us, latest_us], and at most `max_future`
    seconds ahead of / `max_past` behind the record's bus timestamp (None: no bound that way)."""

    max_future: float | None = MAX_FUTURE_SECONDS
    max_past: float | None = None
    earliest_us: int = EARLIEST_US
    latest_us: int = LATEST_US


def time_bounds(stream: object) -> TimeBounds:
    """The bounds `stream` declares (those the gateway applies at ingest, see `keel.project.declare.Stream`)."""
    earliest = getattr(declare, "EARLIEST_EVENT_TIME", None)
    latest = getattr(declare, "LATEST_EVENT_TIME", None)  # exclusive
    return TimeBounds(
        max_future=seconds(getattr(stream, "max_future", MAX_FUTURE_SECONDS)),
        max_past=seconds(getattr(stream, "max_past", None)),
        earliest_us=max(EARLIEST_US, _us(earliest)) if earliest is not None else EARLIEST_US,
        latest_us=min(LATEST_US, _us(latest) - 1) if latest is not None else LATEST_US)


def _us(when: datetime) -> int:
    return (when - _EPOCH) // timedelta(microseconds=1)


def _block_size(values: pa.Array) -> int:
    """A block size that holds the largest value (Arrow cannot parse an object across two blocks)."""
    longest = pc.max(pc.binary_length(values)).as_py() or 0
    return max(_BLOCK, 1 << (int(longest) + 2).bit_length())


_value_schema = functools.lru_cache(maxsize=256)(value_schema)  # typing.get_type_hints is slow


def parse_values(values: pa.Array, schema: type[Event]) -> pa.Table:
    """Parse a binary column of JSON objects into a table of the event's own fields.

    Raises ``pa.ArrowException`` (usually ``ArrowInvalid``) unless every value is one JSON object of
    the schema; `decode_records` is the caller that isolates the values that are not."""
    vschema = _value_schema(schema)
    if len(values) == 0:
        return vschema.empty_table()
    opts = pj.ParseOptions(explicit_schema=vschema, unexpected_field_behavior="ignore")
    # 1 MiB blocks are parsed in parallel; one block per micro-batch (16 MiB) ran 2-3x slower (measured)
    read = pj.ReadOptions(block_size=_block_size(values))
    parsed = pj.read_json(pa.BufferReader(_ndjson(values)), read_options=read, parse_options=opts)
    if len(parsed) != len(values):  # an empty value adds no row, "{..} {..}" two: rows would shift
        raise pa.ArrowInvalid(f"{len(values)} values held {len(parsed)} JSON values")
    return parsed.select(vschema.names).cast(vschema)


@dataclass(frozen=True)
class Decoded:
    """A batch of bus records decoded: the lake rows of those that decoded, and the others."""

    events: pl.DataFrame  # lake rows (see `to_events`), one per good record, in batch order
    rows: np.ndarray  # int64 indices in the batch of the good records, ascending
    bad: list[tuple[int, str]]  # (index in the batch, reason) of every other record, ascending


def decode_records(batch: pa.RecordBatch, schema: type[Event], bounds: TimeBounds = TimeBounds(),
                   now_us: int | None = None) -> Decoded:
    """Decode a RECORD_SCHEMA batch; records that cannot be used come back in `bad`, never raised.

    `now_us` (the processor's clock) also bounds event times ahead: a producer that stamps its
    records with their event time (the gateway does, as Kafka Streams and Flink do) passes the check
    against the bus timestamp, but not this one. Whatever the gateway accepted passes it later."""
    values = batch.column("value")
    rows = np.arange(batch.num_rows, dtype=np.int64)
    bad: list[tuple[int, str]] = []
    try:
        parsed = parse_values(values, schema)
    except pa.ArrowException:  # the slow path, for this batch only
        rows, parsed = _isolate(values, schema, bad)
        batch = batch.take(pa.array(rows))
    events = _lake_rows(batch, parsed, schema)
    out_of_bounds = _check_times(events, batch, bounds, now_us)
    if out_of_bounds:
        keep = np.ones(len(rows), dtype=bool)
        for i, reason in out_of_bounds:
            keep[i] = False
            bad.append((int(rows[i]), reason))
        events, rows = events.filter(pl.Series(keep)), rows[keep]
        bad.sort()
    return Decoded(events, rows, bad)


def _isolate(values: pa.Array, schema: type[Event], bad: list[tuple[int, str]]) -> tuple[np.ndarray, pa.Table]:
    """The indices and parsed values of the good values; each other one goes to `bad` with its reason.

    A msgspec screen (about a microsecond a value) takes out what Arrow refuses too; Arrow parses the
    rest in one call and, should that fail, in halves, down to the values it refuses alone."""
    screen, name = _screen(schema), schema.__name__
    maybe = []
    for i, raw in enumerate(values.to_pylist()):
        why = (_screened(screen, raw, name) if raw is not None
               else f"no value (a Kafka tombstone?): expected a JSON object of {name}")
        if why is None:
            maybe.append(i)
        else:
            bad.append((i, why))
    pieces = _bisect(values, schema, np.array(maybe, dtype=np.int64), bad)
    bad.sort()
    if not pieces:
        return np.empty(0, dtype=np.int64), _value_schema(schema).empty_table()
    return np.concatenate([idx for idx, _ in pieces]), pa.concat_tables([t for _, t in pieces])


def _bisect(values: pa.Array, schema: type[Event], idx: np.ndarray,
            bad: list[tuple[int, str]]) -> list[tuple[np.ndarray, pa.Table]]:
    if not len(idx):
        return []
    try:
        return [(idx, parse_values(values.take(pa.array(idx)), schema))]
    except pa.ArrowException as exc:
        if len(idx) == 1:
            bad.append((int(idx[0]), reason(values[int(idx[0])].as_py(), schema, exc)))
            return []
        if len(idx) <= _SMALL:
            return [piece for k in range(len(idx)) for piece in _bisect(values, schema, idx[k:k + 1], bad)]
        middle = len(idx) // 2
        return _bisect(values, schema, idx[:middle], bad) + _bisect(values, schema, idx[middle:], bad)


@functools.lru_cache(maxsize=256)
def _screen(schema: type[Event]) -> msgspec.json.Decoder[Any]:
    """A decoder refusing only values Arrow's parse refuses too (so a value's fate never depends on
    the other values of its batch): malformed JSON, not an object, a required field absent, a str or
    int field of another JSON type. Other fields are taken as anything (Arrow reads timestamps, dates
    and bytes from strings, not all as msgspec does); unknown fields are ignored, as Arrow does."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for name, tp, required in event_fields(schema):
        args = typing.get_args(tp)
        optional = type(None) in args
        inner = next((a for a in args if a is not type(None)), tp) if optional and len(args) == 2 else tp
        lenient: Any = (inner | None if optional else inner) if inner in (str, int) else Any
        fields.append((name, lenient) if required else (name, lenient, None))
    return msgspec.json.Decoder(msgspec.defstruct(f"{schema.__name__}Screen", fields, kw_only=True))


def _screened(screen: msgspec.json.Decoder[Any], raw: bytes, name: str) -> str | None:
    """Why `screen` refuses `raw`, or None when Arrow must judge it."""
    try:
        screen.decode(raw)
        return None
    except msgspec.ValidationError as err:
        return f"not a valid {name}: {err}"
    except msgspec.DecodeError as err:
        if b"NaN" in raw or b"Infinity" in raw:  # not JSON, but Arrow reads them as floats: let it judge
            return None
        return _not_json(raw, name, err)


def _not_json(raw: bytes, name: str, err: msgspec.DecodeError) -> str:
    """Why a value msgspec could not decode is no JSON object: empty, not UTF-8, or not JSON."""
    if not raw.strip():
        return f"empty value: expected a JSON object of {name}"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not UTF-8 text (invalid byte at {bad.start}): expected a JSON object of {name}"
    return f"not JSON ({err}): expected a JSON object of {name}"


def reason(raw: bytes, schema: type[Event], exc: Exception) -> str:
    """Why a value is not an event of `schema`, for the dead-letter record (Arrow's message names
    neither the field of a missing value nor anything a person can act on, so it is the last resort)."""
    name = schema.__name__
    try:
        obj = msgspec.json.decode(raw)  # refuses invalid UTF-8 too
    except msgspec.DecodeError as err:
        return _not_json(raw, name, err)
    problems = [p for p in describe_errors(schema, obj, 0) if p["error"] != "unknown field"]
    if problems:
        return f"not a valid {name}: " + "; ".join(
            f"field {p['field']!r}: {p['error']}" if p["field"] else str(p["error"]) for p in problems)
    return f"not a valid {name}: " + re.sub(r" in row \d+$", "", str(exc).removeprefix("JSON parse error: "))


def _check_times(events: pl.DataFrame, batch: pa.RecordBatch, bounds: TimeBounds,
                 now_us: int | None) -> list[tuple[int, str]]:
    """(index in `events`, reason) of each event whose time is outside `bounds` (vectorized; a
    reason is built for the few outside only)."""
    if events.height == 0:
        return []
    t = events.get_column(EVENT_TIME).dt.epoch("us").to_numpy()
    bus = _bus_time_us(batch).cast(pa.int64()).to_numpy(zero_copy_only=False)
    outside = (t < bounds.earliest_us) | (t > bounds.latest_us)
    ahead = (t - bus > int(bounds.max_future * 1e6)) if bounds.max_future is not None else np.zeros(len(t), bool)
    behind = (bus - t > int(bounds.max_past * 1e6)) if bounds.max_past is not None else np.zeros(len(t), bool)
    early = (t - now_us > int(bounds.max_future * 1e6)) if bounds.max_future is not None and now_us is not None \
        else np.zeros(len(t), bool)
    bad = outside | ahead | behind | early
    if not bad.any():
        return []
    out = []
    for i in np.flatnonzero(bad).tolist():
        when, stamp = f"{np.datetime64(int(t[i]), 'us')}Z", f"{np.datetime64(int(bus[i]), 'us')}Z"
        if outside[i]:
            first, last = np.datetime64(bounds.earliest_us, "us"), np.datetime64(bounds.latest_us, "us")
            out.append((i, f"event time {when} is outside the event times a stream takes ({first}Z to {last}Z)"))
        elif ahead[i]:
            out.append((i, f"event time {when} is more than {bounds.max_future:g} s ahead of the record's bus "
                           f"timestamp {stamp}, the stream's max_future (a producer's clock or ts field is wrong? "
                           "an event from the future would move the watermark past every other event)"))
        elif early[i]:
            out.append((i, f"event time {when} is more than {bounds.max_future:g} s ahead of now "
                           f"({np.datetime64(now_us, 'us')}Z), the stream's max_future (a producer's clock or ts field is "
                           "wrong? an event from the future would move the watermark past every other event)"))
        else:
            out.append((i, f"event time {when} is more than {bounds.max_past:g} s behind the record's bus "
                           f"timestamp {stamp}, the stream's max_past"))
    return out


def to_events(batch: pa.RecordBatch, schema: type[Event]) -> pl.DataFrame:
    """The lake rows of the records of a batch that decode (see `decode_records` for the others)."""
    return decode_records(batch, schema).events


def _text(values: pa.Array) -> pa.Array:
    """Binary values as strings; one that is not UTF-8 (any producer may set headers) becomes null."""
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:
        def valid(raw: bytes | None) -> str | None:
            try:
                return None if raw is None else raw.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return pa.array([valid(raw) for raw in values.to_pylist()], pa.string())


def _bus_time_us(batch: pa.RecordBatch) -> pa.Array:
    """The records' bus timestamps in µs; one beyond the years 1-9999 (any int64 of ms is a valid
    Kafka timestamp) is clipped to just outside them, where `_check_times` refuses it."""
    ms = batch.column("timestamp").cast(pa.int64())
    ms = pc.min_element_wise(pc.max_element_wise(ms, EARLIEST_US // 1000 - 1), LATEST_US // 1000 + 1)
    return pc.multiply(ms, 1000).cast(pa.timestamp("us", tz="UTC"))


def _lake_rows(batch: pa.RecordBatch, parsed: pa.Table, schema: type[Event]) -> pl.DataFrame:
    """Event id, event time, the fields, event date: from the records and their parsed values."""
    bus_time = _bus_time_us(batch)
    ts = parsed.column("ts").combine_chunks() if len(parsed) else pa.array([], pa.timestamp("us", tz="UTC"))
    event_time = (ts if ts.null_count == 0 else pc.if_else(pc.is_null(ts), bus_time, ts)) if len(parsed) else ts
    ids = _text(header(batch, "event_id"))
    if ids.null_count:
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
