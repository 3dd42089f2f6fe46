"""The file:// bus engine: recovery, corruption, segments, retention, fsync failure, group commit, processes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from keel.bus import StreamConfig, open_bus
from keel.bus._frame import HEADER_SIZE
from keel.bus._shared import SharedState
from keel.bus.base import RECORD_SCHEMA
from keel.bus.file import FileBus
from keel.errors import ConfigError, ConflictError, CorruptDataError, DurabilityError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "bus"


@pytest.fixture
def bus(root: Path) -> Iterator[FileBus]:
    b = open_bus(f"file://{root}")
    assert isinstance(b, FileBus)
    yield b
    b.close()


def values(n: int, prefix: str = "v") -> pa.RecordBatch:
    return pa.record_batch({"value": pa.array([f"{prefix}{i}".encode() for i in range(n)], pa.binary())})


def segments(root: Path, stream: str = "s", p: int = 0) -> list[Path]:
    return sorted((root / "streams" / stream / f"p{p}").glob("*.seg"))


def reboot(root: Path) -> None:
    """Forget every shared state page, as a reboot would: the next opener runs recovery."""
    for state in (root / "streams").glob("*/p*/state"):
        s = SharedState(state)
        s.invalidate()
        s.close()


def read_all(bus: FileBus, stream: str = "s", group: str = "check") -> pa.Table:
    consumer = bus.consumer(stream, group)
    batches = []
    while True:
        batch = consumer.poll(100_000, timeout=0.05)
        if batch.num_rows == 0:
            break
        batches.append(batch)
    consumer.close()
    return pa.Table.from_batches(batches, schema=RECORD_SCHEMA)


# -- recovery ---------------------------------------------------------------------------------------


def test_open_cuts_off_a_torn_tail(root: Path, bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s"))
    bus.produce("s", values(5))
    bus.close()
    seg = segments(root)[-1]
    good_size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"KLB\x01" + b"\x07" * 40)  # a frame cut short by a crash
    reboot(root)
    again = open_bus(f"file://{root}")
    assert [p.end_offset for p in again.describe("s").partitions] == [5]
    assert seg.stat().st_size == good_size
    assert again.produce("s", values(2, "w")).offsets.tolist() == [5, 6]
    assert read_all(again).column("value").to_pylist() == [f"v{i}".encode() for i in range(5)] + [b"w0", b"w1"]
    again.close()


def test_an_appender_that_died_mid_write_leaves_nothing_behind(root: Path, bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s"))
    bus.produce("s", values(3))
    with open(segments(root)[-1], "ab") as f:  # same boot: no recovery runs, the next appender cleans up
        f.write(b"\x00garbage of a killed writer")
    other = open_bus(f"file://{root}")
    assert other.produce("s", values(2, "w")).offsets.tolist() == [3, 4]
    assert read_all(bus).column("value").to_pylist() == [b"v0", b"v1", b"v2", b"w0", b"w1"]
    other.close()


def test_a_corrupt_record_batch_is_reported_and_never_returned(root: Path, bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s"))
    for i in range(4):
        bus.produce("s", values(10, f"b{i}-"))
    seg = segments(root)[-1]
    frame = seg.stat().st_size // 4
    data = bytearray(seg.read_bytes())
    data[frame + HEADER_SIZE + 40] ^= 0xFF  # inside the payload of the second batch (offsets 10..19)
    seg.write_bytes(bytes(data))
    for rebooted in (False, True):
        if rebooted:
            bus.close()
            reboot(root)
            bus = open_bus(f"file://{root}")  # type: ignore[assignment]
            assert bus.describe("s").partitions[0].end_offset == 40  # recovery kept it: later batches prove it was fsync'd
        consumer = bus.consumer("s", f"g{rebooted}")
        first = consumer.poll(100, timeout=0.1)
        assert first.column("offset").to_pylist() == list(range(10))
        with pytest.raises(CorruptDataError) as err:
            consumer.poll(100, timeout=0.1)
        message = str(err.value)
        assert "stream 's'" in message and "partition 0" in message and "offset 10" in message
        assert "seek(0, 20)" in message
        with pytest.raises(CorruptDataError):  # still there: never skipped silently
            consumer.poll(100, timeout=0.1)
        consumer.seek(0, 20)
        rest = consumer.poll(100, timeout=0.1)
        assert rest.column("offset").to_pylist() == list(range(20, 40))
        consumer.seek(0, 15)  # inside the damaged batch
        with pytest.raises(CorruptDataError, match="offset 15"):
            consumer.poll(100, timeout=0.1)
        consumer.close()
    bus.close()


def test_a_damaged_header_in_the_middle_is_reported(root: Path, bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s", partitions=1))
    for i in range(3):
        bus.produce("s", values(4, f"b{i}-"))
    seg = segments(root)[-1]
    data = bytearray(seg.read_bytes())
    data[seg.stat().st_size // 3 + 9] ^= 0x01  # header of the second batch
    seg.write_bytes(bytes(data))
    consumer = bus.consumer("s", "g")
    assert consumer.poll(100, timeout=0.1).num_rows == 4
    with pytest.raises(CorruptDataError, match="offset 4"):
        consumer.poll(100, timeout=0.1)
    consumer.seek(0, 8)
    assert consumer.poll(100, timeout=0.1).column("offset").to_pylist() == [8, 9, 10, 11]
    consumer.close()


def test_a_torn_update_of_the_shared_state_is_repaired_from_disk(root: Path, bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s"))
    bus.produce("s", values(3))
    state = bus.partition_log("s", 0).state
    state._v[6] = 12345  # the check word of the written fields: an appender died between updates
    assert state.written() is None
    assert bus.produce("s", values(2, "w")).offsets.tolist() == [3, 4]
    assert read_all(bus).num_rows == 5


def test_a_roll_that_died_before_creating_its_segment_is_completed(root: Path, bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s"))
    bus.produce("s", values(4))
    other = open_bus(f"file://{root}")  # another "process" rolls: publishes segment 4, dies before creating it
    state = other.partition_log("s", 0).state
    state.set_written(4, 4, 0)
    other.close()
    assert [seg.name for seg in segments(root)] == [f"{0:020d}.seg"]
    assert bus.produce("s", values(3, "w")).offsets.tolist() == [4, 5, 6]
    assert [seg.name for seg in segments(root)] == [f"{0:020d}.seg", f"{4:020d}.seg"]
    assert read_all(bus).column("value").to_pylist() == [b"v0", b"v1", b"v2", b"v3", b"w0", b"w1", b"w2"]


# -- segments and retention -----------------------------------------------------------------------


def test_segments_roll_by_size_and_reads_cross_them(root: Path) -> None:
    bus = open_bus(f"file://{root}", segment_bytes=2000)
    bus.create_stream(StreamConfig("s"))
    for i in range(20):
        bus.produce("s", values(10, f"b{i}-"))
    assert len(segments(root)) >= 5
    for seg in segments(root)[:-1]:
        assert seg.stat().st_size <= 2000 + 1000  # a frame never straddles two segments
    got = read_all(bus)
    assert got.column("offset").to_pylist() == list(range(200))
    consumer = bus.consumer("s", "seek")
    consumer.seek(0, 137)
    assert consumer.poll(5, timeout=0.1).column("offset").to_pylist() == [137, 138, 139, 140, 141]
    consumer.close()
    bus.close()


def test_retention_by_size_deletes_whole_old_segments(root: Path) -> None:
    bus = open_bus(f"file://{root}", segment_bytes=2000)
    bus.create_stream(StreamConfig("s", retention_bytes=5000))
    lagging = bus.consumer("s", "slow")
    for i in range(30):
        bus.produce("s", values(10, f"b{i}-"))
    bus.enforce_retention("s")
    total = sum(seg.stat().st_size for seg in segments(root))
    assert total < 5000 + 2000 + 1000
    start = bus.describe("s").partitions[0].start_offset
    assert start > 0 and start == int(segments(root)[0].name[:-4])
    got = lagging.poll(1000, timeout=0.1)  # its position was deleted: it resumes at the oldest record kept
    assert got.column("offset").to_pylist()[0] == start
    assert bus.describe("s").lag("never") == {0: 300 - start}
    lagging.close()
    bus.close()


def test_retention_by_time_deletes_segments_last_written_long_ago(root: Path) -> None:
    bus = open_bus(f"file://{root}", segment_bytes=2000)
    bus.create_stream(StreamConfig("s", retention_ms=60_000))
    for i in range(10):
        bus.produce("s", values(10, f"b{i}-"))
    old = segments(root)[:3]
    for seg in old:
        os.utime(seg, (time.time() - 3600, time.time() - 3600))
    deleted = bus.enforce_retention("s")[0]
    assert deleted == [int(seg.name[:-4]) for seg in old]
    assert bus.describe("s").partitions[0].start_offset == int(segments(root)[0].name[:-4])
    assert bus.describe("s").partitions[0].end_offset == 100
    bus.close()


# -- fsync failure ---------------------------------------------------------------------------------


def test_after_an_fsync_error_the_bus_never_acknowledges_again(root: Path, bus: FileBus, monkeypatch: pytest.MonkeyPatch) -> None:
    bus.create_stream(StreamConfig("s"))
    bus.produce("s", values(3))
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(DurabilityError, match="stopped acknowledging"):
        bus.produce("s", values(2, "x"))
    monkeypatch.setattr(os, "fsync", real_fsync)  # the disk "recovers": a retried fsync would succeed
    with pytest.raises(DurabilityError, match="stopped acknowledging"):
        bus.produce("s", values(2, "y"))  # no retry-then-ack
    consumer = bus.consumer("s", "g")
    with pytest.raises(DurabilityError):
        consumer.commit({0: 1})
    consumer.close()
    bus.close()
    again = open_bus(f"file://{root}")
    assert read_all(again).column("value").to_pylist()[:3] == [b"v0", b"v1", b"v2"]
    again.close()


def test_every_producer_waiting_on_a_failed_fsync_gets_the_error(root: Path, bus: FileBus, monkeypatch: pytest.MonkeyPatch) -> None:
    bus.create_stream(StreamConfig("s"))
    release = threading.Event()
    real_fsync = os.fsync

    def slow_failing_fsync(fd: int) -> None:
        release.wait(5)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", slow_failing_fsync)
    outcomes: list[str] = []

    def produce() -> None:
        try:
            bus.produce("s", values(1))
            outcomes.append("acked")
        except DurabilityError:
            outcomes.append("refused")

    threads = [threading.Thread(target=produce) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    release.set()
    for t in threads:
        t.join()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert outcomes == ["refused"] * 6


# -- group commit and concurrency -----------------------------------------------------------------


def test_concurrent_producers_share_fsyncs(root: Path, bus: FileBus, monkeypatch: pytest.MonkeyPatch) -> None:
    bus.create_stream(StreamConfig("s"))
    calls = [0]
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        calls[0] += 1
        time.sleep(0.005)  # a slow disk makes producers queue behind one fsync
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    threads = [threading.Thread(target=lambda: [bus.produce("s", values(1)) for _ in range(25)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert calls[0] < 200 / 2  # 200 produces, far fewer fsyncs
    assert read_all(bus).column("offset").to_pylist() == list(range(200))


def test_two_bus_instances_append_to_one_partition_safely(root: Path, bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s"))
    other = open_bus(f"file://{root}")
    threads = [threading.Thread(target=lambda b=b, t=t: [b.produce("s", values(3, f"{t}-{i}-")) for i in range(30)])
               for t, b in enumerate([bus, other, bus, other])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = read_all(bus)
    assert got.column("offset").to_pylist() == list(range(360))
    assert len(set(got.column("value").to_pylist())) == 360
    other.close()


def test_producers_of_separate_bus_instances_share_fsyncs(root: Path, bus: FileBus, monkeypatch: pytest.MonkeyPatch) -> None:
    # separate instances coordinate like separate processes: through flock and the shared state page only
    bus.create_stream(StreamConfig("s"))
    instances = [open_bus(f"file://{root}") for _ in range(6)]
    state = bus.partition_log("s", 0).state
    calls = [0]
    real_fsync = os.fsync

    def held_fsync(fd: int) -> None:
        calls[0] += 1
        if calls[0] == 1:  # the first leader's fsync lasts until the five others have appended
            end = time.monotonic() + 30
            while state.written_offset < 6 and time.monotonic() < end:
                time.sleep(0.001)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)
    first = threading.Thread(target=lambda: instances[0].produce("s", values(1)))
    first.start()
    while calls[0] == 0:
        time.sleep(0.001)
    others = [threading.Thread(target=lambda b=b: b.produce("s", values(1))) for b in instances[1:]]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join()
    monkeypatch.setattr(os, "fsync", real_fsync)
    for b in instances:
        b.close()
    assert calls[0] == 2  # the five that queued behind the first fsync shared one
    assert read_all(bus).column("offset").to_pylist() == list(range(6))


def test_a_batch_split_into_several_frames_gets_contiguous_offsets(root: Path, bus: FileBus,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import keel.bus.file as file_engine

    monkeypatch.setattr(file_engine, "FRAME_BYTES", 300)  # a 50-record batch becomes ~10 frames
    bus.create_stream(StreamConfig("s"))
    other = open_bus(f"file://{root}")
    produced: dict[str, list[int]] = {}

    def produce(name: str, b: FileBus) -> None:
        for i in range(10):
            produced[f"{name}{i}"] = b.produce("s", values(50, f"{name}{i}-")).offsets.tolist()

    threads = [threading.Thread(target=produce, args=(n, b)) for n, b in (("a", bus), ("b", other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other.close()
    got = read_all(bus)
    by_offset = dict(zip(got.column("offset").to_pylist(), got.column("value").to_pylist()))
    for batch, offsets in produced.items():
        assert offsets == list(range(offsets[0], offsets[0] + 50))
        assert [by_offset[o] for o in offsets] == [f"{batch}-{i}".encode() for i in range(50)]
    assert len(segments(root)) == 1 and got.num_rows == 1000


PRODUCER = """
import sys, pyarrow as pa
from keel.bus import open_bus
bus = open_bus(sys.argv[1])
for i in range(int(sys.argv[3])):
    bus.produce("s", pa.record_batch({"value": pa.array([f"{sys.argv[2]}-{i}-{j}".encode() for j in range(5)])}))
