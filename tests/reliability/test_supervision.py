"""Supervision under `keel up`: a component that fails is reported and restarted with backoff while
the others go on; only a ConfigError stops the platform; start-up checks every engine first.

The backoff tests drive `Supervisor` with a fake clock and wait, so no test sleeps real seconds.
The platform tests use real engines (Redis killed and restarted, a real S3 API server)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from keel.errors import BackendError, ConfigError
from keel.monitor.streams import stream_registry
from keel.run.host import Platform, free_port
from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from keel.run.supervisor import Backoff, Supervisor
from tests.harness.process import wait_for

REPO = Path(__file__).resolve().parents[2]


class FakeTime:
    """A clock that moves only when the supervisor waits or a target says it ran for a while."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


def scripted(steps: list[Callable[[], None]], stop: threading.Event) -> Callable[[threading.Event], None]:
    """A target that runs one step per attempt and sets `stop` when the steps are used up."""
    todo = list(steps)

    def target(_: threading.Event) -> None:
        if not todo:
            stop.set()
            return
        todo.pop(0)()

    return target


def fail(exc: BaseException) -> Callable[[], None]:
    def step() -> None:
        raise exc

    return step


def restarts(name: str) -> float:
    return stream_registry().get_sample_value("keel_component_restarts_total", {"component": name}) or 0.0


def test_restarts_back_off_doubling_to_the_cap() -> None:
    stop, t = threading.Event(), FakeTime()
    target = scripted([fail(BackendError("broker gone"))] * 6, stop)
    sup = Supervisor("sv-double", target, stop, lambda m: None, Backoff(initial=0.5, cap=4.0, jitter=0.5),
                     clock=t.clock, wait=t.wait, draw=lambda: 0.0)
    sup.run()
    assert t.waits == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert sup.state.restarts == 6 and restarts("sv-double") == 6
    assert sup.state.state == "stopped"


def test_jitter_shortens_a_delay_by_at_most_its_fraction() -> None:
    b = Backoff(initial=1.0, cap=8.0, jitter=0.5)
    assert [b.delay(n, 0.0) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert [b.delay(n, 0.5) for n in (1, 2, 3, 4, 5)] == [0.75, 1.5, 3.0, 6.0, 6.0]
    assert b.delay(10_000, 0.0) == 8.0  # no overflow after many failures


def test_the_backoff_resets_after_running_well() -> None:
    stop, t = threading.Event(), FakeTime()

    def ran_long_then_failed() -> None:
        t.now += 61.0  # ran well for longer than reset_after
        raise BackendError("lake gone")

    steps = [fail(BackendError("a")), fail(BackendError("b")), fail(BackendError("c")), ran_long_then_failed,
             fail(BackendError("d"))]
    sup = Supervisor("sv-reset", scripted(steps, stop), stop, lambda m: None,
                     Backoff(initial=1.0, cap=30.0, reset_after=60.0), clock=t.clock, wait=t.wait, draw=lambda: 0.0)
    sup.run()
    assert t.waits == [1.0, 2.0, 4.0, 1.0, 2.0]


def test_a_config_error_stops_the_component_for_good_and_is_reported_once() -> None:
    stop, t = threading.Event(), FakeTime()
    fatal: list[str] = []
    steps = [fail(BackendError("transient")), fail(ConfigError("table 'x' has no column 'y': fix the declaration"))]
    sup = Supervisor("sv-fatal", scripted(steps, stop), stop, fatal.append, clock=t.clock, wait=t.wait)
    sup.run()
    assert fatal == ["sv-fatal: table 'x' has no column 'y': fix the declaration"]
    assert sup.state.state == "failed" and sup.state.restarts == 1
    assert not stop.is_set()  # the supervisor stops only its component; the platform decides the rest


def test_a_keel_error_is_one_line_and_a_bug_has_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    stop, t = threading.Event(), FakeTime()
    steps = [fail(BackendError("the bucket is gone: create it")), fail(KeyError("bug")), fail(KeyError("bug")),
             fail(BackendError("again"))]
    sup = Supervisor("sv-log", scripted(steps, stop), stop, lambda m: None, clock=t.clock, wait=t.wait)
    with caplog.at_level(logging.ERROR, logger="keel.run.host"):
        sup.run()
    records = [r for r in caplog.records if r.name == "keel.run.host"]
    assert len(records) == 4
    assert [r.exc_info is not None for r in records] == [False, True, False, False]
    assert "the bucket is gone: create it" in records[0].getMessage()
    assert sup.state.error == "again"


def test_a_target_that_returns_without_stop_is_restarted() -> None:
    stop, t = threading.Event(), FakeTime()
    sup = Supervisor("sv-return", scripted([lambda: None, lambda: None], stop), stop, lambda m: None,
                     Backoff(initial=2.0), clock=t.clock, wait=t.wait, draw=lambda: 0.0)
    sup.run()
    assert t.waits == [2.0, 4.0] and "returned without being asked to stop" in (sup.state.error or "")


# -- the platform on real engines -----------------------------------------------------------------------


def post(url: str, stream: str, events: list[dict[str, Any]]) -> int:
    return httpx.post(f"{url}/v1/streams/{stream}/events", json=events, timeout=30).status_code


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    copy_example(root)
    return root


@pytest.mark.slow
@pytest.mark.redis
def test_redis_outage_restarts_the_view_processors_while_the_rest_goes_on(
        shop: Path, redis_server: Any, redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    platform = Platform(Runtime.open(shop, kv=redis_url), port=free_port(), scheduler=False,
                        backoff=Backoff(initial=0.05, cap=0.2))
    platform.start()
    rt = platform.rt
    try:
        assert post(platform.url, "page_views", [{"user_id": "u1", "item_id": "a"}]) == 202
        assert platform.wait_idle(60)
        redis_server.kill()
        views = [{"user_id": f"u{i}", "item_id": "b"} for i in range(20)]
        assert post(platform.url, "page_views", views) == 202  # the gateway writes to the bus, not Redis

        def state(name: str) -> dict[str, Any]:
            return next(r for r in platform.status() if r["name"] == name)

        # the view writers fail and are restarted; the lake writer lands every event meanwhile
        assert wait_for(lambda: state("recent_items")["restarts"] >= 2), platform.status()
        assert wait_for(lambda: rt.lake.describe("page_views").rows == 21), platform.status()
        failing = state("recent_items")
        assert failing["alive"] and "redis" in (failing["error"] or "").lower(), failing
        assert httpx.get(f"{platform.url}/healthz", timeout=10).status_code == 200
        assert platform.errors == []
        assert restarts("recent_items") >= 2

        redis_server.start()
        assert wait_for(lambda: platform.wait_idle(1) and state("recent_items")["state"] == "running"
                        and rt.views.get("recent_items", "u7") is not None, timeout=60), platform.status()
        assert all(r["alive"] for r in platform.status())
    finally:
        platform.stop()


def keel_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keel.cli.commands", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200", **env}, timeout=120, cwd=REPO)


