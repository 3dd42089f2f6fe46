"""View reads at 3x capacity: keel's gateway beside a bare uvicorn hello-world, same run, same wrk.

For each server: its capacity (requests/s at 4 connections, closed loop), the unloaded p99 (a few
connections at a fixed low rate), then two overloads of 10 s each:

* **open loop 3x**: many connections, each sending its next request after an exponential delay
  (wrk's Lua `delay()`), so the offered rate is ~3x the capacity whatever the server does;
* **closed loop 800**: the issue's 800 connections, each with one request always outstanding.

The latency of the requests *served* (200) is measured apart from the shed ones (503) by probe
connections (each in its own wrk thread, timed with `clock_gettime` through LuaJIT's ffi) that
run beside the load and share its queue. Prints served p99 / unloaded p99 and the shed fraction.

    python benchmarks/bench_gateway_overload.py [--seconds 10] [--queue 0.1] [--concurrency N,...] [--before]

Needs wrk (scripts/install-redis.sh). Serialize it with other heavy work:
`flock /tmp/keel-heavy.lock python benchmarks/bench_gateway_overload.py`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_views import free_port, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = ROOT / "tests" / "reliability" / "gateway_server.py"
HELLO = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"items":[{"item_id":"a"},{"item_id":"b"}]}'})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", log_level="warning",
            access_log=False, lifespan="off")
"""
DELAY = """
math.randomseed(%(seed)d)
delay = function() return -math.log(1 - math.random()) * %(mean_ms)f end
"""
LOAD = """
counts = {}
retry = 0
%(delay)s
response = function(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if status == 503 and headers["retry-after"] then retry = retry + 1 end
end
threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do io.write(string.format("status %%d %%d\\n", status, n)) end
    io.write(string.format("retry-after %%d\\n", t:get("retry")))
  end
  io.write(string.format("seconds %%f\\n", summary.duration / 1e6))
end
"""
PROBE = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } keel_ts;
int clock_gettime(int clk, keel_ts *tp);
]]
local ts = ffi.new("keel_ts")
local function now() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3 end
%(delay)s
local sent = 0
served, shed = {}, {}
request = function() sent = now(); return wrk.format() end  -- one connection per thread: in order
response = function(status, headers, body)
  local us = now() - sent
  if status == 200 then served[#served + 1] = us else shed[#shed + 1] = us end
end
threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  for _, t in ipairs(threads) do
    for _, us in ipairs(t:get("served")) do io.write(string.format("served %%d\\n", us)) end
    for _, us in ipairs(t:get("shed")) do io.write(string.format("shed %%d\\n", us)) end
  end
end
"""


def delay_lua(mean_ms: float | None, seed: int) -> str:
    return "" if mean_ms is None else DELAY % {"seed": seed, "mean_ms": mean_ms}


def wrk(url: str, threads: int, connections: int, seconds: float, script: str, tmp: Path) -> subprocess.Popen[str]:
    lua = tmp / f"s{time.monotonic_ns()}.lua"
    lua.write_text(script)
    return subprocess.Popen(["wrk", f"-t{threads}", f"-c{connections}", f"-d{round(seconds)}s", "--timeout", "30s",
                             "-s", str(lua), url], stdout=subprocess.PIPE, text=True)


def p99(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def run(url: str, tmp: Path, seconds: float, load: tuple[int, float | None] | None,
        probes: int, probe_delay: float | None) -> dict[str, float]:
    """One measurement: an optional load (connections, mean delay ms) and `probes` timed connections."""
    procs = []
    if load is not None:
        procs.append(wrk(url, 1, load[0], seconds, LOAD % {"delay": delay_lua(load[1], 1)}, tmp))
    probe = wrk(url, probes, probes, seconds, PROBE % {"delay": delay_lua(probe_delay, 2)}, tmp)
    out = probe.communicate(timeout=seconds + 120)[0]
    served = [float(v) / 1e6 for v in re.findall(r"^served (\d+)$", out, re.M)]
    shed = [float(v) / 1e6 for v in re.findall(r"^shed (\d+)$", out, re.M)]
    result = {"served_p99": p99(served), "probe_served": len(served), "probe_shed": len(shed)}
    if procs:
        text = procs[0].communicate(timeout=seconds + 120)[0]
        counts: dict[int, int] = {}
        for status, n in re.findall(r"^status (\d+) (\d+)$", text, re.M):
            counts[int(status)] = counts.get(int(status), 0) + int(n)
        total = sum(counts.values())
        retry = sum(int(n) for n in re.findall(r"^retry-after (\d+)$", text, re.M))
        took = float(re.search(r"^seconds (\S+)$", text, re.M)[1])  # type: ignore[index]
        result.update(rate=total / took, served_rate=counts.get(200, 0) / took,
                      shed=counts.get(503, 0) / total if total else math.nan,
                      retry_missing=counts.get(503, 0) - retry, other=total - counts.get(200, 0) - counts.get(503, 0))
    return result


def capacity(url: str, seconds: float) -> float:
    out = subprocess.run(["wrk", "-t1", "-c4", f"-d{round(seconds)}s", url], capture_output=True, text=True,
                         check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]


def bench(name: str, url: str, tmp: Path, seconds: float) -> None:
    cap = capacity(url, 5)
    quiet = run(url, tmp, 5, None, 2, 10.0)  # two connections, one request each 10 ms: no queue
    mean_ms = 20.0
    conns = max(8, round(3 * cap * mean_ms / 1000))  # offered ~ conns / delay = 3x capacity
    opened = run(url, tmp, seconds, (conns, mean_ms), 4, mean_ms)
    closed = run(url, tmp, seconds, (800, None), 4, None)
    base = quiet["served_p99"]
    print(f"{name}: capacity {cap:,.0f} req/s, unloaded p99 {base * 1e3:.2f} ms")
    for label, r in (("open loop 3x", opened), ("closed loop 800", closed)):
        extra = "" if label.startswith("closed") else f" ({conns} conns, {mean_ms:.0f} ms mean delay)"
        print(f"  {label}{extra}: offered/answered {r['rate']:,.0f} req/s, served {r['served_rate']:,.0f} req/s, "
              f"shed {r['shed']:.0%}, served p99 {r['served_p99'] * 1e3:.1f} ms = {r['served_p99'] / base:.0f}x "
              f"unloaded (probe: {r['probe_served']:.0f} served, {r['probe_shed']:.0f} shed); "
              f"503 without Retry-After {r['retry_missing']:.0f}, other statuses {r['other']:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--queue", type=float, default=0.1, help="the gateway's max_queue_seconds")
    parser.add_argument("--concurrency", default="-1",
                        help="the gateway's max_concurrency, admitted by the protocol (-1: its default; a list: each)")
    parser.add_argument("--before", action="store_true", help="also run keel without the protocol's admission")
    parser.add_argument("--only", choices=["keel", "uvicorn"], default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("needs wrk (scripts/install-redis.sh installs it)")
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        if args.only != "uvicorn":
            from keel.project.loading import copy_example

            copy_example(tmp / "shop")
            limits = [int(n) for n in args.concurrency.split(",")]
            for concurrency in ([0, *limits] if args.before else limits):
                port = free_port()
                keel = subprocess.Popen([sys.executable, str(GATEWAY), str(tmp / "shop"), str(port),
                                         str(64 * 1024 * 1024), str(args.queue), str(concurrency)], env=env,
                                        stdout=subprocess.DEVNULL)
                admission = (f"admission {concurrency or 'default'}" if concurrency != 0
                             else "no admission in the protocol (before)")
                try:
                    wait_port(port, keel)
                    bench(f"keel gateway ({admission}, max_queue_seconds {args.queue})",
                          f"http://127.0.0.1:{port}/v1/views/trending/_top", tmp, args.seconds)
                finally:
                    keel.kill()
                    keel.wait()
        if args.only != "keel":
            port = free_port()
            hello = subprocess.Popen([sys.executable, "-c", HELLO, str(port)], env=env)
            try:
                wait_port(port, hello)
                bench("bare uvicorn hello-world", f"http://127.0.0.1:{port}/", tmp, args.seconds)
            finally:
                hello.kill()
                hello.wait()
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
