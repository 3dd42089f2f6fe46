"""A running project: its gateway, processors and scheduler in one process (`keel up`, `keel demo`).

Processors and the scheduler run in threads (their engines release the GIL for I/O and columnar
work); the gateway runs under uvicorn. Each runs under a `keel.run.supervisor.Supervisor`: one that
fails (a backend gone away, a full disk, a bug) is reported and restarted with backoff while the
others go on; only a ConfigError stops the platform (`errors`). `start()` first opens every engine
of the profile, so an unreachable backend or a missing bucket is one clear error before anything
says it is up. `stop()` lets each processor finish and commit the batch in flight, then closes
the engines: nothing acknowledged is lost, because an acknowledged event is already durable on
the bus and a processor resumes from its last lake commit.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

from keel.project.declare import Aggregation, Processor
from keel.errors import BackendError, ConfigError
from keel.jobs.embedded import EmbeddedScheduler
from keel.jobs.run import scheduler_tasks
from keel.monitor.jobs import count_sla_miss
from keel.run.runtime import Runtime
from keel.serve.app import build_app, gateway_options
from keel.serve.protocol import StampedHttp
from keel.streaming.runner import Runner
from keel.run.supervisor import Backoff, Supervisor

log = logging.getLogger("keel.run.host")


@dataclass
class Component:
    name: str
    kind: str
    supervisor: Supervisor
    runner: Runner | None = None  # a processor's current runner (a new one after each restart)

    @property
    def thread(self) -> threading.Thread:
        return self.supervisor.thread


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Platform:
    """`backoff`, `clock` and `wait` are handed to every component's supervisor (tests set them)."""

    def __init__(self, runtime: Runtime, port: int | None = None, scheduler: bool = True,
                 backoff: Backoff | None = None, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], bool] | None = None) -> None:
        self.rt = runtime
        self.host = runtime.config.serve.host
        self.port = runtime.config.serve.port if port is None else port
        self.stop_event = threading.Event()
        self.components: list[Component] = []
        self.scheduler = EmbeddedScheduler(runtime.state_dir / "scheduler.db", scheduler_tasks(runtime.catalog, runtime),
                                           on_sla_miss=count_sla_miss)
        self.with_scheduler = scheduler
        self.server: uvicorn.Server | None = None
        self.errors: list[str] = []  # fatal errors (a ConfigError): `keel up` exits with them
        self._backoff, self._clock, self._wait = backoff, clock, wait

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, gateway: bool = True) -> None:
        """Open every engine, create streams, start every processor, the scheduler and the gateway.

        Raises ConfigError/BackendError (naming the engine and the fix) if an engine is unusable.
        """
        self.rt.open_engines()
        for decl in self.rt.catalog.processors.values():
            c = self._add(decl.name, decl.kind, self._processor(decl))
            c.runner = Runner(decl, self.rt.engines)
        if self.with_scheduler:
            self._add("scheduler", "scheduler", self._schedule)
        if gateway:
            self._app = build_app(self.rt.catalog, self.rt.engines, self.rt.config.kv,
                                  gateway_options(self.rt.config.serve, self.rt.config.production))
            self._add("gateway", "gateway", self._serve)
        for c in self.components:
            c.supervisor.start()
        if gateway:
            self._await_gateway(self.components[-1].supervisor)

    def _add(self, name: str, kind: str, target: Callable[[threading.Event], None]) -> Component:
        def fatal(message: str) -> None:
            self.errors.append(message)

        supervisor = Supervisor(name, target, self.stop_event, fatal, self._backoff, clock=self._clock, wait=self._wait)
        c = Component(name, kind, supervisor)
        self.components.append(c)
        return c

    def _processor(self, decl: Processor | Aggregation) -> Callable[[threading.Event], None]:
        """A target that runs `decl`; each restart gets a fresh Runner, which recovers from the last commit."""
        attempts = 0

        def run(stop: threading.Event) -> None:
            nonlocal attempts
            c = next(c for c in self.components if c.name == decl.name)
            if attempts or c.runner is None:
                stats = c.runner.stats if c.runner is not None else None
                c.runner = Runner(decl, self.rt.engines)
                if stats is not None:
                    c.runner.stats = stats
            attempts += 1
            c.runner.run(stop)

        return run

    def _schedule(self, stop: threading.Event) -> None:
        self.scheduler.run_forever(stop, poll_seconds=1.0)

    def _serve(self, stop: threading.Event) -> None:
        server = uvicorn.Server(uvicorn.Config(self._app, host=self.host, port=self.port,
                                               http=StampedHttp.admitting(self._app.admission()),
                                               log_level="warning", lifespan="off"))
        self.server = server
        if stop.is_set():  # read after publishing the server: stop() sets the event, then stops the server
            return
        try:
            server.run()
        except SystemExit:  # uvicorn exits when it cannot bind
            raise BackendError(f"the gateway could not listen on {self.url}: is the port taken?") from None
        if not stop.is_set():
            raise BackendError("the gateway stopped by itself")

    def _await_gateway(self, supervisor: Supervisor) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and supervisor.state.failures == 0 and not self.errors:
            if self.server is not None and self.server.started:
                return
            time.sleep(0.02)
        self.stop()
        why = f" ({supervisor.state.error})" if supervisor.state.error else ""
        raise ConfigError(f"the gateway could not listen on {self.url}{why}: is the port taken? pick another "
                          "with --port or KEEL_PORT")

    def status(self) -> list[dict[str, Any]]:
        """One row per component: alive, state (running, restarting, failed, stopped), restarts, the
        cause of its last failure (until it has run well again) and a processor's counts."""
        rows = []
        for c in self.components:
            row: dict[str, Any] = {"name": c.name, "kind": c.kind, "alive": c.supervisor.alive,
                                   **c.supervisor.report()}
            if c.runner is not None:
                r = c.runner.stats
                row.update(events=r.events, batches=r.batches, dead_lettered=r.dead_lettered, late=r.late)
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
        self.stop_event.set()
        if self.server is not None:
            self.server.should_exit = True
        for c in self.components:
            if c.thread.is_alive():
                c.thread.join(timeout=30)
        self.rt.close()
