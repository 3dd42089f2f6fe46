"""Circuit breakers and retry budgets, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from keel.errors import BackendError
from keel.serve.resilience import (
    Backend,
    BackendPolicy,
    CircuitBreaker,
    CircuitOpenError,
    RetryBudget,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    clock = Clock()
    b = CircuitBreaker("kv", failures=3, open_for=1.0, clock=clock)
    for _ in range(2):
        b.before()
        b.failure()
    b.before()
    b.success()  # a success resets the count: failures must be consecutive
    for _ in range(3):
        b.before()
        b.failure()
    assert b.state == "open"
    with pytest.raises(CircuitOpenError) as info:
        b.before()
    assert 0 < info.value.retry_after <= 1.0
    clock.now += 1.0
    b.before()  # the half-open probe goes through ...
    with pytest.raises(CircuitOpenError):
        b.before()  # ... alone
    b.failure()  # the probe failed: open again, twice as long
    clock.now += 1.5
    with pytest.raises(CircuitOpenError):
        b.before()
    clock.now += 0.5
    b.before()
    b.success()
    assert b.state == "closed"
    b.before()


def test_retry_budget_allows_about_ten_percent() -> None:
    clock = Clock()
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, cap=100, clock=clock)
    allowed = 0
    for _ in range(1000):
        budget.deposit()
        allowed += budget.try_withdraw()
    assert 95 <= allowed <= 100
    assert budget.denied == 1000 - allowed


def test_backend_retries_within_budget_then_opens() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BackendError("transient")
        return "ok"

    backend = Backend("kv", BackendPolicy(failures=2, retry_min_per_second=5))
    assert asyncio.run(backend.call(flaky, retry=True)) == "ok"
    assert calls == 2

    async def dead() -> str:
        raise BackendError("down")

    async def run_dead() -> None:
        for _ in range(3):
            with pytest.raises(BackendError):
                await backend.call(dead)

    asyncio.run(run_dead())
    assert backend.breaker.state == "open"


def test_backend_times_out_slow_calls() -> None:
    async def slow() -> None:
        await asyncio.Event().wait()  # never answers

    backend = Backend("bus", BackendPolicy(timeout=0.05))
    with pytest.raises(BackendError, match="did not answer within"):
        asyncio.run(backend.call(slow))
