"""A task's timeout really stops its run: the attempt runs in its own process, killed at the timeout.

The bodies are module-level so they pickle into the spawned process. The hanging body waits for a
file that never appears (bounded, so a broken kill cannot hang the suite); the test does not sleep.
"""

from __future__ import annotations

import functools
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from keel.errors import SchemaError
from keel.jobs.base import Task
from keel.jobs.embedded import EmbeddedScheduler
from keel.lake import open_lake

DAY = datetime(2024, 3, 1, tzinfo=UTC)
SCHEMA = pa.schema([("n", pa.int64())])


def replace_table(lake_url: str, pid_file: str, hang: bool, logical_date: datetime) -> None:
    """Write this process's pid, maybe hang (until killed), then replace table `t` in one commit."""
    Path(pid_file).write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while hang and time.monotonic() < deadline:
        time.sleep(0.05)
    open_lake(lake_url).overwrite("t", pa.table({"n": [2]}, schema=SCHEMA))


def fail_with(error: type[Exception], logical_date: datetime) -> None:
    raise error(f"no input for {logical_date:%Y-%m-%d}")


class Unpicklable(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{detail} ({code})")


def fail_unpicklably(logical_date: datetime) -> None:
    raise Unpicklable(7, "odd failure")


@pytest.fixture
def lake_url(tmp_path: Path) -> str:
    url = f"file://{tmp_path}/lake"
    lake = open_lake(url)
    lake.create_table("t", SCHEMA)
    lake.overwrite("t", pa.table({"n": [1]}, schema=SCHEMA))
    return url


def rows(url: str) -> list[int]:
    return [r["n"] for r in open_lake(url).read("t").to_pylist()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_a_run_past_its_timeout_is_killed_fails_and_leaves_the_table(tmp_path: Path, lake_url: str) -> None:
    pid_file = tmp_path / "pid"
    body = functools.partial(replace_table, lake_url, str(pid_file), True)
    with EmbeddedScheduler(tmp_path / "s.db", [Task("slow", None, body, retries=0, timeout=2)]) as sched:
        run = sched.trigger("slow", DAY)
    assert (run.state, run.error, run.attempts) == ("failed", "timed out after 2 s", 1)
    assert not alive(int(pid_file.read_text()))
    assert rows(lake_url) == [1]


def test_a_run_within_its_timeout_commits(tmp_path: Path, lake_url: str) -> None:
    body = functools.partial(replace_table, lake_url, str(tmp_path / "pid"), False)
    with EmbeddedScheduler(tmp_path / "s.db", [Task("quick", None, body, timeout=120)]) as sched:
        run = sched.trigger("quick", DAY)
    assert (run.state, run.error) == ("success", None)
    assert rows(lake_url) == [2]
    assert int((tmp_path / "pid").read_text()) != os.getpid()


def test_an_isolated_failure_is_recorded_and_retried_as_inline(tmp_path: Path) -> None:
    sleeps: list[float] = []
    tasks = [Task("flaky", None, functools.partial(fail_with, ValueError), retries=1, retry_delay=0.5, timeout=60),
             Task("wrong", None, functools.partial(fail_with, SchemaError), retries=3, timeout=60),
             Task("odd", None, fail_unpicklably, retries=0, timeout=60)]
    with EmbeddedScheduler(tmp_path / "s.db", tasks, sleep=sleeps.append) as sched:
        flaky, wrong, odd = (sched.trigger(name, DAY) for name in ("flaky", "wrong", "odd"))
    assert (flaky.state, flaky.attempts, flaky.error) == ("failed", 2, "ValueError: no input for 2024-03-01")
    assert sleeps == [0.5]
    assert (wrong.state, wrong.attempts, wrong.error) == ("failed", 1, "SchemaError: no input for 2024-03-01")
    assert (odd.state, odd.error) == ("failed", "Unpicklable: odd failure (7)")


def test_a_run_that_cannot_be_sent_to_its_process_says_how_to_fix_it(tmp_path: Path) -> None:
    task = Task("local", None, lambda _: None, retries=3, timeout=60)
    with EmbeddedScheduler(tmp_path / "s.db", [task]) as sched:
        run = sched.trigger("local", DAY)
    assert run.state == "failed" and run.attempts == 1
    assert "module-level function" in (run.error or "") and (run.error or "").startswith("ConfigError: task 'local'")
