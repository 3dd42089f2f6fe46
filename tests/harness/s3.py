"""pytest plugin: a real S3 API server (moto_server) on 127.0.0.1 for the whole session.

Fixtures:
* ``s3_server`` — the running `S3Server`: ``endpoint`` (http://127.0.0.1:PORT), ``bucket`` (created
  empty at start), ``env`` (the AWS_* variables a client needs) and ``url(prefix)`` for a lake URL.
* ``s3_env`` — function scope: sets those AWS_* variables in os.environ for one test.

moto_server honours S3 conditional writes (If-None-Match: *), which Delta commits on S3 rely on.
If moto_server is not installed the fixtures FAIL, naming scripts/install-s3.sh.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.process import free_port, log_tail, started, stop_process, wait_ready

INSTALL_HINT = "run scripts/install-s3.sh (installs moto[server] from PyPI, the `test` extra)"
BUCKET = "keel-test"




def find_moto_server() -> list[str] | None:
    beside = Path(sys.executable).with_name("moto_server")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("moto_server")
    return [found] if found else None


class S3Server:
    """One moto_server process on a loopback port, with one bucket."""

    def __init__(self, command: list[str], workdir: Path, bucket: str = BUCKET) -> None:
        self.command, self.workdir, self.bucket = command, workdir, bucket
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": "keel-test",
            "AWS_SECRET_ACCESS_KEY": "keel-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def url(self, prefix: str | None = None) -> str:
        """A lake URL under a fresh (or the given) prefix of the bucket."""
        return f"s3://{self.bucket}/{prefix or 'lake-' + uuid.uuid4().hex[:10]}"

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.workdir / "moto.log", "ab")  # noqa: SIM115 - the child owns it while it runs
        self.process = subprocess.Popen([*self.command, "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        why = wait_ready(self.process, self._answers, timeout)
        if why is not None:
            self.stop()
            raise RuntimeError(f"moto_server did not answer on {self.endpoint} ({why}): "
                               f"{log_tail(self.workdir / 'moto.log')}")
        self.create_bucket(self.bucket)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                return True
        except OSError:
            return False

    def create_bucket(self, name: str) -> None:
        # moto accepts unsigned requests: a bare PUT creates the bucket, no boto3 needed.
        request = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.read()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        stop_process(process, timeout)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    command = find_moto_server()
    if command is None:
        pytest.fail(f"moto_server is not installed: {INSTALL_HINT}", pytrace=False)
    with started(lambda workdir: S3Server(command, workdir), "keel-s3-") as server:
        yield server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server.env
