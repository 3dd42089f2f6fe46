"""Crash, power-loss and corruption tests of the file:// bus.

Invariant checked after each fault: every acknowledged record is present exactly once, records of
each producer thread are in order within a partition, offsets are contiguous, and nothing damaged
is ever returned (damage is reported as CorruptDataError naming stream, partition and offset).
fsync failure is tested in tests/unit/test_bus_file.py (the bus stops acknowledging).
"""

from __future__ import annotations

import errno
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pytest

from keel.bus import StreamConfig, open_bus
from keel.bus._shared import SharedState
from keel.bus.base import RECORD_SCHEMA
from keel.errors import CorruptDataError, DurabilityError

HERE = Path(__file__).resolve().parent
KILL_TRIALS = 200
POWER_TRIALS = int(os.environ.get("KEEL_POWER_TRIALS", "200"))
CORRUPTION_TRIALS = 100


def reboot(root: Path) -> None:
    """Forget the shared state pages, as a reboot does: the next opener runs full recovery."""
    for path in (root / "streams").glob("*/p*/state"):
        state = SharedState(path)
        state.invalidate()
        state.close()


def read_everything(root: Path, stream: str, **options: object) -> pa.Table:
    bus = open_bus(f"file://{root}", **options)
    try:
        partitions = bus.describe(stream).config.partitions
        consumer = bus.consumer(stream, "verify", partitions=list(range(partitions)))
        batches = []
        while True:
            batch = consumer.poll(100_000, timeout=0)
            if batch.num_rows == 0:
                break
            batches.append(batch)
        consumer.close()
        return pa.Table.from_batches(batches, schema=RECORD_SCHEMA)
    finally:
        bus.close()


@dataclass
class Ledger:
    """What producers were told was durable: writer-thread -> set of acknowledged sequence numbers."""

    acked: dict[str, set[int]] = field(default_factory=dict)

    def ack(self, who: str, first: int, last: int) -> None:
        self.acked.setdefault(who, set()).update(range(first, last + 1))

    def check(self, table: pa.Table) -> None:
        """Invariant I on everything read back from the bus."""
        values = table.column("value").to_pylist()
        parts = table.column("partition").to_pylist()
        offsets = table.column("offset").to_pylist()
        assert len(set(values)) == len(values), "a record is present twice"
        by_partition: dict[int, list[int]] = {}
        last_seq: dict[tuple[int, str], int] = {}
        present: dict[str, set[int]] = {}
        for value, p, o in zip(values, parts, offsets):
            by_partition.setdefault(p, []).append(o)
            writer, thread, seq = value.decode().split(":")
            who = f"{writer}:{thread}"
            assert last_seq.get((p, who), -1) < int(seq), f"{value!r} out of order in partition {p}"
            last_seq[(p, who)] = int(seq)
            present.setdefault(who, set()).add(int(seq))
        for p, offs in by_partition.items():
            assert offs == list(range(offs[0], offs[0] + len(offs))), f"offsets of partition {p} are not contiguous"
            assert offs[0] == 0
        for who, seqs in self.acked.items():
            lost = seqs - present.get(who, set())
            assert not lost, f"{len(lost)} acknowledged record(s) of {who} lost, e.g. seq {min(lost)}"


# -- (1) kill -9 of producing processes ------------------------------------------------------------


class ForkServer:
    """tests/reliability/bus_producer.py running as our child; its children are the producers."""

    def __init__(self) -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "bus_producer.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.replies: dict[str, queue.Queue[list[str]]] = {k: queue.Queue() for k in ("pid", "dead", "ready")}
        self.ledger = Ledger()
        self._ready: set[str] = set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            words = raw.decode().split()
            if words and words[0] == "ack":
                _, who, first, last = words
                self.ledger.ack(who, int(first), int(last))
            elif words:
                self.replies[words[0]].put(words[1:])

    def send(self, line: str, reply: str) -> list[str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()
        return self.replies[reply].get(timeout=60)

    def spawn(self, url: str, writer: str, seed: int, segment_bytes: int) -> int:
        words = self.send(f"spawn {url} s {writer} 2 {seed} {segment_bytes}", "pid")
        assert words[0] == writer
        return int(words[1])

    def wait_ready(self, writer: str) -> None:
        while writer not in self._ready:
            self._ready.add(self.replies["ready"].get(timeout=60)[0])

    def kill(self, pid: int) -> None:
        assert self.send(f"kill {pid}", "dead") == [str(pid)]

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=10)


