"""A running project: its gateway, processors and scheduler in one process (`keel up`, `keel demo`).

Processors and the scheduler run in threads (their engines release the GIL for I/O and columnar
work); the gateway runs under uvicorn. `stop()` lets each processor finish and commit the batch
in flight, then closes the engines: nothing acknowledged is lost, because an acknowledged event
is already durable on the bus and a processor resumes from its last lake commit.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import uvicorn

from keel.jobs.embedded import EmbeddedScheduler
from keel.jobs.run import scheduler_tasks
from keel.runtime import Runtime
from keel.serve.app import build_app
from keel.streaming.runner import Runner

log = logging.getLogger("keel.platform")


@dataclass
class Component:
    name: str
    kind: str
    thread: threading.Thread
    runner: Runner | None = None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Platform:
    def __init__(self, runtime: Runtime, port: int | None = None, scheduler: bool = True) -> None:
        self.rt = runtime
        self.host = runtime.config.serve.host
        self.port = runtime.config.serve.port if port is None else port
        self.stop_event = threading.Event()
        self.components: list[Component] = []
        self.scheduler = EmbeddedScheduler(runtime.state_dir / "scheduler.db", scheduler_tasks(runtime))
        self.with_scheduler = scheduler
        self.server: uvicorn.Server | None = None
        self.errors: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, gateway: bool = True) -> None:
        """Create streams, start every processor, the scheduler and (in a thread) the gateway."""
        self.rt.ensure()
        for decl in self.rt.catalog.processors.values():
            runner = Runner(decl, self.rt)
            t = threading.Thread(target=self._guard, args=(runner.run, decl.name), name=decl.name, daemon=True)
            self.components.append(Component(decl.name, decl.kind, t, runner))
        if self.with_scheduler:
            t = threading.Thread(target=self._guard, args=(self._schedule, "scheduler"), name="scheduler", daemon=True)
            self.components.append(Component("scheduler", "scheduler", t))
        for c in self.components:
            c.thread.start()
        if gateway:
            self.server = uvicorn.Server(uvicorn.Config(build_app(self.rt), host=self.host, port=self.port,
                                                        log_level="warning", lifespan="off"))
            t = threading.Thread(target=self.server.run, name="gateway", daemon=True)
            self.components.append(Component("gateway", "gateway", t))
            t.start()
            deadline = time.monotonic() + 15
            while not self.server.started and t.is_alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if not self.server.started:
                self.stop()
                from keel.errors import ConfigError

                raise ConfigError(f"the gateway could not listen on {self.url}: is the port taken? pick another "
                                  "with --port or KEEL_PORT")

    def _schedule(self, stop: threading.Event) -> None:
        self.scheduler.run_forever(stop, poll_seconds=1.0)

    def _guard(self, fn: Any, name: str) -> None:
        try:
            fn(self.stop_event)
        except Exception as exc:  # a component that dies is reported by status(), not silently gone
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            log.exception("%s stopped", name)

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for c in self.components:
            row: dict[str, Any] = {"name": c.name, "kind": c.kind, "alive": c.thread.is_alive()}
            if c.runner is not None:
                s = c.runner.stats
                row.update(events=s.events, batches=s.batches, dead_lettered=s.dead_lettered, late=s.late,
                           error=s.error)
            rows.append(row)
        return rows

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until every processor has caught up with its stream (lag 0); True if it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.lag(c.runner) == 0 for c in self.components if c.runner is not None):
                return True
            if self.errors:
                return False
            time.sleep(0.1)
        return False

    def lag(self, runner: Runner) -> int:
        info = self.rt.bus.describe(runner.decl.stream.name)
        return sum(info.lag(runner.decl.name).values())

    def stop(self) -> None:
        """Stop the gateway first (no new acks), then processors after their batch in flight."""
        if self.server is not None:
            self.server.should_exit = True
        self.stop_event.set()
        for c in self.components:
            c.thread.join(timeout=30)
        self.rt.close()
