"""Lake maintenance (Lake.maintain, keel.lake.maintain): compaction, the vacuum guard, checkpoints, the heuristic."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from keel.errors import ConfigError, KeelError
from keel.lake import TableInfo, open_lake
from keel.lake.delta import DeltaLake
from keel.lake.maintain import needs_maintenance
from tests.contract.test_lake import DAY, SCHEMA, events

SMALL_APPENDS = 40


@pytest.fixture
def lake(tmp_path: Path) -> DeltaLake:
    lake = open_lake(f"file://{tmp_path / 'lake'}")
    assert isinstance(lake, DeltaLake)
    lake.create_table("shop", SCHEMA, partition_by=["event_date"])
    for i in range(SMALL_APPENDS):
        lake.append("shop", events(5, first=5 * i, day=DAY + timedelta(days=i % 2)), writer="sink", version=i + 1,
                    metadata={"offsets": str(i)})
    return lake


def info(files: int, partitions: int = 1, size_bytes: int | None = None) -> TableInfo:
    return TableInfo(name="t", schema=SCHEMA, partition_by=[], version=1, rows=files * 10, files=files,
                     size_bytes=files * 10_000 if size_bytes is None else size_bytes, last_commit=None,
                     partitions=partitions)


def test_the_heuristic_wants_many_small_files_beyond_one_per_partition() -> None:
    assert needs_maintenance(info(files=100))
    assert not needs_maintenance(info(files=0))
    assert not needs_maintenance(info(files=10))
    assert not needs_maintenance(info(files=365, partitions=365))  # compacted daily partitions
    assert not needs_maintenance(info(files=100, size_bytes=100 * 256 * 2**20))  # large files


def test_maintain_compacts_small_files_and_keeps_every_row_and_writer_commit(lake: DeltaLake) -> None:
    before = lake.describe("shop")
    rows = lake.read("shop").sort_by("item_id")
    assert needs_maintenance(before) and before.files == SMALL_APPENDS
    report = lake.maintain("shop")
    after = lake.describe("shop")
    assert (after.files, after.rows) == (2, before.rows)  # one file per partition
    assert report["files_before"] == SMALL_APPENDS and report["files_after"] == 2
    assert report["files_compacted"] == SMALL_APPENDS and report["files_written"] == 2
    assert report["files_vacuumed"] == 0  # nothing is older than the 7-day retention
    assert report["checkpoint_version"] == after.version
    assert not needs_maintenance(after)
    assert lake.read("shop").sort_by("item_id").equals(rows)
    assert lake.read("shop", version=before.version).num_rows == before.rows  # time travel still works
    commit = lake.writer_commit("shop", "sink")
    assert commit is not None and (commit.version, commit.metadata) == (SMALL_APPENDS, {"offsets": "39"})
    assert lake.append("shop", events(1), writer="sink", version=SMALL_APPENDS) is False


def test_a_checkpoint_is_written(lake: DeltaLake, tmp_path: Path) -> None:
    lake.maintain("shop", compaction=False, vacuuming=False)
    log = tmp_path / "lake" / "shop" / "_delta_log"
    assert (log / "_last_checkpoint").exists() and list(log.glob("*.checkpoint.parquet"))


def test_vacuum_below_seven_days_is_refused_unless_forced(lake: DeltaLake, tmp_path: Path) -> None:
    lake.maintain("shop", vacuuming=False)
    version = lake.describe("shop").version
    on_disk = len(list((tmp_path / "lake" / "shop").rglob("*.parquet")))
    with pytest.raises(ConfigError, match="below the 7-day floor"):
        lake.vacuum("shop", retention=timedelta(hours=1))
    with pytest.raises(ConfigError, match="below the 7-day floor"):
        lake.maintain("shop", retention=timedelta(0))
    assert lake.describe("shop").version == version
    assert len(list((tmp_path / "lake" / "shop").rglob("*.parquet"))) == on_disk

    removed = lake.vacuum("shop", retention=timedelta(0), force=True)
    assert len(removed) == SMALL_APPENDS
    assert lake.read("shop").num_rows == SMALL_APPENDS * 5
    with pytest.raises(KeelError):
        lake.read("shop", version=3)  # its files are gone: the reason for the guard


def test_maintaining_a_table_that_does_not_exist_names_it(lake: DeltaLake) -> None:
    with pytest.raises(KeelError, match="no table 'nope'.*tables: shop"):
        lake.maintain("nope")


def test_compaction_leaves_an_unpartitioned_table_in_one_file(tmp_path: Path) -> None:
    lake = open_lake(f"file://{tmp_path}")
    lake.create_table("t", pa.schema([("x", pa.int64())]))
    for i in range(5):
        lake.append("t", pa.table({"x": [i]}))
    report = lake.maintain("t")
    assert (report["files_before"], report["files_after"]) == (5, 1)
    assert sorted(lake.read("t").column("x").to_pylist()) == [0, 1, 2, 3, 4]


def test_the_scheduler_compacts_busy_sinks_every_ten_minutes(lake: DeltaLake, tmp_path: Path) -> None:
    """The built-in maintenance task fires every 10 minutes and compacts only the tables that need it."""
    from datetime import UTC, datetime

    from keel.bus import open_bus
    from keel.engines import Engines
    from keel.jobs.base import latest_fire
    from keel.jobs.run import MAINTENANCE_TASK, scheduler_tasks
    from keel.kv import open_kv
    from keel.kv.views import Views
    from keel.project.catalog import Catalog

    lake.create_table("quiet", SCHEMA)
    lake.append("quiet", events(3))
    bus, kv = open_bus(f"file://{tmp_path}/bus"), open_kv(f"file://{tmp_path}/kv.db")
    engines = Engines(bus=bus, lake=lake, views=Views(kv, {}), state_dir=tmp_path / "state")
    (task,) = [t for t in scheduler_tasks(Catalog(), engines) if t.name == MAINTENANCE_TASK]
    noon = datetime(2024, 5, 1, 12, 7, tzinfo=UTC)
    assert latest_fire(task.schedule, noon) == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert task.run(noon) == ["shop"]
    assert lake.describe("shop").files <= 2 and lake.describe("shop").rows == 5 * SMALL_APPENDS
    assert task.run(noon) == []  # nothing left to do
    kv.close()
    bus.close()