@pytest.fixture
def fork_server() -> Iterator[ForkServer]:
    server = ForkServer()
    yield server
    server.close()


@pytest.mark.slow
def test_kill_9_of_producers_loses_no_acknowledged_record(tmp_path: Path, fork_server: ForkServer) -> None:
    root = tmp_path / "bus"
    url = f"file://{root}"
    setup = open_bus(url)
    setup.create_stream(StreamConfig("s", partitions=3))
    setup.close()
    rng = random.Random(20240901)
    segment_bytes = 32 * 1024  # small, so kills also land during segment rolls
    previous_ends: dict[int, int] = {}
    for trial in range(KILL_TRIALS):
        writers = [f"t{trial}a", f"t{trial}b"]
        pids = [fork_server.spawn(url, w, trial * 2 + i, segment_bytes) for i, w in enumerate(writers)]
        if rng.random() < 0.9:  # else the kill may land while a child opens the bus (runs recovery)
            for w in writers:
                fork_server.wait_ready(w)
        time.sleep(rng.uniform(0.0, 0.15))
        fork_server.kill(pids[0])
        time.sleep(rng.uniform(0.0, 0.03))  # the survivor appends after its sibling died mid-write
        fork_server.kill(pids[1])
        if trial % 5 == 4:
            reboot(root)  # also exercise full recovery (no data lost: kill -9 keeps the page cache)
        table = read_everything(root, "s", segment_bytes=segment_bytes)
        fork_server.ledger.check(table)
        ends = {p: int(offs) for p, offs in _ends(table).items()}
        assert all(ends.get(p, 0) >= e for p, e in previous_ends.items()), "recovered log shrank"
        previous_ends = ends
    assert sum(len(s) for s in fork_server.ledger.acked.values()) > 10 * KILL_TRIALS  # they really produced


def _ends(table: pa.Table) -> dict[int, int]:
    ends: dict[int, int] = {}
    for p, o in zip(table.column("partition").to_pylist(), table.column("offset").to_pylist()):
        ends[p] = max(ends.get(p, 0), o + 1)
    return ends


# -- (2) power loss: the unsynced tail truncated or scrambled ----------------------------------------


