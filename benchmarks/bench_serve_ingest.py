"""Ingest through the gateway: events/s acknowledged durably (202 = fsync'd on the file:// bus),
with POSTs of 1,000 events each, against the physical reference of the same run.

keel: the shop's gateway (one uvicorn process, local profile: file:// bus, group-commit fsync)
driven by `wrk -t1 -c<connections> -d<seconds>s --latency` POSTing one JSON array of 1,000 page
views (~55 bytes each; every event is validated, gets an event_id and is fsync'd before the 202).
Peer: `log_append.py` from the peers folder, a bare Python loop appending 1,000 framed 100-byte
records per write + fsync on the same disk: no HTTP, no validation, no partitioning, so the ratio
is "what share of the disk's fsync'd append rate reaches clients as acknowledged events".

    python benchmarks/bench_serve_ingest.py [--seconds 10] [--connections 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve_views import PEERS, free_port, parse_wrk, wait_port

from keel.project.loading import copy_example

SERVE_KEEL = """
import sys, uvicorn
from keel.run.runtime import Runtime
from keel.serve.app import build_app, gateway_options
rt = Runtime.open(sys.argv[1])
rt.ensure()
app = build_app(rt.catalog, rt.engines, rt.config.kv, gateway_options(rt.config.serve, rt.config.production))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning", access_log=False)
"""
POST_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local events = {}
for i = 1, 1000 do
  events[i] = string.format('{"user_id":"user-%d","item_id":"item-%d"}', i * 7919 %% 100000, i * 104729 %% 10000)
end
wrk.body = "[" .. table.concat(events, ",") .. "]"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run scripts/install-redis.sh")
    with tempfile.TemporaryDirectory(prefix="keel-bench-ingest-") as tmp:
        root = Path(tmp) / "shop"
        copy_example(root)
        (Path(tmp) / "serve.py").write_text(SERVE_KEEL)
        (Path(tmp) / "post.lua").write_text(POST_LUA.replace("%%", "%"))
        port = free_port()
        server = subprocess.Popen([sys.executable, str(Path(tmp) / "serve.py"), str(root), str(port)])
        runs, peers = [], []
        try:
            wait_port(port, server, 60)
            url = f"http://127.0.0.1:{port}/v1/streams/page_views/events"
            cmd = ["wrk", "-t1", f"-c{args.connections}", "--latency", "-s", str(Path(tmp) / "post.lua"), url]
            subprocess.run(cmd[:1] + ["-d2s"] + cmd[1:], capture_output=True, check=True)  # warm up
            for r in range(args.rounds):
                out = subprocess.run(cmd[:1] + [f"-d{args.seconds}s"] + cmd[1:], capture_output=True, text=True,
                                     check=True).stdout
                run = parse_wrk(out)
                run["events_per_s"] = run["rps"] * 1000
                runs.append(run)
                peer = subprocess.run([sys.executable, str(PEERS / "log_append.py"), tmp], capture_output=True,
                                      text=True, check=True).stdout
                peers.append(json.loads(peer)["batch1000_fsync_per_batch"]["median_records_per_s"])
                print(f"round {r + 1}: keel {run['events_per_s']:.0f} events/s acked (p99 POST {run['p99_ms']:.1f} ms,"
                      f" non-2xx {run['non2xx']}); raw fsync'd append {peers[-1]} records/s", flush=True)
        finally:
            server.terminate()
            server.wait(30)
        counted = sum(1 for _ in (root / ".keel").rglob("*"))  # the bus exists on disk
    keel = statistics.median(r["events_per_s"] for r in runs)
    peer = statistics.median(peers)
    summary = {"keel_events_per_s": round(keel), "keel_post_p50_ms": statistics.median(r["p50_ms"] for r in runs),
               "keel_post_p99_ms": statistics.median(r["p99_ms"] for r in runs),
               "non2xx": sum(int(r["non2xx"]) for r in runs), "peer_raw_append_records_per_s": round(peer),
               "ratio_keel_vs_raw_append": round(keel / peer, 3), "files_in_state": counted,
               "connections": args.connections}
    print(json.dumps(summary, indent=2))
    print(f"keel acknowledged {keel:.0f} events/s durably ({keel / peer:.2f}x the raw fsync'd append); "
          f"target 200,000: {'met' if keel >= 200_000 else 'NOT met'}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
