"""The `keel` command on a real project: operator commands work, user mistakes get one clear
message (what is wrong and what to do), exit code 1, and no traceback; a bug says it is one, with
its traceback only when asked (--debug or KEEL_DEBUG=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keel.project import loading as keel_project
from keel.cli.commands import main

from keel.run.runtime import Runtime
from keel.serve.ingest import parse_events, to_batch


def keel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel.cli.commands", *args], capture_output=True, text=True,
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
from keel.run.runtime import Runtime
from keel.run.host import Platform, free_port
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


def _broken_load_project(*args: object, **kwargs: object) -> None:
    raise RuntimeError("an unforeseen boom")


@pytest.mark.parametrize("debug", ["", "--debug", "KEEL_DEBUG=1"])
def test_an_unexpected_error_says_it_is_a_bug_and_shows_its_traceback_only_when_asked(
        shop: Path, debug: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(keel_project, "load_project", _broken_load_project)
    monkeypatch.delenv("KEEL_DEBUG", raising=False)
    if debug.startswith("KEEL_DEBUG"):
        monkeypatch.setenv("KEEL_DEBUG", "1")
    with pytest.raises(SystemExit) as exit_:
        main([*(["--debug"] if debug == "--debug" else []), "check", "-p", str(shop)])
    assert exit_.value.code == 1
    stderr = capsys.readouterr().err
    assert "RuntimeError: an unforeseen boom" in stderr and "this is a bug in keel, please report it" in stderr
    if debug:
        assert "Traceback (most recent call last)" in stderr and "_broken_load_project" in stderr
    else:
        assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 2, stderr
        assert "--debug" in stderr and "KEEL_DEBUG=1" in stderr