class PowerCut:
    """An os.fsync shim that remembers, per file, the size at its last successful fsync."""

    def __init__(self) -> None:
        self.synced: dict[str, int] = {}
        self.failing = False
        self._real = os.fsync
        self._lock = threading.Lock()

    def fsync(self, fd: int) -> None:
        size = os.fstat(fd).st_size  # taken before the fsync: only these bytes are surely covered
        if self.failing:
            raise OSError(errno.EIO, "simulated power cut")
        self._real(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        with self._lock:  # two fsyncs of one file (a roll's and a group commit's) may end out of order
            self.synced[path] = max(size, self.synced.get(path, 0))

    def damage_unsynced(self, root: Path, rng: random.Random) -> int:
        """Truncate, zero or scramble each segment's bytes after its last fsync; returns files hit."""
        hit = 0
        for seg in sorted(root.glob("streams/*/p*/*.seg")):
            synced = self.synced.get(str(seg), 0)
            size = seg.stat().st_size
            if size <= synced:
                continue
            hit += 1
            data = bytearray(seg.read_bytes())
            for sector in range(synced, size, 512):  # per sector: kept, zeroed or garbage
                roll = rng.random()
                end = min(sector + 512, size)
                if roll < 0.25:
                    data[sector:end] = bytes(end - sector)
                elif roll < 0.5:
                    data[sector:end] = rng.randbytes(end - sector)
            cut = rng.randint(synced, size) if rng.random() < 0.6 else size
            seg.write_bytes(bytes(data[:cut]))
        return hit


@pytest.mark.slow
def test_power_loss_keeps_every_acknowledged_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "bus"
    url = f"file://{root}"
    power = PowerCut()
    monkeypatch.setattr(os, "fsync", power.fsync)
    rng = random.Random(424242)
    damaged_files = 0
    for trial in range(POWER_TRIALS):
        bus = open_bus(url, segment_bytes=16 * 1024)
        stream = f"s{trial // 20}"  # each stream lives through 20 power cuts; re-reading stays short
        if trial % 20 == 0:
            bus.create_stream(StreamConfig(stream, partitions=2))
            ledger = Ledger()
        acks = [0]

        def work(t: int, bus: object = bus, trial: int = trial, stream: str = stream, ledger: Ledger = ledger,
                 acks: list[int] = acks) -> None:
            seq, local = 0, random.Random(trial * 10 + t)
            while True:
                n = local.randint(1, 30)
                keys = [None if local.random() < 0.3 else f"k{local.randrange(20)}".encode() for _ in range(n)]
                batch = pa.record_batch({"key": pa.array(keys, pa.binary()),
                                         "value": pa.array([f"p{trial}:{t}:{seq + i}".encode() for i in range(n)])})
                try:
                    bus.produce(stream, batch)  # type: ignore[attr-defined]
                except DurabilityError:
                    return
                ledger.ack(f"p{trial}:{t}", seq, seq + n - 1)
                acks[0] += 1
                seq += n

        threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
        for th in threads:
            th.start()
        stop_after = rng.randint(0, 25)
        while acks[0] < stop_after and any(th.is_alive() for th in threads):
            time.sleep(0.001)
        power.failing = True  # the power goes: writes in flight are never fsync'd
        for th in threads:
            th.join()
        bus.close()
        power.failing = False
        damaged_files += power.damage_unsynced(root, rng)
        reboot(root)
        first = read_everything(root, stream)
        ledger.check(first)
        reboot(root)  # recovering twice gives the same log
        assert read_everything(root, stream).equals(first)
    assert damaged_files > POWER_TRIALS // 4  # the cuts really hit unsynced tails


# -- (3) a corrupt record batch in the middle of a segment ---------------------------------------------


@pytest.mark.slow
def test_corruption_in_the_middle_is_reported_never_returned(tmp_path: Path) -> None:
    root = tmp_path / "bus"
    url = f"file://{root}"
    rng = random.Random(99)
    for trial in range(CORRUPTION_TRIALS):
        stream = f"c{trial}"
        bus = open_bus(url)
        bus.create_stream(StreamConfig(stream))
        produced: list[bytes] = []
        for b in range(6):  # one fsync each: every batch proves the one before it was durable
            vals = [f"{trial}:{b}:{i}:".encode() + rng.randbytes(rng.randint(0, 60)) for i in range(rng.randint(1, 25))]
            bus.produce(stream, pa.record_batch({"value": pa.array(vals, pa.binary())}))
            produced.extend(vals)
        bus.close()
        seg = next((root / "streams" / stream / "p0").glob("*.seg"))
        data = bytearray(seg.read_bytes())
        frames = _frame_starts(bytes(data))
        victim = rng.randrange(len(frames) - 2)  # not the last batch (frames ends with a sentinel): nothing after it proves it durable
        at = rng.randrange(frames[victim][0], frames[victim + 1][0])
        data[at] ^= 1 << rng.randrange(8)
        seg.write_bytes(bytes(data))
        if trial % 2:
            reboot(root)
        damaged = range(frames[victim][1], frames[victim + 1][1])
        bus = open_bus(url)
        consumer = bus.consumer(stream, "g")
        seen: dict[int, bytes] = {}
        errors = 0
        while True:
            try:
                batch = consumer.poll(7, timeout=0)
            except CorruptDataError as exc:
                errors += 1
                msg = str(exc)
                assert f"stream {stream!r}" in msg and "partition 0" in msg and f"offset {damaged.start}" in msg, msg
                consumer.seek(0, damaged.stop)
                continue
            if batch.num_rows == 0:
                break
            seen.update(zip(batch.column("offset").to_pylist(), batch.column("value").to_pylist()))
        consumer.close()
        bus.close()
        assert errors == 1
        assert not set(seen) & set(damaged), "a record of the damaged batch was returned"
        assert seen == {o: v for o, v in enumerate(produced) if o not in damaged}


def _frame_starts(data: bytes) -> list[tuple[int, int]]:
    """(byte, first offset) of each frame, plus (end, end offset)."""
    from keel.bus import _frame

    out, pos = [], 0
    while pos < len(data):
        header = _frame.parse_header(data, pos)
        assert header is not None
        out.append((pos, header.base))
        pos += header.size
        end = header.end
    out.append((pos, end))
    return out
