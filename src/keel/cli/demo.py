"""`keel demo`: the shop end to end on embedded engines, with simulated users.

The simulator only talks HTTP to the gateway, like a real front end. Its users each prefer one
category of items; they buy more when shown items of that category. Personal recommendations
(similar to what the user viewed) show such items more often than trending ones, so the
treatment is genuinely better — unless `aa` is set, when the buying ignores what is shown.
Every figure of the summary is read back from the engines (bus, lake, views, scheduler), never
from the simulator's own counters.
"""

from __future__ import annotations

import http.client
import json
import random
import tempfile
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from keel.errors import BackendError
from keel.project.loading import copy_example
from keel.run.host import Platform, free_port
from keel.run.runtime import Runtime

CATEGORIES = 10
ITEMS_PER_CATEGORY = 40


@dataclass
class Summary:
    acknowledged: dict[str, int]
    tables: dict[str, int]
    views: dict[str, int]
    jobs: list[dict[str, Any]]
    experiment: dict[str, Any]
    checks: list[dict[str, Any]]
    processors: list[dict[str, Any]]
    rejected_requests: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def item_category(item: str) -> int:
    return int(item.split("-")[1]) // ITEMS_PER_CATEGORY


def _items_in(category: int) -> list[str]:
    return [f"item-{category * ITEMS_PER_CATEGORY + i:04d}" for i in range(ITEMS_PER_CATEGORY)]


