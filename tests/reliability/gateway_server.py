"""The shop's gateway alone, in its own process, for load tests: `python gateway_server.py ROOT PORT
MAX_INFLIGHT_BYTES MAX_QUEUE_SECONDS [MAX_CONCURRENCY]` (-1 or absent: the gateway's default; 0: the default without the
protocol's admission, as before it had one). Prints "ready" once it listens; serves until killed."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import uvicorn

from keel.run.runtime import Runtime
from keel.serve.app import build_app, gateway_options
from keel.serve.protocol import StampedHttp


def main() -> None:
    root, port, budget, queue = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    concurrency = int(sys.argv[5]) if len(sys.argv) > 5 else None
    rt = Runtime.open(root)
    rt.ensure()
    rt.views.put("trending", [("_top", {"items": [{"item_id": "a"}, {"item_id": "b"}]})])
    options = replace(gateway_options(rt.config.serve, rt.config.production), max_inflight_bytes=budget,
                      max_queue_seconds=queue)
    if concurrency is not None and concurrency > 0:
        options = replace(options, max_concurrency=concurrency)
    app = build_app(rt.catalog, rt.engines, rt.config.kv, options)
    http = StampedHttp if concurrency == 0 else StampedHttp.admitting(app.admission())
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=http,
                            log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    print("ready", flush=True)
    server.run()


if __name__ == "__main__":
    main()
