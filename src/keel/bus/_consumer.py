"""The consumer of the `file://` bus: a group member reading its partitions into Arrow batches."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from keel.bus._groups import GroupMember
from keel.bus._reader import PartitionCursor
from keel.bus.base import RECORD_SCHEMA
from keel.errors import BackendError, ConflictError, CorruptDataError

if TYPE_CHECKING:
    from keel.bus.file import FileBus

def _empty() -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in RECORD_SCHEMA], schema=RECORD_SCHEMA)


class FileConsumer:
    """One member of a consumer group (see ``keel.bus.base.Consumer`` and ``_groups``).

    Like a Kafka consumer it is meant for one thread; give each thread its own consumer.
    """

    def __init__(
        self, bus: FileBus, stream: str, stream_dir: Path, partitions: int, group: str, pinned: list[int] | None
    ) -> None:
        self._bus, self.stream, self.group = bus, stream, group
        self._member = GroupMember(stream_dir, stream, group, partitions, bus.health, managed=pinned is None)
        self._cursors: dict[int, PartitionCursor] = {}
        self._next_rebalance = 0.0
        self._rotate = 0
        self._pending: CorruptDataError | None = None
        self._closed = False
        if pinned is not None:
            for p in sorted(set(pinned)):
                self._add(p)
        else:
            self._rebalance()

    @property
    def assignment(self) -> list[int]:
        return sorted(self._cursors)

    def _add(self, partition: int) -> None:
        plog = self._bus.partition_log(self.stream, partition)
        cursor = PartitionCursor(self.stream, partition, plog.dir, plog.state, 0)
        committed = self._member.committed(partition)
        cursor.seek(committed if committed is not None else cursor.start_offset())
        self._cursors[partition] = cursor

    def _rebalance(self) -> None:
        self._next_rebalance = time.monotonic() + self._bus.rebalance_interval
        wanted = self._member.wanted()
        for p in [p for p in self._cursors if p not in wanted]:
            self._cursors.pop(p).close()
            self._member.give_up(p)
        for p in sorted(wanted - set(self._cursors)):
            if self._member.take(p):
                self._add(p)

    def poll(self, max_records: int = 10_000, timeout: float = 1.0) -> pa.RecordBatch:
        self._check_open()
        if self._pending is not None:
            error, self._pending = self._pending, None
            raise error
        deadline = time.monotonic() + timeout
        while True:
            generation = self._bus.data_generation
            if self._member.managed and time.monotonic() >= self._next_rebalance:
                self._rebalance()
            batch = self._read(max_records)
            if batch is not None:
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _empty()
            self._bus.wait_for_data(generation, min(remaining, self._bus.poll_interval))

    def _read(self, max_records: int) -> pa.RecordBatch | None:
        partitions = sorted(self._cursors)
        if not partitions:
            return None
        self._rotate = (self._rotate + 1) % len(partitions)
        pieces: list[tuple[int, int, pa.RecordBatch]] = []
        taken = 0
        for p in partitions[self._rotate :] + partitions[: self._rotate]:
            if taken >= max_records:
                break
            try:
                got = self._cursors[p].read(max_records - taken)
            except CorruptDataError as exc:
                if not pieces:
                    raise
                self._pending = exc  # return what was read; the next poll raises
                break
            for first, batch in got:
                pieces.append((p, first, batch))
                taken += batch.num_rows
        if not pieces:
            return None
        return _assemble(pieces)

    def commit(self, offsets: dict[int, int]) -> None:
        self._check_open()
        self._bus.health.check()
        for p, offset in offsets.items():
            self._assigned(p)
            if offset < 0:
                raise ValueError(f"offset to commit must be >= 0, not {offset}")
        for p, offset in offsets.items():
            self._member.commit(p, offset)

    def seek(self, partition: int, offset: int) -> None:
        self._check_open()
        if offset < 0:
            raise ValueError(f"offset to seek to must be >= 0, not {offset}")
        self._assigned(partition).seek(offset)

    def seek_time(self, timestamp_ms: int) -> None:
        self._check_open()
        for cursor in self._cursors.values():
            cursor.seek(cursor.offset_for_time(timestamp_ms))

    def _assigned(self, partition: int) -> PartitionCursor:
        cursor = self._cursors.get(partition)
        if cursor is None:
            raise ConflictError(
                f"stream {self.stream!r} group {self.group!r}: partition {partition} is not assigned to this consumer "
                f"(its assignment is {self.assignment}); the group may have moved it to another member"
            )
        return cursor

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"the consumer of stream {self.stream!r} group {self.group!r} is closed; create a new one")

    def close(self) -> None:
        if self._closed:
            return
        for cursor in self._cursors.values():
            cursor.close()
        self._cursors.clear()
        self._member.close()
        self._closed = True


def _assemble(pieces: list[tuple[int, int, pa.RecordBatch]]) -> pa.RecordBatch:
    """One RECORD_SCHEMA batch from (partition, first offset, stored batch) pieces."""
    counts = [b.num_rows for _, _, b in pieces]
    stored = pa.concat_batches([b for _, _, b in pieces])  # always a copy: pieces view mapped segments
    partition = np.repeat(np.array([p for p, _, _ in pieces], dtype=np.int32), counts)
    offset = np.concatenate([np.arange(first, first + c, dtype=np.int64) for (_, first, _), c in zip(pieces, counts)])
    return pa.RecordBatch.from_arrays(
        [pa.array(partition), pa.array(offset), stored.column("timestamp"), stored.column("key"),
         stored.column("value"), stored.column("headers")],
        schema=RECORD_SCHEMA,
    )
