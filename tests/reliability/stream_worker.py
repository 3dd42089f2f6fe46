"""A processor process for the stream crash tests: lands `clicks` and counts them per item in
10-second windows (lateness 2 s), into a lake table and a view, until SIGTERM (or kill -9).

    python -m tests.reliability.stream_worker BUS_URL ROOT [land]

With `land`, only the landing runs (the scale-out test runs several such processes).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import keel
from keel.bus import open_bus
from keel.project.catalog import collecting
from keel.engines import Engines
from keel.kv import open_kv
from keel.kv.views import Views
from keel.lake import open_lake
from keel.streaming.runner import Runner


class Click(keel.Event):
    user_id: str
    item_id: str


def declarations() -> SimpleNamespace:
    with collecting():
        clicks = keel.stream("clicks", Click, key="user_id", partitions=int(os.environ.get("KEEL_TEST_PARTITIONS", "2")))
        land = keel.land(clicks, keel.table("clicks"))

        @keel.aggregate(clicks, by="item_id", window=keel.tumbling("10s"), lateness="2s",
                        into=[keel.view("counts"), keel.table("counts_10s")])
        def counts(w: Any) -> Any:
            return {"views": w.count()}
    return SimpleNamespace(clicks=clicks, land=land, counts=counts)


def engines(bus_url: str, root: Path) -> Engines:
    kv = open_kv(f"file://{root}/kv.db")
    (root / "state").mkdir(parents=True, exist_ok=True)
    return Engines(bus=open_bus(bus_url), lake=open_lake(f"file://{root}/lake"), views=Views(kv, {"counts": None}),
                   state_dir=root / "state")


def main() -> None:
    bus_url, root = sys.argv[1], Path(sys.argv[2])
    decl = declarations()
    rt = engines(bus_url, root)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    runners = [Runner(decl.land, rt, max_records=2000)]
    if sys.argv[3:] != ["land"]:
        runners.append(Runner(decl.counts, rt, max_records=2000))
    threads = [threading.Thread(target=r.run, args=(stop,)) for r in runners]
    for t in threads:
        t.start()
    print("started", flush=True)
    for t in threads:
        t.join()
    rt.bus.close()
    rt.views.kv.close()


if __name__ == "__main__":
    main()
