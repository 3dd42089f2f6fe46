"""View lookups from Redis over HTTP: keel's gateway against FastAPI + uvicorn + redis.asyncio, same run.

Both servers run one process on 127.0.0.1, read the same Redis (100k keys of ~90-byte JSON, the
peer's `load_redis.py` data; keel's copy lives under its view namespace) and are driven by the same
`wrk -t1 -c32 -d<seconds>s --latency` with a random key per request. Rounds alternate peer / keel
GET / keel batch (POST of 10 keys) so that noise on the shared machine hits all three alike.

    python benchmarks/bench_serve_views.py [--seconds 15] [--rounds 3]

Needs: redis-server and wrk (scripts/install-redis.sh), and the peer's FastAPI
(`pip install fastapi`). The peer scripts are read from ../shared/peers (or KEEL_PEERS_DIR).
Prints requests/s, p50 and p99 per side, and the keel/peer ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERS = Path(os.environ.get("KEEL_PEERS_DIR", Path(__file__).resolve().parents[2] / "shared" / "peers"))
KEYS = 100_000

PROJECT_TOML = """[project]
name = "bench"
module = "bench_views"

[profiles.local]
kv = "{kv}"
"""
PROJECT_MODULE = 'import keel\nitems = keel.view("items", owner="bench")\n'
SERVE_KEEL = """
import sys, uvicorn
from keel.run.runtime import Runtime
from keel.serve.app import build_app, gateway_options
rt = Runtime.open(sys.argv[1])
app = build_app(rt.catalog, rt.engines, rt.config.kv, gateway_options(rt.config.serve, rt.config.production))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""
BATCH_LUA = """
math.randomseed(7)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local keys = {}
  for i = 1, 10 do keys[i] = '"' .. math.random(0, 99999) .. '"' end
  return wrk.format(nil, "/v1/views/items", nil, '{"keys":[' .. table.concat(keys, ",") .. ']}')
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on port {port} after {timeout}s")


def ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    assert m is not None
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def parse_wrk(text: str) -> dict[str, float]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.MULTILINE)
    if not (rps and p50 and p99):
        raise SystemExit(f"cannot parse wrk output:\n{text}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": float(rps.group(1)), "p50_ms": ms(p50.group(1)), "p99_ms": ms(p99.group(1)),
            "non2xx": int(bad.group(1)) if bad else 0}


def wrk(url: str, script: Path, seconds: int, prefix: str | None = None) -> dict[str, float]:
    env = {**os.environ, **({"WRK_PREFIX": prefix} if prefix else {})}
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, env=env, check=True).stdout
    return parse_wrk(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for tool in ("redis-server", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run scripts/install-redis.sh")
    import redis

    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="keel-bench-serve-") as tmp:
        work = Path(tmp)
        try:
            rport = free_port()
            procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                           "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL))
            wait_port(rport, procs[-1])
            subprocess.run([sys.executable, str(PEERS / "load_redis.py"), str(rport)], check=True,
                           stdout=subprocess.DEVNULL)
            kv_url = f"redis://127.0.0.1:{rport}/0"
            (work / "keel.toml").write_text(PROJECT_TOML.format(kv=kv_url))
            (work / "bench_views.py").write_text(PROJECT_MODULE)
            from keel.kv import open_kv

            client = redis.Redis(port=rport)
            kv = open_kv(kv_url)
            for start in range(0, KEYS, 5000):  # the same values, written by keel's engine (tagged)
                ids = range(start, start + 5000)
                values = client.mget([f"item:{i}" for i in ids])
                kv.put_many([(f"items/{i}", v) for i, v in zip(ids, values)])
            kv.close()

            (work / "batch.lua").write_text(BATCH_LUA)
            (work / "serve_keel.py").write_text(SERVE_KEEL)
            peer_port, keel_port = free_port(), free_port()
            env = {**os.environ, "REDIS_PORT": str(rport), "PYTHONPATH": str(PEERS)}
            procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "fastapi_redis:app", "--host", "127.0.0.1",
                                           "--port", str(peer_port), "--workers", "1", "--no-access-log",
                                           "--log-level", "warning"], env=env, cwd=PEERS))
            wait_port(peer_port, procs[-1])
            procs.append(subprocess.Popen([sys.executable, str(work / "serve_keel.py"), str(work), str(keel_port)]))
            wait_port(keel_port, procs[-1])

            items = PEERS / "items.lua"
            peer_url, keel_url = f"http://127.0.0.1:{peer_port}", f"http://127.0.0.1:{keel_port}"
            wrk(peer_url, items, 2)  # warm both (imports, connection pools)
            wrk(keel_url, items, 2, "/v1/views/items/")
            runs: dict[str, list[dict[str, float]]] = {"peer": [], "keel": [], "keel_batch10": []}
            for r in range(args.rounds):
                runs["peer"].append(wrk(peer_url, items, args.seconds))
                runs["keel"].append(wrk(keel_url, items, args.seconds, "/v1/views/items/"))
                runs["keel_batch10"].append(wrk(keel_url, work / "batch.lua", args.seconds))
                print(f"round {r + 1}: " + "  ".join(f"{k} {v[-1]['rps']:.0f} req/s p99 {v[-1]['p99_ms']:.1f} ms"
                                                     for k, v in runs.items()), flush=True)
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()

    summary = {k: {m: round(statistics.median(x[m] for x in v), 3) for m in ("rps", "p50_ms", "p99_ms")}
               | {"non2xx": sum(x["non2xx"] for x in v)} for k, v in runs.items()}
    peer = summary["peer"]
    for side in ("keel", "keel_batch10"):
        s = summary[side]
        s["rps_ratio_vs_peer"] = round(s["rps"] / peer["rps"], 2)
        s["p99_ratio_vs_peer"] = round(s["p99_ms"] / peer["p99_ms"], 2)
    summary["keel_batch10"]["keys_per_s"] = round(summary["keel_batch10"]["rps"] * 10)
    print(json.dumps(summary, indent=2))
    print(f"keel/peer requests/s: GET {summary['keel']['rps_ratio_vs_peer']}x, "
          f"batch of 10 {summary['keel_batch10']['rps_ratio_vs_peer']}x; "
          f"p99 keel {summary['keel']['p99_ms']} ms vs peer {peer['p99_ms']} ms")


if __name__ == "__main__":
    main()