class Gateway:
    """A keep-alive HTTP/1.1 client of the demo's gateway, on the standard library only: `keel demo`
    must run from `pip install keel-platform`, without the [test] extra that brings httpx."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        self.url = url
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        try:
            try:
                return self._exchange(method, path, data, headers)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # the server closed the idle keep-alive connection before reading the request: reconnect once
                self._conn.close()
                return self._exchange(method, path, data, headers)
        except (http.client.HTTPException, OSError) as exc:
            self._conn.close()
            raise BackendError(f"the demo's gateway at {self.url} did not answer {method} {path} ({exc}); "
                               "the messages above name the component that failed") from exc

    def _exchange(self, method: str, path: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, str]:
        self._conn.request(method, path, body=data, headers=headers)
        response = self._conn.getresponse()
        return response.status, response.read().decode(errors="replace")

    def post(self, path: str, body: Any) -> tuple[int, str]:
        return self.request("POST", path, body)

    def get(self, path: str) -> tuple[int, str]:
        return self.request("GET", path)

    def close(self) -> None:
        self._conn.close()


class Simulator:
    def __init__(self, client: Gateway, users: int, seed: int, aa: bool) -> None:
        self.client = client
        self.seed = seed
        self.rng = random.Random(seed)
        self.users = [f"user-{i:05d}" for i in range(users)]
        self.likes = {u: self.rng.randrange(CATEGORIES) for u in self.users}
        self.aa = aa

    def post(self, stream: str, events: list[dict[str, Any]]) -> None:
        status, text = self.client.post(f"/v1/streams/{stream}/events", events)
        if status != 202:
            raise BackendError(f"the demo's gateway answered {status} to events for {stream}: {text[:300]}; "
                               "this is a bug in the demo or the gateway, please report it")

    def browse(self, progress: Progress, hours: float = 2.0) -> None:
        """Page views over the last `hours`, most in each user's liked category, sent in time order
        as a live front end would (a few arrive late, as on any real network)."""
        now = datetime.now(timezone.utc)
        views: list[tuple[datetime, str, str]] = []
        for u in self.users:
            start = now - timedelta(hours=hours) + timedelta(seconds=self.rng.uniform(0, hours * 3600 - 900))
            for k in range(self.rng.randint(6, 14)):
                cat = self.likes[u] if self.rng.random() < 0.8 else self.rng.randrange(CATEGORIES)
                views.append((start + timedelta(seconds=20 * k), u, self.rng.choice(_items_in(cat))))
        views.sort()
        for i in range(len(views) // 100):  # a few events delayed by up to two minutes
            j = self.rng.randrange(len(views) - 1)
            views.insert(min(len(views), j + self.rng.randint(1, 400)), views.pop(j))
        task = progress.add_task("users browsing", total=len(views))
        for first in range(0, len(views), 1000):
            chunk = views[first:first + 1000]
            self.post("page_views", [{"user_id": u, "item_id": item, "ts": ts.isoformat()} for ts, u, item in chunk])
            progress.advance(task, len(chunk))

    def shop(self, progress: Progress) -> None:
        """Each user asks for recommendations, and may buy one of them."""
        task = progress.add_task("users shopping", total=len(self.users))
        purchases: list[dict[str, Any]] = []
        for u in self.users:
            status, text = self.client.get(f"/recommend/{u}")
            if status != 200:
                raise BackendError(f"the demo's gateway answered {status} to /recommend/{u}: {text[:300]}; "
                                   "this is a bug in the demo or the gateway, please report it")
            items = json.loads(text)["items"]
            liked = [i for i in items if item_category(i) == self.likes[u]]
            share = len(liked) / len(items) if items else 0.0
            p = 0.10 if self.aa else 0.05 + 0.15 * share
            # each user's own draw: whether they buy depends on them and on what they were shown, never on
            # how many random numbers other users' answers happened to consume (runs are reproducible)
            draw = random.Random(f"{self.seed}:{u}")
            if draw.random() < p:
                item = draw.choice(liked or items or _items_in(self.likes[u]))
                purchases.append({"user_id": u, "item_id": item, "price": round(draw.uniform(5, 80), 2)})
            if len(purchases) >= 200:
                self.post("purchases", purchases)
                purchases = []
            progress.advance(task)
        if purchases:
            self.post("purchases", purchases)

    def refused_request(self) -> None:
        """A client bug: one request with bad fields. It must be refused whole, with each field named."""
        bad = [{"user_id": "user-00000", "item_id": "item-0001"}, {"user_id": 42, "price": "cheap"}]
        status, _ = self.client.post("/v1/streams/purchases/events", bad)
        if status != 400:
            raise BackendError(f"the demo's gateway answered {status}, not 400, to a request with invalid fields; "
                               "this is a bug in the gateway, please report it")


def _copy_shop(directory: Path | None) -> Path:
    return copy_example(Path(tempfile.mkdtemp(prefix="keel-demo-")) / "shop" if directory is None else directory)


def run_demo(directory: Path | None = None, users: int = 3000, seed: int = 7, aa: bool = False,
             console: Console | None = None) -> Summary:
    console = console or Console()
    root = _copy_shop(directory)
    t0 = time.monotonic()
    console.print(f"[bold]keel demo[/bold]: the shop in {root}, on embedded engines")
    rt = Runtime.open(root)
    platform = Platform(rt, port=free_port(), scheduler=False)
    platform.start()
    try:
        client = Gateway(platform.url)
        with closing(client), Progress(console=console) as progress:
            sim = Simulator(client, users, seed, aa)
            sim.browse(progress)
            sim.refused_request()
            platform.wait_idle(120)
            for job in ("compute_co_views", "compute_similar_items"):
                platform.scheduler.trigger(job)
            sim.shop(progress)
            metrics_text = client.get("/metrics")[1]
        if not platform.wait_idle(120):
            console.print("[yellow]processors did not catch up within 120 s[/yellow]")
        summary = read_summary(rt, platform, metrics_text)
    finally:
        platform.stop()
    print_summary(summary, console, time.monotonic() - t0)
    return summary


def read_summary(rt: Runtime, platform: Platform, metrics_text: str) -> Summary:
    from keel.experiments.report import experiment_report
    from keel.monitor.checks import run_checks

    acknowledged = {s: sum(p.end_offset for p in rt.bus.describe(s).partitions) for s in rt.catalog.streams}
    tables = {t: rt.lake.describe(t).rows for t in sorted(rt.lake.list_tables())}
    views = {v: rt.views.count(v) for v in rt.catalog.views}
    jobs = [{"job": r.task, "state": r.state, "attempts": r.attempts} for r in platform.scheduler.runs()]
    exp = experiment_report(rt.sql_session(), rt.catalog, "recs_v2")
    rejected = sum(int(float(line.rsplit(" ", 1)[1])) for line in metrics_text.splitlines()
                   if line.startswith("keel_events_rejected_total"))
    processors = [{k: row.get(k) for k in ("name", "events", "late", "dead_lettered")}
                  for row in platform.status() if row["kind"] in ("processor", "aggregation")]
    summary = Summary(acknowledged, tables, views, jobs, exp, run_checks(rt.lake, rt.catalog), processors, rejected)
    for stream, table in (("page_views", "page_views"), ("purchases", "purchases"), ("exposures", "exposures")):
        if tables.get(table, 0) != acknowledged.get(stream, -1):
            summary.problems.append(f"{table}: {tables.get(table, 0)} rows in the lake but {acknowledged.get(stream)} "
                                    "events acknowledged")
    summary.problems += [f"{c['check']}: {c['detail']}" for c in summary.checks if not c["ok"]]
    summary.problems += platform.errors
    if any(j["state"] != "success" for j in jobs):
        summary.problems.append("a job run failed")
    return summary


def print_summary(s: Summary, console: Console, seconds: float) -> None:
    from keel.cli.render import print_rows

    console.rule("[bold]summary[/bold] (read back from the engines)")
    print_rows([{"stream": k, "events acknowledged": v} for k, v in s.acknowledged.items()], "bus", console)
    console.print(f"requests refused as invalid (nothing written): {s.rejected_requests}")
    print_rows(s.processors, "processors (events read; late events counted and kept out of closed windows)", console)
    print_rows([{"table": k, "rows": v} for k, v in s.tables.items()], "lake", console)
    print_rows([{"view": k, "keys": v} for k, v in s.views.items()], "views", console)
    print_rows(s.jobs, "job runs", console)
    print_rows(s.checks, "checks", console)
    for metric, result in s.experiment.items():
        console.print(f"[bold]experiment recs_v2 / {metric}[/bold]")
        for line in result.summary_lines():
            console.print("  " + line, highlight=False)
    state = "[green]ok[/green]" if s.ok else "[red]problems:[/red] " + "; ".join(s.problems)
    console.print(f"demo finished in {seconds:.0f} s: {state}")
