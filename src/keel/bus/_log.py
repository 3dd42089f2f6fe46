"""One partition's log: append under a cross-process lock, group-commit fsync, roll, retention, recovery.

A partition is a directory of segment files ``<base offset>.seg`` (20 digits, so names sort like
offsets); the last one is active. Several processes may append to one partition: each append holds
the partition's ``append.lock`` while it writes its frame (so frames never interleave) and checks
first that the file ends where the shared state says the last complete frame ends. Whatever is
beyond that was left by an appender that died mid-write: complete valid frames are kept, the rest
is cut off before writing. We serialize writers rather than refuse the second one because the
gateway runs several worker processes that all produce to the same streams.

Durability (group commit): an appender returns after its frame is written; ``sync_to`` then waits
until the frame is fsync'd. In a process one thread at a time leads: it fsyncs for every frame
written so far, the others wait on a Condition. Across processes the leader takes the partition's
``sync.lock``; a leader that waited for another process's fsync finds its frame already covered and
skips its own. After an fsync error nothing is acknowledged any more (see ``Health``).

Recovery runs when the shared state is not from this boot (after a reboot or power loss): it
checks every frame of the last segment (earlier ones were fsync'd whole before the roll), cuts off
a torn tail and keeps damaged frames that a later frame proves were fsync'd (``durable``), so that
reading them raises CorruptDataError instead of silently losing acknowledged records.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from keel.bus import _frame
from keel.bus._shared import FileLock, SharedState, fsync_dir
from keel.errors import BackendError, DurabilityError

log = logging.getLogger("keel.bus.file")

SEGMENT_SUFFIX = ".seg"


def segment_path(pdir: Path, base: int) -> Path:
    return pdir / f"{base:020d}{SEGMENT_SUFFIX}"


def list_segments(pdir: Path) -> list[int]:
    """Base offsets of the partition's segments, oldest first."""
    return sorted(int(n[: -len(SEGMENT_SUFFIX)]) for n in os.listdir(pdir) if n.endswith(SEGMENT_SUFFIX) and n[0] != ".")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Health:
    """Fail-stop after the first fsync error, bus-wide.

    Linux may mark the pages of a failed writeback clean, so a retried fsync can "succeed" without
    the data ever reaching the disk (PostgreSQL's fsyncgate). So the bus never retries: it stops
    acknowledging for good, and every produce raises DurabilityError until it is reopened, when
    recovery keeps what is really on disk.
    """

    def __init__(self) -> None:
        self._error: DurabilityError | None = None

    def fail(self, what: str, exc: OSError) -> DurabilityError:
        if self._error is None:
            self._error = DurabilityError(
                f"{what} failed ({exc}); the bus stopped acknowledging writes so that it never acknowledges "
                "data the disk may have lost. Fix the disk, then reopen the bus: recovery keeps every record "
                "that was acknowledged; the batches that got this error may or may not be in the log"
            )
            log.critical("%s", self._error)
        return self._error

    def check(self) -> None:
        if self._error is not None:
            raise DurabilityError(str(self._error)) from self._error


@dataclass(frozen=True)
class Frame:
    """A record batch ready to append: its Arrow IPC payload and what the header says about it."""

    payload: object  # a buffer (pyarrow.Buffer)
    crc: int
    size: int
    records: int
    min_ts: int
    max_ts: int


@dataclass(frozen=True)
class Scan:
    """What a check of a segment's frames found."""

    end_pos: int  # byte after the last good frame (where the torn tail starts, if any)
    end_offset: int  # offset after the last good frame
    torn: bool  # bytes from end_pos on are a torn tail to cut off
    damaged: list[int]  # first offsets of damaged frames proven fsync'd (kept; reading them raises)
    first_append_ms: int | None


def scan_segment(buf: _frame.Searchable, base: int, start: int = 0) -> Scan:
    """Check the frames of `buf` (a segment's bytes) from byte `start`, whose first offset is `base`."""
    pos, expected, first_ms = start, base, None
    damaged: list[int] = []
    while pos < len(buf):
        header = _frame.parse_header(buf, pos)
        if header is not None and header.base == expected and _frame.payload_ok(header, buf, pos):
            first_ms = header.append_ms if first_ms is None else first_ms
            pos, expected = pos + header.size, header.end
            continue
        found = _frame.find_next(buf, pos)
        if found is None or not _proven_durable(buf, found, expected):
            return Scan(pos, expected, True, damaged, first_ms)
        damaged.append(expected)
        pos, expected = found[0], found[1].base
    return Scan(pos, expected, False, damaged, first_ms)


def _proven_durable(buf: _frame.Searchable, found: tuple[int, _frame.Header], offset: int) -> bool:
    """Whether a valid frame from `found` on was written after `offset` had been fsync'd."""
    probe: tuple[int, _frame.Header] | None = found
    while probe is not None:
        at, header = probe
        if header.durable > offset:
            return True
        nxt = at + header.size
        following = _frame.parse_header(buf, nxt)
        if following is not None and _frame.payload_ok(following, buf, nxt):
            probe = (nxt, following)
        else:
            probe = _frame.find_next(buf, nxt - 1) if nxt < len(buf) else None
    return False


