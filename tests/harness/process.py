"""What every engine harness needs: a free loopback port, waiting for a server to be ready, its
log's tail when it is not, and stopping a server process for sure."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; return once the process is gone."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_ready(process: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float,
               pause: float = 0.1) -> str | None:
    """Poll `ready()` until it is true: None then, else why not (the process exited, or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"it exited with code {process.returncode}"
        if ready():
            return None
        time.sleep(pause)
    return f"it was not ready within {timeout:.0f}s"


def wait_for(what: Callable[[], bool], timeout: float = 90.0) -> bool:
    """Whether `what()` became true within `timeout` seconds (a generous bound, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return True
        time.sleep(0.1)
    return False


def log_tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


class Server(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


@contextmanager
def started(make: Callable[[Path], S], prefix: str) -> Iterator[S]:
    """A server made in a fresh temporary folder, started, and stopped at the end (a session fixture's body)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as workdir:
        server = make(Path(workdir))
        server.start()
        try:
            yield server
        finally:
            server.stop()
