"""Read commands create nothing: on a fresh project they say what is "not created yet" (status and
streams exit 0), and on a running one they leave the bus as they found it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from keel.bus import StreamConfig
from keel.run.runtime import Runtime

READ_COMMANDS = [
    (["status"], 0, "not created yet"),
    (["streams"], 0, "not created yet"),
    (["tail", "page_views"], 0, "not created yet"),
    (["dlq", "page_views"], 0, "not created yet"),
    (["dlq", "page_views", "show"], 0, "not created yet"),
    (["tables"], 0, "not created yet"),
    (["experiments", "report", "recs_v2"], 0, "not created yet"),
    (["keys", "list"], 0, "no keys yet"),
    (["sql", "select * from page_views"], 1, "not created yet"),
]


def keel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel.cli.commands", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80", **(env or {})}, timeout=120)


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fresh") / "shop"
    assert keel("init", str(root)).returncode == 0
    return root


@pytest.mark.parametrize("args, code, says", READ_COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_a_read_command_on_a_fresh_project_creates_nothing(fresh: Path, args: list[str], code: int, says: str) -> None:
    before = files(fresh)
    r = keel(*args, "-p", str(fresh))
    assert r.returncode == code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert says in " ".join((r.stdout if code == 0 else r.stderr).split())  # as one line, however it wraps
    assert not (fresh / ".keel").exists()
    assert files(fresh) == before


def test_streams_does_not_create_the_streams_it_lists(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    assert keel("init", str(root)).returncode == 0
    rt = Runtime.open(root)
    rt.bus.create_stream(StreamConfig("page_views", 2))
    on_the_bus = sorted(rt.bus.list_streams())
    rt.close()
    assert "purchases" not in on_the_bus
    r = keel("streams", "-p", str(root))
    assert r.returncode == 0, r.stderr
    purchases = next(line for line in r.stdout.splitlines() if "purchases" in line)
    assert "not created yet" in purchases
    rt = Runtime.open(root)
    assert sorted(rt.bus.list_streams()) == on_the_bus
    rt.close()
    r = keel("status", "-p", str(root))
    assert r.returncode == 0, r.stderr
    rt = Runtime.open(root)
    assert sorted(rt.bus.list_streams()) == on_the_bus
    rt.close()


@pytest.mark.kafka
def test_read_commands_on_a_fresh_kafka_bus_create_no_topic(fresh: Path, kafka_bootstrap: str) -> None:
    from confluent_kafka.admin import AdminClient

    prefix = f"readonly-{uuid.uuid4().hex[:8]}."
    env = {"KEEL_BUS": f"{kafka_bootstrap}?topic_prefix={prefix}"}
    for args in (["status"], ["streams"], ["tail", "page_views"], ["dlq", "page_views"]):
        r = keel(*args, "-p", str(fresh), env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "not created yet" in " ".join(r.stdout.split()), r.stdout
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap.removeprefix("kafka://")})
    topics = admin.list_topics(timeout=30).topics
    assert not [t for t in topics if t.startswith(prefix)]
    assert not (fresh / ".keel").exists()