bus.close()
"""


def test_two_processes_append_to_one_partition_safely(root: Path, bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s"))
    procs = [subprocess.Popen([sys.executable, "-c", PRODUCER, f"file://{root}", name, "100"]) for name in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    got = read_all(bus)
    assert got.column("offset").to_pylist() == list(range(1000))
    vals = got.column("value").to_pylist()
    for name in ("a", "b"):
        mine = [v for v in vals if v.startswith(f"{name}-".encode())]
        assert mine == [f"{name}-{i}-{j}".encode() for i in range(100) for j in range(5)]  # in order, once each


def test_a_consumer_of_another_bus_instance_wakes_on_its_produce(root: Path, bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s"))
    other = open_bus(f"file://{root}")  # stands for another process: no shared Condition
    consumer = other.consumer("s", "g")
    result: list[pa.RecordBatch] = []
    waiter = threading.Thread(target=lambda: result.append(consumer.poll(timeout=30)))
    waiter.start()
    time.sleep(0.2)
    bus.produce("s", values(1))
    waiter.join()
    assert result[0].num_rows == 1
    consumer.close()
    other.close()


# -- groups and offsets -------------------------------------------------------------------------------


def test_a_pinned_consumer_cannot_commit_a_partition_another_member_owns(bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s", partitions=2))
    owner = bus.consumer("s", "g")
    assert owner.assignment == [0, 1]
    pinned = bus.consumer("s", "g", partitions=[1])
    with pytest.raises(ConflictError, match="owns this partition"):
        pinned.commit({1: 0})
    with pytest.raises(ConflictError, match="not assigned"):
        pinned.commit({0: 0})
    owner.close()
    pinned.commit({1: 0})  # the owner left
    pinned.close()


def test_a_new_member_gets_partitions_once_the_old_one_lets_go(bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s", partitions=4))
    first = bus.consumer("s", "g")
    assert first.assignment == [0, 1, 2, 3]
    second = bus.consumer("s", "g")
    end = time.monotonic() + 10
    while time.monotonic() < end and not (second.assignment and len(first.assignment) == 2):
        first.poll(timeout=0.05)
        second.poll(timeout=0.05)
    assert first.assignment == [0, 2] and second.assignment == [1, 3]
    second.close()
    end = time.monotonic() + 10
    while time.monotonic() < end and first.assignment != [0, 1, 2, 3]:
        first.poll(timeout=0.05)
    assert first.assignment == [0, 1, 2, 3]
    first.close()


def test_a_damaged_offset_file_is_reported(root: Path, bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s"))
    consumer = bus.consumer("s", "g")
    consumer.commit({0: 7})
    consumer.close()
    path = root / "streams" / "s" / "groups" / "g" / "offsets" / "0"
    assert path.read_bytes().split()[0] == b"7"
    path.write_bytes(b"8 12345\n")
    with pytest.raises(CorruptDataError, match="group 'g' partition 0"):
        bus.describe("s")


# -- names and options ----------------------------------------------------------------------------------


def test_bad_names_and_options_are_refused(root: Path, bus: FileBus) -> None:
    for name in ("../evil", "a/b", "", ".hidden"):
        with pytest.raises(ConfigError):
            bus.create_stream(StreamConfig(name))
    with pytest.raises(ConfigError):
        open_bus(f"file://{root}", segment_size=1)


def test_the_dead_letter_stream_lives_as_long_as_its_stream(bus: FileBus) -> None:
    bus.create_stream(StreamConfig("s"))
    with pytest.raises(ConflictError):
        bus.delete_stream("s.dlq")
    bus.delete_stream("s")
    assert bus.list_streams() == []
