"""What the contract suite cannot see from outside: pruning, local snapshots, options, lost metadata."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from keel.errors import ConfigError, KeelError, NotFoundError, UnknownSchemeError
from keel.lake import open_lake
from keel.lake.delta import DeltaLake
from tests.contract.test_lake import DAY, SCHEMA, events


@pytest.fixture
def lake(tmp_path: Path) -> DeltaLake:
    lake = open_lake(f"file://{tmp_path / 'lake'}")
    assert isinstance(lake, DeltaLake)
    lake.create_table("shop", SCHEMA, partition_by=["event_date"])
    return lake


def test_a_partition_filter_never_opens_other_partitions(lake: DeltaLake, tmp_path: Path) -> None:
    lake.append("shop", events(5))
    lake.append("shop", events(5, first=5, day=DAY + timedelta(days=1)))
    for parquet in (tmp_path / "lake" / "shop" / f"event_date={DAY}").glob("*.parquet"):
        parquet.unlink()  # were the partition opened, the read would fail
    kept = lake.read("shop", columns=["item_id"], filter=f"event_date = DATE '{DAY + timedelta(days=1)}'")
    assert sorted(kept.column("item_id").to_pylist()) == [f"i{i}" for i in range(5, 10)]
    with pytest.raises(KeelError):
        lake.read("shop")


def test_parquet_snapshot_lists_the_files_of_the_current_version(lake: DeltaLake) -> None:
    lake.append("shop", events(5))
    lake.append("shop", events(5, day=date(2024, 3, 9)))
    lake.delete("shop", "event_date = DATE '2024-03-09'")
    snapshot = lake.parquet_snapshot("shop")
    assert snapshot is not None
    assert snapshot.version == 3 and snapshot.partition_by == ["event_date"]
    assert [Path(f).parent.name for f in snapshot.files] == [f"event_date={DAY}"]
    assert all(Path(f).exists() for f in snapshot.files)


def test_parquet_snapshot_declines_escaped_partition_folders(lake: DeltaLake) -> None:
    lake.create_table("by_name", pa.schema([("name", pa.string()), ("n", pa.int64())]), partition_by=["name"])
    lake.append("by_name", pa.table({"name": ["plain"], "n": [1]}))
    assert lake.parquet_snapshot("by_name") is not None
    lake.append("by_name", pa.table({"name": ["a b/c"], "n": [2]}))
    assert lake.parquet_snapshot("by_name") is None


def test_writer_and_version_go_together(lake: DeltaLake) -> None:
    with pytest.raises(KeelError, match="both writer and version"):
        lake.append("shop", events(1), writer="sink")


def test_metadata_of_a_commit_gone_from_the_log_is_reported_not_invented(lake: DeltaLake, tmp_path: Path) -> None:
    lake.append("shop", events(1), writer="sink", version=1, metadata={"offsets": "1"})
    for v in range(3):
        lake.append("shop", events(1), writer="other", version=v + 1)
    lake.maintain("shop", compaction=False, vacuuming=False)  # a checkpoint
    for commit in sorted((tmp_path / "lake" / "shop" / "_delta_log").glob("*.json"))[:2]:
        commit.unlink()  # what log cleanup does after delta.logRetentionDuration
    with pytest.raises(NotFoundError, match="no longer in the table's log"):
        open_lake(f"file://{tmp_path / 'lake'}").writer_commit("shop", "sink")


def test_bad_names_and_options_are_config_errors(tmp_path: Path) -> None:
    lake = open_lake(f"file://{tmp_path}")
    with pytest.raises(ConfigError, match="table name 'bad name' is not valid"):
        lake.create_table("bad name", SCHEMA)
    with pytest.raises(ConfigError, match="unknown lake option"):
        open_lake(f"file://{tmp_path}", colour="blue")
    with pytest.raises(UnknownSchemeError, match="file://, s3://"):
        open_lake("gs://bucket/lake")


def test_partitioning_by_an_unknown_column_is_refused(lake: DeltaLake) -> None:
    with pytest.raises(NotFoundError, match="'day'.*columns: user_id, item_id, ts, event_date"):
        lake.create_table("t", SCHEMA, partition_by=["day"])
