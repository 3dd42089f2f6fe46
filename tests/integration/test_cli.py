"""The `keel` command on a real project: operator commands work, and user mistakes get one clear
message (what is wrong and what to do), exit code 1, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keel.runtime import Runtime
from keel.serve.ingest import parse_events, to_batch


def keel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, timeout=120)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "shop"
    assert keel("init", str(root)).returncode == 0
    rt = Runtime.open(root)
    rt.ensure()
    schema = rt.stream("page_views").schema
    events = parse_events(schema, b'[{"user_id":"u1","item_id":"i1"},{"user_id":"u2","item_id":"i1"}]', ndjson=False)
    rt.bus.produce("page_views", to_batch(events, "user_id", 1)[0])
    rt.close()
    return root


def test_streams_lists_records(shop: Path) -> None:
    r = keel("streams", "-p", str(shop))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if " page_views " in x)
    cells = [c.strip() for c in line.split("│")]
    assert cells[1:4] == ["page_views", "2", "2"]  # name, partitions, records


def test_tail_shows_decoded_events(shop: Path) -> None:
    r = keel("tail", "page_views", "-p", str(shop))
    assert r.returncode == 0, r.stderr
    assert '"user_id": "u1"' in r.stdout and '"user_id": "u2"' in r.stdout


def test_run_a_job_then_query_it(shop: Path) -> None:
    up = subprocess.Popen([sys.executable, "-c", f"""
import threading, time
from keel.runtime import Runtime
from keel.platform import Platform, free_port
p = Platform(Runtime.open({str(shop)!r}), port=free_port())
p.start(gateway=False)
assert p.wait_idle(60)
p.stop()
"""])
    assert up.wait(timeout=120) == 0
    r = keel("run", "compute_co_views", "-p", str(shop))
    assert r.returncode == 0, r.stdout + r.stderr
    r = keel("sql", "select count(*) as n from page_views", "-p", str(shop), "--format", "json")
    assert r.returncode == 0 and '"n": 2' in r.stdout
    r = keel("tables", "-p", str(shop))
    assert r.returncode == 0 and "page_views" in r.stdout


@pytest.mark.parametrize(
    "args, env, expected",
    [
        (["sql", "select * from nowhere"], {}, "nowhere"),
        (["tail", "nope"], {}, "no stream 'nope'"),
        (["run", "no_such_job"], {}, "no_such_job"),
        (["status"], {"KEEL_BUS": "carrier-pigeon://coop"}, "known schemes are file://, kafka://"),
        (["check", "--profile", "staging"], {}, "no profile 'staging'"),
        (["sql", "select 1", "--format", "xml"], {}, "unknown format 'xml'"),
        (["experiments", "report", "nope"], {}, "no experiment 'nope'"),
    ],
)
def test_user_mistakes_get_one_clear_message(shop: Path, args: list[str], env: dict[str, str], expected: str) -> None:
    r = keel(*args, "-p", str(shop), env=env)
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    assert expected in r.stderr


def test_every_command_has_help() -> None:
    for command in ("init", "check", "up", "demo", "status", "sql", "tables", "run", "streams", "tail", "dlq",
                    "lake", "experiments", "keys"):
        r = keel(command, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, command
