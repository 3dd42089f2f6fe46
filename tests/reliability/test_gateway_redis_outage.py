"""Redis killed in the middle of a lookup load, then restarted: the gateway answers every request
within its time limit (a value, the endpoint's fallback, or 503 + Retry-After), recovers by itself,
and holds a bounded number of connections to Redis (none leaked across the outage)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn

from keel.run.host import free_port
from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from tests.harness.gateway import gateway_of, options_of
from keel.serve.resilience import BackendPolicy

pytestmark = [pytest.mark.slow, pytest.mark.redis]
REQUEST_TIMEOUT = 2.0
USERS = [f"u{i}" for i in range(50)]


def seed(rt: Runtime) -> None:
    rt.views.put("trending", [("_top", {"items": [{"item_id": "a"}]})])
    rt.views.put("recent_items", [(u, {"items": ["a"]}) for u in USERS])


def clients(client: redis.Redis) -> int:
    """Client connections to the server, not counting this one."""
    return len(client.client_list()) - 1


@pytest.fixture
def gateway(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, Runtime, Any]]:
    root = tmp_path / "shop"
    copy_example(root)
    redis.Redis.from_url(redis_url).flushdb()
    rt = Runtime.open(root, kv=redis_url)
    rt.ensure()
    seed(rt)
    options = replace(options_of(rt), request_timeout=REQUEST_TIMEOUT, endpoint_timeout=0.5,
                      kv=BackendPolicy(timeout=0.3, failures=5, open_for=0.5, max_open_for=2.0))
    app = gateway_of(rt, options)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}", rt, app
    server.should_exit = True
    thread.join(10)
    rt.close()


def load(url: str, stop: threading.Event, out: list[tuple[float, int, float, str]], worker: int) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        i = 0
        while not stop.is_set():
            i += 1
            path = f"/v1/views/recent_items/{USERS[i % 50]}" if i % 2 else f"/recommend/{USERS[(i + worker) % 50]}"
            t0 = time.monotonic()
            try:
                r = c.get(path)
                out.append((t0, r.status_code, time.monotonic() - t0, r.headers.get("retry-after", "")))
            except httpx.TransportError as exc:
                out.append((t0, -1, time.monotonic() - t0, repr(exc)))


def test_redis_outage_mid_load(gateway: tuple[str, Runtime, Any], redis_server: Any, redis_url: str) -> None:
    url, rt, app = gateway
    admin = redis.Redis.from_url(redis_url)
    results: list[tuple[float, int, float, str]] = []
    stop = threading.Event()
    workers = [threading.Thread(target=load, args=(url, stop, results, w)) for w in range(6)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.5)
        before = clients(admin)
        redis_server.kill()  # crash: connections reset, port refused
        killed_at = time.monotonic()
        time.sleep(2.5)
        during = httpx.get(f"{url}/readyz", timeout=5)
        redis_server.start()
        restarted_at = time.monotonic()
        admin = redis.Redis.from_url(redis_url)
        seed(rt)  # the restarted server is empty (no persistence): the processors would rewrite it
        seeded_at = time.monotonic()
        deadline = time.monotonic() + 20
        recovered, recovered_at = False, 0.0
        while time.monotonic() < deadline:  # it must recover by itself: nobody resets anything
            ok = httpx.get(f"{url}/v1/views/recent_items/u1", timeout=5).status_code == 200
            if ok and httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                recovered = True
                recovered_at = time.monotonic()
                break
            time.sleep(0.2)
        time.sleep(1.5)
        after = clients(admin)
        time.sleep(1.5)
        later = clients(admin)
    finally:
        stop.set()
        for w in workers:
            w.join(30)

    assert recovered, "the gateway did not serve again after Redis came back"
    assert during.status_code == 503 and during.json()["breakers"]["kv"] != "closed"
    statuses = {s for _, s, _, _ in results}
    assert -1 not in statuses, [r for r in results if r[1] == -1][:3]  # every request was answered
    # 404 is right only while the restarted, empty Redis has not been refilled yet
    refilling = [s for t, s, _, _ in results if not restarted_at - REQUEST_TIMEOUT < t < seeded_at + REQUEST_TIMEOUT]
    assert set(refilling) <= {200, 503}, set(refilling)
    assert statuses <= {200, 404, 503}, statuses
    # answered within the time limit: a behaviour bound (the limit), not a performance figure
    slowest = max(elapsed for _, _, elapsed, _ in results)
    assert slowest < REQUEST_TIMEOUT + 1.0, slowest
    outage = [r for r in results if killed_at + 0.2 < r[0] < restarted_at]
    assert outage and all(s == 503 and ra for _, s, _, ra in outage if s != 200)
    assert any(s == 503 for _, s, _, _ in outage)
    tail = [s for t, s, _, _ in results if t > recovered_at + 0.5]
    assert tail and tail.count(200) / len(tail) > 0.95
    # connections: bounded by the reader's pool (4) + the endpoint threads' pool. The endpoint pool
    # opens its connections lazily, so the count may rise between two samples while threads that had
    # not run yet get work (CI saw 8 -> 10 under a busy CPU); a leak per request or per reconnect would
    # pass the bound within the thousands of requests made after the restart
    bound = 4 + app.options.workers + 2
    served_after = sum(1 for t, s, _, _ in results if t > recovered_at and s == 200)
    assert served_after > 2 * bound, served_after  # enough requests that a per-request leak would show
    assert before <= bound and after <= bound and later <= bound, (before, after, later)