class PartitionLog:
    """The writer side of one partition, in one process (thread-safe)."""

    def __init__(
        self, stream: str, partition: int, pdir: Path, health: Health, segment_bytes: int, roll_ms: int | None = None
    ) -> None:
        self.stream, self.partition, self.dir = stream, partition, pdir
        self.health = health
        self.segment_bytes, self.roll_ms = segment_bytes, roll_ms
        self.state = SharedState(pdir / "state")
        self._append_lock = FileLock(pdir / "append.lock")
        self._sync_lock = FileLock(pdir / "sync.lock")
        self._cond = threading.Condition()
        self._syncing = False
        # this process's view of the active segment, valid while it holds the append lock
        self._seg, self._fd, self._offset, self._bytes = -1, -1, 0, 0
        self._sync_seg, self._sync_fd = -1, -1
        self.ensure_recovered()

    def where(self) -> str:
        return f"stream {self.stream!r} partition {self.partition}"

    # --- recovery -------------------------------------------------------------------------------

    def ensure_recovered(self) -> None:
        """Run recovery if no process of this boot has (cheap when the state page is valid)."""
        if self.state.valid():
            return
        with self._append_lock, self._sync_lock:
            if not self.state.valid():
                self._recover()

    def _recover(self) -> None:
        segments = list_segments(self.dir)
        if not segments:
            os.close(self._create_segment(0))
            segments = [0]
        base = segments[-1]
        path = segment_path(self.dir, base)
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            scan = Scan(0, base, False, [], None)
            if size:
                with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as buf:
                    scan = scan_segment(buf, base)
            if scan.torn:
                log.warning("%s: cut off a torn tail of %d bytes at offset %d (never acknowledged)",
                            self.where(), size - scan.end_pos, scan.end_offset)
                os.ftruncate(fd, scan.end_pos)
            for offset in scan.damaged:
                log.error("%s: damaged record batch at offset %d; reading it raises CorruptDataError", self.where(), offset)
            try:
                os.fsync(fd)  # whatever survived is durable from now on
            except OSError as exc:
                raise self.health.fail(f"fsync of {path} during recovery", exc) from exc
        finally:
            os.close(fd)
        created = scan.first_append_ms if scan.first_append_ms is not None else now_ms()
        self.state.initialize(base, scan.end_offset, scan.end_pos, created)
        self._seg = -1

    # --- appending ------------------------------------------------------------------------------

    def append(self, frames: list[Frame]) -> tuple[int, int]:
        """Write `frames` back to back and return (first offset, end offset); not yet fsync'd: see sync_to.

        The frames of one call are contiguous: no other appender's frame comes between them.
        """
        with self._append_lock:
            self.health.check()
            self._adopt_tail()
            first = self._offset
            for f in frames:
                if self._bytes > 0 and (self._bytes + _frame.HEADER_SIZE + f.size > self.segment_bytes or self._too_old()):
                    self._roll()
                base = self._offset
                header = _frame.pack_header(f.size, f.records, base, self.state.synced, f.min_ts, f.max_ts, now_ms(), f.crc)
                self._write(header, f.payload, f.size, self._bytes)
                self._bytes += _frame.HEADER_SIZE + f.size
                self._offset = base + f.records
                self.state.set_written(self._seg, self._offset, self._bytes)
            return first, self._offset

    def _too_old(self) -> bool:
        return self.roll_ms is not None and now_ms() - self.state.segment_created_ms >= self.roll_ms

    def _write(self, header: bytes, payload: object, size: int, at: int) -> None:
        total = len(header) + size
        try:
            written = os.pwritev(self._fd, [header, payload], at)  # type: ignore[list-item]
            if written < total:  # a short write to a regular file: the disk is (nearly) full
                rest = (header + memoryview(payload).tobytes())[written:]  # type: ignore[arg-type]
                while rest:
                    step = os.pwrite(self._fd, rest, at + written)
                    if step == 0:
                        raise OSError("no progress writing the frame (disk full?)")
                    rest, written = rest[step:], written + step
        except OSError as exc:
            try:
                os.ftruncate(self._fd, at)
            except OSError:
                pass
            raise BackendError(
                f"{self.where()}: could not write to {segment_path(self.dir, self._seg)} ({exc}); nothing of this "
                "batch was acknowledged: free disk space or fix the disk, then produce it again"
            ) from exc

    def _adopt_tail(self) -> None:
        """Make this process's view of the active segment match the file (holding the append lock)."""
        if not self.state.valid():  # someone simulated a reboot under us: recover like at startup
            with self._sync_lock:
                if not self.state.valid():
                    self._recover()
        written = self.state.written()
        if written == (self._seg, self._offset, self._bytes) and os.fstat(self._fd).st_size == self._bytes:
            return
        if written is None:
            with self._sync_lock:  # an appender died between updating the fields: check from disk
                self._recover()
            written = self.state.written()
            assert written is not None
        seg, offset, nbytes = written
        if seg != self._seg:
            self._open_active(seg)
        size = os.fstat(self._fd).st_size
        if size < nbytes:  # the file lost frames the state counts: only a full check can tell what holds
            with self._sync_lock:
                self._recover()
            self._adopt_tail()
            return
        if size > nbytes:  # left by an appender that died mid-write: keep complete frames, cut the rest
            tail = os.pread(self._fd, size - nbytes, nbytes)
            scan = scan_segment(tail, offset)
            if scan.end_pos < len(tail):
                log.warning("%s: cut off %d bytes left by an appender that died mid-write", self.where(),
                            len(tail) - scan.end_pos)
                os.ftruncate(self._fd, nbytes + scan.end_pos)
            offset, nbytes = scan.end_offset, nbytes + scan.end_pos
            self.state.set_written(seg, offset, nbytes)
        self._offset, self._bytes = offset, nbytes

    def _open_active(self, seg: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        path = segment_path(self.dir, seg)
        try:
            self._fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:  # a roll published the new segment but died before creating it
            self._fd = self._create_segment(seg)
        self._seg = seg

    def _create_segment(self, base: int) -> int:
        path = segment_path(self.dir, base)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fsync_dir(self.dir)
        except OSError as exc:
            os.close(fd)
            raise self.health.fail(f"fsync of directory {self.dir} after creating {path.name}", exc) from exc
        return fd

    def _roll(self) -> None:
        """Seal the active segment (fsync'd whole) and start a new one at the next offset."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise self.health.fail(f"fsync of {segment_path(self.dir, self._seg)} before rolling", exc) from exc
        new = self._offset
        self.state.set_written(new, new, 0)  # published first: a crash before the file exists is repaired
        self.state.segment_created_ms = now_ms()
        fd = self._create_segment(new)
        os.close(self._fd)
        self._fd, self._seg, self._bytes = fd, new, 0
        with self._sync_lock:
            self.state.advance_synced(new)

    # --- group commit ---------------------------------------------------------------------------

    def sync_to(self, offset: int) -> None:
        """Return once every record below `offset` is fsync'd; DurabilityError if that can't be."""
        with self._cond:
            while True:
                self.health.check()
                if self.state.synced >= offset:
                    return
                if not self._syncing:
                    self._syncing = True
                    break
                self._cond.wait()
        try:
            self._sync_shared(offset)
        finally:
            with self._cond:
                self._syncing = False
                self._cond.notify_all()
        self.health.check()

    def _sync_shared(self, offset: int) -> None:
        with self._sync_lock:
            if self.state.synced >= offset:
                return  # another process's fsync covered us
            target = self.state.written_offset  # read before the segment: a roll in between syncs the old one
            seg = self.state.segment
            if seg != self._sync_seg:
                if self._sync_fd >= 0:
                    os.close(self._sync_fd)
                    self._sync_fd = -1
                try:
                    self._sync_fd = os.open(segment_path(self.dir, seg), os.O_RDONLY)
                except FileNotFoundError:  # roll in progress: everything below `target` is in older, synced segments
                    self.state.advance_synced(min(target, seg))
                    return
                self._sync_seg = seg
            try:
                os.fsync(self._sync_fd)
            except OSError as exc:
                raise self.health.fail(f"fsync of {segment_path(self.dir, seg)}", exc) from exc
            self.state.advance_synced(target)

    # --- retention ------------------------------------------------------------------------------

    def enforce_retention(self, retention_ms: int | None, retention_bytes: int | None) -> list[int]:
        """Delete whole sealed segments older than `retention_ms` or beyond `retention_bytes`."""
        if retention_ms is None and retention_bytes is None:
            return []
        deleted: list[int] = []
        with self._append_lock:
            segments = list_segments(self.dir)
            active = max(self.state.segment, segments[-1] if segments else 0)
            sealed = [s for s in segments if s < active]
            stats = {s: os.stat(segment_path(self.dir, s)) for s in sealed}
            total = sum(st.st_size for st in stats.values())
            if active in segments:
                total += os.stat(segment_path(self.dir, active)).st_size
            limit = now_ms() - retention_ms if retention_ms is not None else None
            for s in sealed:
                expired = limit is not None and stats[s].st_mtime_ns // 1_000_000 < limit
                oversize = retention_bytes is not None and total - stats[s].st_size >= retention_bytes
                if not (expired or oversize):
                    break
                os.unlink(segment_path(self.dir, s))
                total -= stats[s].st_size
                deleted.append(s)
        return deleted

    def close(self) -> None:
        for fd in (self._fd, self._sync_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._sync_fd = -1
        self._append_lock.close()
        self._sync_lock.close()
        self.state.close()