@pytest.mark.s3
def test_a_missing_bucket_is_one_clear_error_before_anything_is_up(shop: Path, s3_server: Any,
                                                                 caplog: pytest.LogCaptureFixture,
                                                                 s3_env: dict[str, str]) -> None:
    platform = Platform(Runtime.open(shop, lake="s3://no-such-bucket/shop"), port=free_port())
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as caught:
        platform.start()
    message = str(caught.value)
    assert "lake" in message and "no-such-bucket" in message and "create it" in message
    assert not any(r.exc_info for r in caplog.records)  # no traceback logged anywhere
    assert platform.components == []  # nothing was started


@pytest.mark.s3
@pytest.mark.slow
def test_keel_up_with_a_missing_bucket_prints_one_message_and_no_traceback(shop: Path, s3_server: Any) -> None:
    r = keel_cli("up", "-p", str(shop), "--port", str(free_port()),
                 env={**s3_server.env, "KEEL_LAKE": "s3://no-such-bucket/shop"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "keel is up" not in r.stdout
    assert "Traceback" not in r.stderr and "no-such-bucket" in r.stderr, r.stderr
    assert r.stderr.count("no-such-bucket' of the lake") == 1, r.stderr


@pytest.mark.kafka
@pytest.mark.slow
def test_keel_up_prints_each_kafka_durability_warning_once(shop: Path, tmp_path: Path, kafka_bootstrap: str) -> None:
    prefix = f"up-{uuid.uuid4().hex[:8]}."
    env = {**os.environ, "COLUMNS": "200", "KEEL_BUS": f"{kafka_bootstrap}?topic_prefix={prefix}",
           "KEEL_LAKE": f"file://{tmp_path / 'lake'}", "KEEL_KV": f"file://{tmp_path / 'kv.db'}"}
    up = subprocess.Popen([sys.executable, "-m", "keel.cli.commands", "up", "-p", str(shop), "--profile", "prod",
                           "--port", str(free_port())], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, cwd=REPO)
    try:
        assert up.stdout is not None
        for line in up.stdout:
            if "keel is up" in line:
                break
        up.send_signal(signal.SIGTERM)
        out, err = up.communicate(timeout=120)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    topic = f"topic '{prefix}page_views' has replication factor 1"
    assert err.count(topic) == 1, err
    assert err.count(f"topic '{prefix}purchases' has replication factor 1") == 1, err


def test_keel_up_with_an_unreachable_redis_names_the_kv_and_starts_nothing(shop: Path) -> None:
    r = keel_cli("up", "-p", str(shop), "--port", str(free_port()),
                 env={"KEEL_KV": f"redis://:secret@127.0.0.1:{free_port()}/0"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "keel is up" not in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert "cannot start: the kv" in r.stderr and "redis" in r.stderr.lower(), r.stderr
    assert "secret" not in r.stderr  # the password stays out of the message


def test_a_taken_port_is_a_config_error_and_nothing_keeps_running(shop: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        platform = Platform(Runtime.open(shop), port=taken.getsockname()[1], scheduler=False)
        with pytest.raises(ConfigError, match="--port"):
            platform.start()
    assert not any(c.thread.is_alive() for c in platform.components)
