"""Resilience for the gateway's backends (kv reads, bus produce): timeouts, breakers, retry budgets.

The Finagle lessons, kept small:

* **Timeouts per backend.** Every call gets one; a call past it fails as `BackendError`.
* **Circuit breaker per backend.** After ``failures`` consecutive failures the breaker opens:
  calls fail at once (`CircuitOpenError`, answered 503 with Retry-After) instead of piling up on a
  dead server. After ``open_for`` seconds one probe call is let through (half-open); its success
  closes the breaker, its failure re-opens it for twice as long (up to ``max_open_for``).
* **Retries within a budget.** A failed idempotent call is retried only while the budget allows:
  each call deposits ``ratio`` of a retry (10% by default), plus ``min_per_second`` so that a quiet
  gateway can still retry. A dying backend therefore sees at most ~10% extra load, never a retry
  storm (Finagle's RetryBudget; its defaults are 20% and 10/s).

Breakers and budgets are thread-safe: endpoint handlers read views from worker threads.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from keel.errors import BackendError

_T = TypeVar("_T")


class CircuitOpenError(BackendError):
    """A backend's breaker is open: the call was not attempted. ``retry_after`` is in seconds."""

    def __init__(self, backend: str, retry_after: float) -> None:
        self.backend, self.retry_after = backend, retry_after
        super().__init__(f"the {backend} backend is failing and its circuit breaker is open; calls resume with a "
                         f"probe in {retry_after:.1f}s. Check the {backend} engine's health (keel status, its logs)")


@dataclass(frozen=True)
class BackendPolicy:
    timeout: float = 1.0  # seconds per attempt
    failures: int = 5  # consecutive failures that open the breaker
    open_for: float = 1.0  # first open period; doubles per failed probe
    max_open_for: float = 30.0
    retry_ratio: float = 0.1
    retry_min_per_second: float = 5.0


class CircuitBreaker:
    """Closed -> open after N consecutive failures -> half-open (one probe) -> closed or open again."""

    def __init__(self, name: str, failures: int = 5, open_for: float = 1.0, max_open_for: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.threshold = failures
        self.base_open_for = open_for
        self.max_open_for = max_open_for
        self.clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_for = open_for
        self._open_until = 0.0
        self._probing = False
        self.opened = 0  # times the breaker opened (for metrics and tests)

    @property
    def state(self) -> str:
        if self._failures < self.threshold:
            return "closed"
        return "half-open" if self._probing or self.clock() >= self._open_until else "open"

    def before(self) -> None:
        """Raise `CircuitOpenError` unless a call may go ahead now (closed, or the half-open probe)."""
        if self._failures < self.threshold:  # the fast path: no lock while healthy
            return
        with self._lock:
            if self._failures < self.threshold:
                return
            now = self.clock()
            if now < self._open_until or self._probing:
                raise CircuitOpenError(self.name, max(self._open_until - now, 0.1))
            self._probing = True

    def success(self) -> None:
        if self._failures:
            with self._lock:
                self._failures = 0
                self._probing = False
                self._open_for = self.base_open_for

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._probing:  # the probe failed: open again, for longer
                self._probing = False
                self._open_for = min(self._open_for * 2, self.max_open_for)
                self._open_until = self.clock() + self._open_for
                self.opened += 1
            elif self._failures == self.threshold:
                self._open_until = self.clock() + self._open_for
                self.opened += 1

    def retry_after(self) -> float:
        return max(self._open_until - self.clock(), 0.1)


class RetryBudget:
    """Retries allowed: ``ratio`` per call made plus ``min_per_second``, banked up to a cap."""

    def __init__(self, ratio: float = 0.1, min_per_second: float = 5.0, cap: float = 100.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio, self.min_per_second, self.cap, self.clock = ratio, min_per_second, cap, clock
        self._balance = min(min_per_second, cap)
        self._stamp = clock()
        self._lock = threading.Lock()
        self.retried = 0
        self.denied = 0

    def deposit(self, calls: int = 1) -> None:
        self._balance = min(self._balance + self.ratio * calls, self.cap)  # a race here only loses a fraction

    def try_withdraw(self) -> bool:
        with self._lock:
            now = self.clock()
            self._balance = min(self._balance + (now - self._stamp) * self.min_per_second, self.cap)
            self._stamp = now
            if self._balance >= 1.0:
                self._balance -= 1.0
                self.retried += 1
                return True
            self.denied += 1
            return False


class Backend:
    """One backend as the gateway calls it: a breaker, a retry budget and a timeout per attempt."""

    def __init__(self, name: str, policy: BackendPolicy = BackendPolicy()) -> None:
        self.name = name
        self.policy = policy
        self.timeout = policy.timeout
        self.breaker = CircuitBreaker(name, policy.failures, policy.open_for, policy.max_open_for)
        self.budget = RetryBudget(policy.retry_ratio, policy.retry_min_per_second)

    async def call(self, attempt: Callable[[], Awaitable[_T]], retry: bool = False, timed: bool = True) -> _T:
        """Await ``attempt()`` under the timeout; retry a failure once if ``retry`` and the budget allow.

        ``timed=False`` when the attempt enforces this backend's timeout itself (the coalescing kv
        reader keeps one deadline per batch, cheaper than one timer per request).
        """
        while True:
            self.breaker.before()
            self.budget.deposit()
            try:
                if timed:
                    async with asyncio.timeout(self.timeout):
                        result = await attempt()
                else:
                    result = await attempt()
            except (BackendError, TimeoutError) as exc:
                self.breaker.failure()
                if retry and not isinstance(exc, CircuitOpenError) and self.budget.try_withdraw():
                    retry = False
                    continue
                if isinstance(exc, TimeoutError):
                    raise BackendError(f"the {self.name} backend did not answer within {self.timeout}s; "
                                       "the request was not completed, retry it later") from exc
                raise
            self.breaker.success()
            return result

    def call_sync(self, attempt: Callable[[], _T], retry: bool = False) -> _T:
        """The same from a worker thread; the timeout is the engine's own (its socket timeout)."""
        while True:
            self.breaker.before()
            self.budget.deposit()
            try:
                result = attempt()
            except BackendError as exc:
                self.breaker.failure()
                if retry and not isinstance(exc, CircuitOpenError) and self.budget.try_withdraw():
                    retry = False
                    continue
                raise
            self.breaker.success()
            return result


__all__ = ["Backend", "BackendPolicy", "CircuitBreaker", "CircuitOpenError", "RetryBudget"]
