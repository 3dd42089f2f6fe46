"""Per-run logs: what a run logs goes to its own file, ``<state>/logs/<run id>.log``.

In-process runs capture the log records emitted on the run's thread (any logger, at the levels
the process is configured to emit), including the scheduler's own lines about the run's retries.
A run in its own process (a task with a timeout) also captures everything that process writes to
stdout and stderr. Attempts append to the same file, each after a header line.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("keel.jobs")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_path(logs_dir: Path, run_id: int) -> Path:
    return logs_dir / f"{run_id}.log"


class _OnThread(logging.Filter):
    def __init__(self, ident: int) -> None:
        super().__init__()
        self.ident = ident

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.ident


@contextmanager
def capture(path: Path, header: str) -> Iterator[None]:
    """Append `header` and then the records logged on this thread to `path` until the block ends.

    A log that cannot be written (a full disk) is skipped with a warning: it never fails the run.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as file:
            file.write(header.rstrip("\n") + "\n")
        handler: logging.Handler | None = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        log.warning("the run log %s cannot be written, the run goes on without it: %s", path, exc)
        handler = None
    if handler is None:
        yield
        return
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_OnThread(threading.get_ident()))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def redirect_process(path: Path) -> None:
    """In a run's own process: send stdout, stderr and every log record (INFO and up) to `path`."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        return  # the parent already warned that this log cannot be written
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)  # noqa: SIM115
    logging.basicConfig(level=logging.INFO, format=FORMAT, stream=sys.stderr, force=True)
