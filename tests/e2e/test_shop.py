"""The shop end to end on embedded engines: `keel up` survives kill -9, bad input writes nothing,
and the demo's experiment finds the lift the simulator built in (and none in an A/A run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from keel.cli.demo import run_demo
from keel.run.host import free_port
from keel.run.runtime import Runtime

pytestmark = pytest.mark.slow


def start_up(root: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "keel.cli.commands", "up", "-p", str(root), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise AssertionError(f"keel up exited: {proc.stdout.read().decode() if proc.stdout else ''}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("keel up did not become healthy in 60 s")


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    subprocess.run([sys.executable, "-m", "keel.cli.commands", "init", str(root)], check=True, capture_output=True)
    return root


def lake_ids(root: Path, table: str) -> list[str]:
    rt = Runtime.open(root)
    try:
        if table not in rt.lake.list_tables():
            return []
        return [str(x) for x in rt.lake.read(table, columns=["event_id"]).column("event_id").to_pylist()]
    finally:
        rt.close()


def test_acknowledged_events_survive_kill_9_exactly_once(shop: Path) -> None:
    port = free_port()
    proc = start_up(shop, port)
    acked: list[str] = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for i in range(20):
            batch = [{"user_id": f"u{i}-{j}", "item_id": f"item-{j:04d}"} for j in range(50)]
            r = client.post("/v1/streams/page_views/events", json=batch)
            assert r.status_code == 202
            acked += r.json()["event_ids"]
    os.kill(proc.pid, signal.SIGKILL)  # no chance to flush or commit anything more
    proc.wait()
    proc = start_up(shop, port)  # the restarted processors resume from their lake commits
    try:
        deadline = time.monotonic() + 60
        while len(lake_ids(shop, "page_views")) < len(acked) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, proc.stdout.read().decode() if proc.stdout else ""
    ids = lake_ids(shop, "page_views")
    assert sorted(ids) == sorted(acked)  # every acknowledged event, once each


def test_sigterm_stops_cleanly_and_loses_nothing(shop: Path) -> None:
    port = free_port()
    proc = start_up(shop, port)
    r = httpx.post(f"http://127.0.0.1:{port}/v1/streams/purchases/events",
                   json=[{"user_id": "u1", "item_id": "item-0001", "price": 9.5}])
    assert r.status_code == 202
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    proc = start_up(shop, port)
    try:
        deadline = time.monotonic() + 30
        while not lake_ids(shop, "purchases") and time.monotonic() < deadline:
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert lake_ids(shop, "purchases") == r.json()["event_ids"]


def test_a_refused_request_writes_nothing(shop: Path) -> None:
    port = free_port()
    proc = start_up(shop, port)
    try:
        good = {"user_id": "u1", "item_id": "item-0001", "price": 3.0}
        bad = {"user_id": "u2", "price": "free"}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/streams/purchases/events", json=[good, bad])
        assert r.status_code == 400
        fields = {(e["index"], e["field"]) for e in r.json()["errors"]}
        assert fields == {(1, "price"), (1, "item_id")}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/streams/nope/events", json=[good])
        assert r.status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    rt = Runtime.open(shop)
    try:
        assert sum(p.end_offset for p in rt.bus.describe("purchases").partitions) == 0
    finally:
        rt.close()


def test_demo_finds_the_built_in_lift(tmp_path: Path) -> None:
    summary = run_demo(tmp_path / "ab", users=2000, seed=11)
    assert summary.ok, summary.problems
    result = summary.experiment["purchase_rate"].to_dict()
    assert result["p_value"] < 0.01
    assert result["relative_lift_ci"][0] > 0  # the whole interval is above zero
    assert not result["srm"]


def test_demo_finds_no_lift_in_an_aa_run(tmp_path: Path) -> None:
    summary = run_demo(tmp_path / "aa", users=2000, seed=11, aa=True)
    assert summary.ok, summary.problems
    result = summary.experiment["purchase_rate"].to_dict()
    assert result["p_value"] > 0.05
    low, high = result["relative_lift_ci"]
    assert low < 0 < high
