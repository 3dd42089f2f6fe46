"""Overload: three times more concurrent demand than the gateway's capacity. The excess is shed at
once with 503 + Retry-After; the work in progress never exceeds the concurrency limit, accepted
requests complete within the time limit, and memory stays bounded."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from keel.run.host import free_port
from keel.project.loading import copy_example
from keel.run.runtime import Runtime
from tests.harness.gateway import gateway_of, options_of

pytestmark = pytest.mark.slow
LIMIT = 8  # requests in flight
SERVICE = 0.05  # seconds of kv work per request: capacity = LIMIT / SERVICE = 160 requests/s
REQUEST_TIMEOUT = 2.0


class SlowKV:
    """The real embedded kv behind a fixed service time; records the peak of concurrent reads."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.active, self.peak = inner, 0, 0
        self.lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(SERVICE)
            result: list[bytes | None] = self.inner.get_many(keys)
            return result
        finally:
            with self.lock:
                self.active -= 1

    def get(self, key: str) -> bytes | None:
        return self.get_many([key])[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def hammer(url: str, clients: int, seconds: float) -> list[tuple[int, float, str]]:
    out: list[tuple[int, float, str]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as c:
        end = time.monotonic() + seconds

        async def one(w: int) -> None:
            i = 0
            while time.monotonic() < end:
                i += 1
                t0 = time.monotonic()
                r = await c.get(f"/recommend/u{w}-{i}")
                out.append((r.status_code, time.monotonic() - t0, r.headers.get("retry-after", "")))
                if r.status_code == 503:
                    await asyncio.sleep(0.01)  # an impatient client: retries almost at once

        await asyncio.gather(*(one(w) for w in range(clients)))
    return out


def test_overload_is_shed_and_accepted_requests_stay_bounded(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    copy_example(root)
    rt = Runtime.open(root)
    rt.ensure()
    rt.views.put("trending", [("_top", {"items": [{"item_id": "a"}]})])
    slow = SlowKV(rt.kv)
    rt.__dict__["kv"] = slow
    rt.__dict__.pop("views", None)
    options = replace(options_of(rt), max_concurrency=LIMIT, workers=LIMIT, request_timeout=REQUEST_TIMEOUT,
                      endpoint_timeout=1.0)
    port = free_port()
    app = gateway_of(rt, options)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(hammer(url, LIMIT, 1.0))  # warm up at capacity
        base = rss_kib()
        results = asyncio.run(hammer(url, 3 * LIMIT, 4.0))
        grown = rss_kib() - base
        healthy = httpx.get(f"{url}/recommend/u1", timeout=5)
    finally:
        server.should_exit = True
        thread.join(10)
        rt.close()

    accepted = [s for s, _, _ in results if s == 200]
    shed = [(s, ra) for s, _, ra in results if s == 503]
    assert {s for s, _, _ in results} <= {200, 503}
    assert accepted and shed
    assert all(ra for _, ra in shed)  # every refusal says when to come back
    assert slow.peak <= LIMIT  # the backend never saw more than the limit
    # a behaviour bound, not a performance figure: inside the gateway every accepted request ends within
    # the time limit (its own histogram: nothing above the 2.5 s bucket). Latency seen by the clients is
    # not asserted: they share this process and its GIL with the server, on a shared machine.
    hist = {s.labels.get("le"): s.value for m in app.metrics.latency.collect() for s in m.samples
            if s.labels.get("route") == "recommend" and s.name.endswith("_bucket")}
    assert hist["2.5"] == hist["+Inf"] > 0
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB under overload"
    assert healthy.status_code == 200  # and it serves normally once the overload stops


# -- a real load generator at 3x capacity against the gateway in its own process ------------------------

COUNT_LUA = """
counts = {}  -- globals: done() reads them from each thread
retry = 0
%s
response = function(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if status == 503 and headers["retry-after"] then retry = retry + 1 end
end
done = function(summary, latency, requests)
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for status, n in pairs(c) do io.write(string.format("status %%d %%d\\n", status, n)) end
    io.write(string.format("retry-after %%d\\n", t:get("retry")))
  end
  io.write(string.format("p99 %%d\\n", latency:percentile(99)))
end
threads = {}
setup = function(thread) table.insert(threads, thread) end
"""
POST_BODY = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = "[" .. string.rep('{"user_id":"u1","item_id":"i1"},', 130000) .. '{"user_id":"u1","item_id":"i1"}]'
"""  # 4.2 MB of small events: the 4 MB ingest bodies


def wrk(url: str, connections: int, seconds: int, lua: Path) -> tuple[dict[int, int], int, float]:
    """(responses by status, 503s with Retry-After, client-side p99 in seconds) of one wrk run."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(lua), url],
                         capture_output=True, text=True, timeout=seconds + 120, check=True).stdout
    counts = {int(m[1]): int(m[2]) for m in re.finditer(r"^status (\d+) (\d+)$", out, re.M)}
    retry = int(re.search(r"^retry-after (\d+)$", out, re.M)[1])  # type: ignore[index]
    p99 = int(re.search(r"^p99 (\d+)$", out, re.M)[1]) / 1e6  # type: ignore[index]
    return counts, retry, p99


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[Callable[[int, float], tuple[str, int]]]:
    """Starts the shop's gateway in its own process with a byte budget and a queue bound: (url, pid)."""
    procs: list[subprocess.Popen[str]] = []

    def start(budget: int, queue: float) -> tuple[str, int]:
        root = tmp_path / f"shop{len(procs)}"
        copy_example(root)
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "gateway_server.py"), str(root),
                                 str(port), str(budget), str(queue)], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # listening comes just after "ready"
            try:
                httpx.get(f"{url}/healthz", timeout=5)
                return url, proc.pid
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "the gateway did not start"
                time.sleep(0.05)

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(30)


