"""Reading one partition: a cursor over its segments that yields Arrow batches and never a bad record.

A cursor reads only below the partition's fsync'd watermark, so a consumer never sees a record
that a power loss could still take back (and whose offset a later record could then reuse). It
maps the segment (read-only, remapped as it grows), checks each frame's header and payload CRC
and turns the payload into Arrow without copying; the consumer copies the records out once when it
assembles its batch, so no returned batch aliases a file. A frame that fails a check raises
CorruptDataError naming stream, partition and offset, and the next readable offset to ``seek`` to.
Only bytes below the watermark are ever looked at, and those never change (segments are
append-only, and the torn tails that are cut off lie beyond it).

Locating an offset (``seek``) walks the frame headers of one segment; ``offset_for_time`` walks
the headers of every segment and uses their min/max timestamps, decoding only the frame that holds
the answer. Neither keeps an index: frames hold ~1,000 records, so a walk is short.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from keel.bus import _frame
from keel.bus._log import list_segments, segment_path
from keel.bus._shared import SharedState
from keel.errors import CorruptDataError


class PartitionCursor:
    """The read position of one consumer in one partition."""

    def __init__(self, stream: str, partition: int, pdir: Path, state: SharedState, position: int) -> None:
        self.stream, self.partition, self.dir, self.state = stream, partition, pdir, state
        self.position = position  # next offset to return
        self._seg, self._fd, self._size = -1, -1, 0
        self._pos = 0  # byte of the frame holding `position` in segment `_seg` (valid if _fd >= 0)
        self._map: mmap.mmap | None = None
        self._map_len = 0

    # --- positioning ----------------------------------------------------------------------------

    def seek(self, offset: int) -> None:
        self.position = offset
        self._close_segment()

    def start_offset(self) -> int:
        segments = list_segments(self.dir)
        return segments[0] if segments else 0

    def _close_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        # not closed: Arrow buffers may still view it; it is unmapped when the last one goes
        self._map, self._map_len = None, 0
        self._seg, self._fd = -1, -1

    def _open(self, base: int) -> bool:
        self._close_segment()
        try:
            self._fd = os.open(segment_path(self.dir, base), os.O_RDONLY)
        except FileNotFoundError:
            return False
        self._seg, self._pos = base, 0
        return True

    def _locate(self, bound: int) -> None:
        """Open the segment holding `position` and find the frame holding it."""
        for _ in range(100):  # retention may delete a segment between listing and opening it
            segments = list_segments(self.dir)
            if not segments:
                raise CorruptDataError(f"stream {self.stream!r} partition {self.partition}: no segment files in {self.dir}")
            # fell behind retention: resume at the oldest record kept
            self.position = max(self.position, segments[0])
            if self._open(max(s for s in segments if s <= self.position)):
                break
        damaged_at, end = None, 0
        for pos, header in self._frames(bound):
            if header is None:
                damaged_at = pos
                continue
            if header.end > self.position:
                self._pos = damaged_at if damaged_at is not None and self.position < header.base else pos
                return
            damaged_at, end = None, pos + header.size
        self._pos = damaged_at if damaged_at is not None else end

    def _frames(self, bound: int) -> Iterator[tuple[int, _frame.Header | None]]:
        """(byte, header) of each frame of the open segment below `bound`; header None = damaged."""
        pos, expected = 0, self._seg
        while expected < bound:
            view = self._view(pos, _frame.HEADER_SIZE)
            if view is None:
                return
            header = _frame.parse_header(view, 0)
            if header is None or header.base != expected:
                yield pos, None
                found = self._resync(pos)
                if found is None or found[1].base >= bound:
                    return
                pos, header = found
            yield pos, header
            pos, expected = pos + header.size, header.end

    def _resync(self, pos: int) -> tuple[int, _frame.Header] | None:
        # read, not mapped: the search runs past the watermark, where an appender may be cutting off
        # a torn tail, and touching a mapped page beyond the end of a file kills the process (SIGBUS)
        rest = os.pread(self._fd, max(0, self._file_size() - pos), pos)
        found = _frame.find_next(rest, 0) if rest else None
        return (pos + found[0], found[1]) if found is not None else None

    def _file_size(self) -> int:
        return os.fstat(self._fd).st_size

    def _remap(self, needed: int) -> bool:
        """Map the whole segment if the mapping is shorter than `needed` bytes; False if the file is."""
        if needed <= self._map_len:
            return True
        size = self._file_size()
        if size < needed or size == 0:
            return False
        self._map, self._map_len = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ), size
        return True

    def _view(self, pos: int, n: int) -> memoryview | None:
        """`n` bytes of the open segment at `pos`, None if the file is shorter."""
        if not self._remap(pos + n):
            return None
        assert self._map is not None
        return memoryview(self._map)[pos : pos + n]

    # --- reading --------------------------------------------------------------------------------

    def read(self, max_records: int) -> list[tuple[int, pa.RecordBatch]]:
        """Up to `max_records` records from `position` on, as (first offset, batch of STORED_SCHEMA).

        Raises CorruptDataError at a damaged frame unless records before it were read in this call
        (they are returned; the next call raises).
        """
        bound = self.state.synced
        out: list[tuple[int, pa.RecordBatch]] = []
        taken = 0
        while taken < max_records and self.position < bound:
            if self._fd < 0:
                self._locate(bound)
                continue
            try:
                piece = self._read_frame(bound, max_records - taken)
            except CorruptDataError:
                if out:
                    return out
                raise
            if piece is None:  # end of this segment: the rest is in the next one
                if not self._next_segment():
                    raise self._corrupt("the segment that should hold it is missing", None)
                continue
            out.append(piece)
            taken += piece[1].num_rows
        return out

    def _read_frame(self, bound: int, limit: int) -> tuple[int, pa.RecordBatch] | None:
        view = self._view(self._pos, _frame.HEADER_SIZE)
        if view is None:
            if self._pos >= self._file_size():
                return None
            raise self._corrupt("its frame header is cut short", self._pos)
        header = _frame.parse_header(view, 0)
        if header is None:
            raise self._corrupt("its frame header failed its CRC check", self._pos)
        if not header.base <= self.position < header.end:
            raise self._corrupt(f"the frame there holds offsets {header.base}..{header.end - 1}", self._pos)
        payload = self._view(self._pos + _frame.HEADER_SIZE, header.length)
        if payload is None:
            raise self._corrupt("its record batch is cut short", self._pos)
        if not _frame.crc_ok(header, payload):
            raise self._corrupt("its record batch failed its CRC check", self._pos)
        try:
            batch = _frame.decode(header, payload)
        except ValueError as exc:
            raise self._corrupt(str(exc), self._pos) from exc
        skip = self.position - header.base
        take = min(header.records - skip, limit, bound - self.position)
        first = self.position
        self.position += take
        if self.position == header.end:
            self._pos += header.size
        return first, batch.slice(skip, take) if (skip or take < header.records) else batch

    def _next_segment(self) -> bool:
        segments = list_segments(self.dir)
        if self.position in segments:
            return self._open(self.position)
        if segments and self.position < segments[0]:
            self._close_segment()  # deleted by retention under us: _locate resumes at the oldest kept
            return True
        return False

    def _corrupt(self, why: str, pos: int | None) -> CorruptDataError:
        where = f"in {segment_path(self.dir, self._seg).name} at byte {pos}" if pos is not None else ""
        hint = ""
        nxt = self._next_readable(pos) if pos is not None else None
        if nxt is not None:
            hint = f" Skip it with consumer.seek({self.partition}, {nxt}) (the next readable offset) and check the disk."
        return CorruptDataError(
            f"stream {self.stream!r} partition {self.partition} offset {self.position}: stored record batch {where} "
            f"is damaged ({why}); it is never returned.{hint}"
        )

    def _next_readable(self, pos: int) -> int | None:
        found = self._resync(pos)
        if found is not None:
            return found[1].base
        later = [s for s in list_segments(self.dir) if s > self._seg]
        return later[0] if later else None

    # --- time -----------------------------------------------------------------------------------

    def offset_for_time(self, timestamp_ms: int) -> int:
        """The first offset whose record has a timestamp >= `timestamp_ms`, else the end."""
        bound = self.state.synced
        for base in list_segments(self.dir):
            if base >= bound or not self._open(base):
                continue
            for pos, header in self._frames(bound):
                if header is None or header.max_ts < timestamp_ms:
                    continue
                payload = self._view(pos + _frame.HEADER_SIZE, header.length)
                if payload is None or not _frame.crc_ok(header, payload):
                    continue
                ts = _frame.decode(header, payload).column("timestamp").cast(pa.int64()).to_numpy()
                hit = int(np.argmax(ts >= timestamp_ms))
                self._close_segment()
                return min(header.base + hit, bound)
        self._close_segment()
        return bound

    def close(self) -> None:
        self._close_segment()
