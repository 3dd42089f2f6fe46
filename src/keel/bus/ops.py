"""Operator commands over any bus (only the ``Bus`` Protocol): what ``keel status``, ``keel tail``
and ``keel dlq`` call.

Dead letters: a processor that cannot handle a record produces it to ``dlq_name(stream)`` with the
record's key, value and timestamp unchanged, its own headers and context headers (``error``,
``stage``, ``processor``, ``source_partition``, ``source_offset``). The records still *pending* are
those after the committed offset of the group ``DLQ_GROUP``. The dead-letter stream may hold a
failed record more than once (every processor of the stream dead-letters a record that does not
decode; a processor that crashed before committing its position dead-letters again what it
re-reads); the functions below count each failed source record once:

* ``dlq_show`` lists pending dead letters without consuming them;
* ``dlq_replay`` produces them back into the source stream (context headers removed, the original
  ones kept) and then commits, so a crash in between replays a record twice, never zero times;
* ``dlq_purge`` commits past them without replaying: they stay in the dead-letter stream (for the
  record, until its retention) but are no longer pending.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from keel.bus.base import Bus, Consumer, dlq_name

DLQ_GROUP = "keel-dlq"
CONTEXT_HEADERS = frozenset({"error", "error_class", "processor", "stage", "source_offset", "source_partition",
                             "source_timestamp", "null_value", "attempt", "schema_id", "failed_at"})


@dataclass(frozen=True)
class StreamSummary:
    """One line of ``keel status``: a stream, its size and each group's lag."""

    name: str
    partitions: int
    records: int  # retained records (end - start, summed over partitions)
    end_offsets: dict[int, int]
    lag: dict[str, int]  # group -> records not yet committed, summed over partitions
    dead_letters_pending: int | None  # None for a dead-letter stream itself


def list_streams(bus: Bus) -> list[StreamSummary]:
    """Every stream with its size and the lag of every group that committed on it."""
    out = []
    names = bus.list_streams()
    for name in names:
        info = bus.describe(name)
        pending = None
        if dlq_name(name) in names:
            pending = sum(bus.describe(dlq_name(name)).lag(DLQ_GROUP).values())
        out.append(StreamSummary(
            name=name,
            partitions=info.config.partitions,
            records=sum(p.end_offset - p.start_offset for p in info.partitions),
            end_offsets={p.partition: p.end_offset for p in info.partitions},
            lag={g: sum(info.lag(g).values()) for g in sorted(info.committed)},
            dead_letters_pending=pending,
        ))
    return out


