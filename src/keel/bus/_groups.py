"""Consumer groups of the `file://` bus: durable offsets, members and partition leases on one machine.

Layout under a stream's directory::

    groups/<group>/offsets/<partition>   "<offset> <crc32 of the offset text>"; replaced atomically
    groups/<group>/members/<id>          flock'd by a live member (managed assignment only)
    groups/<group>/leases/<partition>    flock'd by the member that owns the partition

Assignment (documented, simple, no coordinator): the live members, sorted by id (ids begin with
the join time, so older members sort first), split the partitions round-robin: member ``i`` of
``n`` wants every partition ``p`` with ``p % n == i``. A member owns a partition only while it holds
the partition's lease (flock), so two members never own one partition, not even while the group
changes: a member gives up the partitions it no longer wants at its next poll, and the newcomer
takes them at its next poll after that. The kernel drops a crashed member's flocks at once, and the
next member to look removes its member file. Members check the group every ``rebalance_interval``
seconds from ``poll``, so a group settles within about two intervals of a join or leave.

A consumer with pinned partitions joins no assignment; it takes a partition's lease when it first
commits it, and ``commit`` raises ConflictError while another member owns the partition.

Committing writes a temp file, fsyncs it, renames it over the old one and fsyncs the directory, so
a crash leaves either the old or the new offset, never a torn one. A commit that fails (a full
disk) raises BackendError and changes nothing; the bus goes on.
"""

from __future__ import annotations

import os
import time
import uuid
import zlib
from contextlib import suppress
from pathlib import Path

from keel.bus._log import Health
from keel.bus._shared import fsync_dir, try_flock
from keel.errors import BackendError, ConflictError, CorruptDataError


def _encode(offset: int) -> bytes:
    text = str(offset).encode()
    return text + b" " + str(zlib.crc32(text)).encode() + b"\n"


def read_offset(path: Path, where: str) -> int | None:
    """The committed offset stored at `path`, None if never committed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        text, crc = data.split()
        if zlib.crc32(text) != int(crc):
            raise ValueError("CRC mismatch")
        return int(text)
    except ValueError as exc:
        raise CorruptDataError(
            f"{where}: the committed offset in {path} is damaged ({exc}); commit a new offset for that partition "
            "(or delete the file to restart the group at the oldest record)"
        ) from exc


def read_committed(stream_dir: Path) -> dict[str, dict[int, int]]:
    """group -> partition -> committed offset, for every group of the stream."""
    out: dict[str, dict[int, int]] = {}
    groups = stream_dir / "groups"
    if not groups.is_dir():
        return out
    for group in sorted(os.listdir(groups)):
        offsets = groups / group / "offsets"
        if not offsets.is_dir():
            continue
        done: dict[int, int] = {}
        for name in os.listdir(offsets):
            if name.isdigit():
                value = read_offset(offsets / name, f"group {group!r} partition {name}")
                if value is not None:
                    done[int(name)] = value
        if done:
            out[group] = dict(sorted(done.items()))
    return out


class GroupMember:
    """This process's membership of one group of one stream."""

    def __init__(self, stream_dir: Path, stream: str, group: str, partitions: int, health: Health, managed: bool) -> None:
        self.stream, self.group, self.partitions, self.health = stream, group, partitions, health
        self.dir = stream_dir / "groups" / group
        self.managed = managed
        self._leases: dict[int, int] = {}  # partition -> flock'd fd
        self.member_id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        self._member_fd = -1
        if managed:
            for sub in ("members", "leases", "offsets"):
                (self.dir / sub).mkdir(parents=True, exist_ok=True)
            fd = try_flock(self.dir / "members" / self.member_id)
            if fd is None:  # pragma: no cover - a fresh unique name cannot be locked by anyone else
                raise ConflictError(f"could not join group {group!r} of stream {stream!r}")
            self._member_fd = fd

    def where(self, partition: int) -> str:
        return f"stream {self.stream!r} group {self.group!r} partition {partition}"

    # --- assignment -----------------------------------------------------------------------------

    def live_members(self) -> list[str]:
        """Ids of the members holding their member lock (removes the files of dead ones)."""
        members = self.dir / "members"
        live = []
        for name in sorted(os.listdir(members)):
            if name == self.member_id:
                live.append(name)
                continue
            fd = try_flock(members / name)
            if fd is None:
                live.append(name)
                continue
            try:
                os.unlink(members / name)  # its owner is gone: the kernel dropped its lock
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)
        return live

    def wanted(self) -> set[int]:
        members = self.live_members()
        n, i = len(members), members.index(self.member_id)
        return {p for p in range(self.partitions) if p % n == i}

    def owns(self, partition: int) -> bool:
        return partition in self._leases

    def take(self, partition: int) -> bool:
        """Take the partition's lease without waiting; False if another member holds it."""
        if partition in self._leases:
            return True
        leases = self.dir / "leases"
        leases.mkdir(parents=True, exist_ok=True)
        fd = try_flock(leases / str(partition))
        if fd is None:
            return False
        self._leases[partition] = fd
        return True

    def give_up(self, partition: int) -> None:
        fd = self._leases.pop(partition, None)
        if fd is not None:
            os.close(fd)  # drops the flock; the lease file stays (unlinking it would race with takers)

    # --- offsets --------------------------------------------------------------------------------

    def committed(self, partition: int) -> int | None:
        return read_offset(self.dir / "offsets" / str(partition), self.where(partition))

    def commit(self, partition: int, offset: int) -> None:
        if not self.take(partition):
            raise ConflictError(
                f"{self.where(partition)}: another member of the group owns this partition, so this consumer may "
                "not commit it; give each consumer its own partitions (or let the group assign them)"
            )
        offsets = self.dir / "offsets"
        final = offsets / str(partition)
        tmp = offsets / f".{partition}.{uuid.uuid4().hex}.tmp"
        # An fsync error here is a BackendError, not the bus-wide fail-stop of the log (`Health`): no
        # record depends on it. The temp file is dropped, and a rename whose directory fsync failed
        # leaves the old or the new offset, both safe (a group re-reads from an older one at worst).
        data = _encode(offset)
        try:
            offsets.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(f"short write to {tmp} (disk full?)")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            fsync_dir(offsets)
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise BackendError(f"{self.where(partition)}: could not commit offset {offset} ({exc}); free disk space "
                               "or fix the disk: the next commit retries") from exc

    def close(self) -> None:
        for partition in list(self._leases):
            self.give_up(partition)
        if self._member_fd >= 0:
            (self.dir / "members" / self.member_id).unlink(missing_ok=True)
            os.close(self._member_fd)
            self._member_fd = -1
