"""How long a failed run waits before its next attempt: exponential backoff, capped, optionally jittered.

The wait after attempt n fails is ``retry_delay * 2 ** (n - 1)``, at most the task's
``retry_max_delay``. A jitter, when the scheduler is given one, then maps that delay to the one
actually waited (so many tasks failing together do not all retry at the same instant); it is a
plain function, so tests pass a seeded one and get the same waits every time.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from keel.jobs.base import Task

Jitter = Callable[[float], float]


def backoff(task: Task, failed_attempt: int) -> float:
    """Seconds to wait after attempt `failed_attempt` (1-based) of `task` failed, before the jitter."""
    delay: float = task.retry_delay * 2.0 ** (failed_attempt - 1)
    return delay if task.retry_max_delay is None else min(delay, task.retry_max_delay)


def seeded_jitter(seed: int | None = None, spread: float = 0.5) -> Jitter:
    """A jitter waiting between ``(1 - spread)`` and all of each delay, drawn from ``Random(seed)``."""
    if not 0 <= spread <= 1:
        raise ValueError(f"spread must be within [0, 1], not {spread}")
    rng = random.Random(seed)
    return lambda delay: delay * (1 - spread * rng.random())
