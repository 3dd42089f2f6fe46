"""Window checkpoints: what is saved is what is loaded, and a torn save leaves the previous one."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from polars.testing import assert_frame_equal

from keel.streaming.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip(tmp_path: Path) -> None:
    state = pl.DataFrame({"window_start": [1, 2], "item_id": ["a", "b"], "views": [3, 4]})
    save_checkpoint(tmp_path, "agg", state, 123, {0: 5, 1: 7})
    cp = load_checkpoint(tmp_path, "agg")
    assert cp is not None
    assert_frame_equal(cp.state, state)
    assert cp.watermark_us == 123 and cp.offsets == {0: 5, 1: 7}


def test_no_checkpoint_and_empty_state(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path, "agg") is None
    save_checkpoint(tmp_path, "agg", None, None, {0: 0})
    cp = load_checkpoint(tmp_path, "agg")
    assert cp is not None and cp.state is None and cp.offsets == {0: 0}


def test_a_crash_before_the_pointer_moves_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    old = pl.DataFrame({"views": [1]})
    save_checkpoint(tmp_path, "agg", old, 1, {0: 1})
    # a save that died after writing its state file but before replacing checkpoint.json
    pl.DataFrame({"views": [99]}).write_ipc(tmp_path / "agg" / "state-50.arrow")
    (tmp_path / "agg" / "checkpoint.json.tmp").write_text("{torn")
    cp = load_checkpoint(tmp_path, "agg")
    assert cp is not None and cp.offsets == {0: 1}
    assert_frame_equal(cp.state, old)