BUDGET = 16 * 1024 * 1024  # request bodies in flight: four 4 MB bodies
EXPANSION = 25  # request memory per body byte of small events, at most (events as objects, the bus batch, the
# answer): 17-21 measured. Without the budget 12 such requests would take ~1 GB here.


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (scripts/install-redis.sh installs it)")
def test_ingest_overload_keeps_memory_under_the_budget_and_gives_it_back(
        tmp_path: Path, gateway_process: Callable[[int, float], tuple[str, int]]) -> None:
    url, pid = gateway_process(BUDGET, 5.0)
    lua = tmp_path / "post.lua"
    lua.write_text(COUNT_LUA % POST_BODY)
    base = proc_kib(pid, "VmRSS")
    counts, retry, p99 = wrk(f"{url}/v1/streams/page_views/events", 12, 10, lua)  # 3x the 4 bodies' capacity
    peak = proc_kib(pid, "VmHWM")
    print(f"ingest 4 MB bodies at 12 connections: {counts}, client p99 {p99:.3f}s, RSS {base} -> peak {peak} KiB")
    assert set(counts) <= {202, 503}, counts
    assert counts.get(202, 0) > 0 and counts.get(503, 0) > 0  # served, and the excess shed
    assert retry == counts[503]  # every refusal says when to come back
    assert (peak - base) * 1024 < EXPANSION * BUDGET + 64 * 1024 * 1024, f"RSS peaked {peak - base} KiB above its start"
    deadline = time.monotonic() + 60  # the last requests of the burst may still be finishing
    while proc_kib(pid, "VmRSS") > base + 128 * 1024 and time.monotonic() < deadline:
        time.sleep(0.1)
    after = proc_kib(pid, "VmRSS")
    assert after <= base + 128 * 1024, f"RSS stayed {after - base} KiB up after the burst"
    assert httpx.get(f"{url}/v1/views/trending/_top", timeout=30).status_code == 200


OPEN_LOOP = """
math.randomseed(7)
delay = function() return -math.log(1 - math.random()) * 20 end  -- each connection: a request every ~20 ms
"""  # the offered rate is connections / 20 ms, whatever the server does (open loop, nearly)


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (scripts/install-redis.sh installs it)")
def test_view_overload_sheds_what_waited_past_the_queue_bound(
        tmp_path: Path, gateway_process: Callable[[int, float], tuple[str, int]]) -> None:
    bound = 0.05  # 800 connections on 2 cores: the server saw waits of 24 ms median, 70 ms p99 (quiet machine)
    url, _ = gateway_process(BUDGET, bound)
    lua = tmp_path / "get.lua"
    lua.write_text(COUNT_LUA % "")
    paced = tmp_path / "paced.lua"
    paced.write_text(COUNT_LUA % OPEN_LOOP)
    quiet, _, quiet_p99 = wrk(f"{url}/v1/views/trending/_top", 4, 3, lua)
    connections = min(800, max(8, round(3 * sum(quiet.values()) / 3 * 0.020)))  # 3x the capacity seen at 4
    offered, offered_retry, offered_p99 = wrk(f"{url}/v1/views/trending/_top", connections, 5, paced)
    counts, retry, p99 = wrk(f"{url}/v1/views/trending/_top", 800, 10, lua)
    # client-side p99s are recorded, not asserted (benchmarks/RESULTS.md, bench_gateway_overload.py): wrk
    # shares the 2 cores, and at 800 connections its tail is there with a trivial uvicorn app too, outside
    # what the server can see or shed
    print(f"views: 4 connections {quiet} p99 {quiet_p99:.4f}s; 3x at {connections} paced connections {offered} "
          f"p99 {offered_p99:.4f}s; 800 connections {counts} p99 {p99:.4f}s")
    assert set(counts) <= {200, 503}, counts
    assert counts.get(200, 0) > 0 and counts.get(503, 0) > 0 and retry == counts[503]
    assert set(offered) <= {200, 503} and offered.get(200, 0) > 0, offered
    assert offered_retry == offered.get(503, 0)  # every refusal says when to come back
    metrics = httpx.get(f"{url}/metrics", timeout=30).text
    buckets = {le: float(v) for le, v in re.findall(r'keel_http_queue_seconds_bucket\{le="([^"]+)"\} (\S+)', metrics)}
    refused = {why: float(v) for why, v in re.findall(r'keel_http_refused_total\{reason="([^"]+)"\} (\S+)', metrics)}
    served = sum(n for s, n in counts.items() if s == 200) + quiet.get(200, 0) + offered.get(200, 0)
    # the server's own clock: every request it served had waited at most the bound (the rest were shed)
    assert buckets["0.05"] == buckets["+Inf"] >= served
    # the protocol refused the excess before the app ran (`shed`); every 503 the clients saw is counted (and
    # those wrk stopped waiting for at its end)
    assert refused["shed"] > 0
    assert sum(refused.get(why, 0) for why in ("shed", "queue", "memory")) >= counts[503] + offered.get(503, 0)
    assert httpx.get(f"{url}/v1/views/trending/_top", timeout=30).status_code == 200
