"""Durable checkpoints of stateful processors: the state, the watermark and the offsets they cover.

A checkpoint is a *unit* written to a new folder named for its version; then `checkpoint.json`,
which names that folder, is replaced atomically (temp file, fsync, rename, fsync of the folder). A
crash therefore leaves either the previous checkpoint or the new one, never a state that does not
match its offsets.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from keel.errors import BackendError, ConflictError


@contextlib.contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """A checkpoint that cannot be written (a full disk, a read-only folder) is a BackendError: the
    processor is retried by its supervisor and resumes from the previous checkpoint, which is intact."""
    try:
        yield
    except OSError as exc:
        raise BackendError(f"cannot write the checkpoint in {folder}: {exc.strerror or exc}; free disk space "
                           "(or fix the folder's permissions): the processor resumes from its last checkpoint") from exc


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


# -- units: the state of a stateful processor with the outputs of its last commit (an outbox) -------

UNIT_STATE = "state"


@dataclass(frozen=True)
class Unit:
    """What a stateful processor has computed up to `offsets` (version = their sum).

    `frames` holds the state frame(s) and the outputs of the commit that produced it (closed
    windows, late events, view rows): recovery re-delivers those outputs, which is idempotent (lake
    appends carry the version, view writes are versioned upserts), so a crash between the unit's
    lake commits and its views can never lose or duplicate an output.
    """

    version: int
    offsets: dict[int, int]
    watermark_us: int | None
    frames: dict[str, pl.DataFrame]


def save_unit(root: Path, name: str, unit: Unit) -> str:
    """Write a unit durably into its own folder (fsync'd files and folder); return the folder's name."""
    folder = root / name
    unit_dir = f"unit-{unit.version:020d}"
    target = folder / unit_dir
    with _writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
        target.mkdir(exist_ok=True)
        for key, frame in unit.frames.items():
            with open(target / f"{key}.arrow", "wb") as f:
                frame.write_ipc(f)
                f.flush()
                os.fsync(f.fileno())
        meta = {"version": unit.version, "watermark_us": unit.watermark_us, "frames": sorted(unit.frames),
                "offsets": {str(p): o for p, o in unit.offsets.items()}}
        _write_synced(target / "unit.json", json.dumps(meta).encode())
        _fsync_dir(target)
        _fsync_dir(folder)
    return unit_dir


def load_unit(root: Path, name: str, unit_dir: str) -> Unit:
    target = root / name / unit_dir
    meta = json.loads((target / "unit.json").read_text())
    frames = {key: pl.read_ipc(io.BytesIO((target / f"{key}.arrow").read_bytes())) for key in meta["frames"]}
    return Unit(int(meta["version"]), {int(p): int(o) for p, o in meta["offsets"].items()}, meta["watermark_us"], frames)


def point_to_unit(root: Path, name: str, unit_dir: str, version: int) -> None:
    """Make `unit_dir` the checkpoint (atomic replace of checkpoint.json), then drop older units."""
    folder = root / name
    with _writing(folder):
        _write_synced(folder / "checkpoint.json.tmp", json.dumps({"unit": unit_dir, "version": version}).encode())
        os.replace(folder / "checkpoint.json.tmp", folder / "checkpoint.json")
        _fsync_dir(folder)
    for old in folder.glob("unit-*"):
        if old.name < unit_dir and old.is_dir():
            for f in old.iterdir():
                f.unlink(missing_ok=True)
            old.rmdir()


def unit_pointer(root: Path, name: str) -> tuple[str, int] | None:
    """The unit checkpoint.json names, with its version; None if there is none yet."""
    path = root / name / "checkpoint.json"
    if not path.exists():
        return None
    meta = json.loads(path.read_text())
    if "unit" not in meta:
        return None
    return str(meta["unit"]), int(meta["version"])


# -- one running instance per stateful processor ------------------------------------------------

_claims: dict[Path, int] = {}  # lock file -> the descriptor holding its flock, in this process
_claims_lock = threading.Lock()


def claim(state_dir: Path, name: str, doing: str = "runs") -> bool:
    """Make this process the only one running the stateful processor `name` on `state_dir`.

    Two processes running one stateful processor would overwrite each other's checkpoints and land
    their closed windows twice, so a second one gets `ConflictError` at start. The claim is an
    flock on ``<name>.lock``: the kernel drops it when its process exits, however it dies, so a
    restart after kill -9 is never refused. Within one process a later claim is a no-op (a runner
    restarted in place takes over) and returns False; a new claim returns True.
    """
    path = Path(state_dir) / f"{name}.lock"
    with _claims_lock:
        if path in _claims:
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConflictError(
                f"stateful processor {name!r} is already running in another process (pid {holder}), and it "
                f"{doing} as one instance only: stop the other `keel up` (or `keel replay`) first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        _claims[path] = fd
        return True


def release(state_dir: Path, name: str) -> None:
    """Give up the claim of `claim` (a process exiting gives it up anyway)."""
    with _claims_lock:
        fd = _claims.pop(Path(state_dir) / f"{name}.lock", None)
    if fd is not None:
        os.close(fd)
