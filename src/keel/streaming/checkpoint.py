"""Durable checkpoints of window state: the open windows, the watermark and the offsets they cover.

The state goes to a new file named for its offsets; then `checkpoint.json`, which names that file,
is replaced atomically (temp file, fsync, rename, fsync of the folder). A crash therefore leaves
either the previous checkpoint or the new one, never a state that does not match its offsets.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass(frozen=True)
class Checkpoint:
    state: pl.DataFrame | None
    watermark_us: int | None
    offsets: dict[int, int]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(root: Path, name: str, state: pl.DataFrame | None, watermark_us: int | None,
                    offsets: dict[int, int]) -> None:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    state_file = f"state-{sum(offsets.values())}.arrow"
    frame = state if state is not None else pl.DataFrame()
    with open(folder / state_file, "wb") as f:
        frame.write_ipc(f)
        f.flush()
        os.fsync(f.fileno())
    meta = {"state": state_file, "watermark_us": watermark_us, "offsets": {str(p): o for p, o in offsets.items()}}
    _write_synced(folder / "checkpoint.json.tmp", json.dumps(meta).encode())
    os.replace(folder / "checkpoint.json.tmp", folder / "checkpoint.json")
    _fsync_dir(folder)
    for old in folder.glob("state-*.arrow"):
        if old.name != state_file:
            old.unlink(missing_ok=True)


def load_checkpoint(root: Path, name: str) -> Checkpoint | None:
    folder = root / name
    if not (folder / "checkpoint.json").exists():
        return None
    meta = json.loads((folder / "checkpoint.json").read_text())
    state = pl.read_ipc(folder / meta["state"])
    return Checkpoint(state if state.width else None, meta["watermark_us"],
                      {int(p): int(o) for p, o in meta["offsets"].items()})
