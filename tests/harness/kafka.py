"""A real Kafka broker for the tests: one KRaft node (controller + broker in one JVM) on loopback.

The jars come from ``scripts/install-kafka.sh`` (into ``.cache/kafka/lib``); the broker runs as
``java -cp '.cache/kafka/lib/*' kafka.Kafka server.properties`` with its data in a temp folder.

Fixtures:
* ``kafka_broker`` (session): the shared ``KafkaBroker``; ``kafka_bootstrap`` (session) its
  ``kafka://127.0.0.1:PORT`` URL. Tests sharing it must use their own topic names.
* ``kafka_private_broker`` (function): a broker of the test's own, for tests that stop or restart it.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

from tests.harness.process import free_port, log_tail, wait_ready

ROOT = Path(__file__).resolve().parents[2]
KAFKA_LIB = Path(os.environ.get("KEEL_KAFKA_LIB", ROOT / ".cache" / "kafka" / "lib"))
INSTALL_HINT = "run `bash scripts/install-kafka.sh` (fetches the Kafka jars with mvn and pip-installs confluent-kafka)"

_LOG4J = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = out
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


# Linux: the broker gets SIGKILL when the test process dies, so a crashed run leaves no JVM behind.
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


class KafkaUnavailable(RuntimeError):
    """The broker cannot be started here; the message says what to install or fix."""


def kafka_classpath() -> str:
    """The JVM class path of the cached Kafka jars, or KafkaUnavailable naming the install script."""
    if not any(KAFKA_LIB.glob("kafka_2.13-*.jar")) or not any(KAFKA_LIB.glob("kafka-tools-*.jar")):
        raise KafkaUnavailable(f"no Kafka jars in {KAFKA_LIB}: {INSTALL_HINT}")
    if shutil.which("java") is None:
        raise KafkaUnavailable("no `java` on PATH: Kafka needs Java 17+ (apt-get install openjdk-17-jre-headless)")
    return str(KAFKA_LIB / "*")


class KafkaBroker:
    """One single-node KRaft Kafka process. ``stop()``/``start()`` keep its ports and data."""

    def __init__(self, data_dir: Path | None = None, heap: str = "512m", properties: dict[str, str] | None = None) -> None:
        self.classpath = kafka_classpath()
        self.dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="keel-kafka-"))
        self._owns_dir = data_dir is None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.controller_port = free_port()
        self.heap = heap
        self.log_path = self.dir / "broker.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.dir / "data"),
            # One node: every internal topic has one replica, and groups start without delay.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # keel creates its topics with declared partitions; a typo must not create one.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
            **(properties or {}),
        }
        (self.dir / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in self._props.items()))
        (self.dir / "log4j2.properties").write_text(_LOG4J)
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def _java(self, main: str, *args: str, short: bool = False) -> list[str]:
        # A short-lived tool starts faster with the quick JIT and the serial collector.
        tuning = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"] if short else ["-XX:+UseG1GC"]
        return [
            "java", f"-Xmx{self.heap}", "-Xms128m", *tuning, "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp", self.classpath, main, *args,
        ]

    def _format(self) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        done = subprocess.run(
            self._java(
                # "=" form: a random id may begin with "-", which would read as an option
                "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(self.dir / "server.properties"), short=True,
            ),
            capture_output=True, text=True, timeout=120, check=False,
        )
        if done.returncode != 0:
            raise KafkaUnavailable(f"kafka-storage format failed ({done.returncode}): {done.stderr[-2000:] or done.stdout[-2000:]}")
        self._formatted = True

    def start(self, timeout: float = 180.0) -> None:
        """Start the broker (formatting its data dir the first time) and wait until it serves clients
        (the bound is generous: readiness is a condition, the bound only ends a broker that never gets there)."""
        if self.process is not None and self.process.poll() is None:
            return
        if not self._formatted:
            self._format()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*_DIE_WITH_PARENT, *self._java("kafka.Kafka", str(self.dir / "server.properties"))],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self._wait_ready(timeout)

    def _port_open(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.process is not None
        why = wait_ready(self.process, self._port_open, timeout)
        if why is not None:
            self._give_up(f"port {self.port} not open: {why}")
        try:
            from confluent_kafka.admin import AdminClient
        except ImportError as exc:
            raise KafkaUnavailable(f"confluent-kafka is not installed: {INSTALL_HINT}") from exc
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            self._check_alive()
            if self._serving(admin):
                return
            time.sleep(0.2)
        self._give_up(f"not serving on {self.bootstrap} after {timeout:.0f}s (metadata, partition leaders, groups)")

    def _serving(self, admin: Any) -> bool:
        """Ready as a client needs it: the broker is registered, every partition of every topic has
        a leader (a restarted broker elects them after it registers) and the group coordinator
        answers (it loads the offsets topic after a restart)."""
        try:
            metadata = admin.list_topics(timeout=2)
            if not metadata.brokers:
                return False
            if any(p.leader < 0 or p.error is not None for t in metadata.topics.values() for p in t.partitions.values()):
                return False
            admin.describe_consumer_groups(["keel-harness-probe"], request_timeout=2)["keel-harness-probe"].result(timeout=3)
            return True
        except Exception:  # noqa: BLE001 - not ready yet: KafkaException or a timeout until then
            return False

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            self._give_up(f"broker exited with code {self.process.returncode}")

    def _give_up(self, why: str) -> None:
        tail = log_tail(self.log_path, 3000)
        self.stop(kill=True)
        raise KafkaUnavailable(f"Kafka broker did not start: {why}. Log tail ({self.log_path}):\n{tail}")

    def stop(self, kill: bool = False, timeout: float = 30.0) -> None:
        """Stop the broker: a clean shutdown (SIGTERM), or kill -9 with `kill=True`."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def close(self) -> None:
        """Stop and remove the data dir if this broker created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def start_broker(data_dir: Path | None = None, **kwargs: object) -> KafkaBroker:
    """A started KafkaBroker; fails the calling test with the install hint when Kafka is missing."""
    for attempt in range(3):
        try:
            broker = KafkaBroker(data_dir, **kwargs)  # type: ignore[arg-type]
            broker.start()
            return broker
        except KafkaUnavailable as exc:
            # Another process may have taken a port between our probe and the broker's bind.
            if "Address already in use" in str(exc) and attempt < 2:
                if data_dir is not None:
                    shutil.rmtree(data_dir, ignore_errors=True)
                continue
            pytest.fail(str(exc), pytrace=False)
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    broker = start_broker()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: KafkaBroker) -> str:
    """``kafka://127.0.0.1:PORT`` of the session's shared broker."""
    return kafka_broker.url


@pytest.fixture
def kafka_private_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker of this test's own (it may stop, kill or restart it)."""
    broker = start_broker(tmp_path / "kafka")
    try:
        yield broker
    finally:
        broker.close()
