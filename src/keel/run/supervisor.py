"""Supervision of a running project's components (`keel up`): what dies is restarted, with backoff.

As under an Erlang/OTP supervisor with the ``one_for_one`` strategy, each component restarts
alone: a processor that fails stops neither the gateway nor the other processors. As with
Kubernetes' CrashLoopBackOff, the wait before a restart doubles from ``Backoff.initial`` up to
``Backoff.cap`` (with jitter, so components failing together do not retry in lockstep), and the
count resets once a component has run ``Backoff.reset_after`` seconds without failing.

A ``ConfigError`` is fatal: retrying cannot fix a mistake in the project, so the supervisor stops
that component and reports the error (``keel up`` then exits with it). Anything else (a backend
that went away, a full disk, a bug) is retried for as long as the platform runs.

What each component is doing is in ``Supervisor.state`` (`Platform.status()`), in the metrics
``keel_component_up`` and ``keel_component_restarts_total`` (labelled by component), and in the
log: a KeelError as one line (its message says what to do), any other exception with its
traceback, once until the component has run well again.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from keel.errors import ConfigError, KeelError
from keel.monitor.streams import stream_registry

log = logging.getLogger("keel.run.host")

RESTARTS = Counter("keel_component_restarts", "restarts of a component of `keel up` after it failed",
                   ["component"], registry=stream_registry())
UP = Gauge("keel_component_up", "1 while the component runs, 0 while it waits to restart or has stopped",
           ["component"], registry=stream_registry())


@dataclass(frozen=True)
class Backoff:
    """How long to wait before the n-th consecutive restart: ``min(cap, initial * 2**(n-1))``,
    shortened by up to ``jitter`` of itself at random."""

    initial: float = 0.5
    cap: float = 30.0
    reset_after: float = 60.0
    jitter: float = 0.5

    def delay(self, failures: int, draw: float) -> float:
        """The wait after `failures` consecutive failures (>= 1); `draw` is uniform in [0, 1)."""
        full = min(self.cap, self.initial * 2.0 ** min(failures - 1, 64))
        return full * (1.0 - self.jitter * draw)


@dataclass
class ComponentState:
    """What a supervised component is doing, for status reports."""

    state: str = "starting"  # starting, running, restarting, failed (fatal), stopped
    restarts: int = 0
    failures: int = 0  # consecutive, reset after `Backoff.reset_after` seconds of running well
    error: str | None = None  # the cause of the last failure
    retry_in: float | None = None  # seconds to the next restart while restarting
    since: float = 0.0  # when the current attempt started (the supervisor's clock)


Target = Callable[[threading.Event], None]


class Supervisor:
    """Runs `target(stop)` in a thread until `stop` is set, restarting it when it raises or returns.

    `on_fatal(message)` is called once if the component stops for good (a ConfigError). `clock`
    (seconds, monotonic), `wait(seconds)` (returns True when it is time to stop) and `draw`
    (uniform in [0, 1)) exist so that tests control time and jitter.
    """

    def __init__(self, name: str, target: Target, stop: threading.Event, on_fatal: Callable[[str], None],
                 backoff: Backoff | None = None, *, clock: Callable[[], float] = time.monotonic,
                 wait: Callable[[float], bool] | None = None, draw: Callable[[], float] = random.random) -> None:
        self.name, self.target, self.stop = name, target, stop
        self.on_fatal = on_fatal
        self.backoff = backoff or Backoff()
        self.clock, self.draw = clock, draw
        self.wait = wait or stop.wait
        self.state = ComponentState()
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._traced = False  # a traceback was logged since the component last ran well
        self._up = UP.labels(name)
        self._restarts = RESTARTS.labels(name)

    def start(self) -> None:
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and self.state.state in ("starting", "running", "restarting")

    def report(self) -> dict[str, object]:
        """state, restarts, and the cause of the last failure while the component has not run well since."""
        s = self.state
        healthy = s.failures == 0 or (s.state == "running" and self.clock() - s.since >= self.backoff.reset_after)
        return {"state": s.state, "restarts": s.restarts, "error": None if healthy else s.error}

    def run(self) -> None:
        """The supervision loop (the thread's body; tests may call it directly)."""
        while not self.stop.is_set():
            started = self.state.since = self.clock()
            self.state.state, self.state.retry_in = "running", None
            self._up.set(1)
            try:
                self.target(self.stop)
                if self.stop.is_set():
                    break
                cause: BaseException = RuntimeError("it returned without being asked to stop")
            except ConfigError as exc:
                self._fatal(exc)
                return
            except Exception as exc:  # noqa: BLE001 - whatever kills a component is reported and retried
                cause = exc
            self._up.set(0)
            if self.stop.is_set():
                break
            if self.clock() - started >= self.backoff.reset_after:
                self.state.failures, self._traced = 0, False
            self.state.failures += 1
            delay = self.backoff.delay(self.state.failures, self.draw())
            self._report(cause, delay)
            self.state.state, self.state.retry_in = "restarting", delay
            if self.wait(delay) or self.stop.is_set():
                break
            self.state.restarts += 1
            self._restarts.inc()
        self._up.set(0)
        self.state.state, self.state.retry_in = "stopped", None

    def _report(self, exc: BaseException, delay: float) -> None:
        text = str(exc) if isinstance(exc, KeelError) else f"{type(exc).__name__}: {exc}"
        self.state.error = text
        if isinstance(exc, KeelError) or self._traced:
            log.error("%s failed (%d in a row), restarting in %.2fs: %s", self.name, self.state.failures, delay, text)
        else:  # an unexpected exception is a bug: its traceback once, then one line per failure
            self._traced = True
            log.error("%s failed (%d in a row), restarting in %.2fs: %s", self.name, self.state.failures, delay,
                      text, exc_info=exc)

    def _fatal(self, exc: ConfigError) -> None:
        self._up.set(0)
        self.state.state, self.state.error, self.state.retry_in = "failed", str(exc), None
        log.error("%s stopped: %s", self.name, exc)
        self.on_fatal(f"{self.name}: {exc}")