def decode(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """Records as dicts for people: JSON values parsed, text decoded, other bytes kept as bytes;
    timestamps in ms (a producer may set one no datetime holds)."""
    ms = batch.column("timestamp").cast(pa.int64())
    rows: list[dict[str, Any]] = batch.set_column(batch.schema.get_field_index("timestamp"), "timestamp", ms).to_pylist()
    for row in rows:
        row["key"] = _text(row["key"])
        value = row["value"]
        try:
            row["value"] = json.loads(value)
        except (ValueError, RecursionError):  # not JSON (or nested deeper than Python recurses)
            row["value"] = _text(value)
        row["headers"] = {k: _text(v) for k, v in (row["headers"] or [])}
    return rows


def _text(raw: bytes | None) -> object:
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def tail(bus: Bus, stream: str, last: int = 10, follow: bool = False, poll_timeout: float = 0.5,
         give_up_after: float = 30.0) -> Iterator[dict[str, Any]]:
    """The `last` records of each partition (decoded), then, with `follow`, new ones as they come.

    Reads through a throwaway group that never commits, so tailing changes nothing. Without
    `follow` it stops once it has read what existed when it started (or after `give_up_after`
    seconds without a record, if the engine cannot deliver them).
    """
    info = bus.describe(stream)
    consumer = bus.consumer(stream, f"keel-tail-{uuid.uuid4().hex[:8]}", partitions=[p.partition for p in info.partitions])
    try:
        position, ends = {}, {}
        for p in info.partitions:
            position[p.partition] = max(p.start_offset, p.end_offset - last)
            ends[p.partition] = p.end_offset
            consumer.seek(p.partition, position[p.partition])
        quiet_since = time.monotonic()
        while follow or any(position[p] < ends[p] for p in ends):
            batch = consumer.poll(10_000, timeout=poll_timeout)
            if batch.num_rows == 0:
                if not follow and time.monotonic() - quiet_since > give_up_after:
                    return
                continue
            quiet_since = time.monotonic()
            _advance(position, batch)
            yield from decode(batch)
    finally:
        consumer.close()


def _advance(position: dict[int, int], batch: pa.RecordBatch) -> None:
    for p, o in zip(batch.column("partition").to_pylist(), batch.column("offset").to_pylist()):
        position[p] = max(position.get(p, 0), o + 1)


def _pending(bus: Bus, stream: str, limit: int | None, give_up_after: float = 30.0) -> tuple[Consumer, list[pa.RecordBatch]]:
    """A DLQ_GROUP consumer of the dead-letter stream and the pending records (at most `limit`)."""
    dlq = dlq_name(stream)
    info = bus.describe(dlq)
    start, end = info.partitions[0].start_offset, info.partitions[0].end_offset
    position = max(start, info.committed.get(DLQ_GROUP, {}).get(0, start))
    consumer = bus.consumer(dlq, DLQ_GROUP, partitions=[0])
    batches: list[pa.RecordBatch] = []
    got, quiet_since = 0, time.monotonic()
    while position < end and (limit is None or got < limit) and time.monotonic() - quiet_since < give_up_after:
        want = 10_000 if limit is None else min(10_000, limit - got)
        batch = consumer.poll(want, timeout=0.2)
        offsets = batch.column("offset").to_numpy()
        batch = batch.filter(pa.array(offsets < end)) if batch.num_rows else batch
        if batch.num_rows == 0:
            continue
        quiet_since = time.monotonic()
        batches.append(batch)
        got += batch.num_rows
        position = int(batch.column("offset")[-1].as_py()) + 1
    return consumer, batches


def _source(row: dict[str, Any]) -> tuple[int | None, int | None]:
    """The source partition and offset a dead letter names (also the older "p:o" source_offset)."""
    h = row["headers"]
    offset, partition = str(h.get("source_offset", "")), str(h.get("source_partition", ""))
    if ":" in offset:
        partition, offset = offset.split(":", 1)
    return (int(partition) if partition.isdigit() else None), (int(offset) if offset.isdigit() else None)


def _distinct(batches: list[pa.RecordBatch]) -> list[tuple[dict[str, Any], list[int]]]:
    """Pending dead letters, one per failed source record: (row, DLQ rows of it in `batches`).

    A processor that crashes after dead-lettering and before committing its position dead-letters
    the same records again when it resumes, and every processor of a stream dead-letters a record
    that does not decode: those copies are one entry (the processors of a decode failure merged)."""
    out: dict[object, tuple[dict[str, Any], list[int]]] = {}
    index = 0
    for batch in batches:
        for row in decode(batch):
            partition, offset = _source(row)
            stage, processor = row["headers"].get("stage"), row["headers"].get("processor")
            key: object = (index,) if offset is None else (partition, offset, None if stage == "decode" else processor)
            if key in out:
                first, copies = out[key]
                if processor and processor not in first["processor"].split(", "):
                    first["processor"] += f", {processor}"
                copies.append(index)
            else:
                row["processor"], row["dlq_offset"] = processor or "", row["offset"]
                out[key] = (row, [index])
            index += 1
    return list(out.values())


def dlq_show(bus: Bus, stream: str, limit: int = 100) -> list[dict[str, Any]]:
    """Up to `limit` pending dead letters of `stream`, one per failed source record, decoded.

    Each has the source ``stream``, ``partition`` and ``offset`` (None if its producer did not name
    them), the ``reason``, ``stage`` (decode, window, transform) and ``processor`` (several, comma
    separated, when each of them failed on it), its ``dlq_offset`` in the dead-letter stream, and the
    record's ``key``, ``value`` (parsed when it is JSON), ``timestamp`` (ms) and ``headers``."""
    # copies of one record are few (one per processor, or per crash of one): read a margin beyond `limit`
    consumer, batches = _pending(bus, stream, limit * 4)
    consumer.close()
    rows = []
    for row, _ in _distinct(batches)[:limit]:
        partition, offset = _source(row)
        h = row["headers"]
        rows.append({"stream": stream, "partition": partition, "offset": offset, "reason": h.get("error"),
                     "stage": h.get("stage"), "processor": row["processor"], "dlq_offset": row["dlq_offset"],
                     "timestamp": int(h.get("source_timestamp") or row["timestamp"]), "key": row["key"], "value": row["value"], "headers": h})
    return rows


def dlq_replay(bus: Bus, stream: str, limit: int | None = None) -> int:
    """Produce pending dead letters back into `stream` (each failed source record once, however many
    copies the dead-letter stream holds), then mark them done; returns how many were produced."""
    consumer, batches = _pending(bus, stream, limit)
    try:
        if not batches:
            return 0
        pending = pa.Table.from_batches(batches)
        replay = pending.take(pa.array([copies[0] for _, copies in _distinct(batches)], pa.int64()))
        own = replay.column("headers").to_pylist()
        headers = [None if h is None else [(k, v) for k, v in h if k not in CONTEXT_HEADERS] for h in own]
        # a dead letter stored at another time than its record's (the dead-letter stream refused that) names it
        stamps = [next((int(v) for k, v in (h or []) if k == "source_timestamp"), ms)
                  for h, ms in zip(own, replay.column("timestamp").cast(pa.int64()).to_pylist())]
        bus.produce(stream, pa.table({
            "key": replay.column("key"),
            "value": replay.column("value"),
            "timestamp": pa.array(stamps, pa.int64()).cast(pending.schema.field("timestamp").type),
            "headers": pa.array(headers, pending.schema.field("headers").type),
        }))
        consumer.commit({0: int(batches[-1].column("offset")[-1].as_py()) + 1})
        return int(replay.num_rows)
    finally:
        consumer.close()


def dlq_purge(bus: Bus, stream: str) -> int:
    """Mark every pending dead letter of `stream` done without replaying it; returns how many."""
    dlq = dlq_name(stream)
    info = bus.describe(dlq)
    end = info.partitions[0].end_offset
    pending = info.lag(DLQ_GROUP)[0]
    consumer = bus.consumer(dlq, DLQ_GROUP, partitions=[0])
    try:
        consumer.commit({0: end})
    finally:
        consumer.close()
    return pending
