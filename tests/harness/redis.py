"""pytest plugin: a real redis-server on 127.0.0.1 for the whole session.

Fixtures:
* ``redis_server`` — the running `RedisServer`; tests may ``stop()``/``start()``/``restart()`` it
  (same port, so clients reconnect) to play "Redis went away in the middle of a load".
* ``redis_url`` — ``redis://127.0.0.1:PORT/0`` of that server.

The server keeps nothing on disk (``--save "" --appendonly no``): a restart starts empty.
If redis-server is not installed the fixtures FAIL, naming scripts/install-redis.sh.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.process import free_port, log_tail, started, stop_process, wait_ready

INSTALL_HINT = "run scripts/install-redis.sh (installs the Debian package redis-server)"


def find_redis_server() -> str | None:
    if Path("/usr/bin/redis-server").exists():
        return "/usr/bin/redis-server"
    return shutil.which("redis-server")




def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis server answers PING on 127.0.0.1:port (raw RESP: no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process on a fixed loopback port, in its own temporary directory."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (no-op if it runs) and wait until it answers PING."""
        if self.running:
            return
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - the child owns it while it runs
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes",
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        why = wait_ready(self.process, lambda: ping(self.port), timeout, pause=0.05)
        if why is None:
            return
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1:{self.port} ({why}); its log:\n"
                           f"{log_tail(self.workdir / 'redis.log')}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and wait until the port is closed."""
        if self.process is None:
            return
        process, self.process = self.process, None
        stop_process(process, timeout)

    def kill(self) -> None:
        """Stop the server abruptly (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    binary = find_redis_server()
    if binary is None:
        pytest.fail(f"redis-server is not installed: {INSTALL_HINT}", pytrace=False)
    with started(lambda workdir: RedisServer(binary, workdir), "keel-redis-") as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url
