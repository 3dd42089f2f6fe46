"""Data-aware triggers: a task runs when its inputs got new commits, on an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from keel.jobs.base import Task
from keel.jobs.embedded import EmbeddedScheduler
from keel.jobs.triggers import table_versions
from keel.lake import open_lake

T0 = datetime(2024, 3, 1, tzinfo=UTC)
SCHEMA = pa.schema([("n", pa.int64())])


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_a_commit_to_an_input_table_runs_the_task_once(tmp_path: Path) -> None:
    lake = open_lake(f"file://{tmp_path}/lake")
    calls: list[datetime] = []
    task = Task("refresh", None, calls.append, watch=table_versions(lake, ["orders"]))
    with EmbeddedScheduler(tmp_path / "s.db", [task]) as sched:
        assert sched.tick(at(0)) == []  # the first look only starts the watch
        lake.create_table("orders", SCHEMA)
        assert [r.logical_date for r in sched.tick(at(1))] == [at(1)]  # its creation is a change
        assert sched.tick(at(2)) == []
        lake.overwrite("orders", pa.table({"n": [1]}, schema=SCHEMA))
        lake.overwrite("orders", pa.table({"n": [2]}, schema=SCHEMA))
        runs = sched.tick(at(3))
    assert [(r.task, r.state) for r in runs] == [("refresh", "success")] and calls == [at(1), at(3)]


def test_a_paused_or_failing_watch_waits_and_the_token_survives_a_reopen(tmp_path: Path) -> None:
    state = {"token": "v1", "broken": False}

    def watch() -> str:
        if state["broken"]:
            raise OSError("the lake is unreachable")
        return state["token"]

    calls: list[datetime] = []
    task = Task("t", None, calls.append, watch=watch)
    with EmbeddedScheduler(tmp_path / "s.db", [task]) as sched:
        sched.tick(at(0))
        sched.pause("t")
        state["token"] = "v2"
        assert sched.tick(at(1)) == []
    with EmbeddedScheduler(tmp_path / "s.db", [task]) as reopened:
        reopened.unpause("t")
        state["broken"] = True
        assert reopened.tick(at(2)) == []
        state["broken"] = False
        assert [r.logical_date for r in reopened.tick(at(3))] == [at(3)]
        assert reopened.tick(at(4)) == []


def test_a_scheduled_run_in_the_same_tick_covers_the_change(tmp_path: Path) -> None:
    token = {"value": "a"}
    calls: list[datetime] = []
    task = Task("t", "0 * * * *", calls.append, watch=lambda: token["value"])
    with EmbeddedScheduler(tmp_path / "s.db", [task]) as sched:
        sched.tick(at(30))
        token["value"] = "b"
        assert [r.logical_date for r in sched.tick(at(60))] == [at(60)]
        assert sched.tick(at(61)) == []
