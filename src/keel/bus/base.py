"""The message bus: durable, partitioned, replayable streams of events.

Records travel as Arrow data, never one Python object per event:

* produce takes a ``pyarrow.RecordBatch`` or ``Table`` with the columns of ``PRODUCE_SCHEMA``
  (``value`` required; ``key``, ``timestamp`` and ``headers`` optional);
* poll returns a ``pyarrow.RecordBatch`` with the columns of ``RECORD_SCHEMA``.

``value`` holds the encoded event (JSON by default, so any client can read it). Headers carry at
least ``event_id`` and ``schema_version`` for events that come through the gateway.

Offsets are per partition, start at 0, and increase by one per record. A committed offset is the
*next* offset to read (Kafka's convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import pyarrow as pa

from keel.errors import SchemaError

HEADERS_TYPE = pa.map_(pa.string(), pa.binary())
TIMESTAMP_TYPE = pa.timestamp("ms", tz="UTC")

PRODUCE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary(), nullable=False),
        pa.field("timestamp", TIMESTAMP_TYPE),
        pa.field("headers", HEADERS_TYPE),
    ]
)

RECORD_SCHEMA = pa.schema(
    [
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("timestamp", TIMESTAMP_TYPE, nullable=False),
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary(), nullable=False),
        pa.field("headers", HEADERS_TYPE),
    ]
)

DLQ_SUFFIX = ".dlq"


def dlq_name(stream: str) -> str:
    """The dead-letter stream of `stream`."""
    return stream + DLQ_SUFFIX


@dataclass(frozen=True)
class StreamConfig:
    """A stream as the bus stores it. Retention of None keeps records forever."""

    name: str
    partitions: int = 1
    retention_ms: int | None = None
    retention_bytes: int | None = None  # per partition, as in Kafka


@dataclass(frozen=True)
class PartitionInfo:
    partition: int
    start_offset: int  # first offset still retained
    end_offset: int  # offset the next record will get


@dataclass(frozen=True)
class StreamInfo:
    config: StreamConfig
    partitions: list[PartitionInfo]
    # group -> partition -> committed offset (next to read)
    committed: dict[str, dict[int, int]] = field(default_factory=dict)

    def lag(self, group: str) -> dict[int, int]:
        done = self.committed.get(group, {})
        return {p.partition: p.end_offset - max(done.get(p.partition, p.start_offset), p.start_offset) for p in self.partitions}


@dataclass(frozen=True)
class Produced:
    """Where each produced record landed: arrays aligned with the input rows."""

    partitions: np.ndarray  # int32
    offsets: np.ndarray  # int64


@runtime_checkable
class Consumer(Protocol):
    """One member of a consumer group reading one stream.

    Contract:
    * ``poll`` returns the next records of the assigned partitions, at most ``max_records``,
      waiting up to ``timeout`` seconds for at least one; an empty batch after the timeout.
      Records of one partition come in offset order. A corrupt stored record raises
      ``CorruptDataError`` naming stream, partition and offset; it is never returned.
    * Only durable (acknowledged-grade) records are returned, so no record a consumer saw can be
      lost by a crash and its offset reused.
    * Nothing is committed implicitly. ``commit`` durably stores, per partition, the next offset to
      read; a restarted member of the group resumes there (or at the partition's start). A
      position that retention has deleted resumes at the partition's start.
    * ``seek`` moves the read position of one assigned partition; ``seek_time`` moves every
      assigned partition to the first record whose timestamp is >= the given time (ms since epoch).
    * Committing or seeking a partition that is not in ``assignment`` raises ``ConflictError``
      (the group may have moved it to another member).
    """

    @property
    def assignment(self) -> list[int]: ...

    def poll(self, max_records: int = 10_000, timeout: float = 1.0) -> pa.RecordBatch: ...

    def commit(self, offsets: dict[int, int]) -> None: ...

    def seek(self, partition: int, offset: int) -> None: ...

    def seek_time(self, timestamp_ms: int) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Bus(Protocol):
    """A set of partitioned streams.

    Contract:
    * ``produce`` returns only once every record of the batch is durable (``file://``: fsync'd;
      Kafka: acknowledged by all in-sync replicas). If it raises, the caller must assume none of
      the batch was acknowledged; the engine never acknowledges later what it failed to make durable.
      Records with one key always go to one partition: ``partition_for(key)`` on ``file://``,
      the Java clients' murmur2 on Kafka (``keel.bus.kafka.kafka_partitions``); keyless records
      are spread round-robin.
    * ``create_stream`` is idempotent for an identical config and raises ``ConflictError`` when a
      stream of that name exists with a different partition count.
    * Every stream ``s`` has a dead-letter stream ``dlq_name(s)`` with one partition, created with it.
    """

    def create_stream(self, config: StreamConfig) -> None: ...

    def describe(self, stream: str) -> StreamInfo: ...

    def list_streams(self) -> list[str]: ...

    def delete_stream(self, stream: str) -> None: ...

    def produce(self, stream: str, batch: pa.RecordBatch | pa.Table) -> Produced: ...

    def consumer(self, stream: str, group: str, partitions: list[int] | None = None) -> Consumer:
        """Join `group` on `stream`. `partitions=None` lets the group assign partitions; a list pins them."""
        ...

    def close(self) -> None: ...


def partition_for(keys: pa.Array | pa.ChunkedArray, partitions: int, start: int = 0) -> np.ndarray:
    """The partition of each key on the ``file://`` bus: crc32(key) mod `partitions` (Kafka places
    keys as the Java clients do instead: ``keel.bus.kafka.kafka_partitions``).

    Null keys are spread round-robin beginning at `start`. Vectorized: the CRC runs over all keys
    at once, one numpy step per byte position (keys are short), never one Python step per record.
    """
    n = len(keys)
    if partitions == 1 or n == 0:
        return np.zeros(n, dtype=np.int32)
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if not pa.types.is_large_binary(keys.type):
        keys = keys.cast(pa.large_binary())  # one offsets layout (int64) for binary, string, large_*
    crc = _crc32_each(keys)
    out = (crc % np.uint32(partitions)).astype(np.int32)
    if keys.null_count:
        nulls = ~np.asarray(keys.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        out[nulls] = ((start + np.arange(int(nulls.sum()))) % partitions).astype(np.int32)
    return out


_CRC_TABLE: np.ndarray | None = None


def key_buffers(keys: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The offsets, data bytes and lengths of a large_binary array, as numpy views (no copy); a null
    key has length 0, so it hashes as b"" (its partition is chosen apart)."""
    _, offsets_buf, data_buf = keys.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64, count=len(keys) + 1, offset=keys.offset * 8)
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    if keys.null_count:
        lengths = np.where(keys.is_valid().to_numpy(zero_copy_only=False), lengths, 0)
    return offsets, data, lengths


