"""A full disk under `keel up`: the platform stays up (the gateway answers 503 + Retry-After when the
bus cannot take events, processors and the scheduler report the cause and retry), nothing
acknowledged is lost, everything is processed once space returns, and no mapped write ever faults
(SIGBUS) on pages the file system cannot back.

The disks are small tmpfs mounts made by the test (it needs root) and filled with a file."""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from keel.bus import StreamConfig
from keel.bus.file import FileBus
from keel.errors import BackendError, DurabilityError
from keel.jobs.base import Task
from keel.jobs.embedded import EmbeddedScheduler
from keel.run.host import Platform, free_port
from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from keel.run.supervisor import Backoff
from tests.harness.process import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


class Disk:
    """A tmpfs of `size` mounted at `path`, which `fill()` fills up to the last page and `free()` empties."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        self.filler = path / "filler"

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for chunk in (1 << 20, 4096, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        if os.write(fd, block) < chunk:
                            break
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                        break
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Callable[[str, str], Disk]]:
    made: list[Disk] = []

    def make(name: str, size: str = "20m") -> Disk:
        made.append(Disk(tmp_path / name, size))
        return made[-1]

    yield make
    for disk in made:
        disk.unmount()


def test_opening_a_partition_on_a_full_disk_is_an_error_not_sigbus(disks: Callable[[str, str], Disk]) -> None:
    disk = disks("bus", "4m")
    bus = FileBus(disk.path / "bus")
    bus.create_stream(StreamConfig("clicks", 4))  # created while there is room; no partition opened yet
    bus.close()
    disk.fill()
    script = ("import sys; from keel.bus.file import FileBus; from keel.errors import BackendError\n"
              f"bus = FileBus(__import__('pathlib').Path({str(disk.path / 'bus')!r}))\n"
              "try:\n    bus.describe('clicks')\nexcept BackendError as exc:\n    print('BackendError:', exc)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"exit {r.returncode} (-7 is SIGBUS): {r.stderr}"
    assert "BackendError:" in r.stdout and "free disk space" in r.stdout, r.stdout + r.stderr
    disk.free()  # with room again it opens, and nothing is wrong with the stream
    bus = FileBus(disk.path / "bus")
    assert [p.end_offset for p in bus.describe("clicks").partitions] == [0, 0, 0, 0]
    bus.close()


def clicks(n: int) -> pa.RecordBatch:
    return pa.record_batch({"key": pa.array([b"k"] * n), "value": pa.array([b"v%d" % i for i in range(n)])})


def test_an_offset_commit_on_a_full_disk_fails_alone_and_works_once_space_returns(
        disks: Callable[[str, str], Disk]) -> None:
    disk = disks("bus", "4m")
    bus = FileBus(disk.path / "bus")
    bus.create_stream(StreamConfig("clicks", 1))
    bus.produce("clicks", clicks(10))
    consumer = bus.consumer("clicks", "g")
    consumer.commit({0: 3})
    disk.fill()
    with pytest.raises(BackendError, match="free disk space"):
        consumer.commit({0: 7})
    assert bus.describe("clicks").committed["g"] == {0: 3}  # the old offset holds
    disk.free()
    consumer.commit({0: 7})
    assert bus.describe("clicks").committed["g"] == {0: 7}
    consumer.close()
    bus.close()


def test_an_offset_commit_whose_fsync_fails_does_not_stop_the_bus(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A full ext4/xfs disk can fail the fsync of a small file (delayed allocation). No acknowledged
    # record depends on a group offset, so that must not stop the bus acknowledging (its fail-stop is
    # for the log's own fsyncs).
    bus = FileBus(tmp_path / "bus")
    bus.create_stream(StreamConfig("clicks", 1))
    bus.produce("clicks", clicks(5))
    consumer = bus.consumer("clicks", "g")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if "offsets" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(BackendError, match="could not commit offset 2") as caught:
        consumer.commit({0: 2})
    assert not isinstance(caught.value, DurabilityError)
    assert bus.produce("clicks", clicks(3)).offsets.tolist() == [5, 6, 7]  # still acknowledging
    monkeypatch.setattr(os, "fsync", real_fsync)
    consumer.commit({0: 2})
    assert bus.describe("clicks").committed["g"] == {0: 2}
    consumer.close()
    bus.close()


def post(url: str, events: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{url}/v1/streams/page_views/events", json=events, timeout=30)


def views(start: int, n: int) -> list[dict[str, Any]]:
    return [{"user_id": f"u{i % 50}", "item_id": f"i{i}"} for i in range(start, start + n)]


@pytest.mark.slow
def test_keel_up_stays_up_on_a_full_disk_and_catches_up_when_space_returns(disks: Callable[[str, str], Disk],
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    data, bus_disk = disks("data", "20m"), disks("bus", "20m")
    root = data.path / "shop"  # the lake, the kv, the scheduler and the processors' state
    copy_example(root)
    platform = Platform(Runtime.open(root, bus=f"file://{bus_disk.path / 'bus'}"), port=free_port(),
                        backoff=Backoff(initial=0.05, cap=0.5))
    platform.start()
    rt, url = platform.rt, platform.url

    def row(name: str) -> dict[str, Any]:
        return next(r for r in platform.status() if r["name"] == name)

    def lake_rows() -> int:
        return rt.lake.describe("page_views").rows if "page_views" in rt.lake.list_tables() else 0

    caplog.set_level(logging.WARNING)
    try:
        acked = 0
        assert post(url, views(0, 100)).status_code == 202
        acked += 100
        assert wait_for(lambda: platform.wait_idle(1) and lake_rows() == acked), platform.status()

        # the lake's disk fills: events are still acknowledged (the bus has room), processors cannot land them
        data.fill()
        assert post(url, views(acked, 200)).status_code == 202
        acked += 200
        assert wait_for(lambda: row("land_page_views")["restarts"] >= 2), platform.status()
        failing = row("land_page_views")
        assert failing["alive"] and "space" in (failing["error"] or "").lower(), failing

        # the bus's disk fills too: the gateway refuses with 503 + Retry-After, acknowledging nothing
        bus_disk.fill()
        refused = post(url, views(acked, 500))  # frames bigger than a page: none fits in a page tail
        assert refused.status_code == 503 and refused.headers.get("retry-after"), refused.text
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert wait_for(lambda: any("scheduler tick failed" in r.getMessage() for r in caplog.records))
        assert platform.errors == [] and all(r["alive"] for r in platform.status()), platform.status()

        # space returns: nobody restarts anything, and every acknowledged event lands once
        data.free()
        bus_disk.free()
        assert wait_for(lambda: post(url, views(acked, 50)).status_code == 202)
        acked += 50
        assert wait_for(lambda: platform.wait_idle(1) and lake_rows() == acked), (lake_rows(), acked, platform.status())
        assert platform.errors == [] and all(r["alive"] for r in platform.status()), platform.status()
        assert rt.views.get("recent_items", "u7") is not None
        assert wait_for(lambda: any("scheduler ticks again" in r.getMessage() for r in caplog.records))
    finally:
        platform.stop()


def test_a_run_that_ends_while_the_disk_is_full_is_recorded_once_space_returns(
        disks: Callable[[str, str], Disk]) -> None:
    disk = disks("state", "4m")

    def fill_then_fail(date: datetime) -> None:
        disk.fill()  # the job itself fills the disk (a big output), then fails
        raise OSError(errno.ENOSPC, "No space left on device")

    clock = [datetime(2026, 1, 1, 3, 0, tzinfo=UTC)]
    sched = EmbeddedScheduler(disk.path / "scheduler.db", [Task("report", None, fill_then_fail, retries=0)],
                              clock=lambda: clock[0], sleep=lambda s: None)
    run = sched.trigger("report", clock[0])  # its outcome cannot be written now: no exception, no stuck run
    assert run.state == "failed" and "No space left" in (run.error or "")
    assert sched.runs("report")[0].state == "running"  # what the history holds while the disk is full
    disk.free()
    clock[0] += timedelta(seconds=1)
    sched.tick(clock[0])
    [recorded] = sched.runs("report")
    assert recorded.state == "failed" and "No space left" in (recorded.error or "") and recorded.attempts == 1
    sched.close()
    again = EmbeddedScheduler(disk.path / "scheduler.db", [])  # durable: another process reads the same
    assert again.runs("report")[0].state == "failed"
    again.close()


def test_a_checkpoint_that_cannot_be_written_is_a_backend_error_and_the_old_one_stays(
        disks: Callable[[str, str], Disk]) -> None:
    import polars as pl

    from keel.streaming.checkpoint import Unit, load_unit, point_to_unit, save_unit, unit_pointer

    disk = disks("state", "4m")
    first = Unit(1, {0: 1}, None, {"state": pl.DataFrame({"k": ["a"], "n": [1]})})
    point_to_unit(disk.path, "agg", save_unit(disk.path, "agg", first), 1)
    disk.fill()
    big = Unit(2, {0: 2}, None, {"state": pl.DataFrame({"k": [str(i) for i in range(200_000)], "n": range(200_000)})})
    with pytest.raises(BackendError, match="free disk space"):
        point_to_unit(disk.path, "agg", save_unit(disk.path, "agg", big), 2)
    pointer = unit_pointer(disk.path, "agg")
    assert pointer is not None and pointer[1] == 1
    assert load_unit(disk.path, "agg", pointer[0]).frames["state"]["n"].to_list() == [1]
