"""Checkpoint units: what is saved is what is loaded, and a save that dies before the pointer moves
leaves the previous checkpoint in force."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from keel.streaming.checkpoint import (
    Unit,
    load_unit,
    point_to_unit,
    save_unit,
    unit_pointer,
)


def unit(version: int, views: int) -> Unit:
    state = pl.DataFrame({"window_start": [1, 2], "item_id": ["a", "b"], "views": [views, 4]})
    return Unit(version, {0: version - 7, 1: 7}, 123, {"state": state})


def test_round_trip(tmp_path: Path) -> None:
    saved = unit(12, 3)
    point_to_unit(tmp_path, "agg", save_unit(tmp_path, "agg", saved), saved.version)
    pointer = unit_pointer(tmp_path, "agg")
    assert pointer is not None and pointer[1] == 12
    loaded = load_unit(tmp_path, "agg", pointer[0])
    assert loaded.version == 12 and loaded.offsets == {0: 5, 1: 7} and loaded.watermark_us == 123
    assert_frame_equal(loaded.frames["state"], saved.frames["state"])


def test_no_checkpoint_yet(tmp_path: Path) -> None:
    assert unit_pointer(tmp_path, "agg") is None


def test_a_crash_before_the_pointer_moves_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    old = unit(12, 1)
    point_to_unit(tmp_path, "agg", save_unit(tmp_path, "agg", old), old.version)
    save_unit(tmp_path, "agg", unit(50, 99))  # a save that died before replacing checkpoint.json
    (tmp_path / "agg" / "checkpoint.json.tmp").write_text("{torn")
    pointer = unit_pointer(tmp_path, "agg")
    assert pointer is not None and pointer[1] == 12
    assert_frame_equal(load_unit(tmp_path, "agg", pointer[0]).frames["state"], old.frames["state"])


def test_moving_the_pointer_drops_older_units(tmp_path: Path) -> None:
    first, second = unit(12, 1), unit(20, 2)
    point_to_unit(tmp_path, "agg", save_unit(tmp_path, "agg", first), first.version)
    point_to_unit(tmp_path, "agg", save_unit(tmp_path, "agg", second), second.version)
    assert sorted(p.name for p in (tmp_path / "agg").glob("unit-*")) == [f"unit-{20:020d}"]