def _crc32_each(keys: pa.Array) -> np.ndarray:
    """zlib.crc32 of every value of a large_binary array (nulls give the CRC of b"")."""
    global _CRC_TABLE
    if _CRC_TABLE is None:
        table = np.arange(256, dtype=np.uint32)
        for _ in range(8):
            table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1).astype(np.uint32)
        _CRC_TABLE = table
    n = len(keys)
    offsets, data, lengths = key_buffers(keys)
    # longest keys first, so the keys still running at byte j are a prefix of the order
    order = np.argsort(-lengths, kind="stable")
    starts = offsets[:-1][order]
    running = np.searchsorted(-lengths[order], -np.arange(int(lengths.max(initial=0))), side="left")
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    low = np.empty(n, dtype=np.uint32)
    for k in running.tolist():
        head, byte = crc[:k], low[:k]
        np.bitwise_xor(head, data[starts[:k]], out=byte)
        np.bitwise_and(byte, 0xFF, out=byte)
        np.right_shift(head, 8, out=head)
        np.bitwise_xor(head, _CRC_TABLE[byte], out=head)
        starts[:k] += 1
    out = np.empty(n, dtype=np.uint32)
    out[order] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def conform_produce(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """The batch as a Table of PRODUCE_SCHEMA's columns (cast), or SchemaError saying what is wrong."""
    if isinstance(batch, pa.RecordBatch):
        table = pa.Table.from_batches([batch])
    elif isinstance(batch, pa.Table):
        table = batch
    else:
        raise SchemaError(f"produce takes a pyarrow RecordBatch or Table, not {type(batch).__name__}")
    unknown = [c for c in table.column_names if c not in PRODUCE_SCHEMA.names]
    if unknown or "value" not in table.column_names:
        raise SchemaError(
            f"produce got columns {table.column_names}: it takes {PRODUCE_SCHEMA.names} ('value' required)"
            + (f"; unknown: {unknown}" if unknown else "")
        )
    columns = {}
    for name in table.column_names:
        target = PRODUCE_SCHEMA.field(name).type
        try:
            columns[name] = table.column(name).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SchemaError(f"produce: column {name!r} of type {table.column(name).type} cannot be read as {target}") from exc
    if columns["value"].null_count:
        raise SchemaError(f"produce: {columns['value'].null_count} record(s) have a null value; every record needs one")
    return pa.table(columns)
