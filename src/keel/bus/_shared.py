"""What the processes using one `file://` bus share about a partition: locks and a small state page.

* ``FileLock`` is ``flock(2)`` on a lock file plus a ``threading.Lock``: flock locks belong to an
  open file description, so they exclude other processes and other ``FileLock`` objects, and the
  thread lock excludes the threads of this one. The kernel drops a dead process's flocks at once.
* ``SharedState`` is a 4 KiB file mapped by every process: the active segment, the end of the
  complete frames written so far and the end of what is fsync'd (the offset below which consumers
  may read). It is coordination, not data: never fsync'd, and ignored after a reboot (it records
  the kernel's boot id), when recovery rebuilds it from the segments. Each field is one aligned
  int64, written and read whole through numpy, so readers never see half of a value; the three
  ``written`` fields carry a check word because the appender may die between updating them.
  Its blocks are allocated before it is mapped, so no store into it can fault (SIGBUS) on a full disk.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
import uuid
from pathlib import Path
from typing import Self

import numpy as np

from keel.errors import BackendError

_PAGE = 4096
_MAGIC = 0x4B4C425354415431  # "KLBSTAT1"
_MAGIC_I, _BOOT_HI, _BOOT_LO, _SEG, _W_OFF, _W_BYTES, _W_CHECK, _SYNCED, _SEG_CREATED = range(9)
_MASK = (1 << 63) - 1


def _read_boot_id() -> tuple[int, int]:
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        value = uuid.UUID(text).int
    except (OSError, ValueError):
        # no boot id (not Linux): the boot time is the next best marker of "same boot"
        import time

        value = int(time.time() - time.monotonic()) // 10
    return (value >> 64) & _MASK, value & _MASK


BOOT_ID = _read_boot_id()


def _check(seg: int, offset: int, nbytes: int) -> int:
    return ((seg * 0x9E3779B97F4A7C15) ^ (offset * 0xC2B2AE3D27D4EB4F) ^ nbytes ^ _MAGIC) & _MASK


class SharedState:
    """The mapped state page of one partition (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                # Blocks first, then the mapping: a store into a mapped page that the file system
                # cannot back (a hole on a full disk) is SIGBUS, which kills the process.
                os.posix_fallocate(fd, 0, _PAGE)
                self._map = mmap.mmap(fd, _PAGE)
            finally:
                os.close(fd)
        except OSError as exc:
            raise BackendError(f"cannot open the bus state page {path} ({exc}); free disk space or fix the "
                               "disk, then try again") from exc
        self._v = np.frombuffer(self._map, dtype=np.int64, count=16)

    def valid(self) -> bool:
        """Whether a process of this boot initialized the page (else recovery must run)."""
        v = self._v
        return int(v[_MAGIC_I]) == _MAGIC and (int(v[_BOOT_HI]), int(v[_BOOT_LO])) == BOOT_ID

    def initialize(self, seg: int, offset: int, nbytes: int, seg_created_ms: int) -> None:
        """Publish a recovered partition: everything up to `offset` is written and fsync'd."""
        v = self._v
        v[_MAGIC_I] = 0
        self.set_written(seg, offset, nbytes)
        v[_SYNCED] = offset
        v[_SEG_CREATED] = seg_created_ms
        v[_BOOT_HI], v[_BOOT_LO] = BOOT_ID
        v[_MAGIC_I] = _MAGIC

    def invalidate(self) -> None:
        """Forget the page, as a reboot would: the next user runs recovery."""
        self._v[_MAGIC_I] = 0

    def written(self) -> tuple[int, int, int] | None:
        """(active segment, end offset, end byte) of the complete frames; None if torn by a crash."""
        v = self._v
        seg, offset, nbytes, check = int(v[_SEG]), int(v[_W_OFF]), int(v[_W_BYTES]), int(v[_W_CHECK])
        return (seg, offset, nbytes) if check == _check(seg, offset, nbytes) else None

    def set_written(self, seg: int, offset: int, nbytes: int) -> None:
        v = self._v
        v[_W_CHECK] = -1
        v[_SEG], v[_W_OFF], v[_W_BYTES] = seg, offset, nbytes
        v[_W_CHECK] = _check(seg, offset, nbytes)

    @property
    def segment(self) -> int:
        return int(self._v[_SEG])

    @property
    def written_offset(self) -> int:
        return int(self._v[_W_OFF])

    @property
    def synced(self) -> int:
        """The offset below which every record is fsync'd: consumers read only below it."""
        return int(self._v[_SYNCED])

    def advance_synced(self, offset: int) -> None:
        """Raise the fsync'd watermark (callers hold the partition's sync lock)."""
        if offset > int(self._v[_SYNCED]):
            self._v[_SYNCED] = offset

    @property
    def segment_created_ms(self) -> int:
        return int(self._v[_SEG_CREATED])

    @segment_created_ms.setter
    def segment_created_ms(self, value: int) -> None:
        self._v[_SEG_CREATED] = value

    def close(self) -> None:
        del self._v
        self._map.close()


class FileLock:
    """An exclusive lock held by one thread of one process at a time (flock + threading.Lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self) -> None:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def close(self) -> None:
        os.close(self._fd)


def try_flock(path: Path) -> int | None:
    """Open `path` (creating it) and take its flock without waiting: the fd, or None if held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
