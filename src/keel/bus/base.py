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
    * Nothing is committed implicitly. ``commit`` durably stores, per partition, the next offset to
      read; a restarted member of the group resumes there (or at the partition's start).
    * ``seek`` moves the read position of one assigned partition; ``seek_time`` moves every
      assigned partition to the first record whose timestamp is >= the given time (ms since epoch).
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
      Records with a key go to ``partition_for(key)``; keyless records are spread round-robin.
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
    """The partition of each key: crc32(key) mod `partitions`, the same on every engine.

    Null keys are spread round-robin beginning at `start`.
    """
    import zlib

    out = np.empty(len(keys), dtype=np.int32)
    if partitions == 1:
        out.fill(0)
        return out
    rr = start
    for i, key in enumerate(keys.to_pylist()):
        if key is None:
            out[i] = rr % partitions
            rr += 1
        else:
            out[i] = zlib.crc32(key) % partitions
    return out
